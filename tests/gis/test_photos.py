"""Image intake safety: sniffing, bomb guard, damaged files, metadata-free public copies."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from gis.exif import read_exif
from gis.photos import (
    PhotoError,
    jpeg_structure_problem,
    open_image,
    public_copy,
    sha256_hex,
    sniff_image_type,
    thumbnail,
    verify_decodes,
)

PHOTOS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "photos"
needs_photos = pytest.mark.skipif(
    not PHOTOS.is_dir(), reason=f"shared photo samples not found at {PHOTOS} (../shared/data/photos)"
)


def photo(name: str) -> bytes:
    return (PHOTOS / name).read_bytes()


def jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def png_chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares the given size, with a tiny (bogus) IDAT: a bomb stand-in."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


def ftyp(major: bytes, *compat: bytes) -> bytes:
    body = major + b"\x00\x00\x00\x00" + b"".join(compat)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + b"\x00" * 16


# --- sniffing -------------------------------------------------------------------------------


@needs_photos
@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("DSCN0010.jpg", "jpeg"),
        ("Canon_40D.jpg", "jpeg"),
        ("corrupted.jpg", "jpeg"),
        ("IMG_5195.HEIC", "heic"),
        ("iphone_hdr_NO.jpg", "jpeg"),
    ],
)
def test_sniff_real_files(name, kind):
    assert sniff_image_type(photo(name)) == kind


def test_sniff_synthetic_containers():
    im = Image.new("RGB", (4, 4), "red")
    for fmt, kind in (("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif"), ("TIFF", "tiff"), ("BMP", "bmp")):
        buf = io.BytesIO()
        im.save(buf, format=fmt)
        assert sniff_image_type(buf.getvalue()) == kind, fmt
    assert sniff_image_type(ftyp(b"heic", b"mif1", b"heic")) == "heic"
    assert sniff_image_type(ftyp(b"heix", b"mif1")) == "heic"
    assert sniff_image_type(ftyp(b"mif1", b"mif1", b"heic")) == "heic"
    assert sniff_image_type(ftyp(b"mif1", b"mif1", b"miaf")) == "heif"
    assert sniff_image_type(ftyp(b"msf1", b"msf1")) == "heif"
    assert sniff_image_type(ftyp(b"hevc", b"msf1")) == "heic"
    assert sniff_image_type(ftyp(b"avif", b"mif1")) == "avif"
    assert sniff_image_type(ftyp(b"isom", b"iso2", b"mp41")) is None  # an MP4 video
    assert sniff_image_type(b"<html>not an image</html>") is None
    assert sniff_image_type(b"") is None


def test_type_comes_from_bytes_not_from_names():
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, format="GIF")
    with pytest.raises(PhotoError, match="not accepted"):
        open_image(gif.getvalue())  # even if the client called it photo.jpg
    with pytest.raises(PhotoError, match="unknown magic"):
        open_image(b"GIF8-ish garbage that is no image at all")
    with pytest.raises(PhotoError):
        open_image(b"\xff\xd8\xff\xe0" + b"\x00" * 100)  # JPEG magic, junk after it


def test_sha256_hex():
    assert sha256_hex(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert len(sha256_hex(b"")) == 64


# --- bomb guard -----------------------------------------------------------------------------


def test_bomb_guard_huge_declared_png():
    with pytest.raises(PhotoError, match="pixels|too large"):
        open_image(png_header_only(100_000, 100_000))
    with pytest.raises(PhotoError):
        public_copy(png_header_only(100_000, 100_000))


def test_bomb_guard_our_limit_is_checked_before_decoding():
    # 8000 x 8000 = 64 MP: under Pillow's own refusal (twice its guard, which is our 40 MP default), over
    # our default. The IDAT is far too short for that size, so any decoding attempt would fail with a
    # different message.
    with pytest.raises(PhotoError, match="64,000,000 pixels, more than the limit of 40,000,000"):
        open_image(png_header_only(8000, 8000))
    small = io.BytesIO()
    Image.new("RGB", (100, 100)).save(small, format="PNG")
    with pytest.raises(PhotoError, match="more than the limit of 5,000"):
        open_image(small.getvalue(), max_pixels=5000)
    assert open_image(small.getvalue(), max_pixels=10_000).size == (100, 100)


def test_photo_error_is_a_value_error():
    assert issubclass(PhotoError, ValueError)


# --- damaged files --------------------------------------------------------------------------


@needs_photos
def test_corrupted_jpeg_is_refused_with_a_message():
    data = photo("corrupted.jpg")
    problem = jpeg_structure_problem(data)
    assert problem is not None and "invalid marker" in problem
    for fn in (open_image, public_copy, thumbnail, verify_decodes):
        with pytest.raises(PhotoError, match="damaged jpeg image"):
            fn(data)


def test_truncated_jpeg_is_refused():
    im = Image.effect_noise((256, 256), 64).convert("RGB")
    data = jpeg_bytes(im, quality=90)
    with pytest.raises(PhotoError, match="damaged|truncated"):
        open_image(data[: len(data) // 2])


def test_png_with_bad_idat_is_refused():
    im = Image.effect_noise((64, 64), 64).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    idat = data.index(b"IDAT")
    data[idat + 40 : idat + 60] = b"\x00" * 20  # wreck the zlib stream
    with pytest.raises(PhotoError):
        open_image(bytes(data))


@pytest.mark.parametrize(
    "kw",
    [{}, {"progressive": True}, {"optimize": True}, {"restart_marker_blocks": 4}, {"subsampling": 0}],
)
def test_structure_check_accepts_valid_jpeg_variants(kw):
    im = Image.effect_noise((300, 200), 50).convert("RGB")
    data = jpeg_bytes(im, quality=80, **kw)
    assert jpeg_structure_problem(data) is None
    assert open_image(data).size == (300, 200)
    # trailing data after EOI (e.g. MPF previews) is tolerated
    assert jpeg_structure_problem(data + b"\x00trailing junk") is None


@needs_photos
@pytest.mark.parametrize(
    "name",
    [p.name for p in sorted(PHOTOS.glob("*.jpg")) if p.name != "corrupted.jpg"] if PHOTOS.is_dir() else [],
)
def test_real_valid_jpegs_pass_the_structure_check(name):
    assert jpeg_structure_problem(photo(name)) is None
    assert verify_decodes(photo(name)) == "jpeg"


# --- public copies --------------------------------------------------------------------------


def _jpeg_segments(data: bytes) -> list[int]:
    """Marker codes before the first SOS."""
    out, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        out.append(marker)
        if marker == 0xDA:
            break
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return out


@needs_photos
@pytest.mark.parametrize(
    ("name", "expected_size"),
    [
        ("DSCN0010.jpg", (640, 480)),
        ("iphone_hdr_NO.jpg", (2048, 1536)),
        ("HMD_Nokia_8.3_5G.jpg", (2048, 878)),
        ("IMG_5195.HEIC", (1586, 2048)),
    ],
)
def test_public_copy_of_real_photos_strips_gps_and_limits_size(name, expected_size):
    original = read_exif(photo(name))
    assert original.status == "ok"  # the original does carry a position
    out = public_copy(photo(name))
    assert sniff_image_type(out) == "jpeg"
    with Image.open(io.BytesIO(out)) as im:
        assert im.size == expected_size
        assert max(im.size) <= 2048
        assert not im.getexif()
        assert "exif" not in im.info and "icc_profile" not in im.info and "comment" not in im.info
    assert b"Exif\x00" not in out and b"GPS" not in out and b"http://ns.adobe.com/xap" not in out
    # only SOI-following structural segments: JFIF APP0, tables, frame, scan
    assert not [m for m in _jpeg_segments(out) if 0xE1 <= m <= 0xEF or m == 0xFE]
    stripped = read_exif(out)
    assert stripped.status == "no_position" and "no_exif" in stripped.flags


def test_public_copy_applies_orientation_6():
    stored = Image.new("RGB", (40, 20), "blue")
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # left half red in the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = jpeg_bytes(stored, exif=exif.tobytes(), quality=95)
    out = public_copy(data)
    with Image.open(io.BytesIO(out)) as im:
        assert im.size == (20, 40)  # dimensions swapped
        r, g, b = im.convert("RGB").getpixel((10, 5))
        assert r > 200 and b < 60  # the stored left side is now on top
        r, g, b = im.convert("RGB").getpixel((10, 35))
        assert b > 200 and r < 60
        assert not im.getexif()


def test_public_copy_downscales_and_drops_comment_icc_alpha():
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    big = Image.new("RGB", (3000, 1000), (10, 200, 30))
    data = jpeg_bytes(big, comment=b"inspector 13800138000", icc_profile=icc)
    out = public_copy(data)
    assert b"13800138000" not in out
    with Image.open(io.BytesIO(out)) as im:
        assert im.size == (2048, 683)
        assert "icc_profile" not in im.info
    rgba = Image.new("RGBA", (50, 30), (255, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    with Image.open(io.BytesIO(public_copy(buf.getvalue()))) as im:
        assert im.mode == "RGB" and im.getpixel((5, 5))[1] > 240  # transparent -> white


def test_thumbnail():
    data = jpeg_bytes(Image.new("RGB", (1000, 500), "white"))
    with Image.open(io.BytesIO(thumbnail(data))) as im:
        assert im.size == (320, 160)
    with Image.open(io.BytesIO(thumbnail(data, size=100))) as im:
        assert max(im.size) == 100
    with Image.open(io.BytesIO(thumbnail(jpeg_bytes(Image.new("RGB", (50, 40)))))) as im:
        assert im.size == (50, 40)  # never upscaled
    with pytest.raises(ValueError):
        thumbnail(data, size=0)


@needs_photos
def test_thumbnail_of_heic():
    with Image.open(io.BytesIO(thumbnail(photo("IMG_5195.HEIC")))) as im:
        assert max(im.size) == 320 and im.format == "JPEG"


def test_webp_and_png_are_accepted():
    im = Image.effect_noise((64, 48), 30).convert("RGB")
    for fmt in ("WEBP", "PNG"):
        buf = io.BytesIO()
        im.save(buf, format=fmt)
        assert open_image(buf.getvalue()).size == (64, 48)


def test_refusal_names_no_python_object_address():
    """A HEIC container whose header Pillow cannot read: the message says so, without Pillow's
    "<_io.BytesIO object at 0x…>" (the sender sees it in the 422)."""
    fake = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\0" * 100
    with pytest.raises(PhotoError) as e:
        public_copy(fake)
    assert "cannot read heic image header" in str(e.value)
    assert " object at 0x" not in str(e.value) and "<" not in str(e.value)
