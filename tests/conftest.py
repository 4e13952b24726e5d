"""Fixtures: a real PostGIS (the project's own cluster, a fresh test database), the Haimen demo city,
one user per role, and the app under test."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TEST_DB = os.environ.get("CITYGRID_TEST_DB", "citygrid_test")
# Files the service keeps (photos …) go to a scratch folder, never into the checkout's var/data.
os.environ.setdefault("CITYGRID_DATA_DIR", tempfile.mkdtemp(prefix="citygrid-test-data-"))


def _recreate_database(cluster, name: str) -> None:
    from citygrid import settings

    with psycopg.connect(host=str(cluster.socket_dir), port=cluster.port, user=settings.database().user,
                         dbname="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


@pytest.fixture(scope="session")
def db_url() -> str:
    from citygrid import dbcluster

    cluster = dbcluster.start(log=lambda *_: None)
    _recreate_database(cluster, TEST_DB)
    return cluster.url(TEST_DB)


@pytest.fixture(scope="session")
def engine(db_url):
    from layers.core.db import make_engine, migrate

    eng = make_engine(db_url)
    migrate(eng)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def haimen(engine):
    from layers.demo.haimen import load_haimen

    with engine.begin() as conn:
        return load_haimen(conn, log=lambda *_: None)


@pytest.fixture(scope="session")
def tokens(engine) -> dict[str, str]:
    """role -> bearer token, one user per role."""
    from layers.core.models import ROLES
    from layers.core.users import add_user

    out = {}
    with engine.begin() as conn:
        for role in ROLES:
            _, tok = add_user(conn, f"test_{role}", role, department="测试部门" if role == "department" else None)
            out[role] = tok
    return out


@pytest.fixture(scope="session")
def app(engine, db_url, haimen):
    from api.app import create_app

    return create_app(db_url)


@pytest.fixture(scope="session")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def conn(engine):
    """A connection whose work is rolled back after the test."""
    with engine.connect() as c:
        tx = c.begin()
        yield c
        tx.rollback()


def rollup_equals_cases(conn, city) -> int:
    """Assert that the city's case rollup equals a count of its cases (duplicates left out), computed
    here from case_file; the number of rollup rows."""
    a = conn.execute(text("""SELECT cell_id, day, category_code, channel, n FROM case_rollup WHERE city_id = :c
                             ORDER BY 1, 2, 3, 4"""), {"c": city.id}).all()
    b = conn.execute(text("""SELECT COALESCE(cell_id, 0), (received_at AT TIME ZONE 'Asia/Shanghai')::date,
                                    category_code, channel, count(*)::int FROM case_file
                             WHERE city_id = :c AND merged_into IS NULL GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"""),
                     {"c": city.id}).all()
    assert [tuple(r) for r in a] == [tuple(r) for r in b]
    return len(a)


def concurrently(n: int, fn) -> list:
    """fn() called in n threads at once; their results (in completion order)."""
    import threading

    results = []
    threads = [threading.Thread(target=lambda: results.append(fn())) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def count(engine, sql: str, **params) -> int:
    with engine.connect() as c:
        return c.execute(text(sql), params).scalar_one()


@pytest.fixture(scope="session")
def live_server(app):
    """The app served by uvicorn on a free local port, in a thread (for browser tests)."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by Playwright (Playwright's own browser download cannot work here)."""
    from playwright.sync_api import sync_playwright

    exe = "/usr/bin/chromium"
    if not Path(exe).exists():
        pytest.fail("Debian's chromium is not installed: `make test` installs it (scripts/bootstrap.sh test)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


def metric_city(conn, slug: str, name: str, adcode: str, boundary, *, srid: int = 4549, cell_size: float = 100.0):
    """(city, created): the test city ``slug`` with a regular grid, made from a boundary given in the
    metric CRS ``srid`` on first use in this session's database, found again afterwards."""
    from layers.core import city as lcity
    from layers.core.errors import NotFound

    try:
        return lcity.get_city(conn, slug), False
    except NotFound:
        pass
    city = lcity.create_city(conn, slug=slug, name=name, adcode=adcode, boundary=boundary,
                             src_crs=f"EPSG:{srid}", working_epsg=srid)
    lcity.generate_grid(conn, city, size=cell_size)
    return city, True
