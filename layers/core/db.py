"""Engine and migrations. Domain code takes a SQLAlchemy ``Connection``, never a request."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event

from citygrid import settings

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"


def make_engine(url: str, *, pool_size: int | None = None, max_overflow: int | None = None,
                pool_timeout: float = 30.0) -> Engine:
    cfg = settings.database()
    engine = create_engine(
        url,
        pool_size=pool_size or cfg.pool_size,
        max_overflow=cfg.max_overflow if max_overflow is None else max_overflow,
        pool_timeout=pool_timeout,
        pool_pre_ping=True,
        connect_args={"options": f"-c statement_timeout={cfg.statement_timeout_ms} -c TimeZone=UTC"},
    )

    @event.listens_for(engine, "connect")
    def _set_app_name(dbapi_conn, _record):  # pragma: no cover - trivial
        dbapi_conn.execute("SET application_name = 'citygrid'")
        dbapi_conn.commit()

    return engine


def asyncpg_dsn(url: str) -> str:
    """The libpq-style DSN asyncpg wants, from a SQLAlchemy URL (``postgresql+psycopg://…``, with a
    socket directory in ``?host=`` for the own cluster)."""
    from urllib.parse import quote

    from sqlalchemy.engine import make_url

    u = make_url(url)
    host = u.query.get("host") or u.host or "localhost"
    port = u.query.get("port") or u.port or 5432
    auth = quote(u.username or "", safe="") + (":" + quote(u.password, safe="") if u.password else "")
    return f"postgresql://{auth}@/{quote(u.database or '', safe='')}?host={quote(str(host), safe='/')}&port={port}"


async def create_async_pool(url: str):
    """An asyncpg pool for the paths that must not wait for a thread (the intake of reports): JSON and
    JSONB come and go as Python objects; the session settings are those of :func:`make_engine`."""
    import asyncpg
    import orjson

    cfg = settings.database()

    async def init(conn):
        for typ in ("json", "jsonb"):
            await conn.set_type_codec(typ, encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads,
                                      schema="pg_catalog")

    return await asyncpg.create_pool(
        asyncpg_dsn(url), min_size=cfg.async_pool_min, max_size=cfg.async_pool_max, init=init,
        server_settings={"application_name": "citygrid", "TimeZone": "UTC",
                         "statement_timeout": str(cfg.statement_timeout_ms)})


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(engine: Engine, revision: str = "heads") -> None:
    """Bring the schema to ``revision`` (idempotent). Feature migrations may branch from the
    foundation (one branch per area: assets, cases, field work, analytics); "heads" applies them all."""
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    """The applied revision(s), comma-separated when several branches are applied."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        heads = MigrationContext.configure(conn).get_current_heads()
    return ",".join(sorted(heads)) or None


def make_read_engine(url: str, *, pool_size: int | None = None) -> Engine:
    """An engine for the read replica (``CITYGRID_DB_READ_URL``): read-only sessions, a short connect
    timeout (a replica that is away costs a moment, then reads go to the primary)."""
    cfg = settings.database()
    engine = create_engine(
        url,
        pool_size=pool_size or cfg.pool_size,
        max_overflow=cfg.max_overflow,
        pool_timeout=5.0,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 3,
                      "options": f"-c statement_timeout={cfg.statement_timeout_ms} -c TimeZone=UTC "
                                 "-c default_transaction_read_only=on"},
    )

    @event.listens_for(engine, "connect")
    def _set_app_name(dbapi_conn, _record):  # pragma: no cover - trivial
        dbapi_conn.execute("SET application_name = 'citygrid-read'")
        dbapi_conn.commit()

    return engine
