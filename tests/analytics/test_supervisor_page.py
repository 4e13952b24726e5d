"""The supervisor page and its API agree on one definition of "received in the window": on cases written
with known counts (merged duplicates, a case without a cell, cases just outside the window on both sides),
the map's count, the KPI 受理量 and the charts' total reconcile, for the whole city and for a class filter;
the KPI cards and charts change with the class filter and equal the API's answer; the heat layer comes as
vector tiles; the bulletin centre downloads a PDF with the signed-in user's credentials."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from shapely.geometry import box
from sqlalchemy import text

from tests.analytics.helpers import cell_xy, insert
from tests.conftest import auth, metric_city

TZ8 = dt.timezone(dt.timedelta(hours=8))
WINDOW = {"start": "2026-09-01", "end": "2026-09-10"}
NAMES = {"K1": "井盖缺失（测试）", "K2": "道路积水（测试）"}
# (class, received at (UTC+8), located?, merged?, accepted?)
CASES = [
    ("K1", dt.datetime(2026, 9, 1, 0, 0, tzinfo=TZ8), True, False, True),    # first instant of the window
    ("K1", dt.datetime(2026, 9, 2, 10, tzinfo=TZ8), True, False, True),
    ("K1", dt.datetime(2026, 9, 3, 10, tzinfo=TZ8), True, False, True),
    ("K1", dt.datetime(2026, 9, 5, 10, tzinfo=TZ8), True, False, True),
    ("K1", dt.datetime(2026, 9, 8, 10, tzinfo=TZ8), True, False, True),
    ("K1", dt.datetime(2026, 9, 2, 10, 5, tzinfo=TZ8), True, True, False),   # merged duplicate (并单)
    ("K1", dt.datetime(2026, 9, 2, 10, 9, tzinfo=TZ8), True, True, False),   # merged duplicate (并单)
    ("K2", dt.datetime(2026, 9, 4, 10, tzinfo=TZ8), True, False, True),
    ("K2", dt.datetime(2026, 9, 6, 10, tzinfo=TZ8), True, False, False),
    ("K2", dt.datetime(2026, 9, 10, 23, 59, tzinfo=TZ8), True, False, False),  # last minute of the window
    ("K2", dt.datetime(2026, 9, 7, 10, tzinfo=TZ8), False, False, False),    # no cell: outside the grid
    ("K1", dt.datetime(2026, 8, 31, 23, 50, tzinfo=TZ8), True, False, True),  # 10 minutes before the window
    ("K1", dt.datetime(2026, 9, 11, 0, 10, tzinfo=TZ8), True, False, True),   # 10 minutes after the window
]
# what the window holds under the definition
EXPECT = {None: {"received": 9, "located": 8, "unlocated": 1, "merged": 2, "accepted": 6},
          "K1": {"received": 5, "located": 5, "unlocated": 0, "merged": 2, "accepted": 5},
          "K2": {"received": 4, "located": 3, "unlocated": 1, "merged": 0, "accepted": 1}}


@pytest.fixture(scope="module")
def scity(engine):
    from layers.analytics import rollups

    with engine.begin() as conn:
        c, created = metric_city(conn, "stest", "口径测试市", "320697", box(640_000, 3_550_000, 642_000, 3_551_000))
        if not created:
            return c
        rollups.set_timezone(conn, c, "Asia/Shanghai")
        n = len(CASES)
        x, y, _ = cell_xy(conn, c, list(range(n)), [3] * n)
        x = np.where([k[2] for k in CASES], x, 700_000.0)  # far outside the city: no cell
        events = []
        for i, (_, t, _, _, acc) in enumerate(CASES):
            events.append((i, t, "received", None, "collected", None, {}))
            if acc:
                events.append((i, t + dt.timedelta(minutes=30), "accepted", "collected", "accepted", None, {}))
        ids = insert(conn, c, x, y, [k[1] for k in CASES], [k[0] for k in CASES], events=events, prefix="SUP")
        conn.execute(text("UPDATE case_file SET category_name = CASE category_code WHEN 'K1' THEN :a ELSE :b END "
                          "WHERE city_id = :c"), {"a": NAMES["K1"], "b": NAMES["K2"], "c": c.id})
        dup = [int(ids[i]) for i, k in enumerate(CASES) if k[3]]
        conn.execute(text("UPDATE case_file SET merged_into = :m, state = 'merged' WHERE id = ANY(:ids)"),
                     {"m": int(ids[1]), "ids": dup})
        return c


def _q(cat=None, **more):
    return {"city": "stest", **WINDOW, **({"category": cat} if cat else {}), **more}


@pytest.mark.parametrize("cat", [None, "K1", "K2"])
def test_api_counts_reconcile(client, scity, tokens, cat):
    h = auth(tokens["supervisor"])
    want = EXPECT[cat]
    s = client.get("/api/v1/supervisor/summary", params=_q(cat), headers=h).json()
    assert {k: s["counts"][k] for k in ("received", "located", "unlocated", "merged")} == \
        {k: want[k] for k in ("received", "located", "unlocated", "merged")}
    assert sum(d["n"] for d in s["by_day"]) == sum(c["n"] for c in s["by_category"]) == \
        sum(c["n"] for c in s["by_channel"]) == want["received"]
    assert "并单" in s["definition"]
    k = client.get("/api/v1/supervisor/kpis", params=_q(cat), headers=h).json()["units"][0]["kpis"]
    assert k["受理量"]["value"] == want["received"]
    assert k["立案率"]["num"] == want["accepted"] and k["立案率"]["den"] == want["received"]
    for layer in ("hotspots", "heat"):
        fc = client.get(f"/api/v1/supervisor/{layer}", params=_q(cat, dissolve="true"), headers=h).json()
        assert fc["total"] == want["located"], layer
        assert fc["counts"]["located"] + fc["counts"]["unlocated"] == want["received"]
    cells = client.get("/api/v1/supervisor/cells", params=_q(cat), headers=h).json()
    assert cells["total"] == want["located"]


def test_area_filter_and_bad_filters(client, scity, tokens):
    h = auth(tokens["supervisor"])
    whole = client.get("/api/v1/supervisor/summary", params=_q(area="320697"), headers=h).json()
    # an area holds only cases with a cell in it (the unlocated case has no area)
    assert whole["counts"]["received"] == EXPECT[None]["located"]
    k = client.get("/api/v1/supervisor/kpis", params=_q(area="320697"), headers=h).json()
    assert k["units"][0]["kpis"]["受理量"]["value"] == EXPECT[None]["located"]
    none = client.get("/api/v1/supervisor/summary", params=_q(area="320697999"), headers=h).json()
    assert none["counts"]["received"] == 0 and none["by_day"] == []
    k0 = client.get("/api/v1/supervisor/kpis", params=_q(area="320697999"), headers=h).json()["units"][0]["kpis"]
    assert k0["受理量"]["value"] == 0 and k0["立案率"]["value"] is None
    for path in ("summary", "kpis", "hotspots", "heat/tiles/12/3430/1670.mvt"):
        r = client.get(f"/api/v1/supervisor/{path}", params=_q(area="32x"), headers=h)
        assert r.status_code == 422 and "area" in r.text, (path, r.text)


def test_heat_tiles_carry_the_filters(client, scity, tokens):
    import mapbox_vector_tile
    from pyproj import Transformer

    h = auth(tokens["supervisor"])
    lon, lat = Transformer.from_crs(4549, 4326, always_xy=True).transform(641_000, 3_550_500)
    z = 12
    n = 2 ** z
    import math
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    r_all = client.get(f"/api/v1/supervisor/heat/tiles/{z}/{x}/{y}.mvt", params=_q(), headers=h)
    r_none = client.get(f"/api/v1/supervisor/heat/tiles/{z}/{x}/{y}.mvt", params=_q(area="320697999"), headers=h)
    assert r_all.status_code == r_none.status_code == 200
    assert mapbox_vector_tile.decode(r_all.content)["heat"]["features"]
    assert not mapbox_vector_tile.decode(r_none.content).get("heat", {}).get("features")
    # zoomed out (cells of a few pixels), a tile holds one polygon per heat class
    from layers.analytics.heatmap import HEAT_BANDS

    z = 9
    x, y = int((lon + 180) / 360 * 2 ** z), int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * 2 ** z)
    low = mapbox_vector_tile.decode(client.get(f"/api/v1/supervisor/heat/tiles/{z}/{x}/{y}.mvt", params=_q(),
                                               headers=h).content)["heat"]["features"]
    assert 1 <= len(low) <= len(HEAT_BANDS) and {f["properties"]["level"] for f in low} <= set(HEAT_BANDS)
    assert sum(f["properties"]["cells"] for f in low) >= EXPECT[None]["located"]


@pytest.mark.parametrize("cat", [None, "K2"])
def test_cases_per_cell_tiles(client, scity, tokens, cat):
    """The cases-per-cell layer as vector tiles: per cell when zoomed in (counts sum to the map's count),
    one polygon per count class when zoomed out."""
    import math

    import mapbox_vector_tile
    from pyproj import Transformer

    h = auth(tokens["supervisor"])
    tr = Transformer.from_crs(4549, 4326, always_xy=True)
    (lon0, lat0), (lon1, lat1) = tr.transform(640_000, 3_550_000), tr.transform(642_000, 3_551_000)

    def tile(lon, lat, z):
        n = 2 ** z
        return int((lon + 180) / 360 * n), int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)

    z = 15
    (x0, y0), (x1, y1) = tile(lon0, lat1, z), tile(lon1, lat0, z)
    counts = {}
    for x in range(x0, x1 + 1):
        for y in range(y0, y1 + 1):
            r = client.get(f"/api/v1/supervisor/cells/tiles/{z}/{x}/{y}.mvt", params=_q(cat), headers=h)
            assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.mapbox-vector-tile"
            for f in mapbox_vector_tile.decode(r.content).get("cases", {}).get("features", []):
                counts[f["properties"]["code"]] = f["properties"]["count"]
    assert sum(counts.values()) == EXPECT[cat]["located"] and all(len(c) == 15 for c in counts)
    x, y = tile((lon0 + lon1) / 2, (lat0 + lat1) / 2, 9)
    low = mapbox_vector_tile.decode(client.get(f"/api/v1/supervisor/cells/tiles/9/{x}/{y}.mvt", params=_q(cat),
                                               headers=h).content)["cases"]["features"]
    assert [(f["properties"]["count_from"], f["properties"]["cells"]) for f in low] == [(1, len(counts))]


def test_bulletin_months_listed(client, bcity, tokens):
    r = client.get("/api/v1/bulletins", params={"city": "btest"}, headers=auth(tokens["supervisor"]))
    assert r.status_code == 200
    months = {m["month"]: m for m in r.json()["months"]}
    assert {"2026-08", "2026-09", "2026-10"} <= set(months)
    assert months["2026-10"]["files"]["pdf"] == "2026-10.pdf" and months["2026-10"]["received"] > 0
    assert client.get("/api/v1/bulletins", params={"city": "btest"}).status_code == 401


# ---------------------------------------------------------------------------------------------- the page

def _open(browser, live_server, tokens, slug, width=1366, height=900, scale=1):
    page = browser.new_page(locale="zh-CN", viewport={"width": width, "height": height}, accept_downloads=True,
                            device_scale_factor=scale)
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.requests = []
    page.on("request", lambda r: page.requests.append(r.url))
    page.goto(f"{live_server}/supervisor?city={slug}#token={tokens['supervisor']}")
    page.wait_for_function("window.dashboardReady === true || window.dashboardError", timeout=60_000)
    assert page.evaluate("window.dashboardError || null") is None
    return page


def _apply(page, cat=""):
    page.fill("#start", WINDOW["start"])
    page.fill("#end", WINDOW["end"])
    page.select_option("#category", cat)
    page.evaluate("window.dashboardReady = false")
    page.click("text=查询 Apply")
    page.wait_for_function("window.dashboardReady === true || window.dashboardError", timeout=60_000)
    assert page.evaluate("window.dashboardError || null") is None


def _read(page) -> dict:
    """The numbers as the page shows them."""
    cards = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#cards .card')].map(
        c => [c.dataset.kpi, c.querySelector('.v').textContent]))""")
    series = page.evaluate("""() => Object.fromEntries(['chart-day', 'chart-cat', 'chart-channel'].map(id => {
        const o = echarts.getInstanceByDom(document.getElementById(id)).getOption();
        return [id, o.series[0].data.reduce((a, v) => a + (typeof v === 'object' ? v.value : v), 0)]; }))""")
    st = page.locator("#map-status")
    return {"cards": cards, "charts": series, "map": int(st.get_attribute("data-map-count")),
            "unlocated": int(st.get_attribute("data-unlocated")), "status": st.inner_text(),
            "definition": page.inner_text("#definition")}


