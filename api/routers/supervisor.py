"""Supervisors' view: heat, significant hot spots, emerging hot spots, aggregated case cells, KPIs,
the assessment ranking, the burst/petition alert feed, and the monthly bulletin (HTML/PDF/XLSX)."""

from __future__ import annotations

import datetime as dt
import hashlib
import re

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import Connection, text

from api.deps import Allow, get_city, get_conn, get_read_conn
from gis import crs as gcrs
from layers.analytics import alerts as lalerts
from layers.analytics import assessment as lassess
from layers.analytics import bulletin as lbulletin
from layers.analytics import cache as lcache
from layers.analytics import emerging_hot_spots as lemerging
from layers.analytics import heatmap as la
from layers.analytics import hot_spots as lhot
from layers.analytics import kpi as lkpi
from layers.analytics import maps as lmaps
from layers.analytics import rollups
from layers.core.city import CityInfo

router = APIRouter(prefix="/api/v1", tags=["supervisor 监督指挥"])

VIEW = Allow("supervisor", "planner", "admin")  # maps and statistics (no personal data)
SUPERVISE = Allow("supervisor", "admin")        # KPIs, rankings, alerts, bulletins

GEOJSON = "application/geo+json"


def _date(value: str | None, field: str) -> dt.date | None:
    if value is None or value == "":
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise HTTPException(422, f"{field} must be a date YYYY-MM-DD, got '{value[:40]}'") from None


def _latest_day(conn: Connection, city: CityInfo) -> dt.date:
    d = conn.execute(text("SELECT max(day) FROM case_rollup WHERE city_id = :c"), {"c": city.id}).scalar()
    return d or dt.date.today()


def _window(conn, city, start: str | None, end: str | None, default_days: int = 30) -> tuple[dt.date, dt.date]:
    e = _date(end, "end") or _latest_day(conn, city)
    s = _date(start, "start") or e - dt.timedelta(days=default_days - 1)
    rollups.check_window(s, e)
    return s, e


def _list(value: str | None) -> list[str] | None:
    if not value:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if len(items) > 50 or any(len(v) > 40 for v in items):
        raise HTTPException(422, "at most 50 codes of at most 40 characters each")
    return items or None


def _crs(value: str) -> str:
    try:
        return gcrs.parse_crs(value)
    except gcrs.CRSError as e:
        raise HTTPException(422, f"crs: {e}") from None


def _geojson(fc: dict) -> Response:
    return Response(lcache.dump_geojson(fc), media_type=GEOJSON)


START = Query(None, description="起始日 first day YYYY-MM-DD (default: 30 days before end)", max_length=10)
END = Query(None, description="截止日 last day YYYY-MM-DD (default: the latest day with cases)", max_length=10)
CATS = Query(None, description="类别 class codes, comma-separated", max_length=2000)
CHANS = Query(None, description="渠道 channels, comma-separated (电话, 微信, …)", max_length=400)
AREA = Query(None, description="区域 district (6 digits), street (9) or community (12) code: cases whose cell lies in it",
             max_length=12)
CRS = Query("EPSG:4326", description="坐标系 output CRS: EPSG:4326, EPSG:4490, the working CRS, GCJ-02, BD-09",
            max_length=40)


def _filters(category: str | None = CATS, channel: str | None = CHANS, area: str | None = AREA) -> dict:
    """The supervisors' filters, the same on every map layer, KPI and chart endpoint."""
    return {"categories": _list(category), "channels": _list(channel), "area": rollups.check_area(area)}


FILTERS = Depends(_filters)



@router.get("/supervisor/heat", summary="热力图 Heat: quartic KDE of cases on the grid (cells with density)")
def heat(_=Depends(VIEW), conn: Connection = Depends(get_read_conn, scope="function"), city: CityInfo = Depends(get_city),
         start: str | None = START, end: str | None = END, flt: dict = FILTERS,
         bandwidth: float | None = Query(None, description="带宽 bandwidth in m (default: spatial Silverman rule)"),
         dissolve: bool = Query(False, description="one polygon per heat class instead of one per cell"),
         crs: str = CRS):
    s, e = _window(conn, city, start, end)
    fc = la.heat_geojson(conn, city, s, e, **flt, bandwidth=bandwidth, dst=_crs(crs), dissolve=dissolve)
    fc.update(start=str(s), end=str(e), counts=rollups.window_counts(conn, city, s, e, **flt))
    return _geojson(fc)


