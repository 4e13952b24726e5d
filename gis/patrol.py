"""Inspector patrol tracks: parsing, cleaning, key-zone coverage and patrol frequency.

Conventions
-----------
* Parsers return :class:`Track` objects in WGS-84 lon/lat with times as float POSIX seconds (UTC);
  a fix without a time gets NaN. Callers project to a metric working CRS (e.g. CGCS2000
  Gauss-Krüger) before :func:`clean_track` and :func:`zone_coverage`, which work in metres.
* ``accuracy`` is what the file carries per fix: GPX ``<hdop>`` (phone loggers usually store the
  horizontal accuracy in metres there; a true HDOP is unitless) or a GeoJSON ``accuracy``/``hdop``
  property. Choose ``max_accuracy`` accordingly.
* Coverage: a polygon zone's covered share is area(zone ∩ ⋃ buffer(track, buffer_m)) / area(zone);
  a line zone (road centreline) uses lengths instead; a point zone the share of its points within
  ``buffer_m``. Buffers have round caps, so a track's end covers ``buffer_m`` beyond its last fix.
* A visit is a pass through the zone's ``buffer_m`` neighbourhood (a track segment within
  ``buffer_m`` of the zone); passes closer than ``visit_gap_s`` (10 min) to the previous one —
  from the end of the previous to the start of the next — are the same visit.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Any

import numpy as np
import shapely
from shapely.geometry import LineString
from shapely.geometry.base import BaseGeometry

__all__ = [
    "CHINA_TZ",
    "FrequencyCheck",
    "Track",
    "clean_track",
    "frequency_met",
    "parse_frequency",
    "parse_geojson_track",
    "parse_gpx",
    "track_line",
    "visits_per_day",
    "zone_coverage",
]

CHINA_TZ = timezone(timedelta(hours=8), "CST")


@dataclass
class Track:
    """One continuous track: WGS-84 lon/lat, POSIX seconds (UTC), accuracy or None."""

    lon: np.ndarray
    lat: np.ndarray
    time: np.ndarray
    accuracy: np.ndarray | None = None
    name: str | None = None

    def __len__(self) -> int:
        return int(self.lon.size)


# --- parsing --------------------------------------------------------------------------------


def _parse_time(value: Any, where: str) -> float:
    """ISO 8601 string (naive = UTC) or epoch seconds/milliseconds to POSIX seconds."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        raise ValueError(f"{where}: time {value!r} is not a time")
    if isinstance(value, int | float):
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"{where}: time {value!r} is not finite")
        return v / 1000.0 if abs(v) > 1e11 else v  # > year 5138 in seconds: milliseconds
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{where}: cannot parse time {value!r} (expected ISO 8601)") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    raise ValueError(f"{where}: time {value!r} is not a string or number")


def _coord(value: Any, lo: float, hi: float, what: str, where: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what} {value!r} is not a number") from None
    if not (lo <= v <= hi):
        raise ValueError(f"{where}: {what} {v} outside [{lo}, {hi}]")
    return v


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(el: ET.Element, name: str) -> ET.Element | None:
    for c in el:
        if _local(c.tag) == name:
            return c
    return None


def _make_track(rows: list[tuple[float, float, float, float]], name: str | None) -> Track:
    arr = np.asarray(rows, dtype=float).reshape(-1, 4)
    acc = arr[:, 3]
    return Track(
        lon=arr[:, 0].copy(),
        lat=arr[:, 1].copy(),
        time=arr[:, 2].copy(),
        accuracy=None if np.isnan(acc).all() else acc.copy(),
        name=name,
    )