def _label_overlaps(page) -> list[str]:
    """Pairs of chart labels (SVG text) drawn over each other."""
    return page.evaluate("""() => ['chart-day', 'chart-cat', 'chart-channel'].flatMap(id => {
        const t = [...document.querySelectorAll('#' + id + ' svg text')].filter(e => {
            const b = e.getBoundingClientRect(); return b.width > 0 && b.height > 0; });
        const r = t.map(e => e.getBoundingClientRect());
        const out = [];
        for (let i = 0; i < r.length; i++) for (let j = i + 1; j < r.length; j++) {
            const w = Math.min(r[i].right, r[j].right) - Math.max(r[i].left, r[j].left);
            const h = Math.min(r[i].bottom, r[j].bottom) - Math.max(r[i].top, r[j].top);
            if (w > 2 && h > 2) out.push(id + ':' + t[i].textContent + '/' + t[j].textContent);
        }
        return out; })""")


def test_page_counts_reconcile_and_follow_the_class_filter(browser, live_server, scity, tokens, client):
    h = auth(tokens["supervisor"])
    page = _open(browser, live_server, tokens, "stest")
    seen = {}
    for cat in ("", "K1", "K2"):
        _apply(page, cat)
        got = _read(page)
        want = EXPECT[cat or None]
        received = int(got["cards"]["受理量"].replace(",", ""))
        # one definition: map (+ the cases without a cell, said on the map) = KPI 受理量 = each chart's total
        assert received == want["received"]
        assert got["map"] == want["located"] and got["unlocated"] == want["unlocated"]
        assert got["map"] + got["unlocated"] == received
        assert got["charts"] == {"chart-day": received, "chart-cat": received, "chart-channel": received}
        assert f"合计受理 {received} 件" in got["status"]
        assert "并单" in got["definition"] and "含首尾日" in got["definition"]
        # the KPI cards equal the API's answer for the same filter
        api = client.get("/api/v1/supervisor/kpis", params=_q(cat or None), headers=h).json()["units"][0]["kpis"]
        for name, v in api.items():
            shown = got["cards"][name]
            if v["kind"] == "count":
                assert int(shown.replace(",", "")) == v["value"], name
            else:
                assert shown == ("—" if v["value"] is None else f"{100 * v['value']:.1f}%"), name
        # the charts draw the API's answer for the same filter, point by point
        summ = client.get("/api/v1/supervisor/summary", params=_q(cat or None), headers=h).json()
        drawn = page.evaluate("""() => {
            const o = (id) => echarts.getInstanceByDom(document.getElementById(id)).getOption();
            const d = o('chart-day'), c = o('chart-cat'), ch = o('chart-channel');
            return {day: Object.fromEntries(d.xAxis[0].data.map((k, i) => [k, d.series[0].data[i]])),
                    cat: Object.fromEntries(c.yAxis[0].data.map((k, i) => [k, c.series[0].data[i]])),
                    channel: Object.fromEntries(ch.xAxis[0].data.map((k, i) => [k, ch.series[0].data[i]]))}; }""")
        assert drawn["day"] == {d["key"]: d["n"] for d in summ["by_day"]}
        assert drawn["cat"] == {c["name"]: c["n"] for c in summ["by_category"]}
        assert drawn["channel"] == {c["key"]: c["n"] for c in summ["by_channel"]}
        seen[cat] = got
    # the cards and charts changed with the class filter
    assert seen["K1"]["cards"]["立案率"] == "100.0%" and seen["K2"]["cards"]["立案率"] == "25.0%"
    assert seen[""]["cards"]["立案率"] == "66.7%"
    assert _label_overlaps(page) == []
    # class names in words, no class codes in the visible text
    body = page.inner_text("body")
    assert NAMES["K1"] in page.inner_text("#chart-cat") or NAMES["K1"] in page.inner_text("#category")
    for code in ("K1", "K2", "collected", "accepted", "New Hot Spot", "Cold Spot", "{\""):
        assert code not in body, code
    # the heat reaches the page as vector tiles, never as the GeoJSON layer
    assert any(".mvt" in u and "/supervisor/heat/tiles/" in u for u in page.requests)
    assert not any("/api/v1/supervisor/heat?" in u for u in page.requests)
    assert any("category=K2" in u for u in page.requests if ".mvt" in u)  # the tiles carry the filter
    # the cases per cell come as vector tiles too, with the filter
    with page.expect_response(lambda r: "/api/v1/supervisor/cells/tiles/" in r.url and "category=K2" in r.url
                              and r.status == 200):
        page.click("text=案件网格 Cases per cell")
    assert "5 件及以上" in page.inner_text(".legend-cases")
    assert not page.errors, page.errors
    page.close()


