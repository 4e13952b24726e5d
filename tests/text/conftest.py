"""Fixtures of the text tests: the real Chinese messages (from the settings' shared_data path, never
copied into the project; a test needing them is skipped when they are missing) and a CLI bound to
the test database."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


# Level-2 codes of the demo catalog and made-up ways of saying them.
SAYINGS = {
    "0110": ["路灯不亮", "路灯坏了晚上很黑", "这一段路灯一直不亮", "路灯杆倾斜", "路灯闪烁不停"],
    "H101": ["夜间施工噪声很大", "工地晚上施工太吵", "广场舞声音扰民", "商铺音响噪声扰民", "半夜装修噪音"],
    "E101": ["垃圾桶满了没人清运", "路边堆放大量垃圾", "生活垃圾乱扔", "垃圾发臭无人处理", "大件垃圾堆在路边"],
}


@pytest.fixture(scope="session")
def city_model(engine, haimen):
    """A model of the demo catalog's level-2 codes stored as the city's intake model."""
    from layers.cases.workflow import ensure_departments
    from layers.text import classify
    from tests.text.test_classify import PLACES

    rng = np.random.default_rng(3)
    texts, labels = [], []
    for code, ph in SAYINGS.items():
        for _ in range(15):
            texts.append(f"{rng.choice(PLACES)}{rng.choice(ph)}，请处理")
            labels.append(code)
    m = classify.train(texts, labels, cv=False)
    with engine.begin() as conn:
        ensure_departments(conn, haimen)
        classify.save(conn, m, name=haimen.slug, city_id=haimen.id)
    return m
