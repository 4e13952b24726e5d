"""Positions and times from photo EXIF, never trusting the bytes.

The intake rule
---------------
* A photo is accepted if it decodes (see :mod:`gis.photos`); a photo that fails to decode is
  refused with :class:`gis.photos.PhotoError` and a message. :func:`read_exif` itself never raises:
  it reports such a photo with the ``damaged_image`` flag.
* Its EXIF position is used only when ``status == "ok"``. Otherwise (``"no_position"`` or
  ``"invalid_position"``) the photo is still accepted, carries its flags, and the report must carry
  a device location. Even when ``status == "ok"`` EXIF only corroborates the device location
  (browser uploads often lose EXIF): compare them with :func:`mismatch_flag`.

Status
------
* ``ok``: GPSLatitude/GPSLongitude with their refs are present, well formed and in range.
* ``no_position``: no EXIF, no GPS IFD, an empty or unreadable GPS pointer, or a GPS IFD without
  latitude and longitude.
* ``invalid_position``: a GPS IFD has position tags that cannot give a trustworthy position
  (missing half, wrong type or count, 0/0 rationals, out of range, unknown ref, 0/0 "null island",
  GPSStatus "V" = void).

Flags (a list; several may apply)
---------------------------------
``unsupported_format``, ``damaged_image``, ``no_exif``, ``exif_malformed``, ``no_gps``,
``gps_malformed``, ``gps_empty_ifd``, ``gps_no_position``, ``gps_invalid_rational``,
``gps_out_of_range``, ``gps_missing_ref``, ``gps_null_island``, ``gps_void``, ``gps_not_wgs84``
(GPSMapDatum names another datum: informative only), ``timestamp_invalid``.

The EXIF (TIFF) structure is parsed here, not by Pillow, so that every tag's declared type and
count can be checked (Pillow silently coerces or drops malformed GPS data). The EXIF block is
located in JPEG APP1, PNG ``eXIf``, WebP ``EXIF`` chunks, and in HEIC/AVIF through pillow-heif.
"""

from __future__ import annotations

import io
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from gis.photos import PhotoError, sniff_image_type, verify_decodes

__all__ = [
    "EARTH_RADIUS_M",
    "ExifResult",
    "distance_m",
    "extract_exif_block",
    "mismatch_flag",
    "read_exif",
]

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius

# --- TIFF/EXIF low-level parsing ------------------------------------------------------------

_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_RATIONAL_TYPES = (5, 10)
_MAX_ENTRIES = 1000

_TAG_EXIF_IFD = 0x8769
_TAG_GPS_IFD = 0x8825
_TAG_DATETIME_ORIGINAL = 0x9003
_TAG_DATETIME_DIGITIZED = 0x9004
_TAG_OFFSET_TIME_ORIGINAL = 0x9011
_TAG_OFFSET_TIME_DIGITIZED = 0x9012

_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4
_GPS_ALT_REF, _GPS_ALT, _GPS_TIME, _GPS_STATUS = 5, 6, 7, 9
_GPS_DATUM, _GPS_IMG_DIR_REF, _GPS_IMG_DIR, _GPS_DATE = 18, 16, 17, 29


@dataclass(frozen=True)
class _Entry:
    """One IFD entry: declared TIFF type, count and decoded values."""

    type: int
    count: int
    value: Any  # tuple of numbers, tuple of (num, den) for rationals, bytes for ASCII/UNDEFINED
    offset: int | None  # raw 4-byte value as an unsigned int (pointer tags)


