"""The catalog of published layers: what can be exported, served as OGC API – Features and as vector
tiles, with its fields, geometry type, the roles that may read it and its public form.

Other areas register their layers with one entry each, e.g. in their own module::

    from layers.publish.catalog import Field, Layer, register
    register(Layer(
        name="cases", title="案卷", title_en="Cases", theme="cases", geometry_type="Point",
        sql="SELECT c.id AS fid, c.code, c.class_code, c.status, c.created_at, c.cell_code, c.geom "
            "FROM case_file c WHERE c.city_id = :city_id",
        fields=(Field("code", "str", "案卷号 Case number"), Field("class_code", "str", "类别 Class"),
                Field("status", "str", "状态 Status"), Field("created_at", "datetime", "立案时间 Created"),
                Field("cell_code", "str", "单元网格 Cell", public=False)),
        roles=frozenset({"operator", "supervisor", "planner", "admin"}), public=True,
        time_field="created_at", class_field="class_code", area_field="cell_code", version_key="cases"))

Where: put the entries in a module ``layers/publish/<area>_layers.py`` (e.g. ``layers/publish/cases_layers.py``); the
catalog imports every such module the first time it is used, so no shared file needs editing.

Rules of an entry:
* ``sql`` is a SELECT that returns a unique integer ``fid``, the declared fields and ``geom`` in the
  city's working CRS; it may use ``:city_id`` (and nothing else from the caller). It must never select
  personal data (names, phones, addresses of people): the export and tile code only ever reads the
  declared fields.
* ``roles`` read the full form; anyone (no token) reads the public form — only the fields with
  ``public=True`` — when ``public`` is set. Other callers get 401/403.
* ``time_field``, ``class_field`` (a code column; the filter matches its prefix) and ``area_field``
  (a code column whose prefix is an admin code: cell codes, 6/9/12-digit area codes) enable the export
  filters. ``version_key`` names a ``layer_version`` row bumped by a trigger when the data change; the
  tile cache uses it (without one, tiles are not cached).
* ``refresh`` (optional, for content computed in Python): ``refresh(conn, city)`` brings the table
  its ``sql`` selects up to date; :func:`ready` calls it, and whoever reads rows calls ``ready``
  after its role check (metadata and refused callers never pay for it).
* ``tile_sql`` (optional): a SELECT of ``fid`` and ``geom`` in EPSG:3857 (a cached copy with a GiST
  index) used by the vector tiles for the bounding-box prefilter; it may use ``:city_id``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection, text

from layers.core import publication
from layers.core.city import CityInfo
from layers.core.errors import InputError, NotFound
from layers.core.models import ROLES

FIELD_TYPES = ("str", "int", "float", "bool", "date", "datetime")
STAFF = frozenset(ROLES)


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    title: str = ""
    public: bool = True

    def __post_init__(self):
        if self.type not in FIELD_TYPES:
            raise ValueError(f"field {self.name}: type must be one of {FIELD_TYPES}")
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", self.name):
            raise ValueError(f"field name {self.name!r} must be a lower-case identifier")


@dataclass(frozen=True)
class Layer:
    name: str
    title: str
    title_en: str
    theme: str
    geometry_type: str  # Point, LineString, MultiPolygon, Geometry (mixed) …
    sql: str
    fields: tuple[Field, ...]
    roles: frozenset = STAFF
    public: bool = False
    time_field: str | None = None
    class_field: str | None = None
    area_field: str | None = None
    version_key: str | None = None
    tile_sql: str | None = None
    description: str = ""
    params: dict = field(default_factory=dict)  # extra fixed parameters of ``sql`` (dynamic layers)
    refresh: Callable[[Connection, CityInfo], None] | None = None  # computed layers: brings the table
    # that ``sql`` reads up to date; called by :func:`get_layer` before every read

    def fields_for(self, form: str) -> tuple[Field, ...]:
        return self.fields if form == "full" else tuple(f for f in self.fields if f.public)

    def access(self, role: str | None) -> str | None:
        """'full', 'public' or None (may not read) for a caller's role (None = anonymous)."""
        if role is not None and role in self.roles:
            return "full"
        if self.public:
            return "public"
        return None

    def describe(self, form: str) -> dict:
        return {"name": self.name, "title": self.title, "title_en": self.title_en, "theme": self.theme,
                "geometry_type": self.geometry_type, "description": self.description,
                "roles": sorted(self.roles), "public": self.public, "form": form,
                "fields": [{"name": f.name, "type": f.type, "title": f.title} for f in self.fields_for(form)],
                "filters": {"time": self.time_field, "class": self.class_field, "area": self.area_field}}


