"""EXIF positions: every shared sample photo has an asserted outcome, plus synthetic broken EXIF."""

from __future__ import annotations

import io
import random
import struct
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image

from gis.exif import ExifResult, distance_m, extract_exif_block, mismatch_flag, read_exif

PHOTOS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "photos"
needs_photos = pytest.mark.skipif(
    not PHOTOS.is_dir(), reason=f"shared photo samples not found at {PHOTOS} (../shared/data/photos)"
)


def exif_of(name: str) -> ExifResult:
    return read_exif((PHOTOS / name).read_bytes())


# --- the shared photos ----------------------------------------------------------------------

# name -> (status, lat, lon, flags that must be present)
EXPECTED = {
    "DSCN0010.jpg": ("ok", 43.467448, 11.885127, []),
    "iphone_hdr_NO.jpg": ("ok", 40.446972, -3.724753, []),
    "HMD_Nokia_8.3_5G.jpg": ("ok", 60.146706, 24.906772, []),
    "IMG_5195.HEIC": ("ok", 39.051344, -94.288772, []),
    "DSCN0012.jpg": ("ok", None, None, []),
    "DSCN0021.jpg": ("ok", None, None, []),
    "DSCN0025.jpg": ("ok", None, None, []),
    "DSCN0027.jpg": ("ok", None, None, []),
    "DSCN0029.jpg": ("ok", None, None, []),
    "Canon_40D.jpg": ("no_position", None, None, ["gps_no_position"]),
    "exif_gps.jpg": ("invalid_position", None, None, ["gps_malformed", "gps_out_of_range"]),
    "empty_gps_ifd.jpg": ("no_position", None, None, ["gps_empty_ifd", "gps_no_position"]),
    "exif_gps_typeerror.jpg": ("no_position", None, None, ["gps_malformed"]),
    "corrupted.jpg": ("no_position", None, None, ["damaged_image", "no_gps"]),
}


@needs_photos
def test_every_shared_photo_has_an_expected_outcome():
    on_disk = {p.name for p in PHOTOS.iterdir() if p.is_file()}
    assert on_disk == set(EXPECTED), "a shared photo was added or removed: give it an expected outcome"


@needs_photos
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_photo_outcome(name):
    status, lat, lon, flags = EXPECTED[name]
    res = exif_of(name)
    assert res.status == status, res
    for f in flags:
        assert f in res.flags, res
    if status == "ok":
        assert res.has_position
        assert -90 <= res.lat <= 90 and -180 <= res.lon <= 180
        assert "damaged_image" not in res.flags
    else:
        assert res.lat is None and res.lon is None and not res.has_position
    if lat is not None:
        assert res.lat == pytest.approx(lat, abs=1e-5)
        assert res.lon == pytest.approx(lon, abs=1e-5)


@needs_photos
@pytest.mark.parametrize("name", ["DSCN0012.jpg", "DSCN0021.jpg", "DSCN0025.jpg", "DSCN0027.jpg", "DSCN0029.jpg"])
def test_tuscany_series_lies_near_dscn0010(name):
    ref, res = exif_of("DSCN0010.jpg"), exif_of(name)
    d = distance_m(ref.lon, ref.lat, res.lon, res.lat)
    assert 0 < d < 420  # the README says "~400 m": DSCN0029 is the farthest, at 410 m
    assert mismatch_flag((ref.lon, ref.lat), res, threshold_m=420) is None
    assert mismatch_flag((ref.lon, ref.lat), res, threshold_m=10) == "exif_device_mismatch"


@needs_photos
def test_west_longitude_altitude_and_times_of_iphone():
    res = exif_of("iphone_hdr_NO.jpg")
    assert res.lon < 0  # GPSLongitudeRef W
    assert res.altitude == pytest.approx(639.588, abs=1e-3)
    assert res.timestamp == datetime(2015, 4, 10, 20, 12, 23)  # no OffsetTime: naive local
    assert res.timestamp.tzinfo is None
    assert res.gps_timestamp == datetime(2015, 4, 10, 18, 12, 22, 60000, tzinfo=UTC)
    assert res.direction == pytest.approx(212.872, abs=1e-3) and res.direction_ref == "T"