class _Tiff:
    """Bounds-checked reader of a TIFF header and its IFDs."""

    def __init__(self, blob: bytes) -> None:
        if len(blob) < 8:
            raise ValueError("EXIF block shorter than a TIFF header")
        order = blob[:2]
        if order == b"II":
            self.e = "<"
        elif order == b"MM":
            self.e = ">"
        else:
            raise ValueError("bad TIFF byte order mark")
        if struct.unpack(self.e + "H", blob[2:4])[0] != 42:
            raise ValueError("bad TIFF magic number")
        self.blob = blob
        self.ifd0 = struct.unpack(self.e + "I", blob[4:8])[0]

    def ifd(self, offset: int) -> dict[int, _Entry]:
        b, e = self.blob, self.e
        if offset < 8 or offset + 2 > len(b):
            raise ValueError(f"IFD offset {offset} outside the EXIF block")
        n = struct.unpack(e + "H", b[offset : offset + 2])[0]
        if n > _MAX_ENTRIES:
            raise ValueError(f"IFD at {offset} claims {n} entries")
        entries: dict[int, _Entry] = {}
        for k in range(n):
            p = offset + 2 + 12 * k
            if p + 12 > len(b):
                raise ValueError("IFD runs past the end of the EXIF block")
            tag, typ, count = struct.unpack(e + "HHI", b[p : p + 8])
            raw = b[p + 8 : p + 12]
            size = _TYPE_SIZES.get(typ)
            if size is None:
                entries[tag] = _Entry(typ, count, None, None)
                continue
            total = size * count
            if total <= 4:
                data = raw[:total]
            else:
                off = struct.unpack(e + "I", raw)[0]
                data = b[off : off + total] if off + total <= len(b) else None
            entries[tag] = _Entry(typ, count, self._decode(typ, count, data), struct.unpack(e + "I", raw)[0])
        return entries

    def _decode(self, typ: int, count: int, data: bytes | None) -> Any:
        if data is None:
            return None
        e = self.e
        if typ in (2, 7):
            return bytes(data)
        fmt = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 11: "f", 12: "d", 13: "I"}
        if typ in fmt:
            return struct.unpack(f"{e}{count}{fmt[typ]}", data)
        if typ in _RATIONAL_TYPES:
            c = "I" if typ == 5 else "i"
            vals = struct.unpack(f"{e}{2 * count}{c}", data)
            return tuple(zip(vals[0::2], vals[1::2], strict=True))
        return None


# --- locating the EXIF block ----------------------------------------------------------------


def _tiff_start(blob: bytes) -> bytes | None:
    """Strip an ``Exif\\0\\0`` prefix or a HEIF 4-byte offset; return the TIFF stream."""
    if blob.startswith(b"Exif\x00\x00"):
        blob = blob[6:]
    if blob[:4] in (b"II*\x00", b"MM\x00*"):
        return blob
    if len(blob) >= 4:  # HEIF Exif item: 4-byte big-endian offset to the TIFF header
        off = struct.unpack(">I", blob[:4])[0]
        cand = blob[4 + off :]
        if cand[:4] in (b"II*\x00", b"MM\x00*"):
            return cand
    for sig in (b"II*\x00", b"MM\x00*"):
        i = blob.find(sig, 0, 64)
        if i >= 0:
            return blob[i:]
    return None


def _exif_from_jpeg(data: bytes) -> bytes | None:
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD9, 0xDA):
            return None
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if length < 2:
            return None
        seg = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and seg.startswith(b"Exif\x00"):
            return seg[6:] if seg[5:6] == b"\x00" else seg[5:]
        pos += 2 + length
    return None


def _exif_from_png(data: bytes) -> bytes | None:
    pos, n = 8, len(data)
    while pos + 8 <= n:
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        if ctype == b"eXIf":
            return data[pos + 8 : pos + 8 + length]
        if ctype == b"IEND":
            return None
        pos += 12 + length
    return None


def _exif_from_webp(data: bytes) -> bytes | None:
    pos, n = 12, len(data)
    while pos + 8 <= n:
        ctype, length = struct.unpack("<4sI", data[pos : pos + 8])
        if ctype == b"EXIF":
            return data[pos + 8 : pos + 8 + length]
        pos += 8 + length + (length & 1)
    return None


def _exif_from_heif(data: bytes) -> bytes | None:
    import pillow_heif  # imported lazily: only needed for HEIC/HEIF/AVIF

    heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=False)
    exif = heif.info.get("exif")
    return bytes(exif) if exif else None


def extract_exif_block(data: bytes) -> bytes | None:
    """The raw TIFF stream of the EXIF block, found by container type, or None."""
    kind = sniff_image_type(data)
    finder = {
        "jpeg": _exif_from_jpeg,
        "png": _exif_from_png,
        "webp": _exif_from_webp,
        "heic": _exif_from_heif,
        "heif": _exif_from_heif,
        "avif": _exif_from_heif,
    }.get(kind or "")
    if finder is None:
        return None
    blob = finder(bytes(data))
    return _tiff_start(blob) if blob else None


# --- interpretation -------------------------------------------------------------------------


