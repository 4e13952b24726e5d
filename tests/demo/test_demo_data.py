"""The demo data is consistent, checked by PostGIS: every synthetic case lies inside the city, in the
grid cell it names, in the area of the department it is assigned to (a street office: its street; a
line department: the city); its class is in the catalog; the departments are one list (no duplicate
names, the configured ones and one office per street)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import text

from layers.cases.classes import catalog
from layers.cases.workflow import department_config
from layers.demo import synthetic


@pytest.fixture(scope="module")
def demo(engine, haimen):
    """Six weeks of the synthetic year written into the test city (committed once: a session's tests
    assume no empty tables; the cases are marked by their source_ref)."""
    with engine.begin() as conn:
        has = conn.execute(text("SELECT count(*) FROM case_file WHERE city_id = :c AND source_ref LIKE 'synthetic:%'"),
                           {"c": haimen.id}).scalar()
        if not has:
            n = synthetic.haimen_synthetic_year(conn, haimen, year_end=dt.date(2026, 11, 27), days=42, per_day=60,
                                                bursts=3, log=None)
            assert n > 2000
    return haimen


def test_every_demo_case_is_inside_the_city_in_its_cell(engine, demo):
    with engine.connect() as c:
        row = c.execute(text("""
            SELECT count(*) AS n,
                   count(*) FILTER (WHERE f.location IS NULL) AS no_location,
                   count(*) FILTER (WHERE NOT ST_Covers(city.boundary, f.location)) AS outside_city,
                   count(*) FILTER (WHERE f.cell_id IS NULL) AS no_cell,
                   count(*) FILTER (WHERE gc.id IS NULL OR NOT ST_Covers(gc.geom, f.location)) AS not_in_its_cell,
                   count(*) FILTER (WHERE gc.code IS DISTINCT FROM f.cell_code) AS wrong_code
            FROM case_file f JOIN city ON city.id = f.city_id
            LEFT JOIN grid_cell gc ON gc.id = f.cell_id
            WHERE f.city_id = :c AND f.source_ref LIKE 'synthetic:%'"""), {"c": demo.id}).mappings().one()
    assert row["n"] > 2000
    assert (row["no_location"], row["outside_city"], row["no_cell"], row["not_in_its_cell"], row["wrong_code"]) == \
        (0, 0, 0, 0, 0), dict(row)


def test_every_demo_case_is_in_its_departments_area(engine, demo):
    with engine.connect() as c:
        rows = c.execute(text("""
            SELECT d.code, d.kind, count(*) AS n,
                   count(*) FILTER (WHERE d.kind = 'street' AND NOT ST_Covers(a.geom, f.location)) AS outside_area,
                   count(*) FILTER (WHERE NOT ST_Covers(city.boundary, f.location)) AS outside_city,
                   max(ST_Distance(COALESCE(a.geom, city.boundary), f.location)) AS worst_m
            FROM case_file f JOIN city ON city.id = f.city_id
            JOIN department d ON d.id = f.department_id
            LEFT JOIN admin_area a ON a.city_id = f.city_id AND a.level = 'street' AND a.code = d.area_code
            WHERE f.city_id = :c AND f.source_ref LIKE 'synthetic:%'
            GROUP BY d.code, d.kind ORDER BY d.code"""), {"c": demo.id}).mappings().all()
        unassigned_open = c.execute(text("""
            SELECT count(*) FROM case_file WHERE city_id = :c AND source_ref LIKE 'synthetic:%'
            AND department_id IS NULL AND state IN ('dispatched', 'processing', 'feedback')"""), {"c": demo.id}).scalar()
    assert rows, "no demo case has a department"
    bad = [dict(r) for r in rows if r["outside_area"] or r["outside_city"]]
    assert bad == [], bad
    assert all(r["worst_m"] == 0 for r in rows)
    kinds = {r["kind"] for r in rows}
    assert kinds == {"street", "department"}  # both street offices and line departments handle demo cases
    assert "sanitation" in {r["code"] for r in rows}
    assert unassigned_open == 0


def test_demo_classes_are_in_the_catalog(engine, demo):
    with engine.connect() as c:
        codes = dict(c.execute(text("""SELECT category_code, min(category_name) FROM case_file
                                       WHERE city_id = :c AND source_ref LIKE 'synthetic:%' GROUP BY 1"""),
                               {"c": demo.id}).all())
    items = catalog()
    assert codes and set(codes) <= set(items), set(codes) - set(items)
    assert all(items[k]["name"] == v for k, v in codes.items())  # the name the case carries is the class's


def test_one_department_list(engine, demo):
    with engine.connect() as c:
        rows = c.execute(text("SELECT code, name, kind FROM department WHERE city_id = :c AND active"),
                         {"c": demo.id}).all()
        streets = c.execute(text("SELECT count(*) FROM admin_area WHERE city_id = :c AND level = 'street'"),
                            {"c": demo.id}).scalar()
    names = [r[1].split(" ")[0] for r in rows]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert len(rows) == len(department_config()) + streets
    assert {r[0] for r in rows if r[2] == "department"} == {d["code"] for d in department_config()}
    # the configuration itself has no duplicate codes or names
    conf = department_config()
    assert len({d["code"] for d in conf}) == len({d["name"] for d in conf}) == len(conf)


def test_migration_0024_merges_old_duplicates(conn, demo):
    """The duplicates the old demo loader made (ST<street>, 环卫处 HW …) are merged into the configured
    departments: their cases and users move, they become inactive, the configured ones stay."""
    import importlib

    from layers.core.users import add_user

    merge = importlib.import_module("layers.migrations.versions.0024_department_dedup").MERGE
    street = conn.execute(text("SELECT code FROM admin_area WHERE city_id = :c AND level = 'street' ORDER BY code LIMIT 1"),
                          {"c": demo.id}).scalar()
    ids = {}
    for code, name, kind, area in (("HW", "环卫处", "department", None), (f"ST{street}", "某街道办事处", "street", street)):
        ids[code] = conn.execute(text("""INSERT INTO department (city_id, code, name, kind, area_code)
                                         VALUES (:c, :code, :name, :kind, :a) RETURNING id"""),
                                 {"c": demo.id, "code": code, "name": name, "kind": kind, "a": area}).scalar()
    case_ids = conn.execute(text("""SELECT id FROM case_file WHERE city_id = :c AND source_ref LIKE 'synthetic:%'
                                    ORDER BY id LIMIT 2"""), {"c": demo.id}).scalars().all()
    for cid, code in zip(case_ids, ids, strict=True):
        conn.execute(text("UPDATE case_file SET department_id = :d WHERE id = :i"), {"d": ids[code], "i": cid})
    user, _ = add_user(conn, "migration_0024_hw", "department", department="HW")
    for sql in merge:
        conn.execute(text(sql))
    got = dict(conn.execute(text("""SELECT c.id, d.code FROM case_file c JOIN department d ON d.id = c.department_id
                                    WHERE c.id = ANY(:i)"""), {"i": case_ids}).all())
    assert got == {case_ids[0]: "sanitation", case_ids[1]: f"street-{street}"}
    assert conn.execute(text("SELECT department FROM app_user WHERE id = :i"), {"i": user.id}).scalar() == "sanitation"
    active = dict(conn.execute(text("SELECT code, active FROM department WHERE city_id = :c AND code = ANY(:k)"),
                               {"c": demo.id, "k": ["HW", f"ST{street}", "sanitation", f"street-{street}"]}).all())
    assert active == {"HW": False, f"ST{street}": False, "sanitation": True, f"street-{street}": True}
