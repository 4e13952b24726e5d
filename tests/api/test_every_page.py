"""Every page (api.headers.PAGES and ``/``) in Chromium, signed in as its user: screenshots at 1366×900
and 390×844 (``test-output/screenshots/<page>-<w>x<h>.png``, git-ignored), no horizontal scroll, the
first-render times written to ``test-output/render-times.json``, and a scan of the visible text in
zh-CN mode, once the page's data has loaded, for the raw codes of the vocabulary (states, events,
actions, roles, sources, urgencies, ratings, flags, class codes, admin-area slugs, department codes),
matched as whole words: none may show; and no uncaught script error.

English is allowed beside the Chinese ("结案率 Closure rate"), so a code that is a plain English word
(``rate``, ``received``, ``closed``) counts when it stands as a code stands — alone, between
separators (``collected → accepted · operator``, ``(hotline)``) — and not inside an English phrase,
i.e. when the nearest character on either side, across spaces and brackets, is not a Latin letter
("回访率 Follow-up (visit) rate" is English; "来源 (hotline)" is a code). A code
that is no word (``exif_device_mismatch``, ``street-320614001``, ``E10102``) counts wherever it is."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from api.headers import PAGES
from tests.conftest import auth

pytestmark = pytest.mark.browser

OUT = Path(__file__).resolve().parents[2] / "test-output"
SIZES = ((1366, 900), (390, 844))
#: Who opens each page (a page not listed: the administrator); None: nobody signs in.
ROLE = {"": None, "public": None, "login": None, "operator": "operator", "inspector": "inspector",
        "supervisor": "supervisor", "planner": "planner", "admin": "admin"}
ALL_PAGES = ("", *PAGES)


def raw_hits(pattern: re.Pattern, visible: str) -> list[re.Match]:
    """The matches of ``pattern`` in ``visible`` that show a code (see the module's docstring)."""
    out = []
    for m in pattern.finditer(visible):
        word = m.group(0)
        if re.fullmatch(r"[a-z]+", word):
            before = visible[:m.start()].rstrip(" ()")[-1:]
            after = visible[m.end():].lstrip(" ()")[:1]
            if re.fullmatch(r"[A-Za-z]", before or "-") or re.fullmatch(r"[A-Za-z]", after or "-"):
                continue  # a word of an English phrase beside the Chinese
        out.append(m)
    return out


def raw_code_pattern(conn, city) -> re.Pattern:
    """Whole-word, case-sensitive alternation of the codes no page may show (layers.cases.labels).
    Two-digit class codes (01, 02 …) are left out: they cannot be told from the zero-padded numbers of
    dates and times; their four- and six-digit children are in."""
    from layers.cases.labels import raw_codes

    codes = sorted((c for c in raw_codes(conn, city) if not re.fullmatch(r"\d{1,3}", c)), key=len, reverse=True)
    return re.compile(r"(?<![A-Za-z0-9_\-])(?:" + "|".join(map(re.escape, codes)) + r")(?![A-Za-z0-9_\-])")


@pytest.fixture(scope="module")
def scene(engine, haimen, tokens, live_server):
    """Cases in several states (so that lists, details and maps have words to show), the departments,
    and the codes to look for."""
    op = auth(tokens["operator"])
    r = httpx.post(f"{live_server}/api/v1/departments/setup", headers=auth(tokens["admin"]), timeout=60)
    assert r.status_code == 200, r.text
    with engine.connect() as c:
        pts = c.execute(text("""
            SELECT ST_X(p), ST_Y(p), code FROM (
              SELECT ST_Transform(ST_PointOnSurface(geom), 4326) p, code FROM grid_cell
              WHERE grid_id = (SELECT id FROM grid WHERE city_id = :c AND active) ORDER BY id) t
            OFFSET 3000 LIMIT 4000"""), {"c": haimen.id}).all()
    made = []
    for k, (cls, steps) in enumerate((("E10101", []), ("E20101", ["accept"]), ("010102", ["accept", "dispatch"]),
                                      ("E50201", ["accept", "dispatch"]))):
        lon, lat, _ = pts[k * 900]
        r = httpx.post(f"{live_server}/api/v1/cases", headers=op, timeout=60, json={
            "category_code": cls, "channel": "电话", "description": f"页面检查 page check {k}", "address": "某路 1 号",
            "location": {"x": lon, "y": lat}})
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        for step in steps:
            r = httpx.post(f"{live_server}/api/v1/cases/{cid}/actions/{step}", headers=op, json={}, timeout=60)
            assert r.status_code == 200, r.text
        made.append(cid)
    # One case handled by its department and waiting for the inspector's check (核查): a task on the
    # inspector's worklist, events by a department.
    from layers.core.users import add_user

    with engine.begin() as c:
        dep_code = c.execute(text("SELECT d.code FROM case_file f JOIN department d ON d.id = f.department_id "
                                  "WHERE f.id = :i"), {"i": made[3]}).scalar_one()
        _, dep_token = add_user(c, f"every_page_dept_{dep_code}"[:60], "department", department=dep_code)
    for step, body in (("start", {}), ("feedback", {"note": "已处理", "photos": ["after.jpg"]})):
        r = httpx.post(f"{live_server}/api/v1/cases/{made[3]}/actions/{step}", headers=auth(dep_token), json=body,
                       timeout=60)
        assert r.status_code == 200, r.text
    with engine.connect() as c:
        pattern = raw_code_pattern(c, haimen)
    OUT.joinpath("screenshots").mkdir(parents=True, exist_ok=True)
    return {"cases": made, "pattern": pattern}


def open_signed_in(browser, base: str, page_name: str, token: str | None, size: tuple[int, int]):
    """A fresh context at ``size`` in zh-CN, the user's token where the pages look for it (the
    ``#token=`` link the pages accept, and the storage they keep it in)."""
    w, h = size
    ctx = browser.new_context(viewport={"width": w, "height": h}, locale="zh-CN")
    script = "try { localStorage.setItem('citygrid_lang', 'zh'); } catch (e) {}"
    if token:
        script += (f"try {{ localStorage.setItem('citygrid_token', '{token}'); "
                   f"sessionStorage.setItem('cg_token', '{token}'); }} catch (e) {{}}")
    ctx.add_init_script(script)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    t0 = time.perf_counter()
    page.goto(f"{base}/{page_name}" + (f"#token={token}" if token else ""))
    page.wait_for_load_state("networkidle", timeout=60_000)  # the page's data has arrived
    if page_name == "operator" and token:
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    page.wait_for_timeout(300)  # drawing after the last answer
    loaded_ms = (time.perf_counter() - t0) * 1000
    paint = page.evaluate("""() => {
        const p = performance.getEntriesByName('first-contentful-paint')[0];
        const nav = performance.getEntriesByType('navigation')[0];
        return {fcp: p ? p.startTime : null, dom: nav ? nav.domContentLoadedEventEnd : null};
    }""")
    return ctx, page, errors, {"first_contentful_paint_ms": paint["fcp"], "dom_content_loaded_ms": paint["dom"],
                               "data_loaded_ms": round(loaded_ms, 1)}


def more_views(page, page_name: str, scene: dict, size: tuple[int, int]) -> list[str]:
    """The visible text of the page's other views, after the first: the inspector's worklist; on
    /operator the case list and a dispatched case's detail (facts, proposal, timeline)."""
    texts = []
    if page_name == "inspector":  # the day's worklist (a 核查 task waits: the scene's handled case)
        page.click("#tabs [data-tab='work']")
        page.wait_for_load_state("networkidle", timeout=30_000)
        page.wait_for_timeout(300)
        texts.append(page.evaluate("() => document.body.innerText"))
        page.screenshot(path=str(OUT / "screenshots" / f"inspector-work-{size[0]}x{size[1]}.png"), full_page=True)
    if page_name == "operator":
        page.click("#tabs [data-tab='list']")
        page.select_option("#f-state", "")
        page.fill("#f-q", "页面检查")  # the scene's cases, whatever else earlier tests left in the database
        page.click("#f-apply")
        cid = scene["cases"][2]
        page.wait_for_selector(f"#case-list li[data-id='{cid}']", timeout=15_000)
        texts.append(page.evaluate("() => document.body.innerText"))
        page.click(f"#case-list li[data-id='{cid}']")
        page.wait_for_selector(f"#detail-body[data-case-id='{cid}'] #d-events li", timeout=15_000)
        texts.append(page.evaluate("() => document.body.innerText"))
        page.screenshot(path=str(OUT / "screenshots" / f"operator-case-{size[0]}x{size[1]}.png"), full_page=True)
        page.click(f"#case-list li[data-id='{scene['cases'][1]}']")  # accepted: the dispatch proposal
        page.wait_for_selector(f"#detail-body[data-case-id='{scene['cases'][1]}'] #d-candidates li", timeout=15_000)
        texts.append(page.evaluate("() => document.body.innerText"))
    return texts


def _record_times(name: str, size: tuple[int, int], times: dict) -> None:
    path = OUT / "render-times.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(name or "home", {})[f"{size[0]}x{size[1]}"] = times
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True))


