"""The fast intake of inspector reports without photos: one asyncpg round trip per report.

The JSON report is the busiest write of the field channel (an inspector's app files one per problem
found, and re-sends the whole outbox when the network comes back). The synchronous path costs a
thread and eleven queries; this one runs on the event loop and costs one call of the database
function ``cg_file_report_as`` (migration 0012), which checks the bearer token, claims the
Idempotency-Key, opens (or merges) the case and stores the answer in the same statement.

Everything that is decided in Python is shared with the synchronous path (layers.reports:
``locate_report``, ``plan_report``, ``report_outcome``): the two paths cannot drift apart. What this
module adds is only where things come from on the event loop: the city and its loaded grid are
cached per process, and the database says when the cached grid is no longer the active one (410 →
reload and snap again). Reports that need the asset registry (component classes, or an asset
named) take the synchronous path: that lookup is a query of its own anyway.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from layers import city as lcity
from layers import grid as lgrid
from layers import reports as lreports
from layers.errors import Conflict


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
            return hit


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
        out = await pool.fetchval("SELECT cg_file_report_as($1, $2, $3::jsonb)", token_hash, sorted(roles), params)
        if out["status"] in (401, 403):
            return out
        try:
            result, created = lreports.report_outcome(out)
        except lreports.GridChanged:
            place = await places.get(slug, stale=place)
            continue
        return {"status": 201 if created else 200, "result": result}
    raise Conflict("the city's grid is being replaced: retry the report")  # pragma: no cover
