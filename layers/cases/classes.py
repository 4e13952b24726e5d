"""The case classes and their time limits: the configuration the workflow and the duplicate rule (并单)
both read (``data/catalog.json``, ``data/limits.json``). Its own module so that neither has to import
the other for it."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


@lru_cache
def _catalog_raw() -> list[dict]:
    return json.loads((DATA / "catalog.json").read_text(encoding="utf-8"))["items"]


@lru_cache
def catalog() -> dict[str, dict]:
    """code → class, with kind/department/limit/urgency/check/dup rule inherited from its parents."""
    raw = {i["code"]: dict(i) for i in _catalog_raw()}
    out: dict[str, dict] = {}

    def resolve(code: str) -> dict:
        if code in out:
            return out[code]
        item = dict(raw[code])
        parent = resolve(item["parent"]) if item.get("parent") else {}
        for key in ("kind", "department", "limit", "urgency", "check", "dup_radius_m", "dup_window_h",
                    "feedback_photos_required"):
            if key not in item and key in parent:
                item[key] = parent[key]
        item["level"] = parent.get("level", 0) + 1
        item["path"] = [*parent.get("path", []), item["name"]]
        out[code] = item
        return item

    for code in raw:
        resolve(code)
    return out


@lru_cache
def limits() -> dict:
    return json.loads((DATA / "limits.json").read_text(encoding="utf-8"))
