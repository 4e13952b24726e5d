"""The fast intake of inspector reports without photos: one asyncpg round trip per batch.

The JSON report is the busiest write of the field channel (an inspector's app files one per problem
found, and re-sends the whole outbox when the network comes back). The synchronous path costs a
worker thread and a query each for the token, the city and the write; this one runs on the event
loop, and the reports that arrive together cost one call of the database function
``cg_file_reports_as`` (migration 0012), which checks the bearer tokens, claims the
Idempotency-Keys, opens (or merges) the cases and stores the answers.

Everything that is decided in Python is shared with the synchronous path (layers.field.reports:
``locate_report``, ``plan_report``, ``report_outcome``): the two paths cannot drift apart. What this
module adds is only where things come from on the event loop: the city and its loaded grid are
cached per process, and the database says when the cached grid is no longer the active one (410 →
reload and snap again). Reports that need the asset registry (component classes, or an asset
named) take the synchronous path: that lookup is a query of its own anyway.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from layers.core import city as lcity
from layers.core import grid as lgrid
from layers.core.errors import Conflict
from layers.field import reports as lreports


@dataclass(frozen=True)
class Place:
    city: lcity.CityInfo
    grid: lgrid.LoadedGrid


class PlaceCache:
    """City slug → (city, loaded grid), loaded through the synchronous engine in a worker thread on
    first use and again whenever the database reports that the grid changed."""

    def __init__(self, engine):
        self.engine = engine
        self._places: dict[str, Place] = {}
        self._locks: dict[tuple, asyncio.Lock] = {}  # per event loop and city: a lock belongs to one loop

    def _load(self, slug: str) -> Place:
        with self.engine.connect() as conn:
            city = lcity.get_city(conn, slug)
            return Place(city, lgrid.snapper(conn, city))

    async def get(self, slug: str, *, stale: Place | None = None) -> Place:
        hit = self._places.get(slug)
        if hit is not None and hit is not stale:
            return hit
        lock = self._locks.setdefault((asyncio.get_running_loop(), slug), asyncio.Lock())
        async with lock:  # one load per city; the others wait for it
            hit = self._places.get(slug)
            if hit is None or hit is stale:
                hit = await run_in_threadpool(self._load, slug)
                self._places[slug] = hit
                # The loaded grid is a million long-lived objects: out of the cyclic collector's
                # sight, a full collection no longer stalls every request in flight for ~0.1 s.
                gc.freeze()
            return hit


SINGLE = "SELECT cg_file_report_as($1, $2, $3::jsonb)"
BATCH = "SELECT cg_file_reports_as($1::jsonb)"


class ReportWriter:
    """Group commit for the intake: reports that arrive while the database is busy are written
    together, in one call and one transaction (``cg_file_reports_as``, each report by the same
    ``cg_file_report_as`` as alone), so that a burst pays one commit and one round trip per batch
    instead of per report. Nothing waits for a batch to fill: a report that finds a lane free is
    written at once, alone. At most ``lanes`` batches are in the database at a time.

    Each report is still acknowledged only after the transaction that holds it has committed. A
    batch that fails as a whole (a deadlock, a lost connection) wrote nothing; its reports are then
    written one by one, so one report's error stays its own. A batch is written in arrival order,
    so that the duplicate rule (并单) sees the reports as if they had come one by one.
    """

    def __init__(self, lanes: int = 2, max_batch: int = 64):
        self.lanes, self.max_batch = lanes, max_batch
        self._waiting: list[tuple] = []
        self._running = 0
        self._tasks: set = set()  # the lanes' tasks, held (the loop keeps only weak references)
        self.batches = 0  # calls made, for the tests and the bench
        self.reports = 0

    async def write(self, pool, token_hash: str, roles, params: dict) -> dict:
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append((token_hash, sorted(roles), params, fut))
        if self._running < self.lanes:
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._lane(pool))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await fut

    async def _lane(self, pool) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
                try:
                    await self._write(pool, batch)
                except BaseException as e:  # no request is left waiting for an answer
                    for item in batch:
                        _settle(item[3], error=e if isinstance(e, Exception) else RuntimeError("intake stopped"))
                    if not isinstance(e, Exception):
                        raise
        finally:
            self._running -= 1

    async def _write(self, pool, batch: list[tuple]) -> None:
        self.batches += 1
        self.reports += len(batch)
        try:
            if len(batch) == 1:
                outs = [await pool.fetchval(SINGLE, *batch[0][:3])]
            else:
                outs = await pool.fetchval(BATCH, [{"token_hash": t, "roles": r, "p": p} for t, r, p, _ in batch])
        except Exception as e:  # noqa: BLE001 - the batch wrote nothing: each report on its own
            if len(batch) == 1:
                _settle(batch[0][3], error=e)
                return
            for t, r, p, fut in batch:
                try:
                    _settle(fut, await pool.fetchval(SINGLE, t, r, p))
                except Exception as e1:  # noqa: BLE001 - this report's own error, to its request
                    _settle(fut, error=e1)
            return
        for item, out in zip(batch, outs, strict=True):
            _settle(item[3], out)


def _settle(fut, out=None, error=None) -> None:
    if fut.done():  # the request went away (client gone); its report is written all the same
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(out)


_writers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def writer() -> ReportWriter:
    """The report writer of the running event loop."""
    from citygrid import settings

    loop = asyncio.get_running_loop()
    w = _writers.get(loop)
    if w is None:
        w = _writers[loop] = ReportWriter(lanes=settings.database().intake_lanes)
    return w


async def file_report(pool, places: PlaceCache, slug: str, token_hash: str, roles, inp: lreports.ReportInput,
                      key: str) -> dict:
    """File a JSON report (no photos) for the holder of ``token_hash`` if its role is in ``roles``.

    Returns cg_file_report's answer: ``{"status": 201|200, "result": ...}``, or ``{"status": 401}`` /
    ``{"status": 403, "role": ...}`` for the token; raises InputError (→ 422) for a refused report
    and Conflict for a reused key. The caller turns the statuses into HTTP answers.
    """
    req_hash = lreports.request_hash(inp, [])
    place = await places.get(slug)
    for _attempt in range(3):
        loc = lreports.locate_report(place.city, place.grid, inp, [], min_photos=0)
        params = lreports.plan_report(place.city, place.grid, loc, inp, None, key, req_hash)
        out = await writer().write(pool, token_hash, roles, params)
        if out["status"] in (401, 403):
            return out
        try:
            result, created = lreports.report_outcome(out)
        except lreports.GridChanged:
            place = await places.get(slug, stale=place)
            continue
        return {"status": 201 if created else 200, "result": result}
    raise Conflict("the city's grid is being replaced: retry the report")  # pragma: no cover
