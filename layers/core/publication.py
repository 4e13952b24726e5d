"""The publication policy: what each audience may see of a case, in one place.

Audiences are ``anonymous`` (no token: Open311, ``/api/v1/public``, public layers, notices) and the
staff roles. The policy is configuration (``data/publication_policy.json``):

* **anonymous** — per channel (``case_file.source``): ``text`` (class + cell centroid + state + the
  scrubbed description and the generalised address), ``summary`` (class + cell centroid + state) or
  ``none`` (not published). Default: hotline, inspector and other cases ``summary``; citizen and
  Open311 requests ``text``. Never a name, phone, ID number, e-mail or doorstep, never an exact
  position: the centroid of the case's unit-grid cell stands for it.
* **scrubbed_text_roles** (default inspector, planner) — the text with personal data replaced
  (:func:`scrub`) and the address generalised to its road or cell (:func:`generalise_address`);
  event notes scrubbed; never the caller's contact.
* **full_text_roles** (default operator, department, supervisor, admin) — the text as recorded.

:func:`scrub` replaces Chinese mobile numbers (with or without +86, grouped or not), landlines (with
or without area code, with an extension), 18-digit ID numbers (X check digit too), e-mail
addresses, plate numbers (苏F12345, 苏F·D12345), house/building/room numbers and names introduced as
such (联系人/姓名/我叫 …, 张先生); the case's own contact (name, phone, openid) is removed wherever
it occurs. A bare name in running text is not recognised (a general name finder was tried: jieba's
``nr`` tags take 井盖, 马路边 and 陈旧 for names). Case numbers (22 digits), cell codes (15), asset
codes (16), dates and times are kept. Full-width digits and letters are matched like ASCII ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from layers.core.models import ROLES

POLICY_FILE = Path(__file__).resolve().parent / "data" / "publication_policy.json"
CHANNEL_FORMS = ("text", "summary", "none")
ADDRESS_FORMS = ("road", "cell", "none")
SOURCES = ("hotline", "inspector", "citizen", "open311", "other")
PHOTO_KINDS = ("report", "before", "after", "verification")


@dataclass(frozen=True)
class Policy:
    channels: Mapping[str, str]
    address: str
    full_text_roles: frozenset
    scrubbed_text_roles: frozenset
    lookup_photos: frozenset = frozenset()

    def channel(self, source: str | None) -> str:
        """'text', 'summary' or 'none' for anonymous output of a case from ``source``."""
        return self.channels.get(source or "other", "none")

    def published_sources(self) -> list[str]:
        """The channels whose cases anonymous output shows at all."""
        return sorted(s for s in SOURCES if self.channel(s) != "none")


def load_policy(path: Path = POLICY_FILE) -> Policy:
    cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    channels = dict(cfg.get("channels") or {})
    bad = {k: v for k, v in channels.items() if k not in SOURCES or v not in CHANNEL_FORMS}
    if bad:
        raise ValueError(f"{path}: channels must map {SOURCES} to one of {CHANNEL_FORMS}, got {bad}")
    address = cfg.get("address", "road")
    if address not in ADDRESS_FORMS:
        raise ValueError(f"{path}: address must be one of {ADDRESS_FORMS}")
    full, scrubbed = frozenset(cfg["full_text_roles"]), frozenset(cfg["scrubbed_text_roles"])
    if (full | scrubbed) != set(ROLES) or full & scrubbed:
        raise ValueError(f"{path}: every role {ROLES} must be in exactly one of full_text_roles, scrubbed_text_roles")
    photos = frozenset(cfg.get("lookup_photos") or ())
    if not photos <= set(PHOTO_KINDS):
        raise ValueError(f"{path}: lookup_photos must be among {PHOTO_KINDS}, got {sorted(photos)}")
    return Policy(channels, address, full, scrubbed, photos)


@lru_cache
def policy() -> Policy:
    return load_policy()


def lookup_photo_kinds(source: str | None) -> frozenset:
    """The photo kinds of a case (:data:`PHOTO_KINDS`) the citizen who reported it sees through the
    look-up (case number + query code): the policy's ``lookup_photos`` when the case's channel is
    published at all, else none. Anonymous output (no query code) never shows photos."""
    return frozenset() if policy().channel(source) == "none" else policy().lookup_photos


def text_form(role: str | None) -> str:
    """'full' or 'scrubbed': how the free text of cases reaches a caller of ``role`` (None: anonymous)."""
    return "full" if role in policy().full_text_roles else "scrubbed"


# -- the scrubber ----------------------------------------------------------------------------------

# Full-width digits, letters and a few signs → ASCII, one character for one (positions are kept, so
# matches found in the folded copy are cut out of the original).
_FOLD = str.maketrans({**{chr(0xFF10 + i): chr(0x30 + i) for i in range(10)},
                       **{chr(0xFF21 + i): chr(0x41 + i) for i in range(26)},
                       **{chr(0xFF41 + i): chr(0x61 + i) for i in range(26)},
                       "＋": "+", "－": "-", "＠": "@", "．": ".", "（": "(", "）": ")", "\u3000": " ",
                       "—": "-", "–": "-"})

PHONE, ID_NUMBER, EMAIL, PLATE, NAME, DOORSTEP = "[电话]", "[证件号]", "[邮箱]", "[车牌]", "[姓名]", "[门牌]"
_PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
_DATE8 = re.compile(r"(?:19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])")
_COMPOUND = "欧阳|司马|诸葛|上官|东方|皇甫|慕容|令狐|夏侯|尉迟|公孙|长孙|宇文|司徒|端木|南宫|独孤|西门"
_UNITS = "元米平吨个次人户辆天年月日号岁件处只棵根条块台层楼mMkK%"

_RULES: list[tuple[re.Pattern, str]] = [
    # e-mail first: its digits must not be taken for a phone
    (re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"), EMAIL),
    # 18-digit resident ID (any 17 digits + digit or X; a 22-digit case number is one longer run)
    (re.compile(r"(?<![0-9A-Za-z])[0-9]{6}\s?[0-9]{8}\s?[0-9]{3}[0-9Xx](?![0-9A-Za-z])"), ID_NUMBER),
    # mobile: 1[3-9]x xxxx xxxx, optional +86 / 0086 / 86, blanks or dashes between the groups
    (re.compile(r"(?<![0-9])(?:(?:\+|00)?86[\s-]?)?1[3-9][0-9](?:[\s-]?[0-9]{4}){2}(?![0-9])"), PHONE),
    # landline with area code: 0513-82123456, (0513)82123456, 051382123456, 010 1234 5678, ext.
    (re.compile(r"(?<![0-9])(?:\(0[0-9]{2,3}\)|0[0-9]{2,3})[\s-]?[1-9][0-9]{2,3}[\s-]?[0-9]{4}"
                r"(?:\s?(?:转|-|ext\.?)\s?[0-9]{1,6})?(?![0-9])"), PHONE),
    # plate: 苏F12345, 苏F·D12345 (new energy), 苏F1234挂; at least one digit after the letter
    (re.compile(rf"[{_PROVINCES}][A-Za-z]\s?[·•・.\-]?\s?(?=[A-Za-z0-9]{{0,5}}[0-9])"
                r"(?:[A-Za-z0-9]{5,6}|[A-Za-z0-9]{4}[挂学警港澳领试超])(?![A-Za-z0-9])"), PLATE),
    # house, building, unit, floor and room numbers: 123号5幢2单元301室, 8号楼, 12-3号 (not 3号线, not 12月3号)
    (re.compile(r"(?<![0-9月])[0-9]{1,5}(?:-[0-9]{1,5})?\s*(?:号楼|号院|号(?!线)|幢|栋|座|单元|室|层|楼)"
                r"(?:\s*[0-9]{1,5}(?:-[0-9]{1,5})?\s*(?:号楼|号院|号(?!线)|幢|栋|座|单元|室|层|楼))*"), DOORSTEP),
    # names said as names (only the name, in the group ``pii``, is replaced)
    (re.compile(rf"(?:联系人|姓名|名字叫|我叫|名叫|署名|来电人|举报人|投诉人|报告人)[:：\s]*(?P<pii>(?:{_COMPOUND})[\u4e00-\u9fff]{{1,2}}|[\u4e00-\u9fff]{{2,3}})"), NAME),
    (re.compile(r"(?<!\[姓)[\u4e00-\u9fff](?=先生|女士|小姐)"), "某"),
]
# local landline without area code, 7–8 digits starting 2–8: 82123456, 8212-3456 (dates kept)
_LOCAL = re.compile(rf"(?<![0-9A-Za-z.\-:/])[2-8][0-9]{{2,3}}-?[0-9]{{4}}(?![0-9.:/]|[{_UNITS}])")


def _known(values: Iterable[str | None]) -> list[str]:
    """A case's own contact details as strings to cut out (longest first), names also without blanks."""
    out: set[str] = set()
    for v in values:
        v = (v or "").strip()
        if not v:
            continue
        for s in (v, re.sub(r"\s+", "", v), *v.split()):
            if len(s) >= 2:
                out.add(s)
    return sorted(out, key=len, reverse=True)


