"""The body of every error answer: ``{"detail", "code", "message", "message_en"}``.

``detail`` is the English text the API always sent (clients and tests read it); ``code`` is stable
(the catalog ``layers/core/data/error_codes.json``, documented in ``docs/ERRORS.md``); ``message``
says it in Chinese for the pages, ``message_en`` in English.
"""

from __future__ import annotations

import re

from layers.core.errors import CodedError, hide_paths, status_code, zh_text

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"(?<![A-Za-z'])[A-Za-z]")


def split_detail(detail: str) -> tuple[str | None, str]:
    """(the Chinese a detail begins with or None, the English rest): "未登录 authentication required …"
    → ("未登录", "authentication required …"). The English rest is the longest tail holding no Chinese."""
    detail = detail or ""
    if not _CJK.search(detail):
        return None, detail
    for m in _WORD.finditer(detail):
        head, tail = detail[:m.start()], detail[m.start():]
        if not _CJK.search(tail):
            if not re.search(r"[A-Za-z]{2}", head):
                return (head.strip(" :;,-") or None), tail
            break
    first, _, rest = detail.partition(" ")
    if _CJK.search(first) and not re.search(r"[A-Za-z]", first):  # "无权限 role 'x' may not read '路灯'"
        return first, rest
    return None, detail


def body(status: int, detail, code: str | None = None, message: str | None = None) -> dict:
    """The answer of an error: ``detail`` unchanged, a code (the status's generic one unless given) and
    the Chinese message (given, the catalog's text of the code, or a Chinese lead-in before the English)."""
    generic, lead = status_code(status)
    if not isinstance(detail, str):  # an HTTPException with a structured detail: kept as it is
        return {"detail": detail, "code": code or generic, "message": message or lead, "message_en": lead}
    zh_words, rest = split_detail(detail)
    if message is None and code:
        message = zh_text(code)
    if message is None:
        if zh_words:  # the detail says it in Chinese already
            message = zh_words
        else:
            message = f"{lead}：{rest}" if rest else lead
    return {"detail": detail, "code": code or generic, "message": message, "message_en": rest or detail}


def coded_body(e: CodedError, status: int | None = None) -> dict:
    """The answer of an error raised in layers/ (it knows its code and Chinese text)."""
    detail = hide_paths(str(e))
    zh_words, rest = split_detail(detail)  # a bilingual detail ("中文 English"): its English part
    return {"detail": detail, "code": e.code, "message": hide_paths(e.message_zh),
            "message_en": rest if zh_words and rest else detail}


def raw(status: int, detail: str, code: str | None = None, **params) -> dict:
    """For the pure-ASGI answers (body cap, database away): the same body."""
    return body(status, detail, code, zh_text(code, **params) if code else None)