_REGISTRY: dict[str, Layer] = {}


def register(layer: Layer) -> Layer:
    """Add (or replace) a published layer. Names are lower-case identifiers, unique in the catalog."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,59}", layer.name):
        raise ValueError(f"layer name {layer.name!r} must be a lower-case identifier of ≤ 60 characters")
    names = {f.name for f in layer.fields}
    for opt in (layer.time_field, layer.class_field, layer.area_field):
        if opt is not None and opt not in names:
            raise ValueError(f"layer {layer.name}: filter field {opt} is not a declared field")
    publication.check_public_layer(layer)  # no case points or free text in a public form
    _REGISTRY[layer.name] = layer
    return layer


# --- built-in layers ------------------------------------------------------------------------------

_CELL_FIELDS = (
    Field("code", "str", "网格编码 Cell code"), Field("col", "int", "列 Column"), Field("row", "int", "行 Row"),
    Field("partial", "bool", "边界截断 Clipped by the boundary"), Field("area_m2", "float", "面积 Area (m²)"),
    Field("responsible", "str", "责任单位 Responsible unit"),
    Field("community_code", "str", "社区编码 Community code"), Field("community", "str", "社区 Community"),
    Field("street_code", "str", "街道编码 Street code"), Field("street", "str", "街道 Street/town"),
)

register(Layer(
    name="grid_cells", title="单元网格", title_en="Unit grid cells", theme="base", geometry_type="MultiPolygon",
    sql="""SELECT c.id AS fid, c.code, c.col, c."row" AS "row", c.partial, c.area_m2, c.responsible,
                  com.code AS community_code, com.name AS community, st.code AS street_code, st.name AS street,
                  c.geom
           FROM grid_cell c JOIN grid g ON g.id = c.grid_id AND g.active AND g.city_id = :city_id
           LEFT JOIN admin_area com ON com.id = c.area_id LEFT JOIN admin_area st ON st.id = com.parent_id""",
    fields=_CELL_FIELDS, public=True, area_field="code", version_key="grid",
    tile_sql="""SELECT t.cell_id AS fid, t.geom FROM grid_cell_3857 t
                JOIN grid g ON g.id = t.grid_id AND g.active AND g.city_id = :city_id""",
    description="万米单元网格 of the active grid (GB/T 30428.1); 15-digit codes"))

register(Layer(
    name="admin_areas", title="行政区划", title_en="Administrative areas", theme="base",
    geometry_type="MultiPolygon",
    sql="""SELECT a.id AS fid, a.level, a.code, a.name, a.name_en, a.made_up, a.geom
           FROM admin_area a WHERE a.city_id = :city_id""",
    fields=(Field("level", "str", "层级 Level (district/street/community)"), Field("code", "str", "区划代码 Code"),
            Field("name", "str", "名称 Name"), Field("name_en", "str", "English name"),
            Field("made_up", "bool", "边界为推算 Border drawn by citygrid")),
    public=True, class_field="level", area_field="code", version_key="admin_areas",
    description="区县、街道/镇、社区 district, streets/towns and communities"))

_ASSET_FIELDS = (
    Field("code", "str", "部件编码 Object code (ObjID)"), Field("class_code", "str", "小类代码 Small class"),
    Field("class_name", "str", "小类 Class name"), Field("big_code", "str", "大类代码 Big class"),
    Field("name", "str", "名称 Name (ObjName)"), Field("status", "str", "状态 State (ObjState)"),
    Field("dept_code1", "str", "主管部门 Department in charge", public=False),
    Field("dept_code2", "str", "权属单位 Owner", public=False),
    Field("dept_code3", "str", "养护单位 Maintainer", public=False),
    Field("cell_code", "str", "单元网格 Cell (BGID)"), Field("length_m", "float", "长度 Length (m)"),
    Field("area_m2", "float", "面积 Area (m²)"), Field("installed_on", "date", "初始日期 Installed"),
    Field("updated_at", "datetime", "变更日期 Changed"), Field("source", "str", "数据来源 Data source"),
    Field("synthetic", "bool", "合成数据 Synthetic demo data"),
)

_ASSET_SQL = """SELECT a.id AS fid, a.code, a.class_code,
        (SELECT k.name FROM asset_class k WHERE k.kind = 'component' AND k.code = a.class_code
           AND (k.city_id = a.city_id OR k.city_id IS NULL) ORDER BY k.city_id NULLS LAST LIMIT 1) AS class_name,
        left(a.class_code, 2) AS big_code, a.name, a.status, a.dept_code1, a.dept_code2, a.dept_code3,
        a.cell_code, a.length_m, a.area_m2, a.installed_on, a.updated_at, a.source, a.synthetic, a.geom
    FROM asset a WHERE a.city_id = :city_id AND a.retired_at IS NULL"""

register(Layer(
    name="assets", title="城市部件", title_en="Urban assets (components)", theme="assets",
    geometry_type="Geometry", sql=_ASSET_SQL, fields=_ASSET_FIELDS, public=True,
    time_field="updated_at", class_field="class_code", area_field="cell_code", version_key="assets",
    description="管理部件 (GB/T 30428.2) in service; points, lines and polygons"))


def _asset_class_layer(conn: Connection, city: CityInfo, code: str) -> Layer:
    from layers.assets import registry as la

    cls = la.classes(conn, city, "component")
    if code not in cls or len(code) != 4:
        raise NotFound(f"no layer 'asset_{code}': {code} is not a small class of the catalog")
    c = cls[code]
    gtype = {"point": "Point", "line": "LineString", "polygon": "Polygon"}.get(c["geom_kind"], "Geometry")
    return Layer(name=f"asset_{code}", title=f"部件：{c['name']}", title_en=f"Assets: {c['name_en'] or code}",
                 theme="assets", geometry_type=gtype, sql=_ASSET_SQL + " AND a.class_code = :class_code",
                 fields=_ASSET_FIELDS, public=True, time_field="updated_at", class_field="class_code",
                 area_field="cell_code", version_key="assets", params={"class_code": code},
                 description=f"{c['code']} {c['name']}" + (" (official code)" if c["official"] else ""))


_discovered = False


def discover() -> None:
    """Import the other areas' ``layers/publish/*_layers.py`` modules once (they call :func:`register`)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    import importlib
    import logging
    import pkgutil

    import layers.publish
    for info in pkgutil.iter_modules(layers.publish.__path__):
        if info.name.endswith("_layers"):
            try:
                importlib.import_module(f"layers.publish.{info.name}")
            except Exception:  # one area's broken module must not take the catalog down
                logging.getLogger("citygrid").exception("cannot load published layers of layers.publish.%s", info.name)


