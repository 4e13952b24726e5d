"""The supervisors' API on committed synthetic data: layers, KPIs, ranking, alerts, bulletins."""

from __future__ import annotations

import io

import pytest

from tests.conftest import auth


@pytest.fixture(scope="module")
def sup(tokens):
    return auth(tokens["supervisor"])


def test_layers(client, bcity, sup):
    q = {"city": "btest", "start": "2026-10-01", "end": "2026-10-31"}
    r = client.get("/api/v1/supervisor/heat", params=q, headers=sup)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/geo+json")
    heat = r.json()
    assert heat["total"] > 500 and heat["features"] and heat["bandwidth_m"] >= 100
    assert max(f["properties"]["level"] for f in heat["features"]) == 1.0
    bands = client.get("/api/v1/supervisor/heat", params={**q, "dissolve": "true"}, headers=sup).json()
    assert 1 <= len(bands["features"]) <= 8 and bands["total"] == heat["total"]
    assert sum(f["properties"]["cells"] for f in bands["features"]) == len(heat["features"])
    hd = client.get("/api/v1/supervisor/hotspots", params={**q, "dissolve": "true"}, headers=sup).json()
    assert {f["properties"]["bin"] for f in hd["features"]} <= {3, 2, 1, -1, -2, -3}
    r = client.get("/api/v1/supervisor/hotspots", params=q, headers=sup).json()
    assert r["features"] and all(f["properties"]["bin"] != 0 for f in r["features"])
    assert sum(r["summary"].values()) == len(r["features"])
    assert sum(f["properties"]["cells"] for f in hd["features"]) == len(r["features"])
    cells = client.get("/api/v1/supervisor/cells", params=q, headers=sup).json()
    assert sum(f["properties"]["count"] for f in cells["features"]) == cells["total"] == heat["total"]
    assert all(len(f["properties"]["code"]) == 15 for f in cells["features"])
    s = client.get("/api/v1/supervisor/summary", params=q, headers=sup).json()
    assert sum(d["n"] for d in s["by_day"]) >= heat["total"] and s["by_category"][0]["name"]
    e = client.get("/api/v1/supervisor/emerging", params={"city": "btest", "end": "2026-10-31", "steps": 10},
                   headers=sup)
    assert e.status_code == 200 and "summary" in e.json()
    # filters: one class only
    one = client.get("/api/v1/supervisor/cells", params={**q, "category": "0101"}, headers=sup).json()
    assert 0 < one["total"] < cells["total"]


def test_bad_input_is_4xx(client, bcity, sup, tokens):
    for url, params in [("/api/v1/supervisor/heat", {"start": "2026-13-01"}),
                        ("/api/v1/supervisor/heat", {"start": "2026-10-05", "end": "2026-10-01"}),
                        ("/api/v1/supervisor/heat", {"bandwidth": "-5"}),
                        ("/api/v1/supervisor/hotspots", {"weights": "rook"}),
                        ("/api/v1/supervisor/hotspots", {"weights": "distance", "distance": "1e9"}),
                        ("/api/v1/supervisor/kpis", {"month": "2026-99"}),
                        ("/api/v1/supervisor/heat", {"crs": "EPSG:99999"}),
                        ("/api/v1/bulletins/2026-10.doc", {}), ("/api/v1/bulletins/2026-00.pdf", {})]:
        r = client.get(url, params={"city": "btest", **params}, headers=sup)
        assert 400 <= r.status_code < 500, (url, params, r.status_code, r.text[:200])
        assert r.json()["detail"]
    assert client.get("/api/v1/supervisor/kpis", params={"city": "btest"}).status_code == 401
    assert client.get("/api/v1/supervisor/kpis", headers=auth(tokens["inspector"])).status_code == 403


def test_kpis_and_assessment(client, bcity, sup):
    r = client.get("/api/v1/supervisor/kpis", params={"city": "btest", "month": "2026-10", "by": "street"},
                   headers=sup).json()
    assert r["units"] and all("按期结案率" in u["kpis"] for u in r["units"])
    total = client.get("/api/v1/supervisor/kpis", params={"city": "btest", "month": "2026-10"}, headers=sup).json()
    assert total["units"][0]["kpis"]["受理量"]["value"] == sum(u["kpis"]["受理量"]["value"] for u in r["units"])
    a = client.get("/api/v1/supervisor/assessment", params={"city": "btest", "month": "2026-10", "by": "department"},
                   headers=sup).json()
    ranks = a["ranking"]
    assert ranks[0]["rank"] == 1 and all(x["grade"] in "ABCDE" for x in ranks)
    assert [x["score"] for x in ranks] == sorted((x["score"] for x in ranks), reverse=True)


def test_alert_run_and_feed(client, bcity, sup):
    r = client.post("/api/v1/supervisor/alerts/run", params={"city": "btest", "day": "2026-10-31", "n_sim": 199},
                    headers=sup)
    assert r.status_code == 200, r.text
    feed = client.get("/api/v1/supervisor/alerts", params={"city": "btest"}, headers=sup).json()["alerts"]
    assert len(feed) == sum(r.json()[k] for k in ("scan", "surge", "petition")) or len(feed) >= 1
    if feed:
        rep = client.get(f"/api/v1/supervisor/alerts/{feed[0]['id']}/report", params={"city": "btest"}, headers=sup)
        assert rep.status_code == 200 and "专报" in rep.text
    assert client.get("/api/v1/supervisor/alerts/999999999/report", params={"city": "btest"},
                      headers=sup).status_code == 404


def test_bulletin_xlsx_and_html(client, bcity, sup):
    from openpyxl import load_workbook

    r = client.get("/api/v1/bulletins/2026-10.xlsx", params={"city": "btest"}, headers=sup)
    assert r.status_code == 200
    wb = load_workbook(io.BytesIO(r.content))
    assert "指标 KPIs" in wb.sheetnames and wb["指标 KPIs"]["A2"].value == "受理量"
    assert wb["指标 KPIs"]["C2"].value > 500
    h = client.get("/api/v1/bulletins/2026-10.html", params={"city": "btest"}, headers=sup)
    assert "月度简报" in h.text and h.text.count("data:image/png;base64,") == 2
    assert "1390" not in h.text  # no phone numbers (none are written for synthetic cases either)


def test_folium_map_is_local(client, bcity, sup):
    import re

    r = client.get("/api/v1/supervisor/map.html", params={"city": "btest", "start": "2026-10-01",
                                                           "end": "2026-10-31"}, headers=sup)
    assert r.status_code == 200
    srcs = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert "/static/vendor/leaflet/leaflet.js" in srcs
    assert not [s for s in srcs if s.startswith("http")], srcs  # no CDN
    assert "L.geoJson" in r.text or "L.geoJSON" in r.text
    assert r.text.count('"bin"') > 0 and r.text.count('"density"') > 10
