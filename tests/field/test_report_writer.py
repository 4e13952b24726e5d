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