def scrub(value: str | None, known: Iterable[str | None] = ()) -> str | None:
    """``value`` with personal data replaced by [电话], [证件号], [邮箱], [车牌], [门牌], [姓名]."""
    if value is None:
        return None
    s = str(value)
    for k in _known(known):
        s = s.replace(k, EMAIL if "@" in k else PHONE if re.fullmatch(r"[0-9+\-\s()]+", k) else NAME)
    for rx, repl in _RULES:
        folded = s.translate(_FOLD)
        s = _replace(s, folded, rx, repl)
    folded = s.translate(_FOLD)
    parts, last = [], 0
    for m in _LOCAL.finditer(folded):
        digits = m.group().replace("-", "")
        if _DATE8.fullmatch(digits):
            continue
        parts += [s[last:m.start()], PHONE]
        last = m.end()
    return "".join(parts) + s[last:]


def _replace(s: str, folded: str, rx: re.Pattern, repl: str) -> str:
    parts, last = [], 0
    group = "pii" if "pii" in rx.groupindex else 0
    for m in rx.finditer(folded):
        start, end = m.span(group)
        parts += [s[last:start], repl]
        last = end
    return "".join(parts) + s[last:] if parts else s


_ROAD = re.compile(r"[\u4e00-\u9fff]*?(?:大道|大街|公路|路|街(?!道|办)|巷|弄|胡同)")
_AREA = re.compile(r"[\u4e00-\u9fff]*?(?:社区|村|镇|乡|街道)")