@dataclass
class ExifResult:
    """What a photo's EXIF says about where and when it was taken.

    ``lon``/``lat`` are WGS-84 decimal degrees and are set only when ``status == "ok"``.
    ``timestamp`` comes from DateTimeOriginal (or DateTimeDigitized): aware when an OffsetTime tag
    is present, otherwise naive camera-local time. ``gps_timestamp`` is GPSDateStamp+GPSTimeStamp
    in UTC. ``direction`` is GPSImgDirection in degrees, ``direction_ref`` "T" (true) or "M"
    (magnetic). ``altitude`` is metres above (negative: below) sea level.
    """

    lon: float | None = None
    lat: float | None = None
    altitude: float | None = None
    timestamp: datetime | None = None
    gps_timestamp: datetime | None = None
    direction: float | None = None
    direction_ref: str | None = None
    flags: list[str] = field(default_factory=list)
    status: str = "no_position"

    @property
    def has_position(self) -> bool:
        """True when the EXIF position may be used (``status == "ok"``)."""
        return self.status == "ok"

    def flag(self, name: str) -> None:
        """Add a flag once."""
        if name not in self.flags:
            self.flags.append(name)


def _ascii(entry: _Entry | None) -> str | None:
    if entry is None or not isinstance(entry.value, bytes):
        return None
    return entry.value.split(b"\x00", 1)[0].decode("ascii", "replace").strip()


def _rationals(entry: _Entry, count: int) -> tuple[float, ...] | str:
    """Decode ``count`` rationals; return an error flag name instead when impossible."""
    if entry.type not in _RATIONAL_TYPES or entry.count != count or entry.value is None:
        return "gps_malformed"
    out = []
    for num, den in entry.value:
        if den == 0:
            return "gps_invalid_rational"
        out.append(num / den)
    return tuple(out)


def _single_rational(entry: _Entry | None) -> float | None:
    if entry is None:
        return None
    vals = _rationals(entry, 1)
    if isinstance(vals, str) or not math.isfinite(vals[0]):
        return None
    return vals[0]


def _dms(entry: _Entry, limit: float) -> float | list[str]:
    """Degrees/minutes/seconds rationals to decimal degrees, or the flag names explaining why not.

    A wrong count or type is ``gps_malformed``; when the values can still be read they are also
    range-checked, so a single rational 4294967295 gets ``gps_out_of_range`` as well.
    """
    flags: list[str] = []
    vals = _rationals(entry, 3)
    if vals == "gps_malformed" and entry.type in _RATIONAL_TYPES and entry.value:
        flags.append("gps_malformed")
        if any(den == 0 for _, den in entry.value):
            flags.append("gps_invalid_rational")
        elif entry.value[0][0] / entry.value[0][1] > limit:
            flags.append("gps_out_of_range")
        return flags
    if vals == "gps_malformed" and entry.type in (3, 4, 9) and entry.value:
        flags.append("gps_malformed")  # e.g. a single LONG instead of 3 rationals
        if abs(entry.value[0]) > limit:
            flags.append("gps_out_of_range")
        return flags
    if isinstance(vals, str):
        return [vals]
    deg, minutes, seconds = vals
    if deg < 0 or not (0 <= minutes < 60) or not (0 <= seconds <= 60):
        return ["gps_out_of_range"]
    value = deg + minutes / 60.0 + seconds / 3600.0
    if value > limit:
        return ["gps_out_of_range"]
    return value


def _ref(entry: _Entry | None, positive: str, negative: str) -> int | None:
    text = _ascii(entry)
    if not text:
        return None
    c = text[0].upper()
    return 1 if c == positive else -1 if c == negative else None


