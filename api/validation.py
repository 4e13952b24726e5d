"""Input refused before it reaches PostgreSQL: control characters, lone surrogates and integers that
do not fit in 64 bits, each answered 422 with the field or parameter named.

Three places cover every input, so that no route has to remember it:

- :class:`ParameterGuard` (pure ASGI, outermost): query parameters (names and values) and path
  parameters, also of the requests the fast paths answer before routing;
- :class:`Body`, the base of every JSON body model: every string field, and every string nested in a
  free-form field (a GeoJSON geometry …);
- :func:`check_form`, an app-wide dependency: the fields and file names of every form a route declares
  (FastAPI has parsed the form already; Starlette keeps it on the request, so it is not read twice).
  The Open311 POST reads its form by hand and calls :func:`form_problem` itself.

Free text (descriptions, notes, addresses …) may contain tab, line feed and carriage return; nothing
else may contain any C0 control character; DEL (U+007F) and UTF-16 surrogates (U+D800–U+DFFF, which a
JSON ``\\ud800`` escape produces and no UTF-8 text can hold) are refused everywhere.

Integers are declared with bounds (``le=``, shown in the OpenAPI document); :data:`INT64_MAX` is the
limit of a bigint column, :data:`MAX_OFFSET` and the ``le`` of each ``limit`` the caps of paging.
The validation error body is ``{"detail": "<what is wrong, in words>", "errors": [{loc, msg, type}]}``;
:func:`declare_error_schema` makes the OpenAPI document say so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from starlette.datastructures import UploadFile

INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
#: The largest ``offset`` of any paged list (deeper pages: narrow the filter instead).
MAX_OFFSET = 10_000_000
#: A bigint id, for an optional body field (``BigId | None``: the bounds stay integers in the OpenAPI).
BigId = Annotated[int, Field(ge=1, le=INT64_MAX)]

#: Field and parameter names whose values are free text: tab, LF and CR are allowed there.
FREE_TEXT = frozenset({"description", "note", "reason", "comment", "title", "body", "address",
                       "address_string", "override_reason"})

_STRICT = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# A query string that may hide one: a percent-encoded C0 control or DEL, or such a raw byte.
_RAW_QUERY = re.compile(rb"%(?:[01][0-9a-fA-F]|7[fF])|[\x00-\x1f\x7f]")
# %ED%A0%80 … %ED%BF%BF would be a surrogate in UTF-8; decoding replaces them with U+FFFD (harmless).


def bad_character(value: str, free_text: bool = False) -> str | None:
    """What is wrong with ``value`` (a sentence), or None when it holds no refused character."""
    m = (_TEXT if free_text else _STRICT).search(value)
    if m is None:
        return None
    c = m.group()
    if "\ud800" <= c <= "\udfff":
        what = f"a lone UTF-16 surrogate U+{ord(c):04X}"
    else:
        what = f"the control character U+{ord(c):04X}"
    allowed = " (only tab, line feed and carriage return are allowed in text)" if free_text else ""
    return f"{what} at position {m.start()} is not allowed{allowed}"


def json_problem(value: Any, where: str = "body") -> tuple[str, str] | None:
    """(where, problem) of the first refused string in a free-form JSON body (a ``dict`` parameter)."""
    return _walk(value, where, False)


def _walk(value: Any, where: str, free_text: bool) -> tuple[str, str] | None:
    """(where, problem) of the first refused string in a JSON-like value (keys included)."""
    if isinstance(value, str):
        problem = bad_character(value, free_text)
        return (where, problem) if problem else None
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and (problem := bad_character(k)):
                return f"{where} (a key)", problem
            found = _walk(v, f"{where}.{k}", free_text or k in FREE_TEXT)
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _walk(v, f"{where}[{i}]", free_text)
            if found:
                return found
    return None


class Body(BaseModel):
    """Base of the API's JSON bodies: every string in every field is checked for refused characters
    (free text by field name, :data:`FREE_TEXT`). Nested models check their own fields."""

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or isinstance(value, (int, float, BaseModel)):
            return value
        name = info.field_name or ""
        found = _walk(value, name, name in FREE_TEXT)
        if found:
            where, problem = found
            if where != name:  # inside a list or a free-form object: say where
                problem = f"in {where}: {problem}"
            raise PydanticCustomError("control_character", "{problem}", {"problem": problem})
        return value


def _zh_problem(err: dict) -> str:
    """One validation problem in Chinese, by pydantic's error type (``missing`` → 缺少字段…)."""
    from layers.core.errors import field_label

    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header", "form")]
    name = field_label(loc[-1]) if loc else ""
    where = "“" + (".".join(loc[:-1] + [name]) if loc else "请求") + "”"
    kind = str(err.get("type") or "")
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return f"缺少字段{where}"
    if kind == "json_invalid":
        return "请求内容不是有效的 JSON"
    if kind == "extra_forbidden":
        return f"不认识的字段{where}"
    if kind == "control_character":
        return f"{where}含有不允许的控制字符"
    if kind == "string_too_long":
        return f"{where}太长（最多 {ctx.get('max_length', '?')} 个字符）"
    if kind == "string_too_short":
        return f"{where}不能为空" if ctx.get("min_length") in (1, None) else \
            f"{where}太短（至少 {ctx.get('min_length')} 个字符）"
    if kind in ("too_long", "too_short"):
        return f"{where}的条数不对"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = {"greater_than": "大于", "greater_than_equal": "不小于", "less_than": "小于",
                 "less_than_equal": "不大于"}[kind]
        limit = next(iter(ctx.values()), "?")
        return f"{where}超出范围（须{bound} {limit}）"
    if kind in ("literal_error", "enum"):
        return f"{where}的取值不对（可选：{ctx.get('expected', '?')}）"
    if kind.endswith(("_type", "_parsing")) or kind in ("date_from_datetime_inexact", "url_parsing", "int_from_float"):
        return f"{where}格式不对"
    if kind in ("value_error", "assertion_error"):
        msg = str(err.get("msg") or "").removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return f"{where}取值不对：{msg}"
    return f"{where}有误：{err.get('msg')}"