@router.get("/supervisor/heat/tiles/{z}/{x}/{y}.mvt", summary="热力瓦片 Heat as vector tiles (MVT, EPSG:3857 XYZ)",
            response_class=Response, responses={200: {"content": {"application/vnd.mapbox-vector-tile": {}}}})
def heat_tile(z: int = Path(..., ge=0, le=22), x: int = Path(..., ge=0, le=2**22 - 1), y: int = Path(..., ge=0, le=2**22 - 1),
              _=Depends(VIEW), conn: Connection = Depends(get_read_conn, scope="function"),
              city: CityInfo = Depends(get_city), start: str | None = START, end: str | None = END,
              flt: dict = FILTERS,
              bandwidth: float | None = Query(None, description="带宽 bandwidth in m"),
              if_none_match: str | None = Header(None, include_in_schema=False)):
    s, e = _window(conn, city, start, end)
    data = la.heat_tile(conn, city, s, e, z, x, y, **flt, bandwidth=bandwidth)
    return _tile_response(data, if_none_match)


def _tile_response(data: bytes, if_none_match: str | None) -> Response:
    etag = '"' + hashlib.blake2b(data, digest_size=12).hexdigest() + '"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=60", "Vary": "Authorization, Cookie"}
    if if_none_match and etag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="application/vnd.mapbox-vector-tile", headers=headers)


@router.get("/supervisor/cells/tiles/{z}/{x}/{y}.mvt", summary="案件网格瓦片 Cases per cell as vector tiles (MVT)",
            response_class=Response, responses={200: {"content": {"application/vnd.mapbox-vector-tile": {}}}})
def cases_tile(z: int = Path(..., ge=0, le=22), x: int = Path(..., ge=0, le=2**22 - 1),
               y: int = Path(..., ge=0, le=2**22 - 1), _=Depends(VIEW),
               conn: Connection = Depends(get_read_conn, scope="function"), city: CityInfo = Depends(get_city),
               start: str | None = START, end: str | None = END, flt: dict = FILTERS,
               if_none_match: str | None = Header(None, include_in_schema=False)):
    s, e = _window(conn, city, start, end)
    return _tile_response(la.cases_tile(conn, city, s, e, z, x, y, **flt), if_none_match)


@router.get("/supervisor/hotspots", summary="热点分析 Significant hot/cold spots (exact test at a chosen scale, FDR)")
def hotspots(_=Depends(VIEW), conn: Connection = Depends(get_read_conn, scope="function"), city: CityInfo = Depends(get_city),
             start: str | None = START, end: str | None = END, flt: dict = FILTERS,
             unit: float | None = Query(None, description="分析单元 analysis unit edge in m (a multiple of the "
                                        "cell; default: chosen from the data, stated in the answer)"),
             fdr: bool = Query(True, description="False Discovery Rate correction"),
             dissolve: bool = Query(False, description="one polygon per confidence bin instead of one per cell"),
             crs: str = CRS):
    s, e = _window(conn, city, start, end)
    fc = lhot.hotspots_geojson(conn, city, s, e, **flt, unit_m=unit, fdr=fdr, dst=_crs(crs), dissolve=dissolve)
    fc.update(start=str(s), end=str(e), counts=rollups.window_counts(conn, city, s, e, **flt))
    return _geojson(fc)


@router.get("/supervisor/emerging", summary="时空热点趋势 Emerging hot spots (Gi* per period + Mann-Kendall)")
def emerging(_=Depends(VIEW), conn: Connection = Depends(get_read_conn, scope="function"), city: CityInfo = Depends(get_city),
             end: str | None = END, steps: int = Query(12, ge=3, le=60), step_days: int = Query(7, ge=1, le=31),
             flt: dict = FILTERS, crs: str = CRS):
    e = _date(end, "end") or _latest_day(conn, city)
    return _geojson(lemerging.emerging_geojson(conn, city, e, steps=steps, step_days=step_days, **flt, dst=_crs(crs)))


@router.get("/supervisor/cells", summary="案件网格汇总 Cases aggregated per cell (never points)")
def case_cells(_=Depends(VIEW), conn: Connection = Depends(get_read_conn, scope="function"), city: CityInfo = Depends(get_city),
               start: str | None = START, end: str | None = END, flt: dict = FILTERS,
               limit: int = Query(2000, ge=1, le=50000), crs: str = CRS):
    s, e = _window(conn, city, start, end)
    arr = lcache.grid_arrays(conn, city)
    ids, n = rollups.cell_counts(conn, city, s, e, **flt)
    pos = arr.positions(ids)
    ok = pos >= 0
    pos, n = pos[ok], n[ok]
    order = (-n).argsort(kind="stable")[:limit]
    fc = lcache.cells_geojson(arr, city, pos[order], [{"count": int(v)} for v in n[order]], _crs(crs))
    fc.update(start=str(s), end=str(e), total=int(n.sum()))
    return _geojson(fc)