@needs_photos
def test_heic_position_offset_time_and_altitude():
    res = exif_of("IMG_5195.HEIC")
    assert res.timestamp == datetime(2021, 4, 11, 15, 47, 53, tzinfo=timezone(timedelta(hours=-5)))
    assert res.timestamp.utcoffset() == timedelta(hours=-5)
    assert res.altitude == pytest.approx(260.56, abs=0.01)
    assert res.direction == pytest.approx(348.055, abs=1e-3) and res.direction_ref == "M"


@needs_photos
def test_nokia_offset_time_matches_gps_utc():
    res = exif_of("HMD_Nokia_8.3_5G.jpg")
    assert res.timestamp.utcoffset() == timedelta(hours=3)
    assert res.gps_timestamp.tzinfo is UTC
    assert abs((res.timestamp - res.gps_timestamp).total_seconds()) < 5


@needs_photos
def test_damaged_flag_depends_on_decoding_check():
    data = (PHOTOS / "corrupted.jpg").read_bytes()
    assert "damaged_image" in read_exif(data).flags
    assert "damaged_image" not in read_exif(data, check_image=False).flags  # header EXIF is fine


@needs_photos
def test_exif_gps_timestamp_garbage_does_not_raise():
    res = exif_of("exif_gps.jpg")
    assert res.gps_timestamp is None and res.lat is None


# --- synthetic EXIF -------------------------------------------------------------------------

RATIONAL, ASCII, BYTE, LONG, SHORT = 5, 2, 1, 4, 3


def _pack_value(e: str, typ: int, value) -> tuple[int, bytes]:
    if typ == ASCII:
        raw = value if isinstance(value, bytes) else value.encode() + b"\x00"
        return len(raw), raw
    if typ == RATIONAL:
        return len(value), b"".join(struct.pack(e + "II", n, d) for n, d in value)
    fmt = {BYTE: "B", SHORT: "H", LONG: "I"}[typ]
    return len(value), struct.pack(f"{e}{len(value)}{fmt}", *value)


def build_tiff(ifd0: dict, gps: dict | None = None, exif_ifd: dict | None = None, big_endian=False,
               gps_pointer=None) -> bytes:
    """A TIFF/EXIF stream. Entries are {tag: (type, value)}; pointers to sub-IFDs are added here.

    ``gps_pointer`` overrides the GPSInfo entry (e.g. (ASCII, "oops") for the string case).
    """
    e = ">" if big_endian else "<"
    ifds = [dict(ifd0), exif_ifd, gps]
    layout: list[tuple[str, dict]] = [("ifd0", ifds[0])]
    if exif_ifd is not None:
        ifds[0][0x8769] = (LONG, [0])
        layout.append(("exif", exif_ifd))
    if gps is not None:
        ifds[0][0x8825] = (LONG, [0])
        layout.append(("gps", gps))
    if gps_pointer is not None:
        ifds[0][0x8825] = gps_pointer

    def size(d):
        extra = 0
        for typ, val in d.values():
            n = len(_pack_value(e, typ, val)[1])
            extra += n + (n & 1) if n > 4 else 0
        return 2 + 12 * len(d) + 4 + extra

    offsets, pos = {}, 8
    for name, d in layout:
        offsets[name] = pos
        pos += size(d)
    if exif_ifd is not None:
        ifds[0][0x8769] = (LONG, [offsets["exif"]])
    if gps is not None and gps_pointer is None:
        ifds[0][0x8825] = (LONG, [offsets["gps"]])

    out = bytearray(b"MM\x00*" if big_endian else b"II*\x00")
    out += struct.pack(e + "I", 8)
    for name, d in layout:
        start = offsets[name]
        assert len(out) == start
        data_pos = start + 2 + 12 * len(d) + 4
        head, tail = bytearray(struct.pack(e + "H", len(d))), bytearray()
        for tag in sorted(d):
            typ, val = d[tag]
            count, raw = _pack_value(e, typ, val)
            if len(raw) <= 4:
                field = raw.ljust(4, b"\x00")
            else:
                field = struct.pack(e + "I", data_pos + len(tail))
                tail += raw + (b"\x00" if len(raw) & 1 else b"")
            head += struct.pack(e + "HHI", tag, typ, count) + field
        head += struct.pack(e + "I", 0)
        out += head + tail
    return bytes(out)


def dms(value: float) -> list[tuple[int, int]]:
    d = int(value)
    m = int((value - d) * 60)
    s = (value - d - m / 60) * 3600
    return [(d, 1), (m, 1), (round(s * 10000), 10000)]


HAIMEN = (121.1816, 31.8712)  # lon, lat


