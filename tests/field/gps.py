"""Build test JPEGs with an EXIF GPS position (Pillow writes the GPS IFD)."""

from __future__ import annotations

import io
from fractions import Fraction

from PIL import Image


def _dms(v: float):
    v = abs(v)
    d = int(v)
    m = int((v - d) * 60)
    s = (v - d - m / 60) * 3600
    return (Fraction(d), Fraction(m), Fraction(s).limit_denominator(100000))


def jpeg_with_gps(lat: float, lon: float, seed: int = 0, size=(48, 32)) -> bytes:
    im = Image.new("RGB", size, (seed % 256, 120, 200))
    exif = Image.Exif()
    gps = exif.get_ifd(0x8825)
    gps[1] = "N" if lat >= 0 else "S"
    gps[2] = _dms(lat)
    gps[3] = "E" if lon >= 0 else "W"
    gps[4] = _dms(lon)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif)
    return buf.getvalue()
