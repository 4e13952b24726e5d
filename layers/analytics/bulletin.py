"""The monthly bulletin (月度简报): HTML, PDF (Chromium prints the HTML) and XLSX tables.

Contents: KPIs of the month with month-on-month change; rankings of streets and departments with
their deductions (考核办法); top problems (classes) and top cells; the heat and hot-spot maps as
images (matplotlib, from per-cell aggregates — never case points); the month's alerts; key-zone
patrol counts where field work data exists. No personal data is read.

``main_bulletin(["2026-10", "--city", "haimen", "--out", "var/bulletins"])`` is the
``citygrid bulletin 2026-10`` command.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import io
from pathlib import Path
from string import Template
from zoneinfo import ZoneInfo

import numpy as np
from sqlalchemy import Connection, text

from layers.analytics import alerts as lalerts
from layers.analytics import assessment as lassess
from layers.analytics import cache as lcache
from layers.analytics import heatmap as la
from layers.analytics import hot_spots as lhot
from layers.analytics import kpi as lkpi
from layers.analytics import rollups
from layers.core.city import CityInfo
from layers.core.errors import NotFound

TEMPLATE = Path(__file__).resolve().parent / "data" / "bulletin.html"
CJK_FONT = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def _esc(v) -> str:
    return html.escape(str(v))


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _change(cur: dict, prev: dict) -> str:
    if cur["kind"] == "count":
        if not prev["value"]:
            return "—"
        d = (cur["value"] - prev["value"]) / prev["value"]
        return f"{'+' if d >= 0 else ''}{100 * d:.1f}%"
    if cur["value"] is None or prev["value"] is None:
        return "—"
    d = 100 * (cur["value"] - prev["value"])
    return f"{'+' if d >= 0 else ''}{d:.1f} 个百分点 pp"


def months(conn: Connection, city: CityInfo, limit: int = 36) -> list[dict]:
    """The months a bulletin can be made of (those with cases), newest first: month, cases received
    (the rollup's definition) and whether the month is over (a running month is a preliminary bulletin)."""
    today = dt.datetime.now(ZoneInfo(rollups.timezone(conn, city))).date()
    rows = conn.execute(text("""
        SELECT to_char(date_trunc('month', day), 'YYYY-MM') AS m, sum(n) FROM case_rollup
        WHERE city_id = :c GROUP BY 1 ORDER BY 1 DESC LIMIT :n"""), {"c": city.id, "n": limit}).all()
    out = []
    for m, n in rows:
        _, end = lkpi.month_bounds(m)
        out.append({"month": m, "received": int(n), "complete": end <= today,
                    "files": {f: f"{m}.{f}" for f in ("pdf", "xlsx", "html")}})
    return out


def _prev_month(month: str) -> str:
    start, _ = lkpi.month_bounds(month)
    p = start - dt.timedelta(days=1)
    return f"{p.year:04d}-{p.month:02d}"


# ----------------------------------------------------------------------------------------------
# Data of the bulletin
# ----------------------------------------------------------------------------------------------

def collect(conn: Connection, city: CityInfo, month: str) -> dict:
    start, end = lkpi.month_bounds(month)
    last = end - dt.timedelta(days=1)
    pstart, pend = lkpi.month_bounds(_prev_month(month))
    cur = lkpi.kpis(conn, city, start, end).get("all")
    prev = lkpi.kpis(conn, city, pstart, pend).get("all")
    empty = lkpi.kpis_from_facts({f: 0 for f in lkpi.FACTS} | {"rework_deduction": 0.0})
    cur, prev = cur or empty, prev or empty
    streets = lassess.assess(conn, city, start, end, "street")
    deps = lassess.assess(conn, city, start, end, "department")
    names = lkpi.group_names(conn, city, "category")
    cats = rollups.totals(conn, city, start, last, "category")
    pcats = {c["key"]: c["n"] for c in rollups.totals(conn, city, pstart, pend - dt.timedelta(days=1), "category")}
    top_cats = [{"code": c["key"], "name": names.get(c["key"], c["key"]), "n": c["n"], "prev": pcats.get(c["key"], 0)}
                for c in cats[:10]]
    top_cells = [{"code": r[0], "n": int(r[1]), "area": r[2]} for r in conn.execute(text("""
        SELECT g.code, sum(r.n), a.name FROM case_rollup r JOIN grid_cell g ON g.id = r.cell_id
        LEFT JOIN admin_area a ON a.id = g.area_id
        WHERE r.city_id = :c AND r.day BETWEEN :a AND :b AND r.cell_id <> 0
        GROUP BY g.code, a.name ORDER BY 2 DESC, 1 LIMIT 10"""), {"c": city.id, "a": start, "b": last})]
    alerts = lalerts.alert_feed(conn, city, since=start, until=last, limit=50)
    return {"month": month, "start": start, "end": last, "kpis": cur, "prev": prev, "streets": streets,
            "departments": deps, "top_cats": top_cats, "top_cells": top_cells, "alerts": alerts,
            "patrol": _patrol(conn, city, start, end), "recurring": _recurring(conn, city, start, last)}


def _recurring(conn: Connection, city: CityInfo, start: dt.date, last: dt.date) -> list[dict]:
    """热点问题 of the month (layers.text.recurring, issue 15): the ten hottest groups, not stored."""
    from layers.text import recurring

    return recurring.run(conn, city, until=last, days=(last - start).days + 1, store=False)["groups"][:10]


def _recurring_table(groups: list[dict]) -> str:
    if not groups:
        return "<h2>热点问题 Recurring problems</h2><p>本月无热点问题 No recurring problems this month.</p>"
    return "<h2>热点问题 Recurring problems</h2>" + _table(
        ["热度 Heat", "案件 Cases", "天数 Days", "重复来电 Repeat callers", "类别 Class", "代表性诉求 Representative text"],
        [[g["heat"], g["n_cases"], g["days"], g["repeat_callers"], g["category_name"] or g["category_code"],
          g["representative"][:80]] for g in groups])


def _patrol(conn: Connection, city: CityInfo, start: dt.date, end: dt.date) -> list[dict] | None:
    """Key zones and the patrol tracks that passed them in the month (field work tables, if present)."""
    has = conn.execute(text("SELECT to_regclass('key_zone') IS NOT NULL AND to_regclass('patrol_track') IS NOT NULL")
                       ).scalar()
    if not has:
        return None
    rows = conn.execute(text("""
        SELECT z.code, z.name, z.frequency, count(t.id)
        FROM key_zone z LEFT JOIN patrol_track t ON t.city_id = z.city_id AND t.started_at >= :a
             AND t.started_at < :b AND ST_DWithin(t.geom, z.geom, z.buffer_m)
        WHERE z.city_id = :c AND z.active GROUP BY z.code, z.name, z.frequency ORDER BY z.code LIMIT 50"""),
        {"c": city.id, "a": start, "b": end}).all()
    return [{"code": r[0], "name": r[1], "frequency": r[2], "tracks": int(r[3])} for r in rows]


# ----------------------------------------------------------------------------------------------
# Maps as images
# ----------------------------------------------------------------------------------------------

def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    if Path(CJK_FONT).exists():
        font_manager.fontManager.addfont(CJK_FONT)
        plt.rcParams["font.family"] = ["Noto Sans CJK JP", "Noto Sans CJK SC", "DejaVu Sans"]
    plt.rcParams["axes.unicode_minus"] = False
    return plt


def _raster(arr: lcache.GridArrays, values: np.ndarray, fill=np.nan):
    g = arr.grid
    if g.info.kind != "regular":
        return None
    c0, r0 = int(g.cols.min()), int(g.rows.min())
    img = np.full((int(g.rows.max()) - r0 + 1, int(g.cols.max()) - c0 + 1), fill, dtype=float)
    img[g.rows - r0, g.cols - c0] = values
    s = g.info.cell_size
    extent = (c0 * s, (int(g.cols.max()) + 1) * s, r0 * s, (int(g.rows.max()) + 1) * s)
    return img, extent


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _boundary(conn, city, ax):
    import shapely

    from layers.core.city import city_boundary

    b = city_boundary(conn, city)
    for poly in getattr(b, "geoms", [b]):
        x, y = shapely.get_coordinates(poly.exterior).T
        ax.plot(x, y, color="#444", lw=0.6)


def map_images(conn: Connection, city: CityInfo, start: dt.date, end: dt.date) -> dict[str, str]:
    """Base64 PNGs: 'heat' (KDE density) and 'hotspots' (confidence bins of the exact test, FDR)."""
    plt = _mpl()
    out = {}
    h = la.heat(conn, city, start, end)
    arr = h["arrays"]
    centroid_xy = (arr.cx, arr.cy)
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    r = _raster(arr, h["density"])
    if r is not None:
        img, ext = r
        img = np.where(img > 0, img, np.nan)
        im = ax.imshow(img, origin="lower", extent=ext, cmap="YlOrRd", interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.7, label="件/km² cases per km²")
    else:
        sc = ax.scatter(*centroid_xy, c=h["density"], s=2, cmap="YlOrRd")
        fig.colorbar(sc, ax=ax, shrink=0.7)
    _boundary(conn, city, ax)
    ax.set_title(f"热力图 Heat map ({start} – {end}, h = {h['bandwidth'] or 0:.0f} m)", fontsize=10)
    ax.set_axis_off()
    ax.set_aspect("equal")
    out["heat"] = _png(fig)

    hs = lhot.hotspots(conn, city, start, end)
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cmap = ListedColormap(["#2166ac", "#67a9cf", "#d1e5f0", "#f7f7f7", "#fddbc7", "#ef8a62", "#b2182b"])
    norm = BoundaryNorm(np.arange(-3.5, 4.5), cmap.N)
    r = _raster(arr, hs["bins"].astype(float))
    if r is not None:
        img, ext = r
        im = ax.imshow(img, origin="lower", extent=ext, cmap=cmap, norm=norm, interpolation="nearest")
    else:
        im = ax.scatter(*centroid_xy, c=hs["bins"], s=2, cmap=cmap, norm=norm)
    cb = fig.colorbar(im, ax=ax, shrink=0.7, ticks=range(-3, 4))
    cb.ax.set_yticklabels(["冷 99%", "冷 95%", "冷 90%", "不显著", "热 90%", "热 95%", "热 99%"])
    _boundary(conn, city, ax)
    if hs["too_few"]:
        ax.set_title(f"热点分析：案件过少 ({hs['report']['cases']} 件) Too few cases for hot spots", fontsize=10)
    else:
        ax.set_title(f"热点分析 Hot spots (精确检验 exact test, FDR; 单元 unit {hs['report']['unit_m']:g} m, "
                     f"{hs['report']['cases']} 件)", fontsize=9)
    ax.set_axis_off()
    ax.set_aspect("equal")
    out["hotspots"] = _png(fig)
    return out


# ----------------------------------------------------------------------------------------------
# Renderers
# ----------------------------------------------------------------------------------------------

def _table(head: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    tr = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{tr}</tbody></table>"


def _ranking_rows(rows: list[dict]) -> list[list]:
    return [[r["rank"], r["name"], f"{r['points']:.2f}",
             "; ".join(f"{d['label'].split()[0]} {d['cases']}件 −{d['points']:.2f}" for d in r["deductions"]
                       if d["points"]) or "—", f"{r['score']:.2f}", r["grade"]] for r in rows]


def render_html(conn: Connection, city: CityInfo, month: str, *, data: dict | None = None,
                images: dict | None = None) -> str:
    d = data or collect(conn, city, month)
    imgs = images if images is not None else map_images(conn, city, d["start"], d["end"])
    k, p = d["kpis"], d["prev"]
    kpi_rows = [[name, f"{v['value']:,}" if v["kind"] == "count" else _pct(v["value"]),
                 f"{p[name]['value']:,}" if v["kind"] == "count" else _pct(p[name]["value"]), _change(v, p[name]),
                 "" if v["kind"] == "count" else f"{v['num']}/{v['den']}", v["en"]] for name, v in k.items()]
    cards = "".join(f'<div class="card"><div class="v">{_esc(r[1])}</div><div class="n">{_esc(r[0])}</div>'
                    f'<div class="c">环比 {_esc(r[3])}</div></div>' for r in kpi_rows[:6])
    head_rank = ["名次 Rank", "单位 Unit", "得分项 Points", "扣分 Deductions", "总分 Score", "等级 Grade"]
    alerts = d["alerts"]
    alert_rows = [[a["detected_on"], a["label"], a["category_code"] or "—", f"{a['window_start']}–{a['window_end']}",
                   a["cells"], a["observed"], a["expected"], "—" if a["p_value"] is None else f"{a['p_value']:.3f}",
                   a.get("recurrence_text") or "—"] for a in alerts]
    patrol = d["patrol"]
    patrol_html = ("<p>无重点区域数据 No key-zone data.</p>" if not patrol else
                   _table(["编号 Code", "重点区域 Zone", "频次要求 Frequency", "巡查轨迹数 Tracks"],
                          [[z["code"], z["name"], z["frequency"], z["tracks"]] for z in patrol]))
    img = lambda key: (f'<img alt="{key}" src="data:image/png;base64,{imgs[key]}">'  # noqa: E731
                       if imgs.get(key) else "")
    tpl = Template(TEMPLATE.read_text(encoding="utf-8"))
    y, m = d["start"].year, d["start"].month
    return tpl.substitute(
        title=_esc(f"{city.name} 数字城管月度简报 {y}年{m}月"),
        subtitle=_esc(f"Monthly bulletin of {city.name_en or city.slug}, {month} · 统计期 {d['start']} – {d['end']}"),
        cards=cards,
        kpi_table=_table(["指标 KPI", "本月 This month", "上月 Last month", "环比 Change", "分子/分母 Num/Den",
                          "English"], kpi_rows),
        street_table=_table(head_rank, _ranking_rows(d["streets"])) if d["streets"] else "<p>本月无案件 No cases.</p>",
        dept_table=_table(head_rank, _ranking_rows(d["departments"])) if d["departments"] else "<p>—</p>",
        cat_table=_table(["类别 Class", "名称 Name", "本月 Cases", "上月 Last month"],
                         [[c["code"], c["name"], c["n"], c["prev"]] for c in d["top_cats"]]),
        cell_table=_table(["网格 Cell", "社区 Community", "案件 Cases"],
                          [[c["code"], c["area"] or "—", c["n"]] for c in d["top_cells"]]),
        heat_img=img("heat"), hot_img=img("hotspots"),
        alert_table=(_table(["日期 Day", "类型 Kind", "类别 Class", "时段 Window", "网格数 Cells", "观测 Obs.",
                            "期望 Exp.", "p", "重现间隔 Recurrence"], alert_rows) if alerts else "<p>本月无预警 No alerts this month.</p>")
        + _recurring_table(d.get("recurring") or []),
        patrol=patrol_html,
        generated=_esc(dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")),
    )


def html_to_pdf(doc: str) -> bytes:
    """Print an HTML document (self-contained: images as data URIs) to A4 PDF with Chromium."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError("Chromium is not installed (/usr/bin/chromium): the PDF cannot be printed")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = b.new_page()
            page.set_content(doc, wait_until="load")
            return page.pdf(format="A4", print_background=True,
                            margin={"top": "14mm", "bottom": "14mm", "left": "12mm", "right": "12mm"})
        finally:
            b.close()


def render_pdf(conn: Connection, city: CityInfo, month: str) -> bytes:
    doc = render_html(conn, city, month)
    import concurrent.futures

    # Playwright's sync API refuses to run inside an asyncio loop: print from a fresh thread.
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(html_to_pdf, doc).result()


def render_xlsx(conn: Connection, city: CityInfo, month: str, *, data: dict | None = None) -> bytes:
    from openpyxl import Workbook

    d = data or collect(conn, city, month)
    wb = Workbook()
    ws = wb.active
    ws.title = "指标 KPIs"
    ws.append(["指标 KPI", "English", "本月 This month", "上月 Last month", "分子 Num", "分母 Den"])
    for name, v in d["kpis"].items():
        ws.append([name, v["en"], v["value"], d["prev"][name]["value"], v["num"], v["den"]])
    for title, rows in (("街道排名 Streets", d["streets"]), ("部门排名 Departments", d["departments"])):
        s = wb.create_sheet(title)
        s.append(["名次 Rank", "单位 Unit", "代码 Code", "得分项 Points", "扣分 Deduction", "总分 Score", "等级 Grade"])
        for r in rows:
            s.append([r["rank"], r["name"], r["unit"], r["points"], r["deduction"], r["score"], r["grade"]])
    s = wb.create_sheet("类别 Classes")
    s.append(["类别 Class", "名称 Name", "本月 Cases", "上月 Last month"])
    for c in d["top_cats"]:
        s.append([c["code"], c["name"], c["n"], c["prev"]])
    s = wb.create_sheet("网格 Cells")
    s.append(["网格 Cell", "社区 Community", "案件 Cases"])
    for c in d["top_cells"]:
        s.append([c["code"], c["area"], c["n"]])
    s = wb.create_sheet("预警 Alerts")
    s.append(["日期 Day", "类型 Kind", "类别 Class", "起 From", "止 To", "网格数 Cells", "观测 Obs", "期望 Exp", "p"])
    for a in d["alerts"]:
        s.append([a["detected_on"], a["label"], a["category_code"], a["window_start"], a["window_end"], a["cells"],
                  a["observed"], a["expected"], a["p_value"]])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def alert_report_html(conn: Connection, city: CityInfo, alert_id: int) -> str:
    """专报: one alert as a printable page (cells, window, counts, p-value; no personal data)."""
    rows = [a for a in lalerts.alert_feed(conn, city, limit=1000) if a["id"] == alert_id]
    if not rows:
        raise NotFound(f"no alert {alert_id} in city '{city.slug}'")
    a = rows[0]
    det = a["details"]
    items = [("类型 Kind", a["label"]), ("分析日 Day", a["detected_on"]), ("类别 Class", a["category_code"] or "全部 all"),
             ("时段 Window", f"{a['window_start']} – {a['window_end']}"), ("观测 Observed", a["observed"]),
             ("期望 Expected", a["expected"]), ("p 值 p-value", a["p_value"] if a["p_value"] is not None else "—"),
             ("重现间隔 Recurrence (days)", round(a["recurrence_days"], 1) if a["recurrence_days"] else "—"),
             ("说明 In words", a.get("recurrence_text") or "—"),
             ("网格 Cells", ", ".join(a["cell_codes"][:50]) or "—")]
    if "reason" in det:
        items.append(("原因 Reason", det["reason"]))
        items.append(("案卷 Cases", ", ".join(det.get("case_nos", [])[:50])))
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in items)
    return (f'<!doctype html><html lang="zh-CN"><meta charset="utf-8"><title>舆情专报 Special report {alert_id}'
            f'</title><body style="font-family:\'Noto Sans CJK SC\',sans-serif"><h1>{_esc(city.name)} 舆情专报 '
            f'Special report No. {alert_id}</h1><table border="1" cellpadding="4">{body}</table></body></html>')


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------

def main_bulletin(argv: list[str] | None = None) -> int:
    """``citygrid bulletin 2026-10 [--city haimen] [--out var/bulletins]``: writes HTML, PDF and XLSX."""
    ap = argparse.ArgumentParser(prog="citygrid bulletin", description="月度简报 Write the monthly bulletin")
    ap.add_argument("month", help="YYYY-MM")
    ap.add_argument("--city", default=None, help="city slug (default: the configured city)")
    ap.add_argument("--out", default=None, help="output folder (default: var/bulletins)")
    args = ap.parse_args(argv)
    from citygrid import settings
    from citygrid.dbcluster import database_url
    from layers.core import city as lcity
    from layers.core.db import make_engine
    from layers.core.errors import InputError

    try:
        lkpi.month_bounds(args.month)
    except InputError as e:
        print(f"error: {e}")
        return 2
    out = Path(args.out) if args.out else settings.paths().var_dir / "bulletins"
    out.mkdir(parents=True, exist_ok=True)
    engine = make_engine(database_url(log=lambda *_: None))
    with engine.connect() as conn:
        try:
            city = lcity.get_city(conn, args.city or settings.api().default_city)
        except NotFound as e:
            print(f"error: {e}")
            return 2
        data = collect(conn, city, args.month)
        images = map_images(conn, city, data["start"], data["end"])
        doc = render_html(conn, city, args.month, data=data, images=images)
        base = out / f"bulletin-{city.slug}-{args.month}"
        base.with_suffix(".html").write_text(doc, encoding="utf-8")
        base.with_suffix(".pdf").write_bytes(html_to_pdf(doc))
        base.with_suffix(".xlsx").write_bytes(render_xlsx(conn, city, args.month, data=data))
    engine.dispose()
    print(f"written {base}.html, .pdf, .xlsx")
    return 0