def generalise_address(address: str | None, cell_code: str | None = None, known: Iterable[str | None] = (),
                       mode: str | None = None) -> str | None:
    """The address as far as it may be published: its road ("人民中路", no house, building or room
    number), else its village/community/town, else the cell code ("单元网格 3206…"), else nothing.
    ``mode`` 'cell' gives the cell code only, 'none' nothing (default: the policy's ``address``)."""
    mode = mode or policy().address
    cell = f"单元网格 {cell_code}" if cell_code else None
    if mode == "none":
        return None
    if mode == "cell" or not address:
        return cell
    s = scrub(address, known)
    for rx in (_ROAD, _AREA):
        best = None
        for run in re.finditer(r"[\u4e00-\u9fff]+", s):  # within one run of Chinese characters
            m = rx.match(run.group())
            if m:
                best = m.group()
                break
        if best:
            return best[-30:]
    return cell


# -- staff views -----------------------------------------------------------------------------------

TEXT_FIELDS = ("title", "description")


def staff_case(case: dict, role: str | None, known: Iterable[str | None] = ()) -> dict:
    """A case row (list, detail, worklist) as ``role`` may see it: unchanged for full-text roles;
    otherwise title and description scrubbed, the address generalised, event notes scrubbed and no
    contact. Adds ``text_form`` ('full' or 'scrubbed')."""
    if text_form(role) == "full":
        return {**case, "text_form": "full"}
    known = list(known)
    out = {**case, "text_form": "scrubbed"}
    out.pop("contact", None)
    for f in TEXT_FIELDS:
        if out.get(f) is not None:
            out[f] = scrub(out[f], known)
    if "address" in out:
        out["address"] = generalise_address(out["address"], out.get("cell_code"), known) if out["address"] else None
    if isinstance(out.get("events"), list):
        out["events"] = [{**e, "note": scrub(e.get("note"), known)} if e.get("note") else e for e in out["events"]]
    return out


def contacts(conn, case_ids: Iterable[int]) -> dict[int, list[str]]:
    """case id → its contact's name, phone and openid (to cut out of text; never output)."""
    from sqlalchemy import text

    ids = sorted({int(i) for i in case_ids if i is not None})
    if not ids:
        return {}
    rows = conn.execute(text("SELECT case_id, name, phone, openid FROM case_contact WHERE case_id = ANY(:ids)"),
                        {"ids": ids}).all()
    return {int(r[0]): [r[1], r[2], r[3]] for r in rows}


def staff_cases(conn, cases: list[dict], role: str | None) -> list[dict]:
    """:func:`staff_case` over a list (one query for the contacts, only for scrubbed-text roles)."""
    if text_form(role) == "full":
        return [staff_case(c, role) for c in cases]
    known = contacts(conn, [c.get("id") for c in cases])
    return [staff_case(c, role, known.get(c.get("id"), ())) for c in cases]


# -- anonymous output ------------------------------------------------------------------------------

