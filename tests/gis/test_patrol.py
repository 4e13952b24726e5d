"""Patrol tracks: GPX/GeoJSON parsing, fix cleaning, key-zone coverage and frequency rules."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime

import numpy as np
import pytest
from shapely.geometry import LineString, MultiPoint, Point, Polygon, box

from gis.patrol import (
    CHINA_TZ,
    clean_track,
    frequency_met,
    parse_frequency,
    parse_geojson_track,
    parse_gpx,
    track_line,
    visits_per_day,
    zone_coverage,
)

GPX = b"""<?xml version="1.0" encoding="UTF-8"?>
<gpx version="1.1" creator="citygrid-test" xmlns="http://www.topografix.com/GPX/1/1">
  <metadata><name>patrol</name></metadata>
  <trk>
    <name>Inspector 07 morning</name>
    <trkseg>
      <trkpt lat="31.871200" lon="121.181600"><ele>4.0</ele><time>2024-05-06T00:00:00Z</time><hdop>4.5</hdop></trkpt>
      <trkpt lat="31.871300" lon="121.181700"><time>2024-05-06T00:00:10.500Z</time><hdop>5</hdop></trkpt>
      <trkpt lat="31.871400" lon="121.181800"><time>2024-05-06T08:00:20+08:00</time></trkpt>
    </trkseg>
    <trkseg>
      <trkpt lat="31.872000" lon="121.182000"><time>2024-05-06T00:10:00Z</time></trkpt>
    </trkseg>
    <trkseg/>
  </trk>
