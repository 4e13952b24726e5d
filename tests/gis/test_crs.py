import numpy as np
import pytest
import shapely

from gis.crs import (
    CRSError,
    bd09_to_gcj02,
    bd09_to_wgs84,
    gauss_kruger_epsg,
    gcj02_to_bd09,
    gcj02_to_wgs84,
    is_geographic,
    parse_crs,
    transform_geometry,
    transform_xy,
    validate_lonlat,
    wgs84_to_bd09,
    wgs84_to_gcj02,
    working_epsg_for,
)

# Published eviltransform vectors, as (lat, lon): WGS-84 -> GCJ-02.
GCJ_VECTORS = [
    ((31.1774276, 121.5272106), (31.17530398364597, 121.531541859215)),
    ((22.543847, 113.912316), (22.540796131694766, 113.9171764808363)),
    ((39.911954, 116.377817), (39.91334545536069, 116.38404722455657)),
]


def metres(lon1, lat1, lon2, lat2):
    """Haversine distance in metres."""
    lon1, lat1, lon2, lat2 = map(np.radians, (lon1, lat1, lon2, lat2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371008.8 * np.arcsin(np.sqrt(a))


@pytest.mark.parametrize(
    "given, expected",
    [
        ("EPSG:4326", "EPSG:4326"),
        ("4326", "EPSG:4326"),
        (4326, "EPSG:4326"),
        (np.int64(4549), "EPSG:4549"),
        ("epsg:4549", "EPSG:4549"),
        ("WGS84", "EPSG:4326"),
        ("wgs-84", "EPSG:4326"),
        ("CRS84", "EPSG:4326"),
        ("OGC:CRS84", "EPSG:4326"),
        ("urn:ogc:def:crs:EPSG::4490", "EPSG:4490"),
        ("http://www.opengis.net/def/crs/EPSG/0/4490", "EPSG:4490"),
        ("CGCS2000", "EPSG:4490"),
        ("gcj02", "GCJ-02"),
        ("GCJ-02", "GCJ-02"),
        ("gcj", "GCJ-02"),
        ("bd09", "BD-09"),
        ("BD-09", "BD-09"),
        ("bd09ll", "BD-09"),
        (" EPSG:3857 ", "EPSG:3857"),
    ],
)
def test_parse_crs_accepts(given, expected):
    assert parse_crs(given) == expected


def test_parse_crs_unknown_message():
    with pytest.raises(CRSError, match=r"unknown CRS 'xyz': use EPSG:<code>, GCJ-02 or BD-09"):
        parse_crs("xyz")


@pytest.mark.parametrize("bad", ["EPSG:999999", "EPSG:4979", "EPSG:5773", "EPSG:4978", "", None, 1.5, True])
def test_parse_crs_rejects(bad):
    with pytest.raises(CRSError):
        parse_crs(bad)


def test_crs_error_is_value_error():
    assert issubclass(CRSError, ValueError)


def test_is_geographic():
    assert is_geographic("EPSG:4326") and is_geographic("gcj02") and is_geographic("BD-09")
    assert is_geographic("CGCS2000")
    assert not is_geographic(4549) and not is_geographic("EPSG:3857")


@pytest.mark.parametrize("wgs, gcj", GCJ_VECTORS)
def test_gcj02_published_vectors(wgs, gcj):
    (wlat, wlon), (glat, glon) = wgs, gcj
    lon, lat = wgs84_to_gcj02(wlon, wlat)
    assert metres(lon, lat, glon, glat) < 0.5
    lon, lat = gcj02_to_wgs84(glon, glat)
    assert metres(lon, lat, wlon, wlat) < 0.5


def test_gcj02_inverse_is_exact():
    rng = np.random.default_rng(1)
    lon, lat = rng.uniform(73.0, 135.0, 10_000), rng.uniform(18.0, 53.0, 10_000)
    back_lon, back_lat = gcj02_to_wgs84(*wgs84_to_gcj02(lon, lat))
    assert metres(back_lon, back_lat, lon, lat).max() < 1e-6


def test_gcj02_to_bd09_published_vector():
    # wandergis/coordtransform, the widely used x_pi = pi * 3000 / 180 formula.
    lon, lat = gcj02_to_bd09(116.404, 39.915)
    assert abs(lon - 116.41036949371029) < 1e-12 and abs(lat - 39.92133699351021) < 1e-12


def test_bd09_inverse_is_exact():
    rng = np.random.default_rng(2)
    lon, lat = rng.uniform(73.0, 135.0, 10_000), rng.uniform(18.0, 53.0, 10_000)
    back_lon, back_lat = bd09_to_gcj02(*gcj02_to_bd09(lon, lat))
    assert metres(back_lon, back_lat, lon, lat).max() < 1e-6
    back_lon, back_lat = bd09_to_wgs84(*wgs84_to_bd09(lon, lat))
    assert metres(back_lon, back_lat, lon, lat).max() < 1e-6


def test_eviltransform_bd_vector_comes_from_the_pi_variant():
    """The BD vector (29.199786, 120.019809) -> (29.196131605295484, 120.00877901149691) of the
    eviltransform test suites was produced by its early code, which used pi instead of
    x_pi = pi * 3000 / 180 and a one-step GCJ-02 inverse. Reproduce it that way, and pin how far
    the standard x_pi formula (used here) is from it."""
    bd_lon, bd_lat, wgs_lon, wgs_lat = 120.019809, 29.199786, 120.00877901149691, 29.196131605295484
    x, y = bd_lon - 0.0065, bd_lat - 0.006
    z = np.hypot(x, y) - 0.00002 * np.sin(y * np.pi)
    theta = np.arctan2(y, x) - 0.000003 * np.cos(x * np.pi)
    glon, glat = z * np.cos(theta), z * np.sin(theta)
    dlon, dlat = wgs84_to_gcj02(glon, glat)[0] - glon, wgs84_to_gcj02(glon, glat)[1] - glat
    assert metres(glon - dlon, glat - dlat, wgs_lon, wgs_lat) < 0.01
    assert 8.0 < metres(*bd09_to_wgs84(bd_lon, bd_lat), wgs_lon, wgs_lat) < 12.0


def test_offsets_are_zero_outside_china():
    lon = np.array([2.3522, -118.24, 121.5, 24.94])
    lat = np.array([48.8566, 34.05, 31.2, 60.17])
    glon, glat = wgs84_to_gcj02(lon, lat)
    outside = np.array([True, True, False, True])
    np.testing.assert_array_equal(glon[outside], lon[outside])
    np.testing.assert_array_equal(glat[outside], lat[outside])
    assert glon[2] != lon[2]
    np.testing.assert_array_equal(gcj02_to_wgs84(lon[outside], lat[outside])[0], lon[outside])


def test_shapes_scalars_and_nan():
    lon, lat = wgs84_to_gcj02(121.3, 31.9)
    assert np.ndim(lon) == 0 and np.ndim(lat) == 0
    grid = np.full((3, 4), 121.3), np.full((3, 4), 31.9)
    for fn in (wgs84_to_gcj02, gcj02_to_wgs84, gcj02_to_bd09, bd09_to_gcj02, wgs84_to_bd09, bd09_to_wgs84):
        out = fn(*grid)
        assert out[0].shape == (3, 4) and out[1].shape == (3, 4)
    lon, lat = gcj02_to_wgs84([np.nan, 121.3], [31.9, 31.9])
    assert np.isnan(lon[0]) and np.isfinite(lon[1])


def test_gauss_kruger_zones():
    assert gauss_kruger_epsg(121.3) == 4549
    assert gauss_kruger_epsg(75.0) == 4534 and gauss_kruger_epsg(135.0) == 4554
    assert gauss_kruger_epsg(118.5) == 4549 and gauss_kruger_epsg(118.49) == 4548
    for lon in (73.4, 136.5):
        with pytest.raises(ValueError):
            gauss_kruger_epsg(lon)


@pytest.mark.parametrize(
    "lon, lat, epsg",
    [
        (121.3, 31.95, 4549),  # Haimen
        (116.4, 39.9, 4548),  # Beijing (117°E zone)
        (24.94, 60.17, 32635),  # Helsinki
        (-118.24, 34.05, 32611),  # Los Angeles
        (11.885, 43.467, 32632),  # Tuscany
        (151.2, -33.9, 32756),  # Sydney
        (180.0, 10.0, 32660),
    ],
)
def test_working_epsg_for(lon, lat, epsg):
    assert working_epsg_for(lon, lat) == epsg


def test_transform_xy_roundtrips():
    lon, lat = np.array([121.0, 121.3, 121.6]), np.array([31.8, 31.95, 32.1])
    x, y = transform_xy(lon, lat, "EPSG:4326", 4549)
    assert x.dtype == np.float64 and np.all((x > 500_000) & (x < 700_000))
    back = transform_xy(x, y, 4549, "WGS84")
    np.testing.assert_allclose(back, (lon, lat), atol=1e-9)
    gx, gy = transform_xy(x, y, 4549, "gcj02")
    np.testing.assert_allclose((gx, gy), wgs84_to_gcj02(lon, lat), atol=1e-9)
    np.testing.assert_allclose(transform_xy(gx, gy, "GCJ-02", 4549), (x, y), atol=1e-6)
    bx, by = transform_xy(gx, gy, "gcj02", "bd09")
    np.testing.assert_allclose((bx, by), gcj02_to_bd09(gx, gy), atol=1e-12)
    np.testing.assert_allclose(transform_xy(bx, by, "BD-09", "EPSG:4326"), (lon, lat), atol=1e-10)


def test_transform_xy_same_crs_copies():
    x = np.array([1.0, 2.0])
    ox, _ = transform_xy(x, x, "EPSG:4326", "WGS84")
    ox[0] = 9.0
    assert x[0] == 1.0


def test_transform_geometry():
    poly = shapely.Polygon([(121.2, 31.9), (121.3, 31.9), (121.3, 32.0), (121.2, 31.9)])
    projected = transform_geometry(poly, "gcj02", "EPSG:4549")
    assert projected.area > 1e6
    back = transform_geometry(projected, 4549, "GCJ-02")
    np.testing.assert_allclose(shapely.get_coordinates(back), shapely.get_coordinates(poly), atol=1e-9)
    many = transform_geometry(np.array([poly, shapely.Point(121.25, 31.95)]), "gcj02", 4549)
    assert many.shape == (2,) and many[1].geom_type == "Point"


def test_validate_lonlat():
    assert validate_lonlat([121.3, -180.0, 180.0], [31.9, -90.0, 90.0]) is None
    reasons = validate_lonlat(
        [np.nan, 121.3, np.inf, 200.0, 31.9, 10.0, 121.3, -100.0],
        [31.9, np.nan, 1.0, 31.9, 121.3, 95.0, 31.9, 100.0],
    )
    assert list(reasons) == [
        "not a number",
        "not a number",
        "not a number",
        "longitude out of range [-180, 180]",
        "latitude out of range [-90, 90] (lon/lat swapped?)",
        "latitude out of range [-90, 90] (lon/lat swapped?)",
        None,
        "latitude out of range [-90, 90]",
    ]