#: Columns (of case_file ``c``) and joins that :func:`public_case` needs; the contact is read only to
#: be cut out of the text.
PUBLIC_COLUMNS = """c.source, c.description, c.address, c.cell_code,
    ST_X(ST_Transform(ST_Centroid(pub_cell.geom), 4326)) AS cell_lon,
    ST_Y(ST_Transform(ST_Centroid(pub_cell.geom), 4326)) AS cell_lat,
    pub_contact.name AS contact_name, pub_contact.phone AS contact_phone, pub_contact.openid AS contact_openid"""
PUBLIC_JOINS = """LEFT JOIN grid_cell pub_cell ON pub_cell.id = c.cell_id
    LEFT JOIN case_contact pub_contact ON pub_contact.case_id = c.id"""


def public_case(row: Mapping) -> dict | None:
    """What anonymous output may show of a case row (with :data:`PUBLIC_COLUMNS`), or None when its
    channel is not published: ``form`` ('text' or 'summary'), ``description`` and ``address`` (text
    channels only, scrubbed and generalised), ``lon``/``lat`` (the cell centroid, WGS-84, 6 decimals)
    and ``cell_code``."""
    form = policy().channel(row["source"])
    if form == "none":
        return None
    known = [row.get("contact_name"), row.get("contact_phone"), row.get("contact_openid")]
    lon, lat = row.get("cell_lon"), row.get("cell_lat")
    out = {"form": form, "cell_code": row.get("cell_code"), "description": None, "address": None,
           "lon": round(lon, 6) if lon is not None else None, "lat": round(lat, 6) if lat is not None else None}
    if form == "text":
        out["description"] = scrub(row.get("description"), known) or None
        out["address"] = generalise_address(row.get("address"), row.get("cell_code"), known)
    return out


_CASE_TABLES = re.compile(r"\bcase_(?:file|contact|event|media|verification)\b")
_TEXT_FIELDS = frozenset({"description", "address", "title", "note", "name", "phone", "openid", "contact"})


def check_public_layer(layer) -> None:
    """A catalog layer (layers/publish/catalog.py) drawn from case tables may be public only in a form with
    no case points and no free text: ValueError otherwise (raised when the layer is registered)."""
    if not layer.public or not _CASE_TABLES.search(layer.sql):
        return
    if "point" in layer.geometry_type.lower():
        raise ValueError(f"layer {layer.name}: a public layer of cases may not publish points (publish per cell)")
    bad = sorted(f.name for f in layer.fields if f.public and f.name in _TEXT_FIELDS)
    if bad:
        raise ValueError(f"layer {layer.name}: a public layer of cases may not publish {', '.join(bad)}")


#: What a notice may not contain, whoever it belongs to (an office phone or e-mail may be published).
_NOTICE_RULES = {ID_NUMBER: "身份证号 an ID number", PLATE: "车牌号 a plate number"}


def check_public_text(conn, city_id: int, *texts: str | None) -> None:
    """Refuse (InputError, nothing written) free text staff write for the public — notices — when it
    holds a caller's personal data: the name (2+ characters) or phone of any case contact of the city,
    an 18-digit ID number or a plate number. An office's own phone number or e-mail may be published,
    so those are not scrubbed from notices; a caller's phone is found by its digits."""
    from sqlalchemy import text as sql

    from layers.core.errors import InputError

    joined = "\n".join(t for t in texts if t)
    if not joined:
        return
    for rx, repl in _RULES:
        if repl in _NOTICE_RULES and rx.search(joined.translate(_FOLD)):
            raise InputError(f"公告含有个人信息 the notice contains {_NOTICE_RULES[repl]}: remove it before publishing")
    digits = re.sub(r"[^0-9]", "", joined.translate(_FOLD))
    hit = conn.execute(sql("""
        SELECT CASE WHEN length(k.name) >= 2 AND strpos(:t, k.name) > 0 THEN 'name' ELSE 'phone' END
        FROM case_contact k JOIN case_file c ON c.id = k.case_id
        WHERE c.city_id = :c AND ((length(k.name) >= 2 AND strpos(:t, k.name) > 0)
              OR (length(regexp_replace(k.phone, '[^0-9]', '', 'g')) >= 7
                  AND strpos(:d, regexp_replace(k.phone, '[^0-9]', '', 'g')) > 0))
        LIMIT 1"""), {"t": joined, "d": digits, "c": city_id}).scalar()
    if hit:
        what = "来电人姓名 a caller's name" if hit == "name" else "来电人电话 a caller's phone number"
        raise InputError(f"公告含有个人信息 the notice contains {what}: remove it before publishing")


__all__ = ["Policy", "policy", "load_policy", "text_form", "scrub", "generalise_address", "staff_case",
           "staff_cases", "contacts", "public_case", "check_public_text", "check_public_layer", "PUBLIC_COLUMNS", "PUBLIC_JOINS"]
