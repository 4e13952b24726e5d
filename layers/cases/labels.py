"""The message catalog of the pages: every code a page may show (states, events, actions, roles,
sources, urgencies, flags, ratings, channels, classes, admin areas, departments, error codes) with its
Chinese and English words, made from the vocabularies (``vocab.py``), the class catalog, the city's
admin areas and departments, and the error catalog. Served by ``GET /api/v1/i18n``; read by
``static/common/i18n.js``. ``raw_codes`` is the list the pages must never show as such (the
every-page test scans the visible text for them)."""

from __future__ import annotations

from sqlalchemy import Connection, text

from layers.cases import vocab
from layers.cases.classes import catalog
from layers.core.city import CityInfo
from layers.core.errors import error_catalog
from layers.core.models import ROLES

#: The channels are Chinese words already (stored as such); their English beside.
CHANNEL_EN = {"电话": "Phone", "微信": "WeChat", "网站": "Website", "APP": "App", "信件": "Letter",
              "领导信箱": "Mayor's mailbox", "督查员": "Inspector", "其他": "Other"}
REQUEST_TYPE_EN = {"咨询": "Enquiry", "求助": "Request for help", "投诉": "Complaint", "举报": "Report",
                   "建议": "Suggestion"}
RATING_EN = {"satisfied": "Satisfied", "basic": "Fairly satisfied", "unsatisfied": "Unsatisfied"}
LEVEL_EN = {"district": "District", "street": "Street/town", "community": "Community"}


def split(label: str) -> dict:
    """"派遣 Dispatched" → {"zh": "派遣", "en": "Dispatched"}: the vocabulary's labels are Chinese, a
    space, then English (the Chinese part itself may hold no space)."""
    zh, _, en = (label or "").partition(" ")
    return {"zh": zh, "en": en or zh}


def _pairs(labels: dict) -> dict:
    return {k: split(v) for k, v in labels.items()}


def static_catalog() -> dict:
    """The part that does not depend on a city."""
    return {
        "states": _pairs(vocab.STATES),
        "events": _pairs(vocab.EVENTS),
        "actions": _pairs(vocab.ACTION_LABELS),
        "roles": {r: split(vocab.ROLE_LABELS.get(r, r)) for r in (*ROLES, "system", "citizen")},
        "sources": _pairs(vocab.SOURCE_LABELS),
        "urgencies": _pairs(vocab.URGENCY_LABELS),
        "flags": _pairs(vocab.FLAG_LABELS),
        "units": _pairs(vocab.UNIT_LABELS),
        "clock": _pairs(vocab.CLOCK_LABELS),
        "ratings": {k: {"zh": v, "en": RATING_EN.get(k, k)} for k, v in vocab.RATINGS.items()},
        "channels": {c: {"zh": c, "en": CHANNEL_EN.get(c, c)} for c in vocab.CHANNELS},
        "request_types": {c: {"zh": c, "en": REQUEST_TYPE_EN.get(c, c)} for c in vocab.REQUEST_TYPES},
        "classes": {code: {"zh": i.get("name") or code, "en": i.get("name_en") or i.get("name") or code}
                    for code, i in catalog().items()},
        "errors": {code: {"zh": e["zh"], "en": e["en"]} for code, e in error_catalog()["codes"].items()},
        "levels": {k: {"zh": {"district": "区县", "street": "街道/镇", "community": "社区/村"}[k], "en": v}
                   for k, v in LEVEL_EN.items()},
    }


def page_catalog(conn: Connection, city: CityInfo) -> dict:
    """The whole catalog for ``city``: the static part, its admin areas (by code, and the
    ``street-<code>`` slugs departments and layers use) and its departments (by code)."""
    out = static_catalog()
    areas = {}
    for code, level, name, name_en in conn.execute(text(
            "SELECT code, level, name, name_en FROM admin_area WHERE city_id = :c ORDER BY code"), {"c": city.id}):
        areas[code] = {"zh": name, "en": name_en or name, "level": level}
    out["areas"] = areas
    deps = {}
    for code, name, kind, area_code in conn.execute(text(
            "SELECT code, name, kind, area_code FROM department WHERE city_id = :c ORDER BY id"),
            {"c": city.id}):
        if kind == "street" and area_code in areas:
            a = areas[area_code]
            deps[code] = {"zh": f"{a['zh']}办事处", "en": f"{a['en']} office"}
        else:
            deps[code] = split(name)
    out["departments"] = deps
    out["city"] = {"slug": city.slug, "zh": city.name, "en": getattr(city, "name_en", None) or city.name}
    return out


def raw_codes(conn: Connection, city: CityInfo) -> set[str]:
    """Codes no page may show as such (matched as whole words, case-sensitive): state, event and
    action keys, roles, sources, urgencies, ratings, flags, class codes, admin-area slugs and the
    department codes. (Channels and request types are Chinese words: shown as they are.)"""
    codes = set(vocab.STATES) | set(vocab.EVENTS) | set(vocab.ACTION_LABELS) | set(ROLES)
    codes |= set(vocab.SOURCE_LABELS) | set(vocab.URGENCY_LABELS) | set(vocab.RATINGS) | set(vocab.FLAG_LABELS)
    codes |= set(catalog())
    codes |= {f"street-{c}" for (c,) in conn.execute(text(
        "SELECT code FROM admin_area WHERE city_id = :c AND level = 'street'"), {"c": city.id})}
    codes |= {c for (c,) in conn.execute(text("SELECT code FROM department WHERE city_id = :c"), {"c": city.id})}
    return codes
