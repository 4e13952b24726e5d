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


class CalendarMissing(RuntimeError):
    """A deadline would run into a year whose holiday schedule (the State Council notice) is not
    configured: refused rather than guessed (→ 503, for an operator to load the year)."""

    status = 503

    def __init__(self, message: str, *, year: int | None = None):
        super().__init__(message)
        self.year = year


_PATH = None


def hide_paths(message: str) -> str:
    """``message`` with every absolute file path cut to its base name: errors of GDAL, openpyxl or pandas
    name the server's temporary upload folder (``/tmp/citygrid-…/upload.gpkg``), which is none of the
    client's business. A path is a ``/`` (not after a word character, a dot, ``:`` or ``/``, so URLs
    and dates stay) followed by at least two segments."""
    import re

    global _PATH
    if _PATH is None:
        _PATH = re.compile(r"(?<![\w.:/\\])(?:/[^\s'\"/;,()<>]+)+/([^\s'\"/;,()<>]+)")
    return _PATH.sub(lambda m: m.group(1), message)