def error_body(errors: Iterable[dict], limit: int = 10) -> dict:
    """The body of a 422: what is wrong in words (``detail``, English; ``message``, Chinese; the code
    ``validation_error``) and the errors themselves (at most ``limit``), without echoing the input back."""
    errors = list(errors)
    shown = errors[:limit]
    problems, problems_zh = [], []
    for err in shown:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg"))
        problems.append(msg if msg.startswith(f"{where}: ") or not where else f"{where}: {msg}")
        problems_zh.append(_zh_problem(err))
    more = len(errors) - len(shown)
    detail = "; ".join(problems) + (f"; and {more} more" if more > 0 else "")
    message = "输入有误：" + "；".join(problems_zh) + (f"；另有 {more} 处" if more > 0 else "")
    return {"detail": detail, "code": "validation_error", "message": message, "message_en": detail,
            "errors": [{"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type"),
                        "message": zh} for err, zh in zip(shown, problems_zh, strict=True)]}


def _refuse(loc: list, problem: str) -> RequestValidationError:
    return RequestValidationError([{"loc": tuple(loc), "msg": problem, "type": "control_character"}])


# --- query and path parameters ---------------------------------------------------------------------


def _path_parameter(scope) -> str | None:
    """The name of the path parameter holding the refused character (the route the path matches)."""
    from starlette.routing import Match

    app = scope.get("app")
    for route in flatten_routes(getattr(getattr(app, "router", None), "routes", [])):
        try:
            match, child = route.matches(scope)
        except Exception:  # noqa: BLE001 - a route that cannot judge this path
            continue
        if match != Match.NONE:
            for name, value in child.get("path_params", {}).items():
                if isinstance(value, str) and bad_character(value):
                    return name
    return None


def flatten_routes(routes):
    """Every route of an app's route list, the routes of included routers included."""
    for r in routes:
        inner = getattr(r, "original_router", None)  # FastAPI ≥ 0.16x keeps included routers whole
        if inner is not None:
            yield from flatten_routes(inner.routes)
        else:
            yield r


