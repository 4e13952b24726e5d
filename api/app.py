"""FastAPI application factory. The connection pool lives in the lifespan (pattern of tipg)."""

from __future__ import annotations

import importlib
import logging
import pkgutil
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

import api.routers
from api import errors as api_errors
from api import readpool, validation
from api.fastpath import CachedTileFastPath, ReportIntakeFastPath
from api.headers import PAGES, SecurityHeaders
from api.limits import BodyLimit, DatabaseUnavailable, RateLimits
from citygrid import settings
from gis.crs import CRSError
from layers.core.errors import (
    CalendarMissing,
    CodedError,
    Conflict,
    Forbidden,
    InputError,
    NotFound,
    hide_paths,
)

STATIC = Path(__file__).resolve().parents[1] / "static"
log = logging.getLogger("citygrid")


def routers() -> list:
    """Every ``router`` of the modules in ``api/routers`` (one module per kind of user or concern)."""
    found = []
    for info in sorted(pkgutil.iter_modules(api.routers.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"api.routers.{info.name}")
        if hasattr(module, "router"):
            found.append(module.router)
    return found


def _handler(status: int):
    """The answer of an error raised below the routers: ``detail`` (English, as always), a stable
    ``code``, ``message`` in Chinese and ``message_en`` (api/errors.py)."""
    async def handle(_: Request, e: Exception) -> JSONResponse:
        if isinstance(e, CodedError):
            return JSONResponse(api_errors.coded_body(e), status_code=status)
        code = "crs_invalid" if isinstance(e, CRSError) else None
        return JSONResponse(api_errors.body(status, hide_paths(str(e)), code), status_code=status)

    return handle


async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
    """HTTPException of the routers and dependencies (401, 403, 413, 429 …): the same body."""
    # A router may pass on a coded layer error's code and Chinese text (e.code, e.message_zh).
    return JSONResponse(api_errors.body(e.status_code, e.detail, getattr(e, "code", None), getattr(e, "message_zh", None)),
                        status_code=e.status_code, headers=getattr(e, "headers", None))


def _page(name: str):
    def page():
        return FileResponse(STATIC / name / "index.html")

    return page


def _ensure_partitions(engine) -> None:
    """The case tables' monthly partitions for this month and the next three, and the months of rows
    waiting in the default partitions (layers.cases.partitions.upkeep): every start makes the ones
    missing, and :func:`_partition_upkeep_loop` again while the server runs (a month without its
    partition still takes cases, in the default partition, until then)."""
    from sqlalchemy import text

    from layers.cases import partitions

    try:
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '5s'"))  # never hold the start behind a long transaction
            made = partitions.upkeep(conn)
        if made:
            log.info("case partitions created: %s", ", ".join(made))
    except Exception as e:  # noqa: BLE001 - a server starts without them (cases go to the default partition)
        log.warning("case partitions not checked: %s", e)


async def _partition_upkeep_loop(engine) -> None:
    """Partition upkeep again every ``CITYGRID_CASES_PARTITION_UPKEEP_HOURS`` while the server runs, so
    that a server up for months makes its next months itself (every worker process runs it: it is
    idempotent, and a worker that meets another's lock gives up for this round)."""
    import asyncio

    from starlette.concurrency import run_in_threadpool

    while True:
        await asyncio.sleep(settings.case_list().partition_upkeep_hours * 3600)
        await run_in_threadpool(_ensure_partitions, engine)


def create_app(database_url: str | None = None) -> FastAPI:
    """Build the app; ``database_url`` defaults to DATABASE_URL or the project's own cluster."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from api.deps import close_apool
        from citygrid.dbcluster import database_url as resolve_url
        from layers.core.db import make_engine
        from layers.field.intake import PlaceCache

        app.state.database_url = database_url or resolve_url()
        app.state.engine = make_engine(app.state.database_url)
        app.state.places = PlaceCache(app.state.engine)
        readpool.open_read_pool(app)  # CITYGRID_DB_READ_URL: read-only heavy work on the replica
        from layers.cases import calendar as lcal

        lcal.bind(app.state.engine)  # calendar years loaded by any process are seen by this one
        _ensure_partitions(app.state.engine)

        # What start-up made lives as long as the server: out of the cyclic collector's way, so that a
        # full collection (which stops every request in flight) does not walk it again and again.
        import gc

        gc.collect()
        gc.freeze()
        import asyncio

        upkeep = asyncio.create_task(_partition_upkeep_loop(app.state.engine), name="citygrid-partition-upkeep")
        try:
            yield
        finally:
            from api import offload

            upkeep.cancel()

            offload.shutdown()
            await close_apool(app)
            readpool.close_read_pool(app)
            app.state.engine.dispose()

    app = FastAPI(
        title="citygrid 网格化城市管理",
        version="0.1.0",
        description="12345 热线与数字城管的网格化管理服务 — grid management for a 12345 hotline center "
                    "and digital urban management. Authenticate with `Authorization: Bearer <token>`.",
        lifespan=lifespan,
        dependencies=[Depends(validation.check_form)],
    )

    # Errors of bad input raised below the routers become 4xx answers that say what is wrong.
    for exc, status in ((InputError, 422), (CRSError, 422), (NotFound, 404), (Conflict, 409), (Forbidden, 403)):
        app.add_exception_handler(exc, _handler(status))
    # A deadline that needs a calendar year nobody loaded: the operator is told to load it.
    app.add_exception_handler(CalendarMissing, _handler(503))
    app.add_exception_handler(StarletteHTTPException, _http_error)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError):
        # Say what is wrong, in short, without echoing huge inputs back (the body the OpenAPI declares).
        return JSONResponse(validation.error_body(e.errors()), status_code=422)

    for router in routers():
        app.include_router(router)
    app.state.rate_limits = RateLimits()
    # Pure-ASGI middleware, innermost first: the fast paths; the body cap (before any body is read, also
    # the fast paths'); 503 while the database cannot be reached; security headers on every answer.
    app.add_middleware(CachedTileFastPath)
    app.add_middleware(ReportIntakeFastPath)
    app.add_middleware(validation.ParameterGuard)  # outside the fast paths
    validation.declare_error_schema(app)
    app.add_middleware(BodyLimit)
    app.add_middleware(DatabaseUnavailable)
    from api.basemaps import tile_hosts

    app.add_middleware(SecurityHeaders, static=STATIC, tile_hosts=tile_hosts(settings.basemap()))  # base maps' tile hosts
    app.add_middleware(readpool.WalMark)  # outermost: the WAL position of every write (the read replica)
    if settings.api().worker_header:  # which worker process answered (tests of several workers)
        from api.workers import WorkerHeader

        app.add_middleware(WorkerHeader)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html")

    # The pages of each kind of user: static/<page>/index.html served at /<page>.
    for page in PAGES:
        if (STATIC / page / "index.html").exists():
            app.add_api_route(f"/{page}", _page(page), include_in_schema=False, methods=["GET"])

    return app
