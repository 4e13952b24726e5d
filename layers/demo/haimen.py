"""The demo city: Haimen (海门), from the real boundary (GCJ-02) and the real list of its 12 streets
and towns. Their inner borders are MADE UP (a Voronoi division around approximate town seats):
no open polygons of Haimen's streets exist. Communities are made-up blocks of the grid.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
from sqlalchemy import Connection, text

from citygrid import settings
from gis import crs as gcrs
from gis import grid as ggrid
from layers.core import city as lcity
from layers.core import users as lusers
from layers.core.errors import NotFound

SLUG = "haimen"

# Approximate seats of the 12 streets/towns (WGS-84 lon, lat), used only as Voronoi seeds for the
# made-up inner borders. Codes and names come from haimen_admin_units.csv.
SEATS = {
    "320614001": (121.172, 31.895),  # 海门街道 (old town centre)
    "320614002": (121.135, 31.830),  # 滨江街道
    "320614003": (121.255, 31.895),  # 三厂街道
    "320614101": (121.060, 31.900),  # 三星镇
    "320614102": (121.080, 31.775),  # 海永镇 (on the river side; its real land is on Chongming island)
    "320614106": (121.110, 31.965),  # 常乐镇
    "320614108": (121.205, 31.990),  # 悦来镇
    "320614111": (121.300, 32.060),  # 四甲镇
    "320614113": (121.355, 31.985),  # 余东镇
    "320614114": (121.420, 32.060),  # 正余镇
    "320614115": (121.480, 32.000),  # 包场镇
    "320614118": (121.000, 31.835),  # 临江镇
}

DEMO_USERS = [
    ("inspector1", "inspector", None, "320614001"),
    ("operator1", "operator", None, None),
    ("dept_roads", "department", "roads", None),
    ("dept_sanitation", "department", "sanitation", None),
    ("supervisor1", "supervisor", None, None),
    ("planner1", "planner", None, None),
    ("admin", "admin", None, None),
]


def data_dir() -> Path:
    return settings.paths().shared_data / "haimen"


def tokens_file() -> Path:
    return settings.paths().var_dir / "demo_tokens.json"


def load_haimen(conn: Connection, *, cell_size: float = 100.0, log=print) -> lcity.CityInfo:
    """Create the Haimen demo city with its made-up streets and its unit grid (idempotent)."""
    try:
        return lcity.get_city(conn, SLUG)
    except NotFound:
        pass
    boundary, src = lcity.read_boundary(data_dir() / "haimen_boundary_gcj02.geojson", "GCJ-02")
    with open(data_dir() / "haimen_admin_units.csv", encoding="utf-8") as f:
        units = list(csv.DictReader(f))
    district = next(u for u in units if u["deep"] == "2")
    streets = [u for u in units if u["deep"] == "3"]
    city = lcity.create_city(conn, slug=SLUG, name=district["ext_name"], name_en="Haimen",
                             adcode=district["id"], boundary=boundary, src_crs=src)
    log(f"city {city.name}: working CRS {city.working_crs}")
    working = lcity.city_boundary(conn, city)
    codes = [u["id"] for u in streets]
    seeds = np.array([SEATS[c] for c in codes])
    sx, sy = gcrs.transform_xy(seeds[:, 0], seeds[:, 1], "EPSG:4326", city.working_crs)
    parts = ggrid.voronoi_partition(working, np.column_stack([sx, sy]))
    lcity.add_areas(conn, city, "street", codes, [u["ext_name"] for u in streets], parts,
                    names_en=[u["pinyin"].title() for u in streets], made_up=True)
    grid_id = lcity.generate_grid(conn, city, size=cell_size)
    n = conn.execute(text("SELECT cell_count FROM grid WHERE id = :g"), {"g": grid_id}).scalar_one()
    log(f"unit grid: {n} cells of {cell_size:g} m")
    return city


def load_demo(conn: Connection, *, cell_size: float = 100.0, log=print) -> lcity.CityInfo:
    """Everything the demo shows, each part idempotent: the city and grid, its departments, a
    synthetic asset inventory, made-up key zones and a synthetic year of cases with a few injected
    bursts."""
    from layers.assets.imports import generate_synthetic_inventory
    from layers.cases import workflow
    from layers.demo.synthetic import load_synthetic_year
    from layers.field.zones import load_demo_zones

    city = load_haimen(conn, cell_size=cell_size, log=log)
    workflow.ensure_departments(conn, city)
    generate_synthetic_inventory(conn, city)  # labelled 【合成 synthetic】: Haimen has no open facility data
    load_demo_zones(conn, city)  # key zones for patrols, made up and labelled so
    load_synthetic_year(conn, city)  # a year of synthetic cases (source_ref 'synthetic:…'), once
    return city


def _demo_passwords(conn: Connection, known: dict[str, dict]) -> None:
    """Each demo user signs in at /login with a password: ``CITYGRID_AUTH_DEMO_PASSWORD`` if set (the
    same for all), else one made at random for this install (kept beside the token). A user whose
    password is not the one kept (changed on the admin page, or another database) gets it set again."""
    import secrets

    given = settings.auth().demo_password
    for name, entry in known.items():
        want = given.get_secret_value() if given is not None else entry.get("password") or secrets.token_urlsafe(9)
        if entry.get("password") == want and lusers.verify_password(conn, name, want) is not None:
            continue
        lusers.set_password(conn, name, want)
        entry["password"] = want


def ensure_demo_users(conn: Connection) -> dict[str, dict]:
    """One user per role; their tokens and passwords are kept in var/demo_tokens.json (mode 600) to be
    shown again."""
    path = tokens_file()
    known = json.loads(path.read_text()) if path.exists() else {}
    existing = {u.name for u in lusers.list_users(conn)}
    for name, role, dept, area in DEMO_USERS:
        entry = known.get(name)
        user = lusers.user_for_token(conn, entry["token"]) if entry else None
        if user is not None and user.name == name:
            continue  # the kept token still opens this database
        if name in existing:  # token lost, expired, revoked (or kept for another database): a new one
            _, token = lusers.issue_token(conn, name)
        else:
            _, token = lusers.add_user(conn, name, role, department=dept, area_code=area)
        known[name] = {"role": role, "token": token}
    _demo_passwords(conn, known)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(known, f, ensure_ascii=False, indent=1)
    return known