def gps_ifd(lat=HAIMEN[1], lon=HAIMEN[0], lat_ref="N", lon_ref="E", extra: dict | None = None) -> dict:
    d = {1: (ASCII, lat_ref), 2: (RATIONAL, dms(lat)), 3: (ASCII, lon_ref), 4: (RATIONAL, dms(lon))}
    d.update(extra or {})
    return d


def to_jpeg(tiff: bytes) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "gray").save(buf, format="JPEG", exif=b"Exif\x00\x00" + tiff)
    return buf.getvalue()


def test_synthetic_valid_position_both_byte_orders():
    for be in (False, True):
        res = read_exif(to_jpeg(build_tiff({0x010F: (ASCII, "Xiaomi")}, gps_ifd(), big_endian=be)))
        assert res.status == "ok", res
        assert res.lon == pytest.approx(HAIMEN[0], abs=1e-6)
        assert res.lat == pytest.approx(HAIMEN[1], abs=1e-6)


def test_south_and_west_refs_are_negative():
    res = read_exif(to_jpeg(build_tiff({}, gps_ifd(lat=33.8688, lon=151.2093, lat_ref="S", lon_ref="E"))))
    assert res.lat == pytest.approx(-33.8688, abs=1e-6) and res.lon > 0
    res = read_exif(to_jpeg(build_tiff({}, gps_ifd(lat=40.7128, lon=74.006, lat_ref="N", lon_ref="W"))))
    assert res.lon == pytest.approx(-74.006, abs=1e-6) and res.lat > 0


def test_zero_denominator_rational_is_invalid():
    gps = gps_ifd()
    gps[2] = (RATIONAL, [(31, 1), (52, 1), (0, 0)])
    res = read_exif(to_jpeg(build_tiff({}, gps)))
    assert res.status == "invalid_position"
    assert "gps_invalid_rational" in res.flags and res.lat is None


def test_gps_pointer_holding_a_string_is_malformed():
    res = read_exif(to_jpeg(build_tiff({}, None, gps_pointer=(ASCII, "not an offset at all"))))
    assert res.status == "no_position" and "gps_malformed" in res.flags


def test_gps_pointer_outside_the_block_is_malformed():
    res = read_exif(to_jpeg(build_tiff({}, None, gps_pointer=(LONG, [999_999]))))
    assert res.status == "no_position" and "gps_malformed" in res.flags


def test_single_long_latitude_is_malformed():
    gps = gps_ifd()
    gps[2] = (LONG, [4294967295])
    res = read_exif(to_jpeg(build_tiff({}, gps)))
    assert res.status == "invalid_position"
    assert {"gps_malformed", "gps_out_of_range"} <= set(res.flags)


@pytest.mark.parametrize(
    ("gps_change", "flag"),
    [
        ({2: (RATIONAL, [(91, 1), (0, 1), (0, 1)])}, "gps_out_of_range"),
        ({4: (RATIONAL, [(120, 1), (75, 1), (0, 1)])}, "gps_out_of_range"),  # 75 minutes
        ({4: (RATIONAL, [(181, 1), (0, 1), (0, 1)])}, "gps_out_of_range"),
        ({1: (ASCII, "X")}, "gps_missing_ref"),
        ({9: (ASCII, "V")}, "gps_void"),
        (
            {2: (RATIONAL, [(0, 1), (0, 1), (0, 1)]), 4: (RATIONAL, [(0, 1), (0, 1), (0, 1)])},
            "gps_null_island",
        ),
        ({2: (RATIONAL, [(31, 1), (52, 1)])}, "gps_malformed"),  # two rationals
    ],
)
def test_invalid_positions(gps_change, flag):
    gps = gps_ifd()
    gps.update(gps_change)
    res = read_exif(to_jpeg(build_tiff({}, gps)))
    assert res.status == "invalid_position", res
    assert flag in res.flags and res.lat is None and res.lon is None


def test_missing_longitude_is_invalid():
    gps = gps_ifd()
    del gps[3], gps[4]
    res = read_exif(to_jpeg(build_tiff({}, gps)))
    assert res.status == "invalid_position" and "gps_malformed" in res.flags


def test_missing_ref_tag_is_invalid():
    gps = gps_ifd()
    del gps[3]
    res = read_exif(to_jpeg(build_tiff({}, gps)))
    assert res.status == "invalid_position" and "gps_missing_ref" in res.flags


