"""Cities: boundary import, the admin hierarchy and the unit grid, written to PostGIS.

All writes of one import happen in the caller's transaction: a failure leaves nothing behind.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from sqlalchemy import Connection, text

from gis import crs as gcrs
from gis import grid as ggrid
from layers.core.errors import Conflict, InputError, NotFound
from layers.core.files import read_vector


@dataclass(frozen=True)
class CityInfo:
    id: int
    slug: str
    name: str
    name_en: str | None
    adcode: str
    srid: int

    @property
    def working_crs(self) -> str:
        return f"EPSG:{self.srid}"


def to_multipolygon(geom) -> MultiPolygon:
    if isinstance(geom, Polygon):
        return MultiPolygon([geom])
    if isinstance(geom, MultiPolygon):
        return geom
    # GeometryCollection from an intersection: keep its polygonal parts.
    parts = [g for g in shapely.get_parts(geom) if isinstance(g, Polygon | MultiPolygon)]
    polys = [p for g in parts for p in (g.geoms if isinstance(g, MultiPolygon) else [g])]
    return MultiPolygon(polys)


def _ewkb(geoms, srid: int) -> np.ndarray:
    return shapely.to_wkb(shapely.set_srid(np.asarray(geoms, dtype=object), srid), hex=True, include_srid=True)


def polygon_from_frame(df, what: str):
    """Union of the polygon features of a frame; InputError for anything else."""
    if len(df) == 0:
        raise InputError(f"the {what} file has no features")
    geoms = df.geometry.values
    types = set(shapely.get_type_id(geoms).tolist())
    if types - {3, 6}:  # 3 Polygon, 6 MultiPolygon
        names = sorted({shapely.get_geometry(g, 0).geom_type if g is not None else "empty" for g in geoms}
                       | {g.geom_type for g in geoms if g is not None})
        raise InputError(f"the {what} must be polygons; the file holds {', '.join(names)}")
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"the {what} geometry of feature {i} is invalid: {shapely.is_valid_reason(geoms[i])}")
    return shapely.union_all(geoms)


def check_lonlat_geometry(geom, src: str, what: str) -> None:
    if not gcrs.is_geographic(src) and src not in (gcrs.GCJ02, gcrs.BD09):
        return
    xy = shapely.get_coordinates(geom)
    reasons = gcrs.validate_lonlat(xy[:, 0], xy[:, 1])
    if reasons is not None:
        i = int(np.flatnonzero(reasons != None)[0])  # noqa: E711 - object array
        raise InputError(f"the {what} has a coordinate {tuple(xy[i])} that is not a valid lon/lat: {reasons[i]}")


def read_boundary(path: Path, crs: str | None) -> tuple[MultiPolygon, str]:
    """Read a boundary file; ``crs`` (e.g. 'GCJ-02') overrides the file's own. Returns (geom, crs)."""
    df, file_crs = read_vector(path)
    src = gcrs.parse_crs(crs) if crs else file_crs
    if src is None:
        raise InputError("the boundary file has no CRS: give one (EPSG:4326, EPSG:4490, GCJ-02, BD-09 …)")
    geom = polygon_from_frame(df, "boundary")
    check_lonlat_geometry(geom, src, "boundary")
    return to_multipolygon(geom), src


def get_city(conn: Connection, slug: str) -> CityInfo:
    row = conn.execute(
        text("SELECT id, slug, name, name_en, adcode, working_srid FROM city WHERE slug = :s"), {"s": slug}
    ).first()
    if row is None:
        raise NotFound(f"no city '{slug}'")
    return CityInfo(*row)


def list_cities(conn: Connection) -> list[CityInfo]:
    rows = conn.execute(text("SELECT id, slug, name, name_en, adcode, working_srid FROM city ORDER BY id"))
    return [CityInfo(*r) for r in rows]


def create_city(conn: Connection, *, slug: str, name: str, adcode: str, boundary, src_crs: str,
                name_en: str | None = None, working_epsg: int | None = None) -> CityInfo:
    """Store a city with its boundary transformed from ``src_crs`` to its working CRS."""
    if not (len(adcode) == 6 and adcode.isdigit()):
        raise InputError(f"adcode must be 6 digits (GB/T 2260), got '{adcode}'")
    if conn.execute(text("SELECT 1 FROM city WHERE slug = :s"), {"s": slug}).first():
        raise Conflict(f"a city '{slug}' exists already")
    src = gcrs.parse_crs(src_crs)
    wgs = gcrs.transform_geometry(boundary, src, "EPSG:4326")
    c = shapely.centroid(wgs)
    srid = working_epsg or gcrs.working_epsg_for(c.x, c.y)
    working = to_multipolygon(shapely.make_valid(gcrs.transform_geometry(boundary, src, f"EPSG:{srid}")))
    if working.is_empty or working.area <= 0:
        raise InputError("the boundary has no area")
    city_id = conn.execute(text("""
        INSERT INTO city (slug, name, name_en, adcode, working_srid, source_crs, boundary, area_m2)
        VALUES (:slug, :name, :name_en, :adcode, :srid, :src, ST_GeomFromEWKB(decode(:wkb, 'hex')), :area)
        RETURNING id"""), dict(slug=slug, name=name, name_en=name_en, adcode=adcode, srid=srid, src=src,
                               wkb=_ewkb([working], srid)[0], area=working.area)).scalar_one()
    conn.execute(text("""
        INSERT INTO admin_area (city_id, level, code, name, name_en, geom)
        SELECT id, 'district', adcode, name, name_en, boundary FROM city WHERE id = :id"""), {"id": city_id})
    return CityInfo(city_id, slug, name, name_en, adcode, srid)


