"""Shapes shared by the gis tests: a synthetic boundary and Haimen's real one in its working CRS."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
import shapely

from gis.crs import transform_geometry

HAIMEN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "haimen" / "haimen_boundary_gcj02.geojson"


def synthetic_boundary():
    """An L-shaped polygon with a hole and a diagonal edge, off the grid lines, in metres."""
    outer = [
        (1013.7, 2051.3),
        (2987.2, 2049.9),
        (2990.4, 2870.1),
        (1990.0, 2875.5),
        (2011.3, 3950.6),
        (1020.9, 3949.2),
    ]
    hole = [(1400.3, 2400.7), (1655.1, 2400.7), (1655.1, 2610.2), (1400.3, 2610.2)]
    return shapely.Polygon(outer, [hole])


@lru_cache(maxsize=1)
def haimen_boundary():
    """Haimen in EPSG:4549: GCJ-02 (DataV) -> WGS-84 -> CGCS2000 / 3-degree GK CM 120E."""
    if not HAIMEN.exists():
        pytest.skip(f"missing {HAIMEN}")
    geom = shapely.get_geometry(shapely.from_geojson(HAIMEN.read_text()), 0)
    return transform_geometry(transform_geometry(geom, "GCJ-02", "EPSG:4326"), "EPSG:4326", "EPSG:4549")