def ready(conn: Connection, city: CityInfo, layer: Layer) -> Layer:
    """The layer with its rows up to date, for a caller about to read them (after its role check):
    a computed layer's ``refresh`` runs here, never for metadata or a refused caller."""
    if layer.refresh is not None:
        layer.refresh(conn, city)
    return layer


def get_layer(conn: Connection, city: CityInfo, name: str) -> Layer:
    discover()
    name = str(name or "")
    if name in _REGISTRY:
        return _REGISTRY[name]
    m = re.fullmatch(r"asset_([0-9]{4})", name)
    if m:
        return _asset_class_layer(conn, city, m.group(1))
    raise NotFound(f"no published layer '{name[:60]}': see GET /api/v1/layers")


def list_layers(conn: Connection, city: CityInfo, role: str | None) -> list[dict]:
    """The layers the caller may read (their full or public form), with per-class asset layers."""
    discover()
    out = []
    for layer in _REGISTRY.values():
        form = layer.access(role)
        if form:
            out.append(layer.describe(form))
    codes = conn.execute(text("""SELECT class_code, count(*) FROM asset WHERE city_id = :c AND retired_at IS NULL
                                 GROUP BY class_code ORDER BY class_code"""), {"c": city.id}).all()
    for code, n in codes:
        try:
            layer = _asset_class_layer(conn, city, code)
        except NotFound:
            continue
        form = layer.access(role)
        if form:
            out.append({**layer.describe(form), "count": n})
    return out


def themes() -> dict[str, list[str]]:
    discover()
    out: dict[str, list[str]] = {}
    for layer in _REGISTRY.values():
        out.setdefault(layer.theme, []).append(layer.name)
    return out


# --- filters and the query ------------------------------------------------------------------------