def test_altitude_below_sea_level_direction_and_datetimes():
    gps = gps_ifd(extra={
        5: (BYTE, [1]),
        6: (RATIONAL, [(125, 10)]),
        16: (ASCII, "T"),
        17: (RATIONAL, [(9050, 100)]),
        7: (RATIONAL, [(1, 1), (2, 1), (3, 1)]),
        29: (ASCII, "2024:05:06"),
    })
    exif_ifd = {0x9003: (ASCII, "2024:05:06 09:02:03"), 0x9011: (ASCII, "+08:00")}
    res = read_exif(to_jpeg(build_tiff({}, gps, exif_ifd=exif_ifd)))
    assert res.status == "ok"
    assert res.altitude == pytest.approx(-12.5)
    assert res.direction == pytest.approx(90.5) and res.direction_ref == "T"
    assert res.timestamp == datetime(2024, 5, 6, 9, 2, 3, tzinfo=timezone(timedelta(hours=8)))
    assert res.gps_timestamp == datetime(2024, 5, 6, 1, 2, 3, tzinfo=UTC)
    assert res.timestamp == res.gps_timestamp


def test_bad_datetime_is_flagged_not_raised():
    exif_ifd = {0x9003: (ASCII, "2024:13:45 99:00:00")}
    res = read_exif(to_jpeg(build_tiff({}, gps_ifd(), exif_ifd=exif_ifd)))
    assert res.status == "ok" and res.timestamp is None and "timestamp_invalid" in res.flags


def test_no_exif_at_all():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    res = read_exif(buf.getvalue())
    assert res.status == "no_position" and "no_exif" in res.flags


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_png_exif_chunk_and_webp(fmt):
    tiff = build_tiff({}, gps_ifd(lat=39.9042, lon=116.4074))
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buf, format=fmt, exif=b"Exif\x00\x00" + tiff)
    data = buf.getvalue()
    assert extract_exif_block(data) is not None
    res = read_exif(data)
    assert res.status == "ok" and res.lat == pytest.approx(39.9042, abs=1e-6)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 10, b"hello world", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBP",
     struct.pack(">I", 24) + b"ftypheic" + b"\x00" * 40, "not bytes", None, 12345],
)
def test_never_raises_on_junk(data):
    res = read_exif(data)
    assert isinstance(res, ExifResult) and res.status == "no_position" and res.flags


def test_never_raises_on_truncated_or_mutated_exif():
    tiff = build_tiff({0x010F: (ASCII, "Huawei")}, gps_ifd(extra={6: (RATIONAL, [(5, 1)])}),
                      exif_ifd={0x9003: (ASCII, "2024:05:06 09:02:03")})
    rng = random.Random(12345)
    for cut in range(0, len(tiff), 3):
        res = read_exif(to_jpeg(tiff[:cut]), check_image=False)
        assert res.status in ("ok", "no_position", "invalid_position")
    for _ in range(300):
        mutated = bytearray(tiff)
        for _ in range(rng.randint(1, 6)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        res = read_exif(to_jpeg(bytes(mutated)), check_image=False)
        assert res.status in ("ok", "no_position", "invalid_position")
        if res.status == "ok":
            assert -90 <= res.lat <= 90 and -180 <= res.lon <= 180


# --- distances and the device-vs-EXIF check -------------------------------------------------


def test_distance_m():
    assert distance_m(0, 0, 0, 1) == pytest.approx(111_195, rel=1e-4)
    assert distance_m(121.0, 31.9, 121.0, 31.9) == 0.0
    # one degree of longitude at 60° N is half of one at the equator
    assert distance_m(24, 60, 25, 60) == pytest.approx(111_195 / 2, rel=2e-3)


def test_mismatch_flag():
    exif = read_exif(to_jpeg(build_tiff({}, gps_ifd())))
    lon, lat = HAIMEN
    assert mismatch_flag((lon, lat + 0.0005), exif) is None  # ~55 m
    assert mismatch_flag((lon, lat + 0.005), exif) == "exif_device_mismatch"  # ~555 m
    assert mismatch_flag((lon, lat + 0.005), exif, threshold_m=600) is None
    assert mismatch_flag((lon, lat + 0.005, 500.0), exif) is None  # poor device fix widens it
    assert mismatch_flag((lon, lat), ExifResult()) is None  # nothing to compare
    assert mismatch_flag(None, exif) is None
    assert mismatch_flag((lon, lat + 0.005), (lon, lat)) == "exif_device_mismatch"
