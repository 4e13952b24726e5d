"""The intake's group commit (layers.field.intake.ReportWriter) against the real database: concurrent
reports are written in fewer calls than reports, each answer is its own report's, a duplicate of a
report in the same batch is merged into it, and a batch that fails as a whole is written report by
report."""

from __future__ import annotations

import asyncio
import json
import uuid

from sqlalchemy import text

from tests.field.test_reports import spot


def _plan_at(haimen, engine, lon, lat, *, key=None, description="batch", category="E10301"):
    """(key, the input of cg_file_report) for an inspector's report at (lon, lat)."""
    from layers.core import grid as lgrid
    from layers.field import reports as lreports

    with engine.connect() as c:
        grid = lgrid.snapper(c, haimen)
    inp = lreports.ReportInput(category_code=category, lon=lon, lat=lat, accuracy_m=5.0, description=description)
    loc = lreports.locate_report(haimen, grid, inp, [], min_photos=0)
    key = key or uuid.uuid4().hex
    return key, lreports.plan_report(haimen, grid, loc, inp, None, key, lreports.request_hash(inp, []))


def _plans(haimen, engine, n, *, same_place=False):
    here = spot()
    return [_plan_at(haimen, engine, *(here if same_place else spot()), description=f"writer {i}") for i in range(n)]


def _run(db_url, coro_fn):
    from layers.core.db import create_async_pool

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
    from layers.core.users import hash_token

    return hash_token(tokens["inspector"])


def test_concurrent_reports_share_calls_and_keep_their_answers(db_url, engine, haimen, tokens):
    from layers.field.intake import ReportWriter

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
    from layers.field.intake import ReportWriter

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
    from layers.field import intake

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
    from layers.field.intake import ReportWriter

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


# --- The set-based batch (cg_file_reports): what writing one by one gave, report for report ---------


def _batch(db_url, token_hash, plans):
    """One call of cg_file_reports_as with these plans, in this order (no sorting, no lanes)."""
    async def go(pool):  # (the pool encodes jsonb parameters itself)
        return await pool.fetchval("SELECT cg_file_reports_as($1::jsonb)",
                                   [{"token_hash": token_hash, "roles": ["inspector"], "p": p} for p in plans])

    return _run(db_url, go)


def _offset(lon, lat, north_m, east_m):
    import math

    return lon + east_m / (111_195.0 * math.cos(math.radians(lat))), lat + north_m / 111_195.0


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
    a = _plan_at(haimen, engine, *_offset(lon, lat, 40, 0))[1]  # 40 m from the open case: merged into it
    b = _plan_at(haimen, engine, *_offset(lon, lat, 110, 0))[1]  # 70 m from a, 110 m from O: its own case
    c_ = _plan_at(haimen, engine, *_offset(lon, lat, 120, 0))[1]  # 10 m from b, 80 m from a
    d = _plan_at(haimen, engine, *_offset(lon, lat, -15, 0))[1]  # 15 m from O, 55 m from a (merged anyway)
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


def test_a_batch_answers_what_writing_one_by_one_answers(db_url, engine, haimen, tokens):
    """The same layout of reports around an open case O, written once as one batch and once report
    by report (far apart): every report gets the same status, state and original (by label)."""
    th = _token_hash(tokens)
    # label: (north m, east m); "f" is a retry of "b" (same key, same body).
    layout = [("a", (40, 0)), ("b", (0, 60)), ("c", (0, 40)), ("d", (0, 20)), ("e", (0, 105)), ("f", None),
              ("g", (-100, 0))]
    # Expected, one by one: a → O (40 m); b its own (60 m from O); c → b (20 m; O is 40 m); d → O (20 m;
    # b is 40 m); e → b (45 m); f a retry of b; g its own.
    worlds = []
    for mode in ("batch", "single"):
        lon, lat = spot()
        o = _batch(db_url, th, [_plan_at(haimen, engine, lon, lat, category="E20101")[1]])[0]["result"]["case"]
        plans, keys = [], {}
        for label, where in layout:
            if where is None:
                plans.append(plans[1])
                continue
            key, plan = _plan_at(haimen, engine, *_offset(lon, lat, *where), category="E20101")
            keys[label] = key
            plans.append(plan)
        outs = _batch(db_url, th, plans) if mode == "batch" else [_batch(db_url, th, [pl])[0] for pl in plans]
        names = {o["id"]: "O"}
        for (label, _), out in zip(layout, outs, strict=True):
            if out["status"] == 201:
                names[out["result"]["case"]["id"]] = label
        worlds.append([(label, out["status"], out["result"]["case"]["state"],
                        names.get(out["result"]["case"]["merged_into"]))
                       for (label, _), out in zip(layout, outs, strict=True)])
    batch, single = worlds
    assert batch == single
    assert single == [("a", 201, "merged", "O"), ("b", 201, "collected", None), ("c", 201, "merged", "b"),
                      ("d", 201, "merged", "O"), ("e", 201, "merged", "b"), ("f", 200, "collected", None),
                      ("g", 201, "collected", None)]


