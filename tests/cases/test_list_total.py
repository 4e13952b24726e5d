"""The case list's total is bounded (issue 14, province scale): counted exactly up to a cap, past it an
estimate that says so, and offset paging past the cap still works; the needs-location queue reads its
partial index (migration 0026), in the page and in the count, in a custom and in a generic plan."""

from __future__ import annotations

import datetime as dt
import importlib
import uuid

import numpy as np
import pytest
from sqlalchemy import event, text

from tests.conftest import auth

N_OPEN_UNLOCATED, N_CLOSED = 15, 10
N = N_OPEN_UNLOCATED + N_CLOSED
CAP_ENV = "CITYGRID_CASES_LIST_COUNT_CAP"


@pytest.fixture(scope="module")
def batch(engine, haimen):
    """25 cases in 2017 (before the demo data and every other test's cases), one word in their text:
    15 open without a location (the queue), 10 closed with one. Voided afterwards (off every queue)."""
    from layers.demo.synthetic import CaseBatch, bulk_insert_cases

    mark = "总数" + uuid.uuid4().hex[:10]
    t0 = dt.datetime(2017, 3, 1, 9, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    with engine.connect() as conn:
        cx, cy = conn.execute(text("SELECT ST_X(ST_Centroid(boundary)), ST_Y(ST_Centroid(boundary)) FROM city "
                                   "WHERE id = :c"), {"c": haimen.id}).one()
    x = np.where(np.arange(N) < N_OPEN_UNLOCATED, np.nan, cx)
    y = np.where(np.arange(N) < N_OPEN_UNLOCATED, np.nan, cy)
    b = CaseBatch(case_no=[f"T2017L{mark[-6:]}{i:03d}" for i in range(N)],
                  received_at=[t0 + dt.timedelta(hours=i) for i in range(N)],
                  category_code=["E10101"] * N, channel=["电话"] * N, source=["hotline"] * N, x=x, y=y,
                  description=[f"{mark} 第{i}件" for i in range(N)],
                  state=["accepted"] * N_OPEN_UNLOCATED + ["closed"] * N_CLOSED,
                  closed_at=[None] * N_OPEN_UNLOCATED + [t0 + dt.timedelta(days=1)] * N_CLOSED)
    with engine.begin() as conn:
        ids = [int(i) for i in bulk_insert_cases(conn, haimen, b)]
    newest_first = ids[::-1]  # received an hour apart, in batch order
    yield mark, newest_first
    with engine.begin() as conn:
        conn.execute(text("UPDATE case_file SET state = 'void' WHERE id = ANY(:ids)"), {"ids": ids})


def _list(client, tokens, **params):
    r = client.get("/api/v1/cases", headers=auth(tokens["operator"]), params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_below_the_cap_the_total_is_exact(client, tokens, engine, haimen, batch, monkeypatch):
    mark, newest_first = batch
    monkeypatch.delenv(CAP_ENV, raising=False)
    d = _list(client, tokens, q=mark)
    assert d["total"] == N and d["total_exact"] is True and "total_at_least" not in d
    assert [c["id"] for c in d["cases"]] == newest_first
    page = _list(client, tokens, q=mark, limit=10, offset=20)
    assert page["total"] == N and page["total_exact"] is True
    assert [c["id"] for c in page["cases"]] == newest_first[20:]
    # the whole city's list (the operator sees every case): exact, and what a count says
    with engine.connect() as conn:
        every = conn.execute(text("SELECT count(*) FROM case_file WHERE city_id = :c"), {"c": haimen.id}).scalar()
    assert every < 10_000  # the test database is far below the default cap
    d = _list(client, tokens, limit=1)
    assert d["total"] == every and d["total_exact"] is True
    # a cap of exactly the number of rows still counts them exactly
    monkeypatch.setenv(CAP_ENV, str(N))
    d = _list(client, tokens, q=mark)
    assert d["total"] == N and d["total_exact"] is True


def test_past_the_cap_the_total_is_an_estimate_and_paging_goes_on(client, tokens, batch, monkeypatch):
    mark, newest_first = batch
    monkeypatch.setenv(CAP_ENV, "10")
    d = _list(client, tokens, q=mark, limit=4)
    assert d["total_exact"] is False and d["total_at_least"] == 10
    assert d["total"] >= 11  # the planner's estimate, never below what is known
    assert [c["id"] for c in d["cases"]] == newest_first[:4]
    # offset paging past the cap: every page is served, the lower bound follows what was paged
    seen = []
    for off in range(0, N + 4, 4):
        p = _list(client, tokens, q=mark, limit=4, offset=off)
        assert p["total_exact"] is False
        assert [c["id"] for c in p["cases"]] == newest_first[off:off + 4]
        assert p["total_at_least"] == max(10, off + len(p["cases"]))
        full = len(p["cases"]) == 4
        assert p["total"] >= p["total_at_least"] + (1 if full else 0)  # a pager that stops at total asks on
        seen += [c["id"] for c in p["cases"]]
    assert seen == newest_first
    # one less than the rows: not exact
    monkeypatch.setenv(CAP_ENV, str(N - 1))
    d = _list(client, tokens, q=mark)
    assert d["total_exact"] is False and d["total_at_least"] == N and len(d["cases"]) == N
    # a bad setting is refused, not read as "no cap"
    monkeypatch.setenv(CAP_ENV, "0")
    from pydantic import ValidationError

    from citygrid import settings

    with pytest.raises(ValidationError):
        settings.case_list()


def test_needs_location_queue_total_bounded_too(client, tokens, engine, haimen, batch, monkeypatch):
    from layers.cases import workflow as wf

    mark, newest_first = batch
    queued = newest_first[N_CLOSED:]  # the 15 oldest are the open unlocated ones
    monkeypatch.delenv(CAP_ENV, raising=False)
    op = auth(tokens["operator"])
    r = client.get("/api/v1/cases/needs-location", headers=op, params={"limit": 1000})
    assert r.status_code == 200, r.text
    d = r.json()
    with engine.connect() as conn:
        want = conn.execute(text("SELECT count(*) FROM case_file c WHERE c.city_id = :c AND " + wf.UNLOCATED_OPEN),
                            {"c": haimen.id}).scalar()
    assert d["total"] == want >= N_OPEN_UNLOCATED and d["total_exact"] is True
    assert set(queued) <= {c["id"] for c in d["cases"]}
    assert all(c["lon"] is None and c["state"] in wf.OPEN_STATES for c in d["cases"])
    monkeypatch.setenv(CAP_ENV, "5")
    d = client.get("/api/v1/cases/needs-location", headers=op, params={"limit": 3}).json()
    assert d["total_exact"] is False and d["total_at_least"] == 5 and len(d["cases"]) == 3
    ours = _list(client, tokens, q=mark, needs_location="true", limit=100)
    assert [c["id"] for c in ours["cases"]] == queued and ours["total_exact"] is False  # 15 > 5


def test_the_index_predicate_is_the_queries(engine):
    """Migration 0026's partial index is written as the query's condition (same open states)."""
    from layers.cases import workflow as wf

    mig = importlib.import_module("layers.migrations.versions.0026_unlocated_open_idx")
    assert mig.OPEN_STATES == tuple(sorted(wf.OPEN_STATES))
    assert "c." + mig.PREDICATE.replace("state IN", "c.state IN") == wf.UNLOCATED_OPEN
    with engine.connect() as conn:
        pred = conn.execute(text("""SELECT pg_get_expr(i.indpred, i.indrelid) FROM pg_index i
                                    WHERE i.indexrelid = 'case_unlocated_open_idx'::regclass""")).scalar()
    assert "location IS NULL" in pred and all(f"'{s}'" in pred for s in wf.OPEN_STATES)


def _plans(conn, statements) -> list[str]:
    out = []
    for sql, params in statements:
        plan = conn.exec_driver_sql("EXPLAIN (FORMAT TEXT) " + sql, params).scalars().all()
        out.append("\n".join(plan))
    return out


def test_the_queue_reads_its_partial_index(engine, haimen, batch, monkeypatch):
    """EXPLAIN of the statements list_cases runs for the queue (its page and its bounded count): the plan
    reads case_unlocated_open_idx, over a history of closed cases (written in the test's transaction and
    rolled back); in a generic plan too (a prepared statement run often)."""
    from layers.cases import workflow as wf
    from layers.core.users import add_user

    _mark, newest_first = batch
    monkeypatch.delenv(CAP_ENV, raising=False)
    ran = []
    with engine.connect() as conn:
        user, _ = add_user(conn, f"lt_op_{uuid.uuid4().hex[:6]}", "operator")

        def grab(_conn, _cursor, statement, parameters, _context, _executemany):
            if "case_file" in statement:
                ran.append((statement, parameters))

        event.listen(conn, "before_cursor_execute", grab)
        wf.list_cases(conn, haimen, user, needs_location=True, limit=50)
        event.remove(conn, "before_cursor_execute", grab)
        page = [s for s in ran if "ORDER BY" in s[0]]
        count = [s for s in ran if "count(*)" in s[0]]
        assert len(page) == 1 and len(count) == 1
        # A history, in this transaction only (rolled back): 40,000 closed cases, 1 % of them without a
        # location, as in the synthetic province; then the planner's statistics of it.
        one = newest_first[0]  # a closed, located case of the batch
        conn.execute(text("""
            INSERT INTO case_file (city_id, case_no, source, channel, received_at, category_code, state, closed_at,
                                   location, cell_id, cell_code, area_code)
            SELECT city_id, 'H' || g || '-' || left(case_no, 30), source, channel, received_at - g * interval '1 minute',
                   category_code, 'closed', closed_at, CASE WHEN g % 100 = 0 THEN NULL ELSE location END,
                   cell_id, cell_code, area_code
            FROM case_file, generate_series(1, 40000) g WHERE id = :one"""), {"one": one})
        conn.exec_driver_sql("ANALYZE case_file")
        for plan in _plans(conn, page + count):
            print(plan)
            assert "case_unlocated_open_idx" in plan, plan
        # generic plan of the count: the predicate is in the text, so no parameter value is needed
        sql = count[0][0].replace("%(city)s", "$1").replace("%(cap_plus_one)s", "$2")
        assert "%(" not in sql, sql
        conn.exec_driver_sql(f"PREPARE lt_count(int, bigint) AS {sql}")
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        plan = "\n".join(conn.exec_driver_sql(f"EXPLAIN EXECUTE lt_count({haimen.id}, 10001)").scalars().all())
        assert "case_unlocated_open_idx" in plan and "$1" in plan, plan
        conn.exec_driver_sql("DEALLOCATE lt_count")
        conn.rollback()


def test_the_operator_page_shows_an_estimated_total(live_server, browser, tokens, batch, monkeypatch):
    """Past the cap the operator's list says “共 N+ 件” (N: what is known for sure), the estimate in its tip;
    below it the exact “共 N 件”."""
    import re

    from tests.cases.test_operator_page import open_page

    monkeypatch.setenv(CAP_ENV, "3")
    page = open_page(browser, live_server, "/operator", tokens["operator"])
    # the queue's count (loaded at start for an operator): at least the queued cases, with a plus
    page.wait_for_function("() => document.getElementById('queue-count').textContent.endsWith('+')", timeout=20000)
    queued = int(page.locator("#queue-count").inner_text().rstrip("+").replace(",", ""))
    assert queued >= N_OPEN_UNLOCATED
    page.click("#tabs [data-tab='list']")
    page.wait_for_selector("#list-status[data-total-exact='false']", timeout=20000)
    status = page.locator("#list-status")
    shown = page.locator("#case-list li[data-id]").count()
    assert shown >= N_OPEN_UNLOCATED  # the batch's open cases are on the list (open, newest first)
    assert status.inner_text().startswith(f"共 {max(3, shown):,}+ 件"), status.inner_text()
    assert "不再逐件计数" in status.get_attribute("title")
    monkeypatch.delenv(CAP_ENV)
    page.reload()
    page.wait_for_selector("body[data-ready='1']", timeout=15000)
    page.click("#tabs [data-tab='list']")
    page.wait_for_selector("#list-status[data-total-exact='true']", timeout=20000)
    assert re.fullmatch(r"共 \d+ 件(（显示 \d+ 件）)?", status.inner_text()), status.inner_text()
    assert not page.js_errors, page.js_errors
    page.context.close()
