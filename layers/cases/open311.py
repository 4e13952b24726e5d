"""Open311 GeoReport v2: services from the case catalog, requests as cases, XML (required) and JSON.

Status is only open/closed; the detailed state of the workflow is in ``extended_attributes``. ids
and codes are strings. Errors are a list of {code, description}. What a request shows is decided by
the publication policy (layers/core/publication.py): per channel nothing, or class + cell centroid +
state, or that plus the scrubbed description and the address generalised to its road; never a name,
phone, ID number, e-mail or doorstep, never an exact position.

Extensions: ``POST`` answers with ``token`` beside the request id (requests are made synchronously:
the token is the request id); ``media_url`` is stored (table ``case_media``) and returned; request
lists page with ``page`` (from 1) and ``page_size`` (default 50, at most 200) and say in headers when
they are cut (:class:`RequestPage`).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

import numpy as np
from shapely.geometry import Point
from sqlalchemy import Connection, text

from gis import crs as gcrs
from layers.cases import calendar as lcal
from layers.cases import workflow as wf
from layers.cases.vocab import FINAL_STATES, REQUEST_TYPES, STATES
from layers.core import publication as pub
from layers.core.city import CityInfo
from layers.core.errors import InputError, NotFound

SPEC = "http://wiki.open311.org/GeoReport_v2"
#: Roles whose token is a valid ``api_key`` for POST requests (those that may record cases for others).
FILER_ROLES = ("operator", "admin")
PAGE_SIZE, MAX_PAGE_SIZE, MAX_PAGE = 50, 200, 100_000
MAX_IDS = MAX_PAGE_SIZE


class Open311Error(Exception):
    def __init__(self, code: int, description: str):
        super().__init__(description)
        self.code = code
        self.description = description


# -- XML -----------------------------------------------------------------------------------------

#: list element name → item element name
_ITEMS = {"services": "service", "service_requests": "request", "attributes": "attribute", "values": "value",
          "endpoints": "endpoint", "formats": "format", "errors": "error"}


#: Characters XML 1.0 does not allow (C0 controls but tab, LF, CR; surrogates; U+FFFE/U+FFFF).
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(v) -> str:
    """Text for an XML 1.0 document: escaped, each character XML cannot carry replaced by U+FFFD."""
    return escape(_XML_ILLEGAL.sub("\ufffd", str(v)))


def _xml_value(name: str, v) -> str:
    if v is None:
        return f"<{name}/>" if name not in ("lat", "long") else f"<{name}></{name}>"
    if isinstance(v, bool):
        return f"<{name}>{'true' if v else 'false'}</{name}>"
    if isinstance(v, dict):
        return f"<{name}>" + "".join(_xml_value(k, x) for k, x in v.items()) + f"</{name}>"
    if isinstance(v, list):
        item = _ITEMS.get(name, "item")
        return f"<{name}>" + "".join(_xml_value(item, x) for x in v) + f"</{name}>"
    return f"<{name}>{xml_text(v)}</{name}>"


def to_xml(root: str, obj) -> str:
    return '<?xml version="1.0" encoding="utf-8"?>' + _xml_value(root, obj)


# -- services ------------------------------------------------------------------------------------

def services() -> list[dict]:
    cat = wf.catalog()
    out = []
    for c in cat.values():
        if c["level"] != 3:
            continue
        top = cat[cat[c["parent"]]["parent"]]
        out.append({"service_code": c["code"], "service_name": f"{c['name']} {c.get('name_en', '')}".strip(),
                    "description": " / ".join(c["path"]), "metadata": True, "type": "realtime",
                    "keywords": ",".join(c["path"]), "group": top["name"]})
    return out


def service_definition(code: str) -> dict:
    c = wf.catalog().get(code)
    if c is None or c["level"] != 3:
        raise Open311Error(404, f"service_code '{code}' not found")
    return {"service_code": code, "attributes": [{
        "variable": True, "code": "request_type", "datatype": "singlevaluelist", "required": False,
        "datatype_description": "诉求类型 kind of request", "order": 1,
        "description": "诉求类型 What kind of request is this?",
        "values": [{"key": t, "name": t} for t in REQUEST_TYPES]}]}


def discovery(base_url: str) -> dict:
    return {"changeset": "2026-11-28T00:00:00Z", "contact": "12345 热线中心 hotline center",
            "key_service": "API keys are issued by the hotline center (a staff token)",
            "endpoints": [{"specification": SPEC, "url": base_url, "changeset": "2026-11-28T00:00:00Z",
                           "type": "production", "formats": ["text/xml", "application/json"]}]}


# -- requests ------------------------------------------------------------------------------------

def _num(form: dict, key: str) -> float | None:
    v = (form.get(key) or "").strip()
    if not v:
        return None
    try:
        f = float(v)
    except ValueError:
        raise Open311Error(400, f"{key} '{v[:30]}' is not a number") from None
    if not np.isfinite(f):
        raise Open311Error(400, f"{key} must be a finite number")
    return f


def post_request(conn: Connection, city: CityInfo, form: dict, actor) -> list[dict]:
    """POST requests: form fields of the spec, attributes as ``attribute[code]``."""
    code = (form.get("service_code") or "").strip()
    if not code:
        raise Open311Error(400, "service_code is required")
    item = wf.catalog().get(code)
    if item is None or item["level"] != 3:
        raise Open311Error(400, f"service_code '{code}' is not a service of this jurisdiction")
    lat, lon = _num(form, "lat"), _num(form, "long")
    address = (form.get("address_string") or "").strip() or None
    address_id = (form.get("address_id") or "").strip() or None
    if (lat is None) != (lon is None):
        raise Open311Error(400, "give both lat and long")
    if lat is None and not address and not address_id:
        raise Open311Error(400, "a location is required: lat and long, address_string or address_id")
    rt = (form.get("attribute[request_type]") or "").strip() or None
    if rt is not None and rt not in REQUEST_TYPES:
        raise Open311Error(400, f"attribute[request_type] '{rt}' is not one of {', '.join(REQUEST_TYPES)}")
    loc = None
    conf = None
    loc_src = None
    if lat is not None:
        bad = gcrs.validate_lonlat(np.array([lon]), np.array([lat]))
        if bad is not None:
            raise Open311Error(400, f"lat/long ({lat}, {lon}) are not valid WGS-84 coordinates: {bad[0]}")
        x, y = gcrs.transform_xy(np.array([lon]), np.array([lat]), "EPSG:4326", city.working_crs)
        loc, loc_src = Point(float(x[0]), float(y[0])), "open311"
    elif address:
        from layers.cases import gazetteer

        hit = gazetteer.locate_address(conn, city, address)
        if hit:
            loc, conf, loc_src = hit["point"], hit["confidence"], "gazetteer"
    name = " ".join(p for p in ((form.get("first_name") or "").strip(), (form.get("last_name") or "").strip()) if p)
    description = (form.get("description") or "").strip()
    if len(description) > 4000:
        raise Open311Error(400, "description is longer than 4000 characters")
    media = _media_url(form.get("media_url"))
    try:
        with conn.begin_nested():
            opened = wf.open_case(conn, city, source="open311", channel="APP", category_code=code,
                                  received_at=lcal.now(), location=loc, description=description or None,
                                  address=address, request_type=rt,
                                  contact={"name": name or None, "phone": (form.get("phone") or "").strip()[:40] or None,
                                           "openid": (form.get("email") or "").strip()[:80] or None},
                                  location_source=loc_src, location_confidence=conf, actor=actor)
            if media:
                conn.execute(text("INSERT INTO case_media (case_id, media_url) VALUES (:c, :m)"),
                             {"c": opened.id, "m": media})
                wf._event(conn, opened.id, lcal.now(), "note", actor, opened.state, opened.state, photos=[media[:500]],
                          data={"media_url": True})
    except InputError as e:
        raise Open311Error(400, str(e)) from None
    notice = "已受理，将按时限办理 received; it will be handled within its time limit"
    if opened.merged_into:
        notice = "已并入相同问题的在办案卷 merged with an open report of the same problem"
    return [{"service_request_id": opened.case_no, "token": opened.case_no, "service_notice": notice,
             "account_id": None}]


def _media_url(value) -> str | None:
    """``media_url`` as given, or Open311Error: an http(s) URL of at most 2000 characters."""
    v = (value or "").strip()
    if not v:
        return None
    if len(v) > 2000:
        raise Open311Error(400, "media_url is longer than 2000 characters")
    try:
        parts = urlsplit(v)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or re.search(r"[\s\x00-\x1f\x7f]", v):
        raise Open311Error(400, f"media_url '{v[:60]}' must be an http:// or https:// URL without blanks")
    return v


_REQ_SELECT = f"""
    SELECT c.case_no, c.state, c.category_code, c.category_name, c.received_at, c.updated_at, c.closed_at,
           c.close_deadline_at, d.name AS dept, c.merged_into, m.media_url, {pub.PUBLIC_COLUMNS}
    FROM case_file c LEFT JOIN department d ON d.id = c.department_id
    LEFT JOIN case_media m ON m.case_id = c.id
    {pub.PUBLIC_JOINS}