def test_page_on_a_phone_and_the_hot_spot_legends(browser, live_server, bcity, tokens, tmp_path):
    page = _open(browser, live_server, tokens, "btest", width=390, height=844, scale=3)  # a high-DPI phone
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for id_ in ("chart-day", "chart-cat", "chart-channel"):
        w = page.locator(f"#{id_} svg").first.bounding_box()["width"]
        assert 300 <= w <= 390, (id_, w)
    # charts are vector (SVG: sharp at any pixel ratio) and none of their labels overlap
    assert _label_overlaps(page) == []
    # the hot spot legend shows hot bins only until cold spots are asked for
    legend = page.inner_text(".legend-hot")
    assert "热点" in legend and "冷点（" not in legend
    assert page.evaluate("document.querySelector('.legend-hot details').open") is False  # folded on a phone
    page.click(".legend-hot summary")
    assert "热点（99% 置信）" in page.inner_text(".legend-hot")
    page.check("#show-cold")
    assert "冷点（99% 置信）" in page.inner_text(".legend-hot")
    page.uncheck("#show-cold")
    # the emerging layer: its own legend in words, never raw JSON or English category keys
    page.hover(".leaflet-control-layers")  # collapsed on a phone: opens on touch/hover
    page.click("text=时空热点趋势 Emerging hot spots")
    page.wait_for_function("document.getElementById('map-status').textContent.includes('时空热点趋势')", timeout=60_000)
    status = page.inner_text("#map-status")
    assert "{" not in status and "Hot Spot" not in status and "Cold Spot" not in status
    em = page.inner_text(".legend-emerging")
    assert "时空热点趋势" in em and "Hot Spot" not in em
    page.screenshot(path=str(tmp_path / "supervisor-390.png"), full_page=True)
    assert not page.errors, page.errors
    page.close()