def city_boundary(conn: Connection, city: CityInfo):
    wkb = conn.execute(text("SELECT ST_AsBinary(boundary) FROM city WHERE id = :id"), {"id": city.id}).scalar_one()
    return shapely.from_wkb(bytes(wkb))


def add_areas(conn: Connection, city: CityInfo, level: str, codes, names, geoms, *, parent_codes=None,
              names_en=None, made_up: bool = False) -> None:
    """Insert admin areas (streets or communities) given in the working CRS."""
    n = len(codes)
    parent_codes = parent_codes if parent_codes is not None else [c[:6] if level == "street" else c[:9]
                                                                  for c in codes]
    names_en = names_en if names_en is not None else [None] * n
    wkbs = _ewkb([to_multipolygon(g) for g in geoms], city.srid)
    conn.execute(text("""
        INSERT INTO admin_area (city_id, level, code, name, name_en, parent_id, made_up, geom)
        SELECT :city, :level, :code, :name, :name_en,
               (SELECT id FROM admin_area WHERE city_id = :city AND code = :parent),
               :made_up, ST_GeomFromEWKB(decode(:wkb, 'hex'))"""),
        [dict(city=city.id, level=level, code=codes[i], name=names[i], name_en=names_en[i],
              parent=parent_codes[i], made_up=made_up, wkb=wkbs[i]) for i in range(n)])


def _areas(conn: Connection, city: CityInfo, level: str):
    rows = conn.execute(text("""
        SELECT id, code, ST_AsBinary(geom) FROM admin_area WHERE city_id = :c AND level = :l ORDER BY code"""),
        {"c": city.id, "l": level}).all()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    codes = np.array([r[1] for r in rows], dtype=object)
    geoms = shapely.from_wkb([bytes(r[2]) for r in rows]) if rows else np.array([], dtype=object)
    return ids, codes, geoms


def _copy_cells(conn: Connection, grid_id: int, srid: int, codes, cols, rows, partial, area_ids, geoms) -> None:
    """COPY the cells in one stream (fast for 10^5 cells)."""
    wkbs = _ewkb([to_multipolygon(g) for g in geoms], srid)
    areas = shapely.area(geoms).tolist()
    buf = io.StringIO()
    for i in range(len(codes)):
        col = "\\N" if cols is None else str(int(cols[i]))
        row = "\\N" if rows is None else str(int(rows[i]))
        area_id = "\\N" if area_ids[i] < 0 else str(int(area_ids[i]))
        buf.write(f"{grid_id}\t{codes[i]}\t{col}\t{row}\t{'t' if partial[i] else 'f'}\t{area_id}\t"
                  f"{areas[i]!r}\t{wkbs[i]}\n")
    raw = conn.connection.driver_connection
    with raw.cursor() as cur:
        with cur.copy('COPY grid_cell (grid_id, code, col, "row", partial, area_id, area_m2, geom) '
                      "FROM STDIN") as cp:
            cp.write(buf.getvalue())


def _new_grid(conn: Connection, city: CityInfo, *, name: str, kind: str, cell_size: float | None,
              source: str | None, activate: bool) -> int:
    if activate:
        conn.execute(text("UPDATE grid SET active = false, valid_to = current_date "
                          "WHERE city_id = :c AND active"), {"c": city.id})
    return conn.execute(text("""
        INSERT INTO grid (city_id, name, kind, cell_size, srid, active, source)
        VALUES (:c, :name, :kind, :size, :srid, :active, :source) RETURNING id"""),
        dict(c=city.id, name=name, kind=kind, size=cell_size, srid=city.srid, active=activate,
             source=source)).scalar_one()