@router.get("/supervisor/summary", summary="统计 Counts per day, class and channel (for charts)")
def summary(_=Depends(VIEW), conn: Connection = Depends(get_read_conn, scope="function"), city: CityInfo = Depends(get_city),
            start: str | None = START, end: str | None = END, flt: dict = FILTERS):
    s, e = _window(conn, city, start, end)
    names = lkpi.group_names(conn, city, "category")
    cats = rollups.totals(conn, city, s, e, "category", **flt)
    for c in cats:
        c["name"] = names.get(c["key"], c["key"])
    return {"start": str(s), "end": str(e), "by_day": rollups.totals(conn, city, s, e, "day", **flt),
            "by_category": cats, "by_channel": rollups.totals(conn, city, s, e, "channel", **flt),
            "counts": rollups.window_counts(conn, city, s, e, **flt),
            "definition": rollups.DEFINITION, "definition_en": rollups.DEFINITION_EN}


@router.get("/supervisor/options", summary="筛选项 What the filters offer: classes, channels, districts and streets")
def options(_=Depends(VIEW), conn: Connection = Depends(get_read_conn, scope="function"), city: CityInfo = Depends(get_city)):
    names = lkpi.group_names(conn, city, "category")
    chans = conn.execute(text("SELECT DISTINCT channel FROM case_rollup WHERE city_id = :c ORDER BY 1"),
                         {"c": city.id}).scalars().all()
    areas = conn.execute(text("""SELECT code, name, level FROM admin_area WHERE city_id = :c
                                 AND level IN ('district', 'street') ORDER BY code"""), {"c": city.id}).all()
    box = conn.execute(text("""SELECT ST_XMin(b), ST_YMin(b), ST_XMax(b), ST_YMax(b) FROM (SELECT ST_Transform(
        ST_SetSRID(ST_Extent(geom), :srid), 4326) AS b FROM admin_area WHERE city_id = :c AND level = 'district') t"""),
                       {"c": city.id, "srid": city.srid}).one()
    return {"bbox": None if box[0] is None else [round(float(v), 6) for v in box],
            "categories": [{"key": k, "name": v} for k, v in sorted(names.items())],
            "channels": [c for c in chans if c],
            "areas": [{"code": c, "name": n, "level": lv} for c, n, lv in areas],
            "definition": rollups.DEFINITION, "definition_en": rollups.DEFINITION_EN}


def _period(month: str | None, start: str | None, end: str | None, conn, city) -> tuple[dt.date, dt.date]:
    if month:
        return lkpi.month_bounds(month)
    s, e = _window(conn, city, start, end)
    return s, e + dt.timedelta(days=1)


@router.get("/supervisor/kpis", summary="考核指标 KPIs from the case events, per unit")
def kpis(_=Depends(SUPERVISE), conn: Connection = Depends(get_read_conn, scope="function"), city: CityInfo = Depends(get_city),
         month: str | None = Query(None, description="月份 YYYY-MM (else start/end)", max_length=7),
         start: str | None = START, end: str | None = END, flt: dict = FILTERS,
         by: str = Query("all", pattern="^(all|district|street|department|category)$")):
    s, e = _period(month, start, end, conn, city)
    names = lkpi.group_names(conn, city, by)
    out = lkpi.kpis(conn, city, s, e, by, **flt)
    if by == "all" and not out:  # no case in the window: the city's KPIs are zeros (rates undefined), not absent
        out = {"all": lkpi.kpis_from_facts({f: 0 for f in lkpi.FACTS} | {"rework_deduction": 0.0})}
    return {"start": str(s), "end": str(e - dt.timedelta(days=1)), "by": by,
            "units": [{"unit": u, "name": names.get(u, u), "kpis": k} for u, k in out.items()],
            "definition": rollups.DEFINITION, "definition_en": rollups.DEFINITION_EN}


@router.get("/supervisor/assessment", summary="考核排名 Scores, deductions, grades and ranking (考核办法)")
def assessment(_=Depends(SUPERVISE), conn: Connection = Depends(get_read_conn, scope="function"), city: CityInfo = Depends(get_city),
               month: str | None = Query(None, max_length=7), start: str | None = START, end: str | None = END,
               by: str = Query("street", pattern="^(district|street|department|category)$")):
    s, e = _period(month, start, end, conn, city)
    return {"start": str(s), "end": str(e - dt.timedelta(days=1)), "by": by,
            "ranking": lassess.assess(conn, city, s, e, by)}