def parse_gpx(data: bytes | str) -> list[Track]:
    """Tracks of a GPX 1.1 (or 1.0) document, one :class:`Track` per ``<trkseg>``.

    Reads ``trk/trkseg/trkpt`` with ``lat``/``lon`` attributes, ``<time>`` and ``<hdop>``; empty
    segments are skipped. DTDs/entities are refused. Raises ValueError on malformed input.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, bytes | bytearray):
        raise ValueError("GPX input must be bytes or str")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise ValueError("GPX with a DTD or entity declarations is refused")
    try:
        root = ET.fromstring(bytes(data))
    except ET.ParseError as exc:
        raise ValueError(f"GPX is not well-formed XML: {exc}") from None
    if _local(root.tag) != "gpx":
        raise ValueError(f"not a GPX document: root element is <{_local(root.tag)}>")
    tracks: list[Track] = []
    for ti, trk in enumerate(el for el in root if _local(el.tag) == "trk"):
        name_el = _child(trk, "name")
        name = (name_el.text or "").strip() or None if name_el is not None else None
        for si, seg in enumerate(el for el in trk if _local(el.tag) == "trkseg"):
            rows = []
            for pi, pt in enumerate(el for el in seg if _local(el.tag) == "trkpt"):
                where = f"trk {ti} trkseg {si} trkpt {pi}"
                if "lat" not in pt.attrib or "lon" not in pt.attrib:
                    raise ValueError(f"{where}: missing lat/lon attribute")
                lat = _coord(pt.attrib["lat"], -90, 90, "lat", where)
                lon = _coord(pt.attrib["lon"], -180, 180, "lon", where)
                t_el = _child(pt, "time")
                t = _parse_time((t_el.text or "").strip() or None, where) if t_el is not None else math.nan
                h_el = _child(pt, "hdop")
                acc = math.nan
                if h_el is not None and (h_el.text or "").strip():
                    acc = _coord(h_el.text.strip(), 0, math.inf, "hdop", where)
                rows.append((lon, lat, t, acc))
            if rows:
                tracks.append(_make_track(rows, name))
    return tracks


_TIME_KEYS = ("time", "timestamp", "datetime", "t")
_ACC_KEYS = ("accuracy", "hdop", "acc")


def _pick(props: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for k in keys:
        if k in props:
            return props[k]
    return None


def _line_track(coords: Any, times: Any, accs: Any, name: str | None, where: str) -> Track:
    if not isinstance(coords, list) or not coords:
        raise ValueError(f"{where}: coordinates must be a non-empty list")
    if not isinstance(times, list) or len(times) != len(coords):
        n = len(times) if isinstance(times, list) else "no"
        raise ValueError(f"{where}: {len(coords)} coordinates but {n} times")
    if accs is not None and (not isinstance(accs, list) or len(accs) != len(coords)):
        raise ValueError(f"{where}: accuracy list length does not match the coordinates")
    rows = []
    for i, c in enumerate(coords):
        w = f"{where} point {i}"
        if not isinstance(c, list | tuple) or len(c) < 2:
            raise ValueError(f"{w}: position {c!r} is not [lon, lat, ...]")
        acc = accs[i] if accs is not None else None
        rows.append(
            (
                _coord(c[0], -180, 180, "lon", w),
                _coord(c[1], -90, 90, "lat", w),
                _parse_time(times[i], w),
                math.nan if acc is None else _coord(acc, 0, math.inf, "accuracy", w),
            )
        )
    return _make_track(rows, name)


def _times_of(props: Mapping[str, Any]) -> Any:
    for k in ("times", "coordTimes", "coordinateTimes", "timestamps"):
        if k in props:
            return props[k]
    return None


def parse_geojson_track(obj: Any) -> list[Track]:
    """Tracks from GeoJSON (a dict, or its JSON text/bytes).

    Accepted: a (Multi)LineString Feature whose properties hold per-vertex ``times`` or
    ``coordTimes`` (a list of lists for MultiLineString), with optional per-vertex ``accuracy``;
    a MultiPoint Feature with ``times``; a FeatureCollection of such features and/or of Point
    features with a ``time``/``timestamp`` property (and optional ``accuracy``/``hdop``), the
    points forming one track sorted by time. Times are ISO 8601 (naive = UTC) or epoch s/ms.
    """
    if isinstance(obj, bytes | bytearray | str):
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError as exc:
            raise ValueError(f"GeoJSON is not valid JSON: {exc}") from None
    if not isinstance(obj, Mapping) or "type" not in obj:
        raise ValueError("GeoJSON must be an object with a 'type'")
    kind = obj["type"]
    if kind == "FeatureCollection":
        feats = obj.get("features")
        if not isinstance(feats, list):
            raise ValueError("FeatureCollection without a 'features' list")
        tracks: list[Track] = []
        points: list[tuple[float, float, float, float]] = []
        for i, f in enumerate(feats):
            if not isinstance(f, Mapping) or f.get("type") != "Feature":
                raise ValueError(f"features[{i}] is not a Feature")
            geom = f.get("geometry") or {}
            if geom.get("type") == "Point":
                props = f.get("properties") or {}
                w = f"features[{i}]"
                c = geom.get("coordinates")
                if not isinstance(c, list | tuple) or len(c) < 2:
                    raise ValueError(f"{w}: bad Point coordinates {c!r}")
                t = _pick(props, _TIME_KEYS)
                if t is None:
                    raise ValueError(f"{w}: Point without a time property ({', '.join(_TIME_KEYS)})")
                acc = _pick(props, _ACC_KEYS)
                points.append(
                    (
                        _coord(c[0], -180, 180, "lon", w),
                        _coord(c[1], -90, 90, "lat", w),
                        _parse_time(t, w),
                        math.nan if acc is None else _coord(acc, 0, math.inf, "accuracy", w),
                    )
                )
            else:
                tracks.extend(_feature_tracks(f, f"features[{i}]"))
        if points:
            points.sort(key=lambda r: r[2])
            tracks.append(_make_track(points, obj.get("name")))
        return tracks
    if kind == "Feature":
        return _feature_tracks(obj, "Feature")
    raise ValueError(f"GeoJSON {kind!r} has no times: give a Feature or FeatureCollection")


def _feature_tracks(f: Mapping[str, Any], where: str) -> list[Track]:
    geom = f.get("geometry")
    props = f.get("properties") or {}
    if not isinstance(geom, Mapping):
        raise ValueError(f"{where}: Feature without a geometry")
    gtype = geom.get("type")
    coords = geom.get("coordinates")
    times = _times_of(props)
    accs = _pick(props, ("accuracy", "accuracies", "hdop"))
    name = props.get("name")
    if times is None:
        raise ValueError(f"{where}: {gtype} without a 'times' or 'coordTimes' property")
    if gtype in ("LineString", "MultiPoint"):
        return [_line_track(coords, times, accs, name, where)]
    if gtype == "MultiLineString":
        if not isinstance(coords, list) or not isinstance(times, list) or len(coords) != len(times):
            raise ValueError(f"{where}: MultiLineString needs one times list per line")
        return [
            _line_track(c, t, accs[k] if isinstance(accs, list) else None, name, f"{where} line {k}")
            for k, (c, t) in enumerate(zip(coords, times, strict=True))
        ]
    raise ValueError(f"{where}: geometry type {gtype!r} is not a track")


# --- cleaning -------------------------------------------------------------------------------

_REASONS = ("invalid", "accuracy", "time", "speed")


def clean_track(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    t: Sequence[float] | np.ndarray,
    accuracy: Sequence[float] | np.ndarray | None = None,
    max_speed: float = 50.0,
    max_accuracy: float | None = None,
    *,
    reanchor_after: int = 5,
) -> tuple[np.ndarray, dict[str, int]]:
    """Mask of plausible fixes (x, y in metres, t in seconds) and the number dropped per reason.

    Fixes are checked in order against the last kept fix:

    * ``invalid``: non-finite x, y or t;
    * ``accuracy``: accuracy above ``max_accuracy`` (an unknown/NaN accuracy passes);
    * ``time``: time not after the last kept fix (duplicates, going back);
    * ``speed``: reaching it from the last kept fix needs more than ``max_speed`` m/s.

    If the first kept fix was itself the outlier, every later fix would look like a jump: when
    ``reanchor_after`` consecutive speed rejections are mutually consistent (each reachable from
    the previous within ``max_speed``), they are kept, and a lone first fix before them is dropped.
    ``counts`` has keys ``kept``, ``invalid``, ``accuracy``, ``time``, ``speed``.
    """
    xa, ya, ta = (np.asarray(v, dtype=float).ravel() for v in (x, y, t))
    n = xa.size
    if ya.size != n or ta.size != n:
        raise ValueError(f"x, y, t lengths differ: {xa.size}, {ya.size}, {ta.size}")
    acc = None
    if accuracy is not None:
        acc = np.asarray(accuracy, dtype=float).ravel()
        if acc.size != n:
            raise ValueError(f"accuracy has {acc.size} values for {n} fixes")
    if max_speed <= 0:
        raise ValueError("max_speed must be positive")
    reason = np.full(n, "", dtype=object)
    kept_idx: list[int] = []
    run: list[int] = []  # consecutive speed rejections, chained

    def reachable(i: int, j: int) -> bool:
        dt = ta[j] - ta[i]
        return dt > 0 and math.hypot(xa[j] - xa[i], ya[j] - ya[i]) <= max_speed * dt

    for i in range(n):
        if not (math.isfinite(xa[i]) and math.isfinite(ya[i]) and math.isfinite(ta[i])):
            reason[i] = "invalid"
            continue
        if acc is not None and max_accuracy is not None and acc[i] > max_accuracy:
            reason[i] = "accuracy"
            continue
        if kept_idx and ta[i] <= ta[kept_idx[-1]]:
            reason[i] = "time"
            continue
        if not kept_idx or reachable(kept_idx[-1], i):
            kept_idx.append(i)
            run.clear()
            continue
        reason[i] = "speed"
        if run and not reachable(run[-1], i):
            run.clear()
        run.append(i)
        if reanchor_after and len(run) >= reanchor_after:
            if len(kept_idx) == 1:  # the lone first fix was the outlier
                reason[kept_idx[0]] = "speed"
                kept_idx.clear()
            for j in run:
                reason[j] = ""
            kept_idx.extend(run)
            run.clear()
    mask = reason == ""
    counts = {"kept": int(mask.sum())}
    counts.update({r: int((reason == r).sum()) for r in _REASONS})
    return mask, counts


def track_line(x: Sequence[float], y: Sequence[float]) -> LineString:
    """A LineString from projected coordinates (a single fix gives a degenerate 2-vertex line)."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xa.size == 0:
        return LineString()
    if xa.size == 1:
        xa, ya = np.repeat(xa, 2), np.repeat(ya, 2)
    return LineString(np.column_stack([xa, ya]))


