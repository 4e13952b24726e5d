"""Open311 GeoReport v2: services from the case catalog, requests as cases, XML (required) and JSON.

Status is only open/closed; the detailed state of the workflow is in ``extended_attributes``. ids
and codes are strings. Errors are a list of {code, description}. Public output carries no personal
data: no names, phones or e-mails, and the free text of hotline/inspector cases is not published
(only the text that was itself submitted through Open311 or the citizen channel).
"""

from __future__ import annotations

import datetime as dt
from xml.sax.saxutils import escape

import numpy as np
from shapely.geometry import Point
from sqlalchemy import Connection, text

from gis import crs as gcrs
from layers.cases import calendar as lcal
from layers.cases import workflow as wf
from layers.cases.vocab import FINAL_STATES, REQUEST_TYPES, STATES
from layers.core.city import CityInfo
from layers.core.errors import InputError, NotFound

SPEC = "http://wiki.open311.org/GeoReport_v2"
PUBLISH_TEXT_SOURCES = ("open311", "citizen")


class Open311Error(Exception):
    def __init__(self, code: int, description: str):
        super().__init__(description)
        self.code = code
        self.description = description


# -- XML -----------------------------------------------------------------------------------------

#: list element name → item element name
_ITEMS = {"services": "service", "service_requests": "request", "attributes": "attribute", "values": "value",
          "endpoints": "endpoint", "formats": "format", "errors": "error"}


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
    return f"<{name}>{escape(str(v))}</{name}>"


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
    media = (form.get("media_url") or "").strip() or None
    try:
        with conn.begin_nested():
            opened = wf.open_case(conn, city, source="open311", channel="APP", category_code=code,
                                  received_at=lcal.now(), location=loc, description=description or None,
                                  address=address, request_type=rt,
                                  contact={"name": name or None, "phone": (form.get("phone") or "").strip()[:40] or None,
                                           "openid": (form.get("email") or "").strip()[:80] or None},
                                  location_source=loc_src, location_confidence=conf, actor=actor)
            if media:
                wf._event(conn, opened.id, lcal.now(), "note", actor, opened.state, opened.state, photos=[media[:500]],
                          data={"media_url": True})
    except InputError as e:
        raise Open311Error(400, str(e)) from None
    notice = "已受理，将按时限办理 received; it will be handled within its time limit"
    if opened.merged_into:
        notice = "已并入相同问题的在办案卷 merged with an open report of the same problem"
    return [{"service_request_id": opened.case_no, "service_notice": notice, "account_id": None}]


_REQ_SELECT = """
    SELECT c.case_no, c.state, c.category_code, c.category_name, c.description, c.source, c.received_at,
           c.updated_at, c.closed_at, c.close_deadline_at, c.address, d.name AS dept,
           CASE WHEN c.location IS NULL THEN NULL ELSE ST_X(ST_Transform(c.location, 4326)) END AS lon,
           CASE WHEN c.location IS NULL THEN NULL ELSE ST_Y(ST_Transform(c.location, 4326)) END AS lat,
           c.cell_code, c.merged_into
    FROM case_file c LEFT JOIN department d ON d.id = c.department_id
"""


def _iso(t):
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t is not None else None


def _request_out(r) -> dict:
    closed = r["state"] in FINAL_STATES
    return {
        "service_request_id": r["case_no"], "status": "closed" if closed else "open",
        "status_notes": STATES.get(r["state"], r["state"]),
        "service_name": r["category_name"], "service_code": r["category_code"],
        "description": (r["description"] or None) if r["source"] in PUBLISH_TEXT_SOURCES else None,
        "agency_responsible": r["dept"], "service_notice": None,
        "requested_datetime": _iso(r["received_at"]), "updated_datetime": _iso(r["closed_at"] or r["updated_at"]),
        "expected_datetime": _iso(r["close_deadline_at"]), "address": r["address"], "address_id": None,
        "zipcode": None, "lat": round(r["lat"], 6) if r["lat"] is not None else None,
        "long": round(r["lon"], 6) if r["lon"] is not None else None, "media_url": None,
        "extended_attributes": {"state": r["state"], "state_label": STATES.get(r["state"], r["state"]),
                                "cell_code": r["cell_code"]},
    }


def _w3(s: str, name: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(s.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Open311Error(400, f"{name} '{s[:40]}' is not a W3C date-time like 2010-01-01T00:00:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def get_requests(conn: Connection, city: CityInfo, params: dict) -> list[dict]:
    ids = (params.get("service_request_id") or "").strip()
    if ids:
        nos = [s.strip() for s in ids.split(",") if s.strip()][:200]
        rows = conn.execute(text(_REQ_SELECT + " WHERE c.city_id = :c AND c.case_no = ANY(:nos) ORDER BY c.id"),
                            {"c": city.id, "nos": nos}).mappings().all()
        return [_request_out(r) for r in rows]
    end = _w3(params["end_date"], "end_date") if params.get("end_date") else lcal.now()
    start = _w3(params["start_date"], "start_date") if params.get("start_date") else end - dt.timedelta(days=90)
    if end < start:
        raise Open311Error(400, "end_date is before start_date")
    if end - start > dt.timedelta(days=90):
        raise Open311Error(400, "the date range may not span more than 90 days")
    conds = ["c.city_id = :c", "c.received_at BETWEEN :s AND :e"]
    p = {"c": city.id, "s": start, "e": end}
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
    rows = conn.execute(text(_REQ_SELECT + " WHERE " + " AND ".join(conds) +
                             " ORDER BY c.received_at DESC LIMIT 1000"), p).mappings().all()
    return [_request_out(r) for r in rows]


def get_request(conn: Connection, city: CityInfo, request_id: str) -> list[dict]:
    out = get_requests(conn, city, {"service_request_id": request_id})
    if not out or "," in request_id:
        raise Open311Error(404, f"service_request_id '{request_id[:40]}' not found")
    return out


def token(conn: Connection, city: CityInfo, tok: str) -> list[dict]:
    """Requests are created synchronously: the token is the request id itself."""
    no = conn.execute(text("SELECT case_no FROM case_file WHERE city_id = :c AND case_no = :t AND source = 'open311'"),
                      {"c": city.id, "t": tok}).scalar()
    if no is None:
        raise Open311Error(404, f"token '{tok[:40]}' not found")
    return [{"service_request_id": no, "token": tok}]


__all__ = ["Open311Error", "to_xml", "services", "service_definition", "discovery", "post_request",
           "get_requests", "get_request", "token", "NotFound"]
