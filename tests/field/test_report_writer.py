"""The intake's group commit (layers.intake.ReportWriter) against the real database: concurrent
reports are written in fewer calls than reports, each answer is its own report's, a duplicate of a
report in the same batch is merged into it, and a batch that fails as a whole is written report by
report."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import text

from tests.field.test_reports import spot


def _plans(haimen, engine, n, *, same_place=False):
    from layers import grid as lgrid
    from layers import reports as lreports

    with engine.connect() as c:
        grid = lgrid.snapper(c, haimen)
    lon, lat = spot()
    out = []
    for i in range(n):
        if not same_place:
            lon, lat = spot()
        inp = lreports.ReportInput(category_code="E10301", lon=lon, lat=lat, accuracy_m=5.0,
                                   description=f"writer {i}")
        loc = lreports.locate_report(haimen, grid, inp, [], min_photos=0)
        key = uuid.uuid4().hex
        out.append((key, lreports.plan_report(haimen, grid, loc, inp, None, key, lreports.request_hash(inp, []))))
    return out


def _run(db_url, coro_fn):
    from layers.db import create_async_pool

    async def main():
        pool = await create_async_pool(db_url)
        try:
            return await coro_fn(pool)
        finally:
            await pool.close()

    # In a thread of its own: the browser tests' Playwright keeps an event loop in this one.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, main()).result()


def _token_hash(tokens):
    from layers.users import hash_token

    return hash_token(tokens["inspector"])


def test_concurrent_reports_share_calls_and_keep_their_answers(db_url, engine, haimen, tokens):
    from layers.intake import ReportWriter

    plans = _plans(haimen, engine, 30)
    writer = ReportWriter(lanes=1)

    async def go(pool):
        return await asyncio.gather(*[writer.write(pool, _token_hash(tokens), ["inspector"], p) for _, p in plans])

    outs = _run(db_url, go)
    assert [o["status"] for o in outs] == [201] * 30
    assert writer.reports == 30 and writer.batches < 30  # written together, not one call each
    with engine.connect() as c:
        for (key, plan), out in zip(plans, outs, strict=True):
            row = c.execute(text("SELECT idempotency_key, description, cell_code, response FROM field_report "
                                 "WHERE id = :i"), {"i": out["result"]["id"]}).one()
            assert row[0] == key and row[1] == plan["report"]["description"]
            assert row[2] == plan["report"]["cell_code"] and row[3] == out["result"]


def test_a_duplicate_in_the_same_batch_is_merged_into_the_first(db_url, engine, haimen, tokens):
    from layers.intake import ReportWriter

    plans = _plans(haimen, engine, 4, same_place=True)
    writer = ReportWriter(lanes=1)

    async def go(pool):
        return await asyncio.gather(*[writer.write(pool, _token_hash(tokens), ["inspector"], p) for _, p in plans])

    outs = _run(db_url, go)
    cases = [o["result"]["case"] for o in outs]
    originals = [c for c in cases if c["state"] == "collected"]
    assert len(originals) == 1
    assert all(c["merged_into"] == originals[0]["id"] for c in cases if c is not originals[0])


def test_a_failed_batch_is_written_report_by_report(db_url, engine, haimen, tokens, monkeypatch):
    from layers import intake

    plans = _plans(haimen, engine, 6)
    monkeypatch.setattr(intake, "BATCH", "SELECT cg_no_such_function($1::jsonb)")
    writer = intake.ReportWriter(lanes=1)

    async def go(pool):
        # One report alone first, so that the others queue up behind it and go as one batch.
        first = asyncio.ensure_future(writer.write(pool, _token_hash(tokens), ["inspector"], plans[0][1]))
        await asyncio.sleep(0)
        rest = [writer.write(pool, _token_hash(tokens), ["inspector"], p) for _, p in plans[1:]]
        return [await first, *await asyncio.gather(*rest)]

    outs = _run(db_url, go)
    assert [o["status"] for o in outs] == [201] * 6
    assert writer.batches == 2  # the first alone, then the five as one batch, which failed
    with engine.connect() as c:
        n = c.execute(text("SELECT count(*) FROM field_report WHERE idempotency_key = ANY(:k)"),
                      {"k": [k for k, _ in plans]}).scalar_one()
    assert n == 6


def test_an_unknown_token_in_a_batch_is_refused_alone(db_url, engine, haimen, tokens):
    from layers.intake import ReportWriter

    plans = _plans(haimen, engine, 3)
    writer = ReportWriter(lanes=1)
    hashes = [_token_hash(tokens), "0" * 64, _token_hash(tokens)]

    async def go(pool):
        return await asyncio.gather(*[writer.write(pool, h, ["inspector"], p)
                                      for h, (_, p) in zip(hashes, plans, strict=True)])

    outs = _run(db_url, go)
    assert [o["status"] for o in outs] == [201, 401, 201]
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM field_report WHERE idempotency_key = :k"),
                         {"k": plans[1][0]}).scalar_one() == 0


# --- The set-based batch (migration 0016): what writing one by one gave, report for report ---------


def _plan_at(haimen, engine, lon, lat, *, key=None, description="batch", category="E10301"):
    from layers import grid as lgrid
    from layers import reports as lreports

    with engine.connect() as c:
        grid = lgrid.snapper(c, haimen)
    inp = lreports.ReportInput(category_code=category, lon=lon, lat=lat, accuracy_m=5.0, description=description)
    loc = lreports.locate_report(haimen, grid, inp, [], min_photos=0)
    key = key or uuid.uuid4().hex
    return key, lreports.plan_report(haimen, grid, loc, inp, None, key, lreports.request_hash(inp, []))


def _batch(db_url, token_hash, plans):
    """One call of cg_file_reports_as with these plans, in this order (no sorting, no lanes)."""
    async def go(pool):  # (the pool encodes jsonb parameters itself)
        return await pool.fetchval("SELECT cg_file_reports_as($1::jsonb)",
                                   [{"token_hash": token_hash, "roles": ["inspector"], "p": p} for p in plans])

    return _run(db_url, go)


def _north(lon, lat, metres):
    return lon, lat + metres / 111_195.0


def test_a_key_twice_in_one_batch_is_one_report(db_url, engine, haimen, tokens):
    lon, lat = spot()
    key, plan = _plan_at(haimen, engine, lon, lat)
    _, other = _plan_at(haimen, engine, lon, lat, key=key, description="another body, same key")
    outs = _batch(db_url, _token_hash(tokens), [plan, plan, other])
    assert [o["status"] for o in outs] == [201, 200, 409]
    assert outs[1]["result"] == outs[0]["result"]
    assert "was used already for a different report" in outs[2]["message"]
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM field_report WHERE idempotency_key = :k"), {"k": key}).scalar() == 1


def test_a_batch_answers_each_report_its_own_status(db_url, engine, haimen, tokens):
    lon, lat = spot()
    _, fresh = _plan_at(haimen, engine, lon, lat)
    first = _batch(db_url, _token_hash(tokens), [fresh])[0]
    _, stale = _plan_at(haimen, engine, *spot())
    stale["grid_version"] = "1999-01-01 00:00:00+00"
    _, new = _plan_at(haimen, engine, *spot())

    async def go(pool):
        items = [{"token_hash": _token_hash(tokens), "roles": ["inspector"], "p": fresh},  # a retry
                 {"token_hash": "0" * 64, "roles": ["inspector"], "p": new},  # unknown token
                 {"token_hash": _token_hash(tokens), "roles": ["operator"], "p": new},  # role not allowed
                 {"token_hash": _token_hash(tokens), "roles": ["inspector"], "p": stale},  # grid changed
                 {"token_hash": _token_hash(tokens), "roles": ["inspector"], "p": new}]
        return await pool.fetchval("SELECT cg_file_reports_as($1::jsonb)", items)

    outs = _run(db_url, go)
    assert [o["status"] for o in outs] == [200, 401, 403, 410, 201]
    assert outs[0]["result"] == first["result"] and outs[2]["role"] == "inspector"
    with engine.connect() as c:
        n = c.execute(text("SELECT count(*) FROM field_report WHERE idempotency_key = :k"),
                      {"k": stale["report"]["idempotency_key"]}).scalar()
    assert n == 0


def test_the_nearest_original_wins_between_open_cases_and_the_batch(db_url, engine, haimen, tokens):
    """Open case O; in one batch: a (40 m from O) is merged into O; b (110 m) is a case of its own;
    c, 10 m from b, is merged into b; d, 15 m from O on the other side, into O."""
    th = _token_hash(tokens)
    lon, lat = spot()
    opened = _batch(db_url, th, [_plan_at(haimen, engine, lon, lat)[1]])[0]["result"]["case"]
    a = _plan_at(haimen, engine, *_north(lon, lat, 40))[1]  # 40 m from the open case: merged into it
    b = _plan_at(haimen, engine, *_north(lon, lat, 110))[1]  # 70 m from a, 110 m from O: its own case
    c_ = _plan_at(haimen, engine, *_north(lon, lat, 120))[1]  # 10 m from b, 80 m from a
    d = _plan_at(haimen, engine, *_north(lon, lat, -15))[1]  # 15 m from O, 55 m from a (merged anyway)
    outs = _batch(db_url, th, [a, b, c_, d])
    cases = [o["result"]["case"] for o in outs]
    assert [o["status"] for o in outs] == [201] * 4
    assert cases[0]["state"] == "merged" and cases[0]["merged_into"] == opened["id"]
    assert cases[1]["state"] == "collected" and cases[1]["merged_into"] is None
    assert cases[2]["merged_into"] == cases[1]["id"] and cases[2]["merged_into_no"] == cases[1]["case_no"]
    assert cases[3]["merged_into"] == opened["id"]
    with engine.connect() as c:
        rows = {r[0]: r[1:] for r in c.execute(text(
            "SELECT id, state, merged_into, step_deadline_at IS NULL FROM case_file WHERE id = ANY(:i)"),
            {"i": [x["id"] for x in cases]})}
        events = c.execute(text("SELECT case_id, kind, from_state, to_state, data FROM case_event "
                                "WHERE case_id = ANY(:i) ORDER BY id"),
                           {"i": [x["id"] for x in cases] + [opened["id"]]}).all()
    assert rows[cases[1]["id"]] == ("collected", None, False)
    assert rows[cases[2]["id"]] == ("merged", cases[1]["id"], True)  # a duplicate has no step clock
    merged_b = [e for e in events if e[0] == cases[1]["id"] and e[1] == "merged"]
    assert [(e[2], e[3], e[4]) for e in merged_b] == [
        ("collected", "collected", {"duplicate": cases[2]["id"], "duplicate_no": cases[2]["case_no"]})]
    on_opened = sorted(e[4]["duplicate"] for e in events if e[0] == opened["id"] and e[1] == "merged")
    assert on_opened == sorted([cases[0]["id"], cases[3]["id"]])
    for x in cases:  # each: received first; then a duplicate's merge, or the original's (b)
        kinds = [e[1] for e in events if e[0] == x["id"]]
        assert kinds == (["received", "merged"] if x["merged_into"] is not None or x is cases[1] else ["received"])


def test_a_claim_lost_to_a_concurrent_writer_falls_back_to_one_by_one(db_url, engine, haimen, tokens):
    """Another transaction files report K (not yet committed) while a batch holds K and a report at
    the same place: the batch, which took the other for a duplicate of its own K, is refused whole
    (40001) and written report by report: K is a retry of the first, the other merged into its case."""
    import json
    import threading
    import time

    import psycopg

    from layers import intake

    th = _token_hash(tokens)
    lon, lat = spot()
    key, k_plan = _plan_at(haimen, engine, lon, lat)
    # The same spot, hence the same cell: the batch keeps K first (it is sorted by cell).
    _, near = _plan_at(haimen, engine, lon, lat, description="the same problem, another inspector's eye")
    u = engine.url
    other = psycopg.connect(host=u.query["host"], port=u.query["port"], user=u.username, dbname=u.database)
    first = other.execute("SELECT cg_file_report_as(%s, %s, %s::jsonb)",
                          (th, ["inspector"], json.dumps(k_plan, default=str))).fetchone()[0]
    writer = intake.ReportWriter(lanes=1)
    outs = []

    async def go(pool):
        return await asyncio.gather(writer.write(pool, th, ["inspector"], k_plan),
                                    writer.write(pool, th, ["inspector"], near))

    t = threading.Thread(target=lambda: outs.extend(_run(db_url, go)))
    t.start()
    deadline = time.monotonic() + 20
    with engine.connect() as c:  # until the batch waits for the other transaction's claim of K
        while time.monotonic() < deadline and not c.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%cg_file_reports_as%'"
                )).scalar():
            time.sleep(0.05)
    other.commit()
    other.close()
    t.join(30)
    assert first["status"] == 201
    assert [o["status"] for o in outs] == [200, 201]
    assert outs[0]["result"] == first["result"]
    assert outs[1]["result"]["case"]["merged_into"] == first["result"]["case"]["id"]
    assert writer.batches == 1  # one batch, refused whole, then the two written alone
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM field_report WHERE idempotency_key = :k"), {"k": key}).scalar() == 1
