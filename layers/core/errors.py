"""Errors the data layer raises for bad input; the API turns them into 4xx answers."""


class InputError(ValueError):
    """Bad input: the message says what is wrong (→ 422)."""

    status = 422


class NotFound(LookupError):
    """The thing asked for does not exist (→ 404)."""

    status = 404


class Conflict(RuntimeError):
    """The request clashes with what exists (→ 409)."""

    status = 409


class Forbidden(PermissionError):
    """The user's role may act, but not on this object, e.g. another department's case (→ 403)."""

    status = 403
