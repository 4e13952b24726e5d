"""Fixtures of the publishing tests: the assets area's small Helsinki city (exports of real OSM rows)
and the planner's auth headers."""

from __future__ import annotations

from tests.assets.conftest import helsinki, planner_h  # noqa: F401 - fixtures