# --- coverage and visits --------------------------------------------------------------------


def _zone_kind(zone: BaseGeometry) -> str:
    gtype = zone.geom_type
    if gtype in ("Polygon", "MultiPolygon"):
        return "area"
    if gtype in ("LineString", "MultiLineString", "LinearRing"):
        return "length"
    if gtype in ("Point", "MultiPoint"):
        return "points"
    raise ValueError(f"zone geometry {gtype} is not supported (polygon, line or point)")


def _passes(
    zone: BaseGeometry, line: LineString, times: np.ndarray | None, buffer_m: float
) -> list[tuple[float, float]]:
    """(start, end) of each run of consecutive segments within ``buffer_m`` of the zone."""
    coords = np.asarray(line.coords)[:, :2]
    if len(coords) < 2:
        return []
    segs = shapely.linestrings(np.stack([coords[:-1], coords[1:]], axis=1))
    near = shapely.dwithin(segs, zone, buffer_m)
    out = []
    i, m = 0, len(near)
    while i < m:
        if near[i]:
            j = i
            while j + 1 < m and near[j + 1]:
                j += 1
            if times is None:
                out.append((math.nan, math.nan))
            else:
                out.append((float(times[i]), float(times[j + 1])))
            i = j + 1
        else:
            i += 1
    return out


