"""Fixtures of the text tests: the real Chinese messages (from the settings' shared_data path, never
copied into the project; a test needing them is skipped when they are missing) and a CLI bound to
the test database."""

from __future__ import annotations

from pathlib import Path

import pytest


def zh_file(name: str) -> Path:
    from citygrid import settings

    p = settings.paths().shared_data / "zh_messages" / name
    if not p.is_file():
        pytest.skip(f"the real messages are not here: {p} is missing (see ../shared/data/zh_messages/README.md)")
    return p


@pytest.fixture
def cli(monkeypatch, db_url):
    """citygrid.cli.main against the test database."""
    from citygrid import cli as ccli
    from citygrid import settings

    monkeypatch.setenv("DATABASE_URL", db_url)
    if hasattr(settings.database, "cache_clear"):
        settings.database.cache_clear()
    yield ccli.main
    if hasattr(settings.database, "cache_clear"):
        settings.database.cache_clear()
