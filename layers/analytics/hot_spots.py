"""Significant hot spots: Getis-Ord Gi* over all cells of the active grid (zeros included), BH-FDR,
confidence bins ±1..3 (``gis/hotspots.py``), as GeoJSON cells with z, p and the bin.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import Connection

from gis import hotspots as ghot
from layers.analytics.cache import cells_geojson, dense_counts, dissolved_geojson, grid_arrays, weights
from layers.core.city import CityInfo

HOT_LABELS = {3: "热点 99% Hot spot 99%", 2: "热点 95% Hot spot 95%", 1: "热点 90% Hot spot 90%",
              -1: "冷点 90% Cold spot 90%", -2: "冷点 95% Cold spot 95%", -3: "冷点 99% Cold spot 99%"}


# ----------------------------------------------------------------------------------------------
# Hot spots
# ----------------------------------------------------------------------------------------------

def hotspots(conn: Connection, city: CityInfo, start, end, *, categories=None, channels=None,
             weights_kind: str = "queen", distance: float | None = None, fdr: bool = True) -> dict:
    """Getis-Ord Gi* over all cells of the active grid (zeros included), BH-FDR, bins ±1..3."""
    arr = grid_arrays(conn, city)
    x = dense_counts(conn, city, arr, start, end, categories, channels)
    W = weights(arr, weights_kind, distance)
    z = ghot.getis_ord_gi_star(x, W)
    p = ghot.gi_star_pvalues(z)
    bins = ghot.classify_hotspots(z, p, fdr=fdr)
    return {"z": z, "p": p, "bins": bins, "counts": x, "arrays": arr}


def hotspots_geojson(conn: Connection, city: CityInfo, start, end, *, categories=None, channels=None,
                     weights_kind="queen", distance=None, fdr=True, dst="EPSG:4326", dissolve: bool = False) -> dict:
    h = hotspots(conn, city, start, end, categories=categories, channels=channels, weights_kind=weights_kind,
                 distance=distance, fdr=fdr)
    sel = np.flatnonzero(h["bins"] != 0)
    z, p, b, x = h["z"], h["p"], h["bins"], h["counts"]
    if dissolve:
        fc = dissolved_geojson(h["arrays"], city, sel, b[sel].astype(int),
                               {k: {"bin": k, "label": v} for k, v in HOT_LABELS.items()}, dst)
    else:
        fc = cells_geojson(h["arrays"], city, sel, [
            {"z": round(float(z[i]), 4), "p": float(f"{p[i]:.4g}"), "bin": int(b[i]), "label": HOT_LABELS[int(b[i])],
             "count": int(x[i])} for i in sel], dst)
    fc.update(summary={HOT_LABELS[k]: int((b == k).sum()) for k in (3, 2, 1, -1, -2, -3)},
              total=int(x.sum()), fdr=fdr, weights=weights_kind)
    return fc