@router.get("/supervisor/alerts", summary="舆情预警 The alert feed: clusters, surges, petition risks")
def alerts(_=Depends(SUPERVISE), conn: Connection = Depends(get_read_conn, scope="function"), city: CityInfo = Depends(get_city),
           since: str | None = Query(None, max_length=10), until: str | None = Query(None, max_length=10),
           kind: str | None = Query(None, pattern="^(scan|surge|petition)$"), limit: int = Query(100, ge=1, le=1000)):
    return {"alerts": lalerts.alert_feed(conn, city, since=_date(since, "since"), until=_date(until, "until"),
                                    kind=kind, limit=limit)}


@router.post("/supervisor/alerts/run", summary="日扫描 Run the daily scan, surge rule and petition check")
def run_alerts(_=Depends(SUPERVISE), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city),
               day: str | None = Query(None, description="分析日 analysis day (default: the latest day with cases)",
                                       max_length=10),
               n_sim: int | None = Query(None, ge=99, le=9999, description="Monte Carlo replicates (default 999; "
                                         "n_sim + 1 must reach the alert threshold's recurrence interval)")):
    d = _date(day, "day") or _latest_day(conn, city)
    res = lalerts.run_daily(conn, city, d, n_sim=n_sim)
    return {"day": str(d), "scan": sum(not a.get("continued") for a in res["scan"]),
            "scan_continued": sum(bool(a.get("continued")) for a in res["scan"]),
            "surge": len(res["surge"]), "petition": len(res["petition"])}


@router.get("/supervisor/alerts/{alert_id}/report", summary="专报 A special report of one alert (HTML)",
            response_class=HTMLResponse)
def alert_report(alert_id: int = Path(..., ge=1, le=2**62), _=Depends(SUPERVISE),
                 conn: Connection = Depends(get_read_conn, scope="function"), city: CityInfo = Depends(get_city)):
    return HTMLResponse(lbulletin.alert_report_html(conn, city, alert_id))


@router.get("/bulletins", summary="简报中心 The months with a bulletin (PDF, XLSX, HTML), newest first")
def bulletin_list(_=Depends(SUPERVISE), conn: Connection = Depends(get_read_conn, scope="function"),
                  city: CityInfo = Depends(get_city)):
    return {"months": lbulletin.months(conn, city)}


_MONTH = re.compile(r"(\d{4}-\d{2})\.(pdf|html|xlsx)", re.ASCII)  # ASCII digits only (the file name goes into a header)


@router.get("/bulletins/{name}", summary="月度简报 The monthly bulletin: 2026-10.pdf, 2026-10.html or 2026-10.xlsx")
def bulletin(name: str = Path(..., max_length=20), _=Depends(SUPERVISE), conn: Connection = Depends(get_read_conn, scope="function"),
             city: CityInfo = Depends(get_city)):
    m = _MONTH.fullmatch(name)
    if not m:
        raise HTTPException(422, f"ask for YYYY-MM.pdf, YYYY-MM.html or YYYY-MM.xlsx, not '{name[:20]}'")
    month, fmt = m.groups()
    lkpi.month_bounds(month)  # 422 on a bad month
    if fmt == "html":
        return HTMLResponse(lbulletin.render_html(conn, city, month))
    if fmt == "xlsx":
        return Response(lbulletin.render_xlsx(conn, city, month),
                        media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                        headers={"Content-Disposition": f'attachment; filename="bulletin-{city.slug}-{month}.xlsx"'})
    return Response(lbulletin.render_pdf(conn, city, month), media_type="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="bulletin-{city.slug}-{month}.pdf"'})


@router.get("/supervisor/map.html", summary="folium 地图 Heat and hot spots as a folium map page",
            response_class=HTMLResponse)
def folium_page(_=Depends(VIEW), conn: Connection = Depends(get_read_conn, scope="function"), city: CityInfo = Depends(get_city),
                start: str | None = START, end: str | None = END, flt: dict = FILTERS):
    s, e = _window(conn, city, start, end)
    heat_fc = la.heat_geojson(conn, city, s, e, **flt)
    hot_fc = lhot.hotspots_geojson(conn, city, s, e, **flt)
    return HTMLResponse(lmaps.folium_map(heat_fc, hot_fc, title=f"{city.name} 热力与热点 {s} – {e}"))