def parameter_errors(scope) -> list[dict]:
    """The refused characters in a request's path and query parameters, as validation errors."""
    errors = []
    path = scope.get("path", "")
    if (problem := bad_character(path)) is not None:
        name = _path_parameter(scope)
        errors.append({"loc": ("path", name) if name else ("path",), "msg": problem, "type": "control_character"})
    qs = scope.get("query_string", b"")
    if qs and _RAW_QUERY.search(qs):
        for name, value in parse_qsl(qs.decode("latin-1"), keep_blank_values=True):
            if (problem := bad_character(name)) is not None:
                errors.append({"loc": ("query",), "msg": f"a parameter name: {problem}", "type": "control_character"})
            elif (problem := bad_character(value, name in FREE_TEXT)) is not None:
                errors.append({"loc": ("query", name), "msg": problem, "type": "control_character"})
    return errors


class ParameterGuard:
    """Pure-ASGI middleware: a request whose path or query parameters hold a refused character is
    answered 422 before routing (and before the fast paths)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            errors = parameter_errors(scope)
            if errors:
                await JSONResponse(error_body(errors), status_code=422)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --- forms -----------------------------------------------------------------------------------------


def form_problem(items: Iterable[tuple[str, Any]]) -> tuple[str, str] | None:
    """(field, problem) of the first refused character in a form's fields (values, names and file
    names), or None."""
    for name, value in items:
        if (problem := bad_character(name)) is not None:
            return "a field name", problem
        if isinstance(value, str):
            if (problem := bad_character(value, name in FREE_TEXT)) is not None:
                return name, problem
        elif isinstance(value, UploadFile) and value.filename and (problem := bad_character(value.filename)):
            return f"{name} (the file name)", problem
    return None


def _declares_form(route) -> bool:
    from fastapi import params

    field = getattr(route, "body_field", None)
    return field is not None and isinstance(field.field_info, params.Form)


async def check_form(request: Request) -> None:
    """App-wide dependency: the fields of a route's declared form hold no refused character."""
    if not _declares_form(request.scope.get("route")):
        return
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        return
    form = await request.form()  # already parsed by FastAPI for this route: the cached form
    found = form_problem(form.multi_items())
    if found:
        raise _refuse(["body", found[0]], found[1])


# --- the OpenAPI document --------------------------------------------------------------------------

ERROR_SCHEMA = {
    "title": "HTTPValidationError",
    "type": "object",
    "description": "422: what is wrong with the request. `detail` says it in words (field: problem; …); "
                   "`code` is `validation_error`; `message` says it in Chinese, `message_en` in English; "
                   "`errors` lists the problems found by validation (at most 10). Every error answer of the "
                   "API carries `detail`, `code`, `message` and `message_en` (docs/ERRORS.md).",
    "properties": {
        "detail": {"title": "Detail", "type": "string"},
        "code": {"title": "Code", "type": "string", "description": "stable error code (docs/ERRORS.md)"},
        "message": {"title": "Message", "type": "string", "description": "what is wrong, in Chinese"},
        "message_en": {"title": "Message (English)", "type": "string"},
        "errors": {"title": "Errors", "type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}},
    },
    "required": ["detail"],
}


def _integer_bounds(node) -> None:
    """FastAPI's OpenAPI model holds ``minimum``/``maximum`` as floats: 2**63 - 1 would be declared as
    9.223372036854776e18 (= 2**63, a value the API refuses). Integer schemas get integer bounds back."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key, rounding in (("maximum", math.floor), ("minimum", math.ceil)):
                v = node.get(key)
                if isinstance(v, float):
                    node[key] = max(-(2**63), min(INT64_MAX, rounding(v)))
        for v in node.values():
            _integer_bounds(v)
    elif isinstance(node, list):
        for v in node:
            _integer_bounds(v)


def declare_error_schema(app) -> None:
    """Make the OpenAPI document declare the 422 body the app sends (FastAPI's default declares
    ``detail`` as a list), and integer bounds as integers."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        schemas = schema.get("components", {}).get("schemas", {})
        if "HTTPValidationError" in schemas:
            schemas["HTTPValidationError"] = ERROR_SCHEMA
        _integer_bounds(schema)
        return schema

    app.openapi = openapi
