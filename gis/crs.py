"""Coordinate reference systems: parsing, the Chinese web-map datums and transforms.

CRS identifiers are normalised to three forms: ``"EPSG:<code>"`` (any 2-D geographic or
projected CRS known to PROJ), ``"GCJ-02"`` (AMap, Tencent, WeChat) and ``"BD-09"`` (Baidu).
All coordinates are in (x, y) = (lon, lat) / (easting, northing) order.

GCJ-02 uses the published "eviltransform" formula on the Krasovsky ellipsoid. Outside the rough
China box (lon < 72.004 or lon > 137.8347 or lat < 0.8293 or lat > 55.8271) the GCJ-02 offset is
zero, so GCJ-02 equals WGS-84 there. The BD-09 step (GCJ-02 -> BD-09) is applied everywhere, as the
published formula does. The inverses are iterated to convergence, not approximated.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import pyproj
import shapely

__all__ = [
    "CRSError",
    "GCJ02",
    "BD09",
    "parse_crs",
    "is_geographic",
    "wgs84_to_gcj02",
    "gcj02_to_wgs84",
    "gcj02_to_bd09",
    "bd09_to_gcj02",
    "wgs84_to_bd09",
    "bd09_to_wgs84",
    "gauss_kruger_epsg",
    "working_epsg_for",
    "transform_xy",
    "transform_geometry",
    "validate_lonlat",
]

GCJ02 = "GCJ-02"
BD09 = "BD-09"
WGS84 = "EPSG:4326"


class CRSError(ValueError):
    """An unknown or unusable coordinate reference system."""


_ALIASES = {
    "WGS84": WGS84,
    "WGS-84": WGS84,
    "WGS 84": WGS84,
    "CRS84": WGS84,
    "OGC:CRS84": WGS84,
    "URN:OGC:DEF:CRS:OGC:1.3:CRS84": WGS84,
    "HTTP://WWW.OPENGIS.NET/DEF/CRS/OGC/1.3/CRS84": WGS84,
    "CGCS2000": "EPSG:4490",
    "GCJ02": GCJ02,
    "GCJ-02": GCJ02,
    "GCJ": GCJ02,
    "BD09": BD09,
    "BD-09": BD09,
    "BD09LL": BD09,
    "BD-09LL": BD09,
}

_EPSG_FORMS = (
    re.compile(r"(?:EPSG:)?(\d+)"),
    re.compile(r"URN:OGC:DEF:CRS:EPSG:[\d.]*:(\d+)"),
    re.compile(r"HTTPS?://WWW\.OPENGIS\.NET/DEF/CRS/EPSG/[\d.]+/(\d+)"),
)


def parse_crs(s: str | int) -> str:
    """Normalise a CRS identifier to ``"EPSG:<code>"``, ``"GCJ-02"`` or ``"BD-09"``.

    Accepts EPSG codes (int, ``"4326"``, ``"EPSG:4326"``, OGC URN and URL forms) and the aliases
    WGS84 / CRS84 (-> EPSG:4326, always used lon/lat), CGCS2000 (-> EPSG:4490), gcj02 / gcj and
    bd09 / bd09ll. Raises CRSError for anything else, or for an EPSG code that is not a 2-D
    geographic or projected CRS.
    """
    if isinstance(s, bool) or not isinstance(s, (str, int, np.integer)):
        raise CRSError(f"unknown CRS {s!r}: use EPSG:<code>, GCJ-02 or BD-09")
    return _parse_crs(str(s))


@lru_cache(maxsize=1024)
def _parse_crs(s: str) -> str:
    """parse_crs of a string, remembered (a request names its CRS several times over)."""
    key = s.strip().upper()
    if key in _ALIASES:
        return _ALIASES[key]
    for form in _EPSG_FORMS:
        m = form.fullmatch(key)
        if m:
            code = int(m.group(1))
            problem = _epsg_problem(code)
            if problem:
                raise CRSError(f"unusable CRS {str(s)!r}: EPSG:{code} {problem}")
            return f"EPSG:{code}"
    raise CRSError(f"unknown CRS {str(s)!r}: use EPSG:<code>, GCJ-02 or BD-09")


@lru_cache(maxsize=256)
def _epsg_problem(code: int) -> str | None:
    """Why an EPSG code cannot serve as a CRS here, or None if it can."""
    try:
        crs = pyproj.CRS.from_epsg(code)
    except pyproj.exceptions.CRSError:
        return "is not in the EPSG registry"
    if not (crs.is_geographic or crs.is_projected) or len(crs.axis_info) != 2:
        return "is not a 2-D geographic or projected CRS"
    return None


def is_geographic(crs: str | int) -> bool:
    """True for lon/lat CRSs (including GCJ-02 and BD-09), False for projected ones."""
    name = parse_crs(crs)
    if name in (GCJ02, BD09):
        return True
    return _pyproj_crs(name).is_geographic


@lru_cache(maxsize=64)
def _pyproj_crs(name: str) -> pyproj.CRS:
    return pyproj.CRS.from_user_input(name)


# --- GCJ-02 and BD-09 ------------------------------------------------------------------------

_A = 6378245.0  # Krasovsky 1940 semi-major axis (m)
_EE = 0.00669342162296594323  # Krasovsky 1940 first eccentricity squared
_X_PI = np.pi * 3000.0 / 180.0
_TOL = 1e-12  # degrees (~0.1 µm): iteration stop for the exact inverses
_MAX_ITER = 30


def _as_float(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _out(a: np.ndarray):
    """Return a 0-d result as a numpy scalar, arrays unchanged."""
    return a[()] if a.ndim == 0 else a


def _in_china(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    return (lon >= 72.004) & (lon <= 137.8347) & (lat >= 0.8293) & (lat <= 55.8271)


def _gcj_offset(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GCJ-02 minus WGS-84 (dlon, dlat) in degrees at a WGS-84 position; zero outside China."""
    x = lon - 105.0
    y = lat - 35.0
    sx = 0.2 * np.sqrt(np.abs(x))
    common = (20.0 * np.sin(6.0 * x * np.pi) + 20.0 * np.sin(2.0 * x * np.pi)) * 2.0 / 3.0
    dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + sx + common
    dlat += (20.0 * np.sin(y * np.pi) + 40.0 * np.sin(y / 3.0 * np.pi)) * 2.0 / 3.0
    dlat += (160.0 * np.sin(y / 12.0 * np.pi) + 320.0 * np.sin(y * np.pi / 30.0)) * 2.0 / 3.0
    dlon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.5 * sx + common
    dlon += (20.0 * np.sin(x * np.pi) + 40.0 * np.sin(x / 3.0 * np.pi)) * 2.0 / 3.0
    dlon += (150.0 * np.sin(x / 12.0 * np.pi) + 300.0 * np.sin(x / 30.0 * np.pi)) * 2.0 / 3.0
    rad = lat / 180.0 * np.pi
    magic = 1.0 - _EE * np.sin(rad) ** 2
    sqrt_magic = np.sqrt(magic)
    dlat = dlat * 180.0 / ((_A * (1.0 - _EE)) / (magic * sqrt_magic) * np.pi)
    dlon = dlon * 180.0 / (_A / sqrt_magic * np.cos(rad) * np.pi)
    inside = _in_china(lon, lat)
    return np.where(inside, dlon, 0.0), np.where(inside, dlat, 0.0)


