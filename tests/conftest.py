"""Fixtures: a real PostGIS (the project's own cluster, a fresh test database), the Haimen demo city,
one user per role, and the app under test."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TEST_DB = os.environ.get("CITYGRID_TEST_DB", "citygrid_test")
# Files the service keeps (photos …) go to a scratch folder, never into the checkout's var/data.
os.environ.setdefault("CITYGRID_DATA_DIR", tempfile.mkdtemp(prefix="citygrid-test-data-"))

# CITYGRID_TEST_NOW=2026-12-20T10:00:00+08:00 runs the suite as if the workflow's clock
# (layers.cases.calendar.now) read that instant (it still advances with the real clock). Read ONLY here, to
# prove that the suite does not depend on the real date (e.g. late December, when a deadline opened
# "now" runs into the next year); PostgreSQL's now() and subprocesses keep the real clock.
if os.environ.get("CITYGRID_TEST_NOW"):
    from layers.cases import calendar as _lcal

    _shift = dt.datetime.fromisoformat(os.environ["CITYGRID_TEST_NOW"]) - dt.datetime.now(dt.UTC)
    _lcal.now = lambda: dt.datetime.now(dt.UTC) + _shift

#: The title of every made-up calendar year the tests load (never a real notice's).
TEST_YEAR_TITLE = "TEST DATA ONLY — not a State Council notice"


def made_up_year(year: int, note: str = "tests") -> dict:
    """A made-up holiday schedule for ``year`` (TEST DATA ONLY, not a State Council notice): 1 January
    is the only holiday, weekends are days off, no make-up workdays."""
    return {"year": year, "source": {"title": f"{TEST_YEAR_TITLE} ({note})", "document_no": "none: test data"},
            "holidays": [f"{year}-01-01"], "workdays": []}


def load_made_up_years(conn) -> list[int]:
    """Into the TEST database only: a test schedule for every year after the last configured one up to
    the year after the one 120 days from the workflow's clock. Without it, a case opened at the real
    clock in late December (or in any year after the last shipped notice) gets no deadline (the product
    refuses to guess; the case is flagged calendar_warning) and tests that expect one break with the
    date. Returns the years loaded."""
    from layers.cases import calendar as lcal

    last = lcal.build(lcal.database_years(conn)).last_year
    horizon = (lcal.now().astimezone(ZoneInfo("Asia/Shanghai")).date() + dt.timedelta(days=120)).year + 1
    years = list(range(last + 1, horizon + 1))
    for y in years:
        lcal.import_year(conn, made_up_year(y, "tests/conftest.py: real-clock deadlines in tests"),
                         loaded_by="tests/conftest.py")
    return years


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
    from layers.cases import calendar as lcal
    from layers.core.db import make_engine, migrate

    eng = make_engine(db_url)
    migrate(eng)
    with eng.begin() as conn:
        load_made_up_years(conn)
    # The process's calendar reads the test database from now on (the app's lifespan binds its own
    # engine of the same database later): a calendar built earlier from the shipped files alone is
    # dropped, and years a test loads or deletes are seen within lcal.REFRESH_SECONDS (at once with
    # calendar(force=True), and a refused deadline always looks again).
    lcal.bind(eng)
    _SESSION_ENGINE.append(eng)
    yield eng
    eng.dispose()


_SESSION_ENGINE: list = []


@pytest.fixture(autouse=True)
def _calendar_reads_the_test_database():
    """The process's calendar is one per process (a server binds it to its database). A test that starts
    an app on another database (a closed port, the external server) or runs the CLI rebinds it: bind it
    back to the test database afterwards, so later tests see the test years."""
    yield
    if _SESSION_ENGINE:
        from layers.cases import calendar as lcal

        if lcal._current.engine is not _SESSION_ENGINE[0]:
            lcal.bind(_SESSION_ENGINE[0])


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


def _wait_for_function(self, expression, *, arg=None, timeout=None, polling=None):
    """``Page.wait_for_function`` by polling ``page.evaluate`` (run through the DevTools protocol, outside
    the page's Content-Security-Policy). Playwright's own runs the predicate with ``eval`` inside the
    page, which the pages' CSP (no 'unsafe-eval') refuses — as it should for any script not theirs."""
    import time

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    limit = (30_000 if timeout is None else timeout) / 1000
    step = polling / 1000 if isinstance(polling, int | float) else 0.05
    deadline = time.monotonic() + limit
    while True:
        value = self.evaluate(expression, arg)
        if value:
            return value
        if limit and time.monotonic() > deadline:
            raise PlaywrightTimeout(f"Timeout {limit * 1000:.0f}ms exceeded waiting for {expression!r}")
        time.sleep(step)


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by Playwright (Playwright's own browser download cannot work here)."""
    from playwright.sync_api import Page, sync_playwright

    Page.wait_for_function = _wait_for_function

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