def zone_coverage(
    zone_geom: BaseGeometry,
    tracks: Iterable[LineString],
    buffer_m: float = 30.0,
    *,
    times: Sequence[Sequence[float] | np.ndarray | None] | None = None,
    visit_gap_s: float = 600.0,
    quad_segs: int = 16,
) -> dict[str, Any]:
    """Share of a key zone covered by patrol tracks (metres), and the visits to it.

    ``times`` (optional) gives POSIX seconds per vertex of each track, in the same order. Returns
    ``kind`` ("area", "length" or "points"), ``total`` and ``covered`` (m², m or points),
    ``share`` (0–1), ``entries`` (passes through the zone's ``buffer_m`` neighbourhood over all
    tracks), ``visits`` (passes merged when closer than ``visit_gap_s``; None without times) and
    ``visit_times`` (list of (start, end) POSIX seconds).
    """
    if zone_geom is None or zone_geom.is_empty:
        raise ValueError("zone geometry is empty")
    if buffer_m < 0:
        raise ValueError("buffer_m must not be negative")
    zone = zone_geom if zone_geom.is_valid else shapely.make_valid(zone_geom)
    kind = _zone_kind(zone_geom)
    lines = [ln for ln in tracks if ln is not None and not ln.is_empty]
    if times is not None and len(times) != len(lines):
        raise ValueError(f"{len(times)} time arrays for {len(lines)} tracks")
    if lines and buffer_m > 0:
        swath = shapely.union_all(shapely.buffer(lines, buffer_m, quad_segs=quad_segs))
    else:
        swath = shapely.GeometryCollection()
    if kind == "area":
        total = zone.area
        covered = zone.intersection(swath).area if not swath.is_empty else 0.0
    elif kind == "length":
        total = zone.length
        covered = zone.intersection(swath).length if not swath.is_empty else 0.0
    else:
        pts = shapely.get_parts(zone)
        total = float(len(pts))
        covered = float(np.count_nonzero(shapely.dwithin(pts, shapely.union_all(lines), buffer_m))) if lines else 0.0
    passes: list[tuple[float, float]] = []
    for k, ln in enumerate(lines):
        tk = None
        if times is not None and times[k] is not None:
            tk = np.asarray(times[k], dtype=float)
            if tk.size != len(ln.coords):
                raise ValueError(f"track {k}: {tk.size} times for {len(ln.coords)} vertices")
        passes.extend(_passes(zone, ln, tk, buffer_m))
    visit_times: list[tuple[float, float]] = []
    have_times = times is not None and all(math.isfinite(a) and math.isfinite(b) for a, b in passes)
    if have_times:
        for start, end in sorted(passes):
            if visit_times and start - visit_times[-1][1] < visit_gap_s:
                visit_times[-1] = (visit_times[-1][0], max(visit_times[-1][1], end))
            else:
                visit_times.append((start, end))
    return {
        "kind": kind,
        "total": float(total),
        "covered": float(covered),
        "share": float(covered / total) if total > 0 else 0.0,
        "entries": len(passes),
        "visits": len(visit_times) if have_times else None,
        "visit_times": visit_times,
    }