def _invert(forward, tx: np.ndarray, ty: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Solve forward(x, y) == (tx, ty) by fixed-point iteration from the guess (x, y).

    The forward maps are the identity plus a slowly varying offset, so the iteration contracts
    quickly (about 5 steps to 1e-12 degrees). NaN inputs stay NaN without extra iterations.
    """
    for _ in range(_MAX_ITER):
        fx, fy = forward(x, y)
        ex, ey = fx - tx, fy - ty
        x = x - ex
        y = y - ey
        if not np.any((np.abs(ex) > _TOL) | (np.abs(ey) > _TOL)):
            break
    return x, y


def _wgs_to_gcj(lon, lat):
    dlon, dlat = _gcj_offset(lon, lat)
    return lon + dlon, lat + dlat


def _gcj_to_bd(lon, lat):
    z = np.sqrt(lon * lon + lat * lat) + 0.00002 * np.sin(lat * _X_PI)
    theta = np.arctan2(lat, lon) + 0.000003 * np.cos(lon * _X_PI)
    return z * np.cos(theta) + 0.0065, z * np.sin(theta) + 0.006


def _bd_to_gcj_approx(lon, lat):
    x = lon - 0.0065
    y = lat - 0.006
    z = np.sqrt(x * x + y * y) - 0.00002 * np.sin(y * _X_PI)
    theta = np.arctan2(y, x) - 0.000003 * np.cos(x * _X_PI)
    return z * np.cos(theta), z * np.sin(theta)


def wgs84_to_gcj02(lon, lat):
    """WGS-84 -> GCJ-02 (degrees; arrays or scalars, same shape out; identity outside China)."""
    lon, lat = np.broadcast_arrays(_as_float(lon), _as_float(lat))
    gx, gy = _wgs_to_gcj(lon, lat)
    return _out(gx), _out(gy)


def gcj02_to_wgs84(lon, lat):
    """GCJ-02 -> WGS-84, the exact inverse of wgs84_to_gcj02 (iterated to 1e-12 degrees)."""
    lon, lat = np.broadcast_arrays(_as_float(lon), _as_float(lat))
    dlon, dlat = _gcj_offset(lon, lat)
    wx, wy = _invert(_wgs_to_gcj, lon, lat, lon - dlon, lat - dlat)
    return _out(wx), _out(wy)


def gcj02_to_bd09(lon, lat):
    """GCJ-02 -> BD-09 with the published x_pi = pi * 3000 / 180 formula."""
    lon, lat = np.broadcast_arrays(_as_float(lon), _as_float(lat))
    bx, by = _gcj_to_bd(lon, lat)
    return _out(bx), _out(by)


def bd09_to_gcj02(lon, lat):
    """BD-09 -> GCJ-02, the exact inverse of gcj02_to_bd09 (iterated to 1e-12 degrees)."""
    lon, lat = np.broadcast_arrays(_as_float(lon), _as_float(lat))
    gx0, gy0 = _bd_to_gcj_approx(lon, lat)
    gx, gy = _invert(_gcj_to_bd, lon, lat, gx0, gy0)
    return _out(gx), _out(gy)


def wgs84_to_bd09(lon, lat):
    """WGS-84 -> BD-09 (through GCJ-02)."""
    return gcj02_to_bd09(*wgs84_to_gcj02(lon, lat))


def bd09_to_wgs84(lon, lat):
    """BD-09 -> WGS-84 (exact inverses through GCJ-02)."""
    return gcj02_to_wgs84(*bd09_to_gcj02(lon, lat))


# --- Working (projected) CRS -----------------------------------------------------------------


def gauss_kruger_epsg(lon: float) -> int:
    """EPSG code of the CGCS2000 3-degree Gauss-Krüger zone (no zone prefix) for a longitude.

    Zone = round(lon / 3) (halves rounded up), EPSG = 4534 + (zone - 25): EPSG:4534 (75°E) ...
    EPSG:4554 (135°E), defined for 73.5 <= lon < 136.5. Haimen (121.3°E) -> 4549 (120°E).
    """
    lon = float(lon)
    if not 73.5 <= lon < 136.5:
        raise ValueError(f"longitude {lon} outside the CGCS2000 3-degree zones (73.5-136.5°E)")
    zone = int(np.floor(lon / 3.0 + 0.5))
    return 4534 + (zone - 25)


def working_epsg_for(lon: float, lat: float) -> int:
    """Metric working CRS for a place: CGCS2000 3-degree GK in China, WGS-84 UTM elsewhere.

    China is taken as 73.5 <= lon < 136.5 and 0 <= lat <= 56. Elsewhere the plain 6-degree UTM
    zone (326xx north of the equator, 327xx south; no Norway/Svalbard exceptions).
    """
    lon, lat = float(lon), float(lat)
    if not (np.isfinite(lon) and np.isfinite(lat) and -180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise ValueError(f"invalid position lon={lon}, lat={lat}")
    if 73.5 <= lon < 136.5 and 0.0 <= lat <= 56.0:
        return gauss_kruger_epsg(lon)
    zone = min(int(np.floor((lon + 180.0) / 6.0)) + 1, 60)
    return (32600 if lat >= 0.0 else 32700) + zone


# --- Transforms ------------------------------------------------------------------------------

_FROM_WGS = {GCJ02: wgs84_to_gcj02, BD09: wgs84_to_bd09}
_TO_WGS = {GCJ02: gcj02_to_wgs84, BD09: bd09_to_wgs84}


@lru_cache(maxsize=64)
def _transformer(src: str, dst: str) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(src, dst, always_xy=True)


def transform_xy(x, y, src: str | int, dst: str | int) -> tuple[np.ndarray, np.ndarray]:
    """Transform coordinates between any two CRSs accepted by parse_crs.

    GCJ-02 and BD-09 go through EPSG:4326. Returns float64 arrays of the broadcast input shape.
    """
    src, dst = parse_crs(src), parse_crs(dst)
    x, y = np.broadcast_arrays(_as_float(x), _as_float(y))
    if src == dst:
        return x.copy(), y.copy()
    if src in _TO_WGS:
        x, y = _TO_WGS[src](x, y)
        src = WGS84
    if dst in _FROM_WGS:
        if src != WGS84:
            x, y = _transformer(src, WGS84).transform(x, y)
        x, y = _FROM_WGS[dst](x, y)
    elif src != dst:
        x, y = _transformer(src, dst).transform(x, y)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


def transform_geometry(geom, src: str | int, dst: str | int):
    """Transform a shapely geometry (or an array of them) between CRSs; the result is 2-D."""
    src, dst = parse_crs(src), parse_crs(dst)
    return shapely.transform(geom, lambda x, y: transform_xy(x, y, src, dst), interleaved=False)


# --- Validation ------------------------------------------------------------------------------


def validate_lonlat(lon, lat) -> np.ndarray | None:
    """Check geographic coordinates point by point.

    Returns None when all points are valid, else an object array (input shape) holding None for
    valid points and the first problem for the others: "not a number" (NaN or infinite),
    "longitude out of range [-180, 180]", "latitude out of range [-90, 90]" or
    "latitude out of range [-90, 90] (lon/lat swapped?)" when swapping the pair would fit.
    """
    if isinstance(lon, float) and isinstance(lat, float) and abs(lon) <= 180.0 and abs(lat) <= 90.0:
        return None  # one valid point (the common case of a single report), without numpy
    lon, lat = np.broadcast_arrays(_as_float(lon), _as_float(lat))
    finite = np.isfinite(lon) & np.isfinite(lat)
    with np.errstate(invalid="ignore"):
        bad_lon = finite & (np.abs(lon) > 180.0)
        bad_lat = finite & ~bad_lon & (np.abs(lat) > 90.0)
        swapped = bad_lat & (np.abs(lat) <= 180.0) & (np.abs(lon) <= 90.0)
    if finite.all() and not bad_lon.any() and not bad_lat.any():
        return None
    reasons = np.full(lon.shape, None, dtype=object)
    reasons[~finite] = "not a number"
    reasons[bad_lon] = "longitude out of range [-180, 180]"
    reasons[bad_lat] = "latitude out of range [-90, 90]"
    reasons[swapped] = "latitude out of range [-90, 90] (lon/lat swapped?)"
    return reasons