@dataclass
class Filters:
    bbox_working: object | None = None  # a shapely polygon in the working CRS
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    class_code: str | None = None
    area_code: str | None = None


def parse_time(value: str | None, what: str) -> dt.datetime | None:
    if value is None or value == "":
        return None
    try:
        t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{what} '{value[:40]}' is not an ISO date or date-time (e.g. 2026-01-31)") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def parse_code(value: str | None, what: str) -> str | None:
    if value is None or value == "":
        return None
    v = value.strip()
    if not re.fullmatch(r"[0-9A-Za-z_]{1,20}", v):
        raise InputError(f"{what} '{v[:40]}' must be a code of letters and digits (e.g. 0101 or 320614001)")
    return v


def build_filters(city: CityInfo, *, bbox: str | None = None, bbox_crs: str = "EPSG:4326", since=None, until=None,
                  class_code=None, area=None) -> Filters:
    import numpy as np
    import shapely

    from gis import crs as gcrs

    f = Filters(since=parse_time(since, "since"), until=parse_time(until, "until"),
                class_code=parse_code(class_code, "class"), area_code=parse_code(area, "area"))
    if f.since and f.until and f.since >= f.until:
        raise InputError("since must be before until")
    if bbox:
        try:
            box = [float(v) for v in bbox.split(",")]
        except ValueError:
            raise InputError(f"bbox '{bbox[:60]}' is not four numbers minx,miny,maxx,maxy") from None
        if len(box) != 4 or not all(np.isfinite(box)):
            raise InputError("bbox needs four finite numbers minx,miny,maxx,maxy")
        minx, miny, maxx, maxy = box
        if not (minx < maxx and miny < maxy):
            raise InputError("bbox must be minx,miny,maxx,maxy with minx < maxx and miny < maxy")
        src = gcrs.parse_crs(bbox_crs)
        if gcrs.is_geographic(src):
            bad = gcrs.validate_lonlat(np.array([minx, maxx]), np.array([miny, maxy]))
            if bad is not None:
                raise InputError(f"bbox is not a valid lon/lat box: {next(b for b in bad if b)}")
        ring = shapely.segmentize(shapely.box(minx, miny, maxx, maxy), max(maxx - minx, maxy - miny) / 16)
        f.bbox_working = gcrs.transform_geometry(ring, src, city.working_crs)
    return f


def select(layer: Layer, form: str, city: CityInfo, filters: Filters | None = None, *, geom_sql: str = "s.geom",
           order: bool = True) -> tuple[str, dict, tuple[Field, ...]]:
    """SQL selecting fid, the form's fields and ``geom_sql`` AS geom from the layer, filtered."""
    import shapely

    fields = layer.fields_for(form)
    params = {"city_id": city.id, **layer.params}
    where = []
    f = filters or Filters()
    if f.bbox_working is not None:
        where.append("s.geom && ST_SetSRID(ST_GeomFromWKB(decode(:f_box, 'hex')), :f_srid) "
                     "AND ST_Intersects(s.geom, ST_SetSRID(ST_GeomFromWKB(decode(:f_box, 'hex')), :f_srid))")
        params.update(f_box=shapely.to_wkb(f.bbox_working, hex=True), f_srid=city.srid)
    for val, fld, op, key in ((f.since, layer.time_field, ">=", "f_since"), (f.until, layer.time_field, "<", "f_until")):
        if val is not None:
            if fld is None:
                raise InputError(f"layer {layer.name} has no time field: since/until do not apply")
            where.append(f's."{fld}" {op} :{key}')
            params[key] = val
    for val, fld, key, what in ((f.class_code, layer.class_field, "f_class", "class"),
                                (f.area_code, layer.area_field, "f_area", "area")):
        if val is not None:
            if fld is None:
                raise InputError(f"layer {layer.name} has no {what} field: the {what} filter does not apply")
            where.append(f's."{fld}" LIKE :{key}')
            params[key] = val + "%"
    cols = ", ".join(f's."{fl.name}"' for fl in fields)
    sql = f"SELECT s.fid, {cols}, {geom_sql} AS geom FROM ({layer.sql}) s"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if order:
        sql += " ORDER BY s.fid"
    return sql, params, fields


def layer_version(conn: Connection, layer: Layer) -> int | None:
    if layer.version_key is None:
        return None
    v = conn.execute(text("SELECT version FROM layer_version WHERE layer = :l"), {"l": layer.version_key}).scalar()
    return int(v or 0)