def visits_per_day(visit_times: Iterable[tuple[float, float] | float], tz: tzinfo = CHINA_TZ) -> dict[date, int]:
    """Count visits by local calendar day of their start (default China Standard Time, UTC+8)."""
    out: dict[date, int] = {}
    for v in visit_times:
        start = v[0] if isinstance(v, tuple | list) else v
        day = datetime.fromtimestamp(float(start), tz).date()
        out[day] = out.get(day, 0) + 1
    return out


# --- frequency ------------------------------------------------------------------------------

_NAMED = {
    "daily": (1, "day"),
    "twice_daily": (2, "day"),
    "thrice_daily": (3, "day"),
    "weekly": (1, "week"),
    "twice_weekly": (2, "week"),
}
_UNITS = {"day": "day", "d": "day", "日": "day", "天": "day", "week": "week", "w": "week", "周": "week"}
_FREQ_RE = re.compile(r"^\s*(\d+)\s*(?:次)?\s*/\s*(day|d|week|w|日|天|周)\s*$", re.IGNORECASE)


def parse_frequency(frequency: str) -> tuple[int, str]:
    """``(n, period)`` with period "day" or "week" from 'daily', 'twice_daily', 'weekly',
    'twice_weekly', 'thrice_daily', 'N/day', 'N/week' (also 'N/d', 'N/w', 'N次/日', 'N/周')."""
    if not isinstance(frequency, str):
        raise ValueError(f"frequency {frequency!r} is not a string")
    key = frequency.strip().lower().replace("-", "_").replace(" ", "_")
    if key in _NAMED:
        return _NAMED[key]
    m = _FREQ_RE.match(frequency)
    if not m or int(m.group(1)) < 1:
        raise ValueError(
            f"unknown patrol frequency {frequency!r}: use daily, twice_daily, weekly, 'N/day' or 'N/week'"
        )
    return int(m.group(1)), _UNITS[m.group(2).lower()]


@dataclass
class FrequencyCheck:
    """Outcome of :func:`frequency_met`; truthy when met. ``shortfalls`` maps each failing day
    (or ISO week's Monday) to its visit count."""

    met: bool
    required: int
    period: str
    periods: int
    shortfalls: dict[date, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.met


def frequency_met(visits_by_day: Mapping[date, int], frequency: str) -> FrequencyCheck:
    """Whether every evaluated period had at least the required number of visits.

    The evaluated days are the keys of ``visits_by_day`` (include days without visits as 0);
    for weekly rules they are grouped into ISO weeks (Monday–Sunday) and summed. An empty
    mapping is not met.
    """
    n, period = parse_frequency(frequency)
    counts: dict[date, int] = {}
    for day, c in visits_by_day.items():
        d = day.date() if isinstance(day, datetime) else day
        if not isinstance(d, date):
            raise ValueError(f"visits_by_day key {day!r} is not a date")
        key = d if period == "day" else d - timedelta(days=d.weekday())
        counts[key] = counts.get(key, 0) + int(c)
    shortfalls = {k: c for k, c in sorted(counts.items()) if c < n}
    return FrequencyCheck(
        met=bool(counts) and not shortfalls,
        required=n,
        period=period,
        periods=len(counts),
        shortfalls=shortfalls,
    )