def test_bulletin_centre_downloads_a_pdf(browser, live_server, bcity, tokens, tmp_path):
    import pypdfium2 as pdfium

    page = _open(browser, live_server, tokens, "btest")
    assert _label_overlaps(page) == []  # 30 days of a real-sized month at 1366 px
    row = page.locator("#bulletin-list tr[data-month='2026-10']")
    assert row.count() == 1
    responses = []
    page.on("response", lambda r: responses.append((r.url, r.status)) if "/bulletins/" in r.url else None)
    with page.expect_download(timeout=120_000) as dl:
        row.locator("button.dl-pdf").click()
        page.wait_for_function("document.getElementById('bulletin-status').textContent.includes('生成中') || "
                               "document.getElementById('bulletin-status').textContent.includes('已下载')")
    path = tmp_path / "bulletin.pdf"
    dl.value.save_as(path)
    assert dl.value.suggested_filename.endswith("2026-10.pdf")
    pdf = pdfium.PdfDocument(str(path))
    assert len(pdf) >= 2
    assert "月度简报" in pdf[0].get_textpage().get_text_range()
    assert responses and all(s == 200 for _, s in responses), responses
    page.wait_for_function("document.getElementById('bulletin-status').textContent.includes('已下载')")
    assert "401" not in page.inner_text("body")
    assert not page.errors, page.errors
    page.close()
