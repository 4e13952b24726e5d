"""Errors the data layer raises for bad input; the API turns them into 4xx answers.

Every error carries a stable ``code`` and says what is wrong twice: in English (``str(e)``, the
answer's ``detail`` and ``message_en``) and in Chinese (``e.message_zh``, the answer's ``message``).
The codes and their Chinese texts are one catalog, ``layers/core/data/error_codes.json`` (documented
in ``docs/ERRORS.md``): ``InputError("…english…", code="location_outside_city", x=…, y=…)`` takes the
Chinese text of the code, formatted with the keyword arguments. An error raised without a code gets
its class's generic code (``invalid_input``, ``not_found``, ``conflict``, ``forbidden``) and a
Chinese lead-in before the English text.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

_CATALOG = Path(__file__).resolve().parent / "data" / "error_codes.json"


@lru_cache
def error_catalog() -> dict:
    """The catalog: ``codes`` (code → status, zh, en), ``status`` (HTTP status → generic code and its
    Chinese lead-in) and ``fields`` (field name → its Chinese label)."""
    return json.loads(_CATALOG.read_text(encoding="utf-8"))


def field_label(name: str) -> str:
    """The Chinese label of a request field (``description`` → 问题描述), or the name itself."""
    return error_catalog()["fields"].get(name, name)


def status_code(status: int) -> tuple[str, str]:
    """(generic code, Chinese lead-in) of an HTTP status."""
    entry = error_catalog()["status"].get(str(status))
    if entry is None:
        return ("error", "请求未能完成") if status < 500 else ("server_error", "服务出错")
    return entry["code"], entry["zh"]


class _SafeDict(dict):
    def __missing__(self, key):
        return "{" + key + "}"


def zh_text(code: str, **params) -> str | None:
    """The Chinese text of ``code`` with ``params`` filled in (None for a code not in the catalog)."""
    entry = error_catalog()["codes"].get(code)
    if entry is None:
        return None
    return entry["zh"].format_map(_SafeDict({k: ("" if v is None else v) for k, v in params.items()}))


class CodedError(Exception):
    """Base of the errors below: a code and a Chinese text beside the English message."""

    status = 500

    def __init__(self, message: str = "", *, code: str | None = None, zh: str | None = None, **params):
        super().__init__(message)
        self._code, self._zh, self.params = code, zh, params

    @property
    def code(self) -> str:
        return self._code or status_code(self.status)[0]

    @property
    def message_zh(self) -> str:
        """In Chinese: the catalog's text of the code, the text given, or the lead-in before the English."""
        if self._zh:
            return self._zh
        if self._code and (found := zh_text(self._code, **self.params)):
            return found
        return f"{status_code(self.status)[1]}：{hide_paths(str(self))}"


class InputError(CodedError, ValueError):
    """Bad input: the message says what is wrong (→ 422)."""

    status = 422


class NotFound(CodedError, LookupError):
    """The thing asked for does not exist (→ 404)."""

    status = 404


class Conflict(CodedError, RuntimeError):
    """The request clashes with what exists (→ 409)."""

    status = 409


class Forbidden(CodedError, PermissionError):
    """The user's role may act, but not on this object, e.g. another department's case (→ 403)."""

    status = 403


class CalendarMissing(CodedError, RuntimeError):
    """A deadline would run into a year whose holiday schedule (the State Council notice) is not
    configured: refused rather than guessed (→ 503, for an operator to load the year)."""

    status = 503

    def __init__(self, message: str, *, year: int | None = None):
        super().__init__(message, code="calendar_missing", year=year if year is not None else "")
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