</gpx>
"""

T0 = datetime(2024, 5, 6, tzinfo=UTC).timestamp()


# --- GPX ------------------------------------------------------------------------------------


def test_parse_gpx_11():
    tracks = parse_gpx(GPX)
    assert len(tracks) == 2  # one per non-empty trkseg
    a, b = tracks
    assert a.name == "Inspector 07 morning" and len(a) == 3
    np.testing.assert_allclose(a.lon, [121.1816, 121.1817, 121.1818])
    np.testing.assert_allclose(a.lat, [31.8712, 31.8713, 31.8714])
    np.testing.assert_allclose(a.time - T0, [0.0, 10.5, 20.0])  # +08:00 normalised to UTC
    np.testing.assert_allclose(a.accuracy[:2], [4.5, 5.0])
    assert math.isnan(a.accuracy[2])
    assert b.accuracy is None and b.time[0] - T0 == 600.0


def test_parse_gpx_10_and_missing_time():
    doc = """<gpx version="1.0" xmlns="http://www.topografix.com/GPX/1/0"><trk><trkseg>
      <trkpt lat="1" lon="2"><time>2024-05-06T00:00:00</time></trkpt>
      <trkpt lat="1.1" lon="2.1"></trkpt></trkseg></trk></gpx>"""
    (t,) = parse_gpx(doc)
    assert t.time[0] == T0  # naive GPX time is UTC
    assert math.isnan(t.time[1])
    assert parse_gpx(b'<gpx version="1.1" xmlns="http://www.topografix.com/GPX/1/1"/>') == []


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"<gpx><trk>", "not well-formed"),
        (b"<kml/>", "root element is <kml>"),
        (b'<gpx><trk><trkseg><trkpt lon="1"/></trkseg></trk></gpx>', "trkpt 0: missing lat/lon"),
        (b'<gpx><trk><trkseg><trkpt lat="95" lon="1"/></trkseg></trk></gpx>', r"lat 95.0 outside"),
        (b'<gpx><trk><trkseg><trkpt lat="x" lon="1"/></trkseg></trk></gpx>', "lat 'x' is not a number"),
        (
            b'<gpx><trk><trkseg><trkpt lat="1" lon="1"><time>yesterday</time></trkpt></trkseg></trk></gpx>',
            "cannot parse time 'yesterday'",
        ),
        (b'<!DOCTYPE gpx [<!ENTITY a "aaaa">]><gpx>&a;</gpx>', "DTD"),
    ],
)
def test_parse_gpx_errors(doc, message):
    with pytest.raises(ValueError, match=message):
        parse_gpx(doc)


# --- GeoJSON --------------------------------------------------------------------------------


def test_parse_geojson_linestring_with_coord_times():
    feat = {
        "type": "Feature",
        "properties": {"name": "p1", "coordTimes": ["2024-05-06T00:00:00Z", "2024-05-06T00:00:05Z"]},
        "geometry": {"type": "LineString", "coordinates": [[121.18, 31.87, 3.0], [121.181, 31.871]]},
    }
    (t,) = parse_geojson_track(feat)
    assert t.name == "p1" and t.accuracy is None
    np.testing.assert_allclose(t.time - T0, [0, 5])
    (t2,) = parse_geojson_track(json.dumps(feat))
    np.testing.assert_allclose(t2.lon, t.lon)


def test_parse_geojson_multilinestring_and_epoch_ms():
    feat = {
        "type": "Feature",
        "properties": {"times": [[T0 * 1000, T0 * 1000 + 1000], [T0 + 60]]},
        "geometry": {"type": "MultiLineString", "coordinates": [[[1, 1], [1.001, 1]], [[2, 2]]]},
    }
    a, b = parse_geojson_track(feat)
    np.testing.assert_allclose(a.time - T0, [0, 1])  # milliseconds recognised
    assert b.time[0] == T0 + 60


def test_parse_geojson_point_collection_sorted_by_time():
    fc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"time": "2024-05-06T00:00:20Z", "accuracy": 8},
             "geometry": {"type": "Point", "coordinates": [1.002, 1]}},
            {"type": "Feature", "properties": {"time": "2024-05-06T00:00:00Z", "accuracy": 3},
             "geometry": {"type": "Point", "coordinates": [1.0, 1]}},
        ],
    }
    (t,) = parse_geojson_track(fc)
    np.testing.assert_allclose(t.lon, [1.0, 1.002])
    np.testing.assert_allclose(t.accuracy, [3, 8])


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "has no times"),
        ({"type": "Feature", "properties": {}, "geometry": {"type": "LineString", "coordinates": [[0, 0]]}},
         "without a 'times'"),
        ({"type": "Feature", "properties": {"times": [0]},
          "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}, "2 coordinates but 1 times"),
        ({"type": "Feature", "properties": {"times": [0]},
          "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 0]]]}}, "not a track"),
        ({"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [0, 0]}}]},
         "Point without a time"),
        ({"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {"time": 1}, "geometry": {"type": "Point", "coordinates": [200, 0]}}]},
         "lon 200.0 outside"),
    ],
)
def test_parse_geojson_errors(obj, message):
    with pytest.raises(ValueError, match=message):
        parse_geojson_track(obj)


# --- cleaning -------------------------------------------------------------------------------


def walk(n=20, speed=1.5, dt=10.0):
    t = np.arange(n) * dt
    return t * speed, np.zeros(n), t


def test_clean_track_drops_a_synthetic_jump():
    x, y, t = walk()
    x[7] += 5000.0  # 5 km spike in 10 s = 500 m/s
    mask, counts = clean_track(x, y, t)
    assert not mask[7] and mask.sum() == 19
    assert counts == {"kept": 19, "invalid": 0, "accuracy": 0, "time": 0, "speed": 1}


def test_clean_track_time_accuracy_invalid():
    x, y, t = walk(10)
    t[4] = t[3]  # duplicate time
    t[6] = t[2]  # goes back in time
    x[8] = np.nan
    acc = np.full(10, 5.0)
    acc[1] = 80.0
    acc[2] = np.nan  # unknown accuracy passes the gate
    mask, counts = clean_track(x, y, t, accuracy=acc, max_accuracy=30)
    assert mask.tolist() == [True, False, True, True, False, True, False, True, False, True]
    assert counts == {"kept": 6, "invalid": 1, "accuracy": 1, "time": 2, "speed": 0}
    _, counts = clean_track(x, y, t, accuracy=acc)  # no gate configured
    assert counts["accuracy"] == 0


def test_clean_track_speed_is_judged_from_the_last_kept_fix():
    # A two-fix excursion: the second fix is near the first outlier but far from the last kept fix.
    x = np.array([0.0, 10, 3000, 3010, 20, 30])
    t = np.arange(6) * 10.0
    mask, counts = clean_track(x, np.zeros(6), t, max_speed=50)
    assert mask.tolist() == [True, True, False, False, True, True]
    assert counts["speed"] == 2


def test_clean_track_recovers_from_a_bad_first_fix():
    x, y, t = walk(12)
    x[0] = -8000.0  # cold-start fix 8 km away
    mask, counts = clean_track(x, y, t)
    assert not mask[0] and mask[1:].all()
    assert counts["speed"] == 1 and counts["kept"] == 11
    mask, _ = clean_track(x, y, t, reanchor_after=0)  # pure "last kept fix" rule
    assert mask.tolist() == [True] + [False] * 11


def test_clean_track_input_checks():
    with pytest.raises(ValueError, match="lengths differ"):
        clean_track([0, 1], [0], [0, 1])
    mask, counts = clean_track([], [], [])
    assert mask.size == 0 and counts["kept"] == 0


# --- coverage -------------------------------------------------------------------------------


def test_square_zone_with_a_track_through_its_middle_is_60_percent_covered():
    zone = box(0, 0, 100, 100)
    track = LineString([(50, -200), (50, 300)])  # N-S through the middle, beyond both edges
    res = zone_coverage(zone, [track], buffer_m=30)
    # a 60 m wide swath (x in 20..80) across a 100 m square: 60 x 100 / 100 x 100
    assert res["kind"] == "area" and res["total"] == pytest.approx(10_000)
    assert res["covered"] == pytest.approx(6000, rel=1e-9)
    assert res["share"] == pytest.approx(0.60, rel=1e-9)
    assert res["entries"] == 1 and res["visits"] is None


def test_road_centreline_first_400_m():
    road = LineString([(0, 0), (1000, 0)])
    on_axis = LineString([(0, 0), (400, 0)])
    res = zone_coverage(road, [on_axis], buffer_m=30)
    # 400 m driven + the round end cap reaches 30 m further along the axis (the start cap falls off
    # the road): 430 / 1000
    assert res["kind"] == "length" and res["share"] == pytest.approx(0.43, abs=1e-9)
    off_axis = LineString([(0, 10), (400, 10)])  # walking on the pavement, 10 m off the centreline
    res = zone_coverage(road, [off_axis], buffer_m=30)
    # the cap circle (r = 30) meets the centreline sqrt(30² - 10²) = 28.284 m past the end
    expected = (400 + math.sqrt(30**2 - 10**2)) / 1000
    assert res["share"] == pytest.approx(expected, abs=2e-4)


def test_coverage_union_does_not_double_count_and_zero_when_far():
    zone = box(0, 0, 100, 100)
    t1 = LineString([(50, -10), (50, 110)])
    t2 = LineString([(55, -10), (55, 110)])  # overlapping the first swath
    res = zone_coverage(zone, [t1, t2], buffer_m=30)
    assert res["share"] == pytest.approx(0.65, rel=1e-9)  # x in 20..85
    assert zone_coverage(zone, [LineString([(500, 0), (600, 0)])])["share"] == 0.0
    assert zone_coverage(zone, [])["share"] == 0.0


def test_point_zone_and_bad_zone():
    lamps = MultiPoint([(0, 0), (100, 0), (1000, 0)])
    res = zone_coverage(lamps, [LineString([(0, 20), (100, 20)])], buffer_m=30)
    assert res["kind"] == "points" and res["covered"] == 2 and res["share"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="empty"):
        zone_coverage(Polygon(), [])
    with pytest.raises(ValueError, match="time arrays"):
        zone_coverage(box(0, 0, 1, 1), [LineString([(0, 0), (1, 1)])], times=[])


def test_visits_merge_passes_closer_than_ten_minutes():
    zone = box(0, 0, 100, 100)
    # Three W->E crossings of the zone at y = 50, joined by loops 200-350 m away from it.
    loop = [(300, 400), (-200, 400), (-200, 50)]
    coords = [(-200, 50), (300, 50), *loop, (300, 50), *loop, (300, 50)]
    minutes = [0, 2, 3, 4, 5, 7, 20, 30, 40, 42]
    res = zone_coverage(zone, [LineString(coords)], times=[[T0 + 60 * m for m in minutes]])
    # passes at 0-2, 5-7 (3 min after the first: same visit) and 40-42 min
    assert res["entries"] == 3
    assert res["visits"] == 2
    assert res["visit_times"] == [(T0, T0 + 7 * 60), (T0 + 40 * 60, T0 + 42 * 60)]
    no_times = zone_coverage(zone, [LineString(coords)])
    assert no_times["entries"] == 3 and no_times["visits"] is None


def test_visits_two_tracks_minutes_apart_are_one_visit():
    zone = box(0, 0, 100, 100)
    a = LineString([(-100, 50), (200, 50)])
    b = LineString([(-100, 60), (200, 60)])
    res = zone_coverage(zone, [a, b], times=[[T0, T0 + 120], [T0 + 300, T0 + 420]])
    assert res["entries"] == 2 and res["visits"] == 1
    res = zone_coverage(zone, [a, b], times=[[T0, T0 + 120], [T0 + 720, T0 + 840]])
    assert res["visits"] == 2  # 10 minutes from the end of the first pass
    assert res["visit_times"] == [(T0, T0 + 120), (T0 + 720, T0 + 840)]


# --- frequency ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("twice_daily", (2, "day")),
        ("daily", (1, "day")),
        ("weekly", (1, "week")),
        ("2/day", (2, "day")),
        (" 3 / week ", (3, "week")),
        ("1/w", (1, "week")),
        ("2次/日", (2, "day")),
        ("Twice-Daily", (2, "day")),
    ],
)
def test_parse_frequency(text, expected):
    assert parse_frequency(text) == expected


@pytest.mark.parametrize("text", ["often", "0/day", "2/month", "", "1/day/2"])
def test_parse_frequency_rejects(text):
    with pytest.raises(ValueError, match="frequency"):
        parse_frequency(text)


def test_frequency_met_daily():
    d1, d2, d3 = date(2024, 5, 6), date(2024, 5, 7), date(2024, 5, 8)
    check = frequency_met({d1: 2, d2: 3, d3: 2}, "2/day")
    assert check and check.met and check.periods == 3
    check = frequency_met({d1: 2, d2: 1, d3: 0}, "twice_daily")
    assert not check and check.shortfalls == {d2: 1, d3: 0}
    assert frequency_met({d1: 1}, "daily")
    assert not frequency_met({}, "daily")


def test_frequency_met_weekly_groups_iso_weeks():
    # 2024-05-06 is a Monday; 2024-05-13 the next Monday
    visits = {date(2024, 5, 6): 0, date(2024, 5, 12): 1, date(2024, 5, 13): 0, date(2024, 5, 19): 0}
    check = frequency_met(visits, "weekly")
    assert not check and check.shortfalls == {date(2024, 5, 13): 0}
    assert frequency_met({date(2024, 5, 7): 1, date(2024, 5, 9): 1}, "2/week")


def test_visits_per_day_uses_local_days():
    # 17:00 UTC on 6 May is 01:00 on 7 May in China
    starts = [(T0 + 3600, T0 + 4000), (T0 + 17 * 3600, T0 + 17 * 3600 + 60)]
    assert visits_per_day(starts) == {date(2024, 5, 6): 1, date(2024, 5, 7): 1}
    assert visits_per_day(starts, tz=UTC) == {date(2024, 5, 6): 2}
    assert CHINA_TZ.utcoffset(None).total_seconds() == 8 * 3600


# --- end to end -----------------------------------------------------------------------------


def test_gpx_to_coverage_in_cgcs2000_gauss_kruger():
    pyproj = pytest.importorskip("pyproj")
    to_gk = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:4549", always_xy=True)  # CM 120°E
    lon0, lat0 = 121.1816, 31.8712
    x0, y0 = to_gk.transform(lon0, lat0)
    # inspector walks 1.4 m/s east for 5 minutes, one fix every 10 s, with a GPS spike at fix 12
    to_ll = pyproj.Transformer.from_crs("EPSG:4549", "EPSG:4326", always_xy=True)
    pts = []
    for i in range(31):
        x, y = x0 + 14.0 * i, y0 + (3000.0 if i == 12 else 0.0)
        lon, lat = to_ll.transform(x, y)
        stamp = datetime.fromtimestamp(T0 + 10 * i, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        pts.append(f'<trkpt lat="{lat:.7f}" lon="{lon:.7f}"><time>{stamp}</time></trkpt>')
    doc = (
        '<gpx version="1.1" xmlns="http://www.topografix.com/GPX/1/1"><trk><trkseg>'
        + "".join(pts)
        + "</trkseg></trk></gpx>"
    )
    (trk,) = parse_gpx(doc)
    x, y = to_gk.transform(trk.lon, trk.lat)
    mask, counts = clean_track(x, y, trk.time, max_speed=10)
    assert counts["speed"] == 1 and not mask[12]
    line = track_line(x[mask], y[mask])
    zone = box(x0 + 100, y0 - 50, x0 + 200, y0 + 50)  # a 100 m key square on the route
    res = zone_coverage(zone, [line], buffer_m=30, times=[trk.time[mask]])
    assert res["share"] == pytest.approx(0.6, abs=1e-3)  # 60 m swath across 100 m
    assert res["visits"] == 1
    assert frequency_met(visits_per_day(res["visit_times"]), "1/day")
    assert Point(x0, y0).distance(Point(x[0], y[0])) < 0.01