"""


def _iso(t):
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t is not None else None


def _request_out(r) -> dict:
    """A request as anonymous callers see it (the publication policy decides text, address, position)."""
    p = pub.public_case(r)
    closed = r["state"] in FINAL_STATES
    media = r["media_url"] if p["form"] == "text" and r["media_url"] and pub.scrub(r["media_url"]) == r["media_url"] else None
    return {
        "service_request_id": r["case_no"], "status": "closed" if closed else "open",
        "status_notes": STATES.get(r["state"], r["state"]),
        "service_name": r["category_name"], "service_code": r["category_code"],
        "description": p["description"],
        "agency_responsible": r["dept"], "service_notice": None,
        "requested_datetime": _iso(r["received_at"]), "updated_datetime": _iso(r["closed_at"] or r["updated_at"]),
        "expected_datetime": _iso(r["close_deadline_at"]), "address": p["address"], "address_id": None,
        "zipcode": None, "lat": p["lat"], "long": p["lon"], "media_url": media,
        "extended_attributes": {"state": r["state"], "state_label": STATES.get(r["state"], r["state"]),
                                "cell_code": r["cell_code"], "position": "cell_centroid",
                                "published": p["form"]},
    }


def _w3(s: str, name: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(s.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Open311Error(400, f"{name} '{s[:40]}' is not a W3C date-time like 2010-01-01T00:00:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


@dataclass
class RequestPage:
    """One page of a request list: ``items``, the ``total`` that matched, the page asked for and its
    size; ``truncated`` when more requests matched than this page holds (the router says so in the
    headers X-Total-Count, X-Page, X-Page-Size, X-Truncated and a Link rel="next")."""

    items: list[dict]
    total: int
    page: int
    page_size: int

    @property
    def truncated(self) -> bool:
        return self.total > (self.page - 1) * self.page_size + len(self.items)

    @property
    def has_next(self) -> bool:
        return self.truncated and self.page < MAX_PAGE


def _int_param(params: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = (params.get(key) or "").strip()
    if not v:
        return default
    if not re.fullmatch(r"[0-9]{1,7}", v) or not lo <= int(v) <= hi:
        raise Open311Error(400, f"{key} '{v[:20]}' must be a whole number from {lo} to {hi}")
    return int(v)


def request_page(conn: Connection, city: CityInfo, params: dict) -> RequestPage:
    """GET requests: by ``service_request_id`` (comma-separated, at most 200), or by date range (≤ 90
    days, default the last 90), service codes and status, newest first, one page at a time."""
    page = _int_param(params, "page", 1, 1, MAX_PAGE)
    size = _int_param(params, "page_size", PAGE_SIZE, 1, MAX_PAGE_SIZE)
    sources = pub.policy().published_sources()
    ids = (params.get("service_request_id") or "").strip()
    if ids:
        nos = list(dict.fromkeys(s.strip() for s in ids.split(",") if s.strip()))
        if len(nos) > MAX_IDS:
            raise Open311Error(400, f"at most {MAX_IDS} service_request_id values at a time, got {len(nos)}")
        rows = conn.execute(text(_REQ_SELECT + " WHERE c.city_id = :c AND c.case_no = ANY(:nos) "
                                 "AND c.source = ANY(:src) ORDER BY c.id"),
                            {"c": city.id, "nos": nos, "src": sources}).mappings().all()
        return RequestPage([_request_out(r) for r in rows], len(rows), 1, max(len(rows), 1))
    end = _w3(params["end_date"], "end_date") if params.get("end_date") else lcal.now()
    start = _w3(params["start_date"], "start_date") if params.get("start_date") else end - dt.timedelta(days=90)
    if end < start:
        raise Open311Error(400, "end_date is before start_date")
    if end - start > dt.timedelta(days=90):
        raise Open311Error(400, "the date range may not span more than 90 days")
    conds = ["c.city_id = :c", "c.received_at BETWEEN :s AND :e", "c.source = ANY(:src)"]
    p = {"c": city.id, "s": start, "e": end, "src": sources}
    codes = [s.strip() for s in (params.get("service_code") or "").split(",") if s.strip()]
    if codes:
        conds.append("c.category_code = ANY(:codes)")
        p["codes"] = codes
    status = [s.strip() for s in (params.get("status") or "").split(",") if s.strip()]
    if status:
        bad = [s for s in status if s not in ("open", "closed")]
        if bad:
            raise Open311Error(400, f"status '{bad[0]}' must be open or closed")
        if status == ["open"]:
            conds.append("c.state <> ALL(:final)")
        elif status == ["closed"]:
            conds.append("c.state = ANY(:final)")
        p["final"] = sorted(FINAL_STATES)
    where = " WHERE " + " AND ".join(conds)
    total = conn.execute(text("SELECT count(*) FROM case_file c" + where), p).scalar_one()
    rows = conn.execute(text(_REQ_SELECT + where + " ORDER BY c.received_at DESC, c.id DESC LIMIT :lim OFFSET :off"),
                        {**p, "lim": size, "off": (page - 1) * size}).mappings().all()
    return RequestPage([_request_out(r) for r in rows], int(total), page, size)


def get_requests(conn: Connection, city: CityInfo, params: dict) -> list[dict]:
    return request_page(conn, city, params).items


def get_request(conn: Connection, city: CityInfo, request_id: str) -> list[dict]:
    out = get_requests(conn, city, {"service_request_id": request_id}) if "," not in request_id else []
    if not out:
        raise Open311Error(404, f"service_request_id '{request_id[:40]}' not found")
    return out


def token(conn: Connection, city: CityInfo, tok: str) -> list[dict]:
    """Requests are created synchronously: the token is the request id itself."""
    no = conn.execute(text("SELECT case_no FROM case_file WHERE city_id = :c AND case_no = :t AND source = 'open311'"),
                      {"c": city.id, "t": tok}).scalar()
    if no is None:
        raise Open311Error(404, f"token '{tok[:40]}' not found")
    return [{"service_request_id": no, "token": tok}]


__all__ = ["Open311Error", "RequestPage", "request_page", "xml_text", "FILER_ROLES", "to_xml", "services", "service_definition", "discovery", "post_request",
           "get_requests", "get_request", "token", "NotFound"]