_DT_RE = re.compile(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET_RE = re.compile(r"^([+-])(\d{2}):(\d{2})$")


def _parse_exif_datetime(text: str | None, offset: str | None) -> datetime | None | str:
    if not text or not text.strip(" :0"):
        return None  # absent or blank ("    :  :     :  :  ") per the EXIF spec
    m = _DT_RE.match(text)
    if not m:
        return "timestamp_invalid"
    try:
        dt = datetime(*(int(g) for g in m.groups()))
    except ValueError:
        return "timestamp_invalid"
    if offset:
        om = _OFFSET_RE.match(offset.strip())
        if om:
            delta = timedelta(hours=int(om.group(2)), minutes=int(om.group(3)))
            if delta <= timedelta(hours=14):
                dt = dt.replace(tzinfo=timezone(-delta if om.group(1) == "-" else delta))
    return dt


def _gps_datetime(gps: dict[int, _Entry]) -> datetime | None | str:
    date_text = _ascii(gps.get(_GPS_DATE))
    time_entry = gps.get(_GPS_TIME)
    if not date_text or time_entry is None:
        return None
    m = re.match(r"^(\d{4})[:\-](\d{2})[:\-](\d{2})", date_text)
    hms = _rationals(time_entry, 3)
    if not m or isinstance(hms, str):
        return "timestamp_invalid"
    h, mi, s = hms
    if not (0 <= h < 24 and 0 <= mi < 60 and 0 <= s < 61):
        return "timestamp_invalid"
    try:
        day = datetime(int(m.group(1)), int(m.group(2)), int(m.group(3)), tzinfo=UTC)
    except ValueError:
        return "timestamp_invalid"
    return day + timedelta(hours=h, minutes=mi, seconds=s)


def _pointer(entry: _Entry | None) -> int | None | str:
    """Offset held by an IFD pointer tag; "malformed" when the tag has the wrong type/count."""
    if entry is None:
        return None
    if entry.type in (4, 13) and entry.count == 1 and entry.value:
        return entry.value[0]
    return "malformed"


def _read_position(res: ExifResult, gps: dict[int, _Entry]) -> None:
    lat_e, lon_e = gps.get(_GPS_LAT), gps.get(_GPS_LON)
    if lat_e is None and lon_e is None:
        res.flag("gps_no_position")
        return
    res.status = "invalid_position"
    if lat_e is None or lon_e is None:
        res.flag("gps_malformed")  # half a position
    lat = _dms(lat_e, 90.0) if lat_e is not None else None
    lon = _dms(lon_e, 180.0) if lon_e is not None else None
    for v in (lat, lon):
        if isinstance(v, list):
            for name in v:
                res.flag(name)
    if not isinstance(lat, float) or not isinstance(lon, float):
        return
    lat_sign = _ref(gps.get(_GPS_LAT_REF), "N", "S")
    lon_sign = _ref(gps.get(_GPS_LON_REF), "E", "W")
    if lat_sign is None or lon_sign is None:
        res.flag("gps_missing_ref")
        return
    if lat == 0.0 and lon == 0.0:
        res.flag("gps_null_island")
        return
    status = (_ascii(gps.get(_GPS_STATUS)) or "A")[:1].upper()
    if status == "V":
        res.flag("gps_void")
        return
    res.lat, res.lon = lat_sign * lat, lon_sign * lon
    res.status = "ok"


def _read_gps_extras(res: ExifResult, gps: dict[int, _Entry]) -> None:
    alt = _single_rational(gps.get(_GPS_ALT))
    if alt is not None:
        ref_e = gps.get(_GPS_ALT_REF)
        below = False
        if ref_e is not None and ref_e.value:
            first = ref_e.value[0]
            below = (first if isinstance(first, int) else 0) == 1 or ref_e.value[:1] == b"1"
        res.altitude = -alt if below else alt
    direction = _single_rational(gps.get(_GPS_IMG_DIR))
    if direction is not None and 0 <= direction <= 360:
        res.direction = direction % 360.0
        ref = (_ascii(gps.get(_GPS_IMG_DIR_REF)) or "")[:1].upper()
        res.direction_ref = ref if ref in ("T", "M") else None
    datum = _ascii(gps.get(_GPS_DATUM))
    if datum and re.sub(r"[^A-Z0-9]", "", datum.upper()) not in ("WGS84", "WGS1984", "CGCS2000", ""):
        res.flag("gps_not_wgs84")
    gdt = _gps_datetime(gps)
    if isinstance(gdt, str):
        res.flag(gdt)
    else:
        res.gps_timestamp = gdt


def _read_times(res: ExifResult, tiff: _Tiff, ifd0: dict[int, _Entry]) -> None:
    ptr = _pointer(ifd0.get(_TAG_EXIF_IFD))
    if ptr is None:
        return
    if isinstance(ptr, str):
        res.flag("exif_malformed")
        return
    try:
        exif_ifd = tiff.ifd(ptr)
    except (ValueError, struct.error):
        res.flag("exif_malformed")
        return
    for dt_tag, off_tag in (
        (_TAG_DATETIME_ORIGINAL, _TAG_OFFSET_TIME_ORIGINAL),
        (_TAG_DATETIME_DIGITIZED, _TAG_OFFSET_TIME_DIGITIZED),
    ):
        value = _parse_exif_datetime(_ascii(exif_ifd.get(dt_tag)), _ascii(exif_ifd.get(off_tag)))
        if isinstance(value, str):
            res.flag(value)
        elif value is not None:
            res.timestamp = value
            return


def _interpret(res: ExifResult, blob: bytes) -> None:
    try:
        tiff = _Tiff(blob)
        ifd0 = tiff.ifd(tiff.ifd0)
    except (ValueError, struct.error):
        res.flag("exif_malformed")
        res.flag("no_gps")
        return
    _read_times(res, tiff, ifd0)
    gps_entry = ifd0.get(_TAG_GPS_IFD)
    ptr = _pointer(gps_entry)
    if ptr is None:
        res.flag("no_gps")
        return
    if isinstance(ptr, str):
        res.flag("gps_malformed")  # e.g. a string where the GPS IFD offset should be
        return
    try:
        gps = tiff.ifd(ptr)
    except (ValueError, struct.error):
        res.flag("gps_malformed")
        return
    if not gps:
        res.flag("gps_empty_ifd")
        res.flag("gps_no_position")
        return
    _read_position(res, gps)
    _read_gps_extras(res, gps)


def read_exif(data: bytes, check_image: bool = True) -> ExifResult:
    """Read position, altitude, times and direction from any bytes; never raises.

    With ``check_image`` the image is also fully decoded (with the bomb guard of
    :mod:`gis.photos`) and a photo that would be refused gets the ``damaged_image`` flag.
    """
    res = ExifResult()
    try:
        if not isinstance(data, bytes | bytearray | memoryview) or sniff_image_type(data) is None:
            res.flags.extend(["unsupported_format", "no_exif"])
            return res
        data = bytes(data)
        if check_image:
            try:
                verify_decodes(data)
            except PhotoError:
                res.flag("damaged_image")
        try:
            blob = extract_exif_block(data)
        except Exception:  # noqa: BLE001 - container parsers on hostile input
            blob = None
            res.flag("damaged_image")
        if not blob:
            res.flag("no_exif")
            return res
        _interpret(res, blob)
    except Exception:  # noqa: BLE001 - the contract is: every broken case becomes a flag
        res.flag("exif_malformed")
        res.lat = res.lon = None
        if res.status == "ok":
            res.status = "invalid_position"
    return res


# --- distances ------------------------------------------------------------------------------


def distance_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle (haversine) distance in metres between two WGS-84 points.

    Accepts numpy arrays as well (element-wise). Accurate to ~0.5 % (spherical Earth), which is
    ample for a 100 m plausibility check.
    """
    import numpy as np

    lon1, lat1, lon2, lat2 = (np.radians(np.asarray(v, dtype=float)) for v in (lon1, lat1, lon2, lat2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    d = 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return float(d) if np.ndim(d) == 0 else d


def _lonlat(obj: Any) -> tuple[float, float, float] | None:
    """(lon, lat, accuracy_m) from an ExifResult or a (lon, lat[, accuracy_m]) sequence."""
    if obj is None:
        return None
    if isinstance(obj, ExifResult):
        return (obj.lon, obj.lat, 0.0) if obj.status == "ok" else None
    if isinstance(obj, Sequence) and len(obj) in (2, 3):
        lon, lat = float(obj[0]), float(obj[1])
        acc = float(obj[2]) if len(obj) == 3 and obj[2] is not None else 0.0
        if math.isfinite(lon) and math.isfinite(lat) and abs(lat) <= 90 and abs(lon) <= 180:
            return lon, lat, acc if math.isfinite(acc) and acc > 0 else 0.0
        return None
    raise TypeError("expected an ExifResult or a (lon, lat[, accuracy_m]) sequence")


def mismatch_flag(device: Any, exif: Any, threshold_m: float = 100.0) -> str | None:
    """``"exif_device_mismatch"`` when the EXIF position lies farther than the threshold.

    ``device`` is ``(lon, lat)`` or ``(lon, lat, accuracy_m)``; the reported accuracy widens the
    threshold. ``exif`` is an :class:`ExifResult` (used only when ``status == "ok"``) or a
    ``(lon, lat)``. Returns None when they agree or when either position is unusable.
    """
    d, e = _lonlat(device), _lonlat(exif)
    if d is None or e is None:
        return None
    dist = distance_m(d[0], d[1], e[0], e[1])
    return "exif_device_mismatch" if dist > threshold_m + d[2] + e[2] else None
