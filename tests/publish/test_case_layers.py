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


def _tile_of(lon: float, lat: float, z: int) -> tuple[int, int, int]:
    import math

    n = 2 ** z
    return z, int((lon + 180) / 360 * n), int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)


def test_case_tiles_for_a_time_window(client, tokens, engine, haimen):
    """The cases layer holds every case ever: its tiles can be asked for a window (OGC ``datetime``), and
    then hold exactly the window's cases (a province's history does not make a month's map heavy)."""
    import mapbox_vector_tile

    from gis import crs as gcrs
    from layers.cases import workflow

    lon, lat = 121.2131, 31.9411
    x, y = gcrs.transform_xy([lon, lon + 0.0005], [lat, lat], "EPSG:4326", "EPSG:4549")
    code = next(iter(workflow.catalog()))
    nos = []
    with engine.begin() as conn:
        for i, when in enumerate((dt.datetime(2019, 3, 10, 2, tzinfo=dt.UTC), dt.datetime(2019, 7, 10, 2, tzinfo=dt.UTC))):
            c = workflow.open_case(conn, haimen, source="hotline", channel="电话", category_code=code,
                                   received_at=when, location=shapely.Point(x[i], y[i]))
            nos.append(c.case_no)
    z, tx, ty = _tile_of(lon, lat, 14)
    url = f"/api/v1/tiles/cases/{z}/{tx}/{ty}.mvt"

    def case_nos(params=None):
        r = client.get(url, params=params, headers=auth(tokens["planner"]))
        assert r.status_code == 200, r.text
        t = mapbox_vector_tile.decode(r.content)
        return {f["properties"]["case_no"] for f in t.get("cases", {}).get("features", [])}

    everything = case_nos()
    assert set(nos) <= everything
    march = case_nos({"datetime": "2019-03-01T00:00:00+08:00/2019-04-01T00:00:00+08:00"})
    assert nos[0] in march and nos[1] not in march
    assert all(n in everything for n in march)
    assert case_nos({"datetime": "2019-07-01T00:00:00+08:00/.."}) >= {nos[1]}
    assert nos[0] not in case_nos({"datetime": "2019-07-01T00:00:00+08:00/.."})
    bad = client.get(url, params={"datetime": "last month"}, headers=auth(tokens["planner"]))
    assert bad.status_code == 422 and "datetime" in bad.text
    no_time = client.get(f"/api/v1/tiles/grid_cells/{z}/{tx}/{ty}.mvt", params={"datetime": "2019-03-01/2019-04-01"})
    assert no_time.status_code == 422 and "time field" in no_time.text
    assert client.get(url, params={"datetime": "2019-03-01/2019-04-01"}).status_code == 401  # still staff only
    tj = client.get("/api/v1/tiles/cases/tilejson.json", params={"datetime": "2019-03-01T00:00:00+08:00/.."},
                    headers=auth(tokens["planner"]))
    assert tj.status_code == 200 and "datetime=2019-03-01T00:00:00%2B08:00/.." in tj.json()["tiles"][0]
    # Anonymous callers may window a public layer with a time field (assets): such tiles hold the window's
    # features (here every asset) and never enter the shared cache, whatever window is asked.
    plain = client.get(f"/api/v1/tiles/assets/{z}/{tx}/{ty}.mvt")
    for _ in range(2):
        windowed = client.get(f"/api/v1/tiles/assets/{z}/{tx}/{ty}.mvt", params={"datetime": "2000-01-01T00:00:00Z/.."})
        assert windowed.status_code == 200 and windowed.headers["x-tile-cache"] == "miss"
    ids = lambda r: sorted(f["id"] for f in mapbox_vector_tile.decode(r.content).get("assets", {}).get("features", []))  # noqa: E731
    assert ids(windowed) == ids(plain)
    empty = client.get(f"/api/v1/tiles/assets/{z}/{tx}/{ty}.mvt", params={"datetime": "../2000-01-01T00:00:00Z"})
    assert ids(empty) == []