def generate_grid(conn: Connection, city: CityInfo, *, size: float = 100.0, activate: bool = True,
                  max_cells_per_community: int = 999) -> int:
    """Generate the regular unit grid over the city, code its cells, and store it. Returns the grid id.

    Cells are filed under the community (else street) whose polygon holds their representative
    point. Where a street has no community polygons, its cells are grouped into compact blocks of
    at most 999 cells that stand in as made-up communities (the 3-digit sequence of the 15-digit code
    allows no more), so that every cell gets a 15-digit code.
    """
    if not (1.0 <= size <= 10_000.0):
        raise InputError(f"cell size must be between 1 and 10000 m, got {size}")
    boundary = city_boundary(conn, city)
    cells = ggrid.generate_regular_grid(boundary, size)
    n = len(cells.cols)
    if n == 0:
        raise InputError("the grid over this boundary is empty")
    reps = shapely.point_on_surface(cells.geoms)

    street_ids, street_codes, street_geoms = _areas(conn, city, "street")
    if len(street_ids) == 0:  # no streets: one made-up street covering the city
        add_areas(conn, city, "street", [city.adcode + "001"], [city.name], [boundary], made_up=True)
        street_ids, street_codes, street_geoms = _areas(conn, city, "street")
    street_of = ggrid.assign_to_areas(reps, street_geoms, max_distance=None)

    comm_ids, comm_codes, comm_geoms = _areas(conn, city, "community")
    comm_of = ggrid.assign_to_areas(reps, comm_geoms) if len(comm_ids) else np.full(n, -1)
    # Streets without communities get made-up blocks as communities.
    needs = sorted(set(street_of[comm_of < 0].tolist()))
    if needs:
        new_codes, new_names, new_geoms, members = [], [], [], []
        taken = set(comm_codes.tolist())
        for s in needs:
            sel = np.flatnonzero((street_of == s) & (comm_of < 0))
            blocks = ggrid.split_cells_into_blocks(cells.cols[sel], cells.rows[sel],
                                                   max_cells=max_cells_per_community)
            seq = 1
            for b in np.unique(blocks):
                while f"{street_codes[s]}{seq:03d}" in taken:
                    seq += 1
                code = f"{street_codes[s]}{seq:03d}"
                taken.add(code)
                member = sel[blocks == b]
                new_codes.append(code)
                new_names.append(f"网格片区{seq:03d} (made up)")
                new_geoms.append(shapely.coverage_union_all(cells.geoms[member]))
                members.append(member)
                seq += 1
        add_areas(conn, city, "community", new_codes, new_names, new_geoms, made_up=True)
        comm_ids, comm_codes, comm_geoms = _areas(conn, city, "community")
        index = {c: i for i, c in enumerate(comm_codes.tolist())}
        for code, member in zip(new_codes, members, strict=True):
            comm_of[member] = index[code]

    codes = ggrid.assign_codes(np.asarray(comm_codes[comm_of], dtype=object), cells.rows, cells.cols)
    grid_id = _new_grid(conn, city, name=f"{city.name} {size:g} m 单元网格", kind="regular", cell_size=size,
                        source="generated", activate=activate)
    _copy_cells(conn, grid_id, city.srid, codes, cells.cols, cells.rows, cells.partial,
                comm_ids[comm_of], cells.geoms)
    conn.execute(text("UPDATE grid SET cell_count = :n WHERE id = :g"), {"n": n, "g": grid_id})
    return grid_id


def import_grid(conn: Connection, city: CityInfo, path: Path, *, code_field: str = "code",
                crs: str | None = None, name: str | None = None, activate: bool = False) -> int:
    """Import an official (irregular) grid: polygons with their 14- or 15-digit codes."""
    df, file_crs = read_vector(path)
    src = gcrs.parse_crs(crs) if crs else file_crs
    if src is None:
        raise InputError("the grid file has no CRS: give one")
    if code_field not in df.columns:
        raise InputError(f"the grid file has no field '{code_field}'; fields: {', '.join(map(str, df.columns[:-1]))}")
    codes = df[code_field].astype(str).str.strip().to_numpy(dtype=object)
    for i, c in enumerate(codes):
        try:
            ggrid.validate_cell_code(c)
        except ValueError as e:
            raise InputError(f"feature {i}: {e}") from None
    uniq, counts = np.unique(codes, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"cell code '{uniq[counts > 1][0]}' occurs {counts[counts > 1][0]} times")
    geoms = df.geometry.values
    polygon_from_frame(df, "grid")  # type and validity checks
    check_lonlat_geometry(shapely.GeometryCollection(list(geoms)), src, "grid")
    geoms = np.asarray(gcrs.transform_geometry(np.asarray(geoms, dtype=object), src, city.working_crs))
    reps = shapely.point_on_surface(geoms)
    comm_ids, _, comm_geoms = _areas(conn, city, "community")
    area_ids = np.full(len(geoms), -1, dtype=np.int64)
    if len(comm_ids):
        idx = ggrid.assign_to_areas(reps, comm_geoms)
        area_ids[idx >= 0] = comm_ids[idx[idx >= 0]]
    grid_id = _new_grid(conn, city, name=name or Path(path).stem, kind="imported", cell_size=None,
                        source=Path(path).name, activate=activate)
    _copy_cells(conn, grid_id, city.srid, codes, None, None, np.zeros(len(geoms), bool), area_ids, geoms)
    conn.execute(text("UPDATE grid SET cell_count = :n WHERE id = :g"), {"n": len(geoms), "g": grid_id})
    return grid_id
