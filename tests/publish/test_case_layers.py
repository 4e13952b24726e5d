"""Cases in the published-layer catalog: staff get points without free text; the public form is per cell."""

from __future__ import annotations

import datetime as dt

import pyogrio
import shapely
from sqlalchemy import text

from tests.conftest import auth


def _open_two_cases(engine, haimen):
    from gis import crs as gcrs
    from layers.cases import workflow

    x, y = gcrs.transform_xy([121.2001, 121.2301], [31.9301, 31.9301], "EPSG:4326", "EPSG:4549")
    code = next(iter(workflow.catalog()))
    out = []
    with engine.begin() as conn:
        for i in range(2):
            out.append(workflow.open_case(
                conn, haimen, source="hotline", channel="电话", category_code=code,
                received_at=dt.datetime.now(dt.UTC), location=shapely.Point(x[i], y[i]),
                description="私人信息 private text 13800000000", address="某路1号",
                contact={"name": "张三", "phone": "13800000000"}))
    return out


def test_case_layers(client, tokens, engine, haimen, tmp_path):
    opened = _open_two_cases(engine, haimen)
    cat = {layer["name"]: layer for layer in client.get("/api/v1/layers", headers=auth(tokens["planner"])).json()["layers"]}
    assert "cases" in cat and "case_cells" in cat
    r = client.get("/api/v1/layers/cases/export", params={"format": "geojson"}, headers=auth(tokens["planner"]))
    assert r.status_code == 200
    body = r.content.decode()
    assert "13800000000" not in body and "张三" not in body and "私人信息" not in body and "某路1号" not in body
    (tmp_path / "cases.geojson").write_bytes(r.content)
    df = pyogrio.read_dataframe(tmp_path / "cases.geojson")
    mine = df[df["case_no"].isin([o.case_no for o in opened])]
    assert len(mine) == 2 and set(mine["cell_code"]) == {o.cell_code for o in opened}
    # Anonymous callers get only the per-cell form, and it agrees with the database.
    r = client.get("/api/v1/layers/case_cells/export", params={"format": "geojson"})
    assert r.status_code == 200
    (tmp_path / "cells.geojson").write_bytes(r.content)
    cells = pyogrio.read_dataframe(tmp_path / "cells.geojson")
    with engine.connect() as conn:
        truth = dict(conn.execute(text("""
            SELECT cell_code, count(*) FROM case_file c JOIN city ON city.id = c.city_id AND city.slug = 'haimen'
            WHERE cell_id IS NOT NULL AND merged_into IS NULL GROUP BY cell_code""")).all())
    assert dict(zip(cells["cell_code"], cells["total"].astype(int), strict=True)) == truth
    assert client.get("/api/v1/layers/cases/export", params={"format": "geojson"}).status_code in (401, 403)
