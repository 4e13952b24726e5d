"""Fixtures: a real PostGIS (the project's own cluster, a fresh test database), the Haimen demo city,
one user per role, and the app under test."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TEST_DB = os.environ.get("CITYGRID_TEST_DB", "citygrid_test")


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
    from layers.db import make_engine, migrate

    eng = make_engine(db_url)
    migrate(eng)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def haimen(engine):
    from layers.demo import load_haimen

    with engine.begin() as conn:
        return load_haimen(conn, log=lambda *_: None)


@pytest.fixture(scope="session")
def tokens(engine) -> dict[str, str]:
    """role -> bearer token, one user per role."""
    from layers.models import ROLES
    from layers.users import add_user

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


def count(engine, sql: str, **params) -> int:
    with engine.connect() as c:
        return c.execute(text(sql), params).scalar_one()
