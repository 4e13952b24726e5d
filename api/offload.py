"""Heavy work runs in worker processes, not in the server's threads: case imports and photo decoding.

A route declared ``def`` runs in a worker thread, which keeps the event loop free while it waits for
the database or for C code that releases the lock (Pillow's decoders, GDAL, numpy). A case import is
different: pandas' parser, string conversions and psycopg's dumps hold the lock in single calls of
30–50 ms, many of them in a row, and every such call stops the event loop for as long (measured: health
p99 140 ms while one 50,000-row import ran in a thread). So the import runs in a process of its own
(``spawn``ed once, then reused: the grid index it loads stays warm), on its own connection, in one
transaction committed there; the route waits for it in its worker thread. Citizens' photos are checked
and re-encoded the same way (seconds of CPU for a 36 MP PNG). The workers run at nice 10: on a busy
machine the server's process — the one that answers — gets the CPU first.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from fastapi import HTTPException

from citygrid import settings

_pools: dict[str, ProcessPoolExecutor] = {}
_reniced: set[int] = set()
_lock = threading.Lock()


def _follow_parent(parent: int) -> None:
    """In a worker: exit when the server that started it is gone (even killed: no orphan keeps running
    an import, holding its connections)."""
    import os
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="citygrid-offload-parent", daemon=True).start()
    _renice(os.getpid())


NICE = 10  # batch work: the server's own process (answering requests) goes first for the CPU


def _renice(pid: int) -> None:
    import os

    try:
        os.setpriority(os.PRIO_PROCESS, pid, max(NICE, os.getpriority(os.PRIO_PROCESS, pid)))
    except OSError:
        pass


def _workers(kind: str) -> int:
    if kind == "photos":
        from gis.photos import DECODE_SLOTS

        return DECODE_SLOTS
    return settings.api().import_processes


def pool(kind: str = "imports") -> ProcessPoolExecutor:
    """The worker processes of ``kind``: "imports" (``CITYGRID_API_IMPORT_PROCESSES``) or "photos"
    (``gis.photos.DECODE_SLOTS``): a photo never waits behind an import."""
    import os

    with _lock:
        p = _pools.get(kind)
        if p is None:
            p = _pools[kind] = ProcessPoolExecutor(max_workers=_workers(kind),
                                                   mp_context=multiprocessing.get_context("spawn"),
                                                   initializer=_follow_parent, initargs=(os.getpid(),))
        return p


def shutdown() -> None:
    """Stop the workers (the server stops): an import in progress is abandoned, its transaction rolled back."""
    with _lock:
        pools = list(_pools.values())
        _pools.clear()
    procs = []
    for p in pools:
        procs += list((getattr(p, "_processes", None) or {}).values())
        p.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(5)


def _run(kind: str, fn, *args):
    try:
        p = pool(kind)
        future = p.submit(fn, *args)
        # New workers are reniced at once from here: starting (the interpreter, the imports) is their
        # most CPU-hungry moment, before their own initializer runs.
        for proc in list((getattr(p, "_processes", None) or {}).values()):
            if proc.pid not in _reniced:
                _reniced.add(proc.pid)
                _renice(proc.pid)
        return future.result()
    except BrokenProcessPool:
        with _lock:
            _pools.pop(kind, None)  # the next call starts new workers
        raise HTTPException(503, f"a worker process ({kind}) stopped (out of memory?): try again",
                            headers={"Retry-After": "10"}) from None


_engines: dict = {}


def _engine(url: str):
    eng = _engines.get(url)
    if eng is None:
        from layers.core.db import make_engine

        eng = _engines[url] = make_engine(url, pool_size=1, max_overflow=2)
    return eng


def _import_cases(url: str, city, path: str, mapping: str | None, actor, dry_run: bool) -> dict:
    """In the worker process: the import in one transaction of its own (committed unless a dry run)."""
    from layers.cases import hotline

    with _engine(url).begin() as conn:
        report = hotline.import_cases(conn, city, path, mapping=mapping, actor=actor, dry_run=dry_run, progress=False)
    return report.as_dict()


def import_cases(database_url: str, city, path, *, mapping=None, actor=None, dry_run: bool = False) -> dict:
    """:func:`layers.cases.hotline.import_cases` in a worker process; its report as a dict. Bad input raises
    the importer's own errors (InputError → 422) here; a worker that died is a 503."""
    return _run("imports", _import_cases, database_url, city, str(path), None if mapping is None else str(mapping),
                actor, dry_run)


def _citizen_photo(data: bytes) -> bytes:
    from layers.cases import citizen

    return citizen.check_photo(data)


def citizen_photo(data: bytes) -> bytes:
    """:func:`layers.cases.citizen.check_photo` (size, type, pixels from the header, full decode, public copy) in
    a worker process: decoding a 36 MP photo is seconds of CPU that the server's process does not spend."""
    return _run("photos", _citizen_photo, data)