class _Concurrent:
    """Another transaction that files a report and holds it uncommitted until ``commit``."""

    def __init__(self, engine, token_hash, plan):
        import psycopg

        u = engine.url
        self.conn = psycopg.connect(host=u.query["host"], port=u.query["port"], user=u.username, dbname=u.database)
        self.first = self.conn.execute("SELECT cg_file_report_as(%s, %s, %s::jsonb)",
                                       (token_hash, ["inspector"], json.dumps(plan, default=str))).fetchone()[0]
        assert self.first["status"] == 201

    def commit_when_waited_for(self, engine, timeout=20.0):
        """Commit once some batch waits for this transaction's key claim; True if one was seen."""
        import time

        deadline, seen = time.monotonic() + timeout, False
        with engine.connect() as c:
            while time.monotonic() < deadline and not seen:
                seen = bool(c.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%cg_file_reports_as%' AND pid <> pg_backend_pid()")).scalar())
                c.rollback()  # pg_stat_activity is read once per transaction
                time.sleep(0.02)
        self.conn.commit()
        self.conn.close()
        return seen


def _in_thread(fn):
    import threading

    box = {}

    def run():
        try:
            box["value"] = fn()
        except Exception as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, box


def test_a_claim_lost_that_the_batch_depends_on_refuses_the_batch(db_url, engine, haimen, tokens):
    """Another transaction files report K (not yet committed) while a batch holds K and a report at
    the same place, which the batch took for a duplicate of its own K: the batch is refused whole
    with SQLSTATE 40001 (and wrote nothing)."""
    import asyncpg

    th = _token_hash(tokens)
    lon, lat = spot()
    key, k_plan = _plan_at(haimen, engine, lon, lat)
    near_key, near = _plan_at(haimen, engine, lon, lat, description="the same problem, another inspector's eye")
    other = _Concurrent(engine, th, k_plan)
    t, box = _in_thread(lambda: _batch(db_url, th, [k_plan, near]))
    assert other.commit_when_waited_for(engine)
    t.join(30)
    assert isinstance(box.get("error"), asyncpg.exceptions.SerializationError), box
    assert "claimed concurrently" in str(box["error"])
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM field_report WHERE idempotency_key = :k"),
                         {"k": near_key}).scalar() == 0


def test_a_claim_lost_alone_is_answered_as_a_retry(db_url, engine, haimen, tokens):
    """The same race, where no other report of the batch depends on K: K and its retry in the batch
    are answered with the other transaction's result (200); the rest of the batch is written."""
    th = _token_hash(tokens)
    lon, lat = spot()
    key, k_plan = _plan_at(haimen, engine, lon, lat)
    _, far = _plan_at(haimen, engine, *spot())
    other = _Concurrent(engine, th, k_plan)
    t, box = _in_thread(lambda: _batch(db_url, th, [k_plan, k_plan, far]))
    assert other.commit_when_waited_for(engine)
    t.join(30)
    outs = box["value"]
    assert [o["status"] for o in outs] == [200, 200, 201]
    assert outs[0]["result"] == outs[1]["result"] == other.first["result"]
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM field_report WHERE idempotency_key = :k"), {"k": key}).scalar() == 1
        assert c.execute(text("SELECT count(*) FROM field_report WHERE id = :i"),
                         {"i": outs[2]["result"]["id"]}).scalar() == 1


def test_a_refused_batch_is_written_one_by_one_by_the_writer(db_url, engine, haimen, tokens):
    """ReportWriter after that refusal: the two reports written alone, K a retry of the first and the
    other merged into its case."""
    from layers.field import intake

    th = _token_hash(tokens)
    lon, lat = spot()
    key, k_plan = _plan_at(haimen, engine, lon, lat)
    _, near = _plan_at(haimen, engine, lon, lat, description="the same problem, another inspector's eye")
    other = _Concurrent(engine, th, k_plan)
    writer = intake.ReportWriter(lanes=1)

    async def go(pool):
        return await asyncio.gather(writer.write(pool, th, ["inspector"], k_plan),
                                    writer.write(pool, th, ["inspector"], near))

    t, box = _in_thread(lambda: _run(db_url, go))
    assert other.commit_when_waited_for(engine)
    t.join(30)
    outs = box["value"]
    assert [o["status"] for o in outs] == [200, 201]
    assert outs[0]["result"] == other.first["result"]
    assert outs[1]["result"]["case"]["merged_into"] == other.first["result"]["case"]["id"]
    assert writer.batches == 1  # one batch, refused whole, then the two written alone
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM field_report WHERE idempotency_key = :k"), {"k": key}).scalar() == 1