@pytest.mark.parametrize("page_name", ALL_PAGES, ids=lambda p: p or "home")
def test_every_page_fits_and_shows_no_raw_code(page_name, browser, live_server, tokens, scene):
    role = ROLE.get(page_name, "admin")
    token = tokens[role] if role else None
    found: dict[str, list[str]] = {}
    for size in SIZES:
        ctx, page, errors, times = open_signed_in(browser, live_server, page_name, token, size)
        try:
            shot = OUT / "screenshots" / f"{page_name or 'home'}-{size[0]}x{size[1]}.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 5_000
            _record_times(page_name, size, times)
            widths = page.evaluate("() => [document.documentElement.scrollWidth, document.body.scrollWidth, "
                                   "window.innerWidth]")
            if max(widths[0], widths[1]) > widths[2]:
                found[f"scrolls sideways at {size[0]}x{size[1]}"] = widths
            visible = page.evaluate("() => document.body.innerText")
            assert visible.strip(), f"/{page_name} shows nothing"
            views = more_views(page, page_name, scene, size)
            visible = "\n".join([visible, *views])
            widths = page.evaluate("() => [document.documentElement.scrollWidth, document.body.scrollWidth, "
                                   "window.innerWidth]")
            if views and max(widths[0], widths[1]) > widths[2]:  # in the page's other views too
                found[f"scrolls sideways at {size[0]}x{size[1]} (other views)"] = widths
            if size == SIZES[0]:
                matches = raw_hits(scene["pattern"], visible)
                if matches:
                    found["codes"] = sorted({m.group(0) for m in matches})
                    found[f"{size[0]}x{size[1]}"] = [visible[max(0, m.start() - 30):m.end() + 30].replace("\n", " ⏎ ")
                                                     for m in matches[:12]]
            if errors:
                found[f"script errors at {size[0]}x{size[1]}"] = errors[:5]
        finally:
            ctx.close()
    assert not found, f"/{page_name}: {json.dumps(found, ensure_ascii=False, indent=1)}"
