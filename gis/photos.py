"""Image intake safety for inspector photos: type sniffing, bomb guard, integrity, public copies.

Rules
-----
* The type comes from the magic bytes only (:func:`sniff_image_type`); the filename and the
  client's content type are never trusted. Accepted for intake: JPEG, PNG, WebP, HEIC/HEIF
  (via pillow-heif) and AVIF (when Pillow supports it). Everything else is refused.
* Decompression-bomb guard: the declared width × height is checked against ``max_pixels``
  (default 40 MP: a 48 MP phone photo is taken binned at 12 MP unless asked otherwise) right after
  the header is read and before any pixel is decoded. Pillow's own global guard
  (``Image.MAX_IMAGE_PIXELS``) is set to the same figure, so any other ``Image.open`` in the process
  warns above it and refuses above twice it.
* At most :data:`DECODE_SLOTS` photos are decoded at the same time in the process (a 40 MP decode
  holds ~160 MB and a core): the others wait for a slot.
* Damaged images are refused. A photo is accepted only if it decodes fully: Pillow must load it
  without error (``LOAD_TRUNCATED_IMAGES`` is never enabled), and, for JPEG, the entropy-coded data
  must be structurally sound. libjpeg silently pads a scan that hits a corrupt marker with grey, so
  :func:`jpeg_structure_problem` walks the markers itself: an invalid marker inside scan data or a
  missing EOI (truncation) makes the photo damaged. Data after the EOI is tolerated (phones append
  MPF previews there). Every refusal is a :class:`PhotoError` with a message for the uploader.
* Public copies (:func:`public_copy`, :func:`thumbnail`) are re-encoded from pixels only: rotated
  by the EXIF orientation, converted to sRGB RGB, at most 2048 px on the long side, saved as JPEG
  without EXIF, XMP, ICC profile or comments. The original bytes are kept private by the caller.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import threading
import warnings
from typing import Final

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

try:  # HEIC/HEIF support is optional at import time but expected in production.
    import pillow_heif

    pillow_heif.register_heif_opener()
    _HEIF_AVAILABLE = True
except ImportError:  # pragma: no cover - environment without pillow-heif
    _HEIF_AVAILABLE = False

__all__ = [
    "ACCEPTED_TYPES",
    "DEFAULT_MAX_PIXELS",
    "PUBLIC_MAX_SIDE",
    "PhotoError",
    "jpeg_structure_problem",
    "open_image",
    "public_copy",
    "sha256_hex",
    "sniff_image_type",
    "thumbnail",
    "verify_decodes",
]

DEFAULT_MAX_PIXELS: Final = 40_000_000
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
#: Photos decoded at the same time in this process (the callers run in worker threads).
DECODE_SLOTS: Final = 2
_decoding = threading.BoundedSemaphore(DECODE_SLOTS)
PUBLIC_MAX_SIDE: Final = 2048
PUBLIC_QUALITY: Final = 85

#: Sniffed type -> Pillow format names allowed to open it.
_PIL_FORMATS: Final[dict[str, tuple[str, ...]]] = {
    "jpeg": ("JPEG", "MPO"),
    "png": ("PNG",),
    "webp": ("WEBP",),
    "heic": ("HEIF",),
    "heif": ("HEIF",),
    "avif": ("AVIF", "HEIF"),
}
ACCEPTED_TYPES: Final = frozenset(_PIL_FORMATS)

_HEIC_BRANDS: Final = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis"})
_HEIF_BRANDS: Final = frozenset({b"mif1", b"msf1", b"mif2"})
_AVIF_BRANDS: Final = frozenset({b"avif", b"avis"})


class PhotoError(ValueError):
    """A photo was refused: not an accepted image type, too large, or damaged."""


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of the original bytes (deduplication and evidence integrity)."""
    return hashlib.sha256(data).hexdigest()


def _ftyp_type(data: bytes) -> str | None:
    """Classify an ISO-BMFF ``ftyp`` box by its major and compatible brands."""
    size = struct.unpack(">I", data[0:4])[0]
    if size == 1 and len(data) >= 16:  # 64-bit largesize
        size = struct.unpack(">Q", data[8:16])[0]
    end = min(len(data), size if size >= 16 else 16, 4096)
    major = data[8:12]
    brands = [major] + [data[i : i + 4] for i in range(16, end - 3, 4)]
    if major in _HEIC_BRANDS:
        return "heic"
    if major in _AVIF_BRANDS:
        return "avif"
    if any(b in _HEIC_BRANDS for b in brands):
        return "heic"
    if major in _HEIF_BRANDS:
        return "avif" if any(b in _AVIF_BRANDS for b in brands) else "heif"
    if any(b in _AVIF_BRANDS for b in brands):
        return "avif"
    if any(b in _HEIF_BRANDS for b in brands):
        return "heif"
    return None


def sniff_image_type(data: bytes) -> str | None:
    """Image type from magic bytes only.

    Returns one of "jpeg", "png", "webp", "heic", "heif", "avif", "gif", "tiff", "bmp" or None.
    Only :data:`ACCEPTED_TYPES` are accepted for intake.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        return None
    head = bytes(data[:64])
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if len(head) >= 12 and head[0:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _ftyp_type(bytes(data[:4096]))
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:2] == b"BM" and len(head) >= 26:
        return "bmp"
    return None


#: "<_io.BytesIO object at 0x7f…>" in Pillow's messages: an object's address, nothing for the sender
_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _why(exc: BaseException) -> str:
    return _REPR.sub("", str(exc))


def _open_header(data: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    """Open lazily (header only), enforcing type and pixel limits."""
    kind = sniff_image_type(data)
    if kind is None:
        raise PhotoError("not a recognised image (unknown magic bytes)")
    if kind not in ACCEPTED_TYPES:
        raise PhotoError(f"image type {kind!r} is not accepted; use JPEG, PNG, WebP or HEIC")
    if kind in ("heic", "heif") and not _HEIF_AVAILABLE:  # pragma: no cover
        raise PhotoError("HEIC/HEIF support (pillow-heif) is not installed")
    try:
        with warnings.catch_warnings():  # Pillow warns above the cap: refused just below, with a clearer message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(bytes(data)), formats=list(_PIL_FORMATS[kind]))
    except Image.DecompressionBombError as exc:
        raise PhotoError(f"image too large to decode safely: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as exc:
        raise PhotoError(f"cannot read {kind} image header: {_why(exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - plugins raise arbitrary errors on hostile input
        raise PhotoError(f"cannot read {kind} image header: {type(exc).__name__}: {_why(exc)}") from exc
    width, height = im.size
    if width <= 0 or height <= 0:
        im.close()
        raise PhotoError(f"image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        im.close()
        raise PhotoError(
            f"image declares {width}x{height} = {width * height:,} pixels, "
            f"more than the limit of {max_pixels:,} (possible decompression bomb)"
        )
    return im, kind


def _load(im: Image.Image, kind: str) -> None:
    try:
        im.load()
    except Image.DecompressionBombError as exc:
        raise PhotoError(f"image too large to decode safely: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError ...
        raise PhotoError(f"damaged {kind} image, it does not decode fully: {_why(exc)}") from exc


_VALID_AFTER_SCAN: Final = frozenset(
    [0x01, 0xC4, 0xCC, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xFE]
    + list(range(0xC0, 0xD0))
    + list(range(0xE0, 0xF0))
)


def jpeg_structure_problem(data: bytes) -> str | None:
    """Describe the first structural defect of a JPEG, or None if its marker structure is sound.

    Walks the marker segments and the entropy-coded data of every scan: inside a scan only
    ``FF00`` (stuffing), ``FFD0``–``FFD7`` (restart) and ``FF`` fill bytes may occur; the scan ends
    at the next real marker, which must be a valid one. A missing EOI means truncation.
    """
    n = len(data)
    if n < 4 or data[0:2] != b"\xff\xd8":
        return "no JPEG SOI marker"
    pos = 2
    scans = 0
    while True:
        while pos < n and data[pos] != 0xFF:  # tolerate junk between segments, as libjpeg does
            pos += 1
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            return "truncated: no EOI marker" if scans else "truncated: no image data"
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            return None if scans else "EOI before any image data"
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue  # standalone markers
        if marker not in _VALID_AFTER_SCAN:
            return f"invalid marker 0xFF{marker:02X} at byte {pos - 2}"
        if pos + 2 > n:
            return "truncated inside a marker segment"
        length = struct.unpack(">H", data[pos : pos + 2])[0]
        if length < 2 or pos + length > n:
            return f"bad length {length} for marker 0xFF{marker:02X} at byte {pos - 2}"
        pos += length
        if marker != 0xDA:
            continue
        scans += 1
        # Entropy-coded data: find the next real marker.
        while True:
            nxt = data.find(b"\xff", pos)
            if nxt < 0:
                return "truncated: scan data without EOI"
            j = nxt + 1
            while j < n and data[j] == 0xFF:
                j += 1
            if j >= n:
                return "truncated: scan data without EOI"
            code = data[j]
            if code == 0x00 or 0xD0 <= code <= 0xD7:
                pos = j + 1
                continue
            if code not in _VALID_AFTER_SCAN:
                return f"corrupt scan data: invalid marker 0xFF{code:02X} at byte {j - 1}"
            pos = j - 1
            break


def _refuse_damaged_jpeg(data: bytes, kind: str) -> None:
    """PhotoError for a JPEG whose marker structure is broken (Pillow would grey-fill it silently)."""
    if kind == "jpeg":
        problem = jpeg_structure_problem(bytes(data))
        if problem is not None:
            raise PhotoError(f"damaged jpeg image: {problem}")


def verify_decodes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """Check that the photo is an accepted type within the pixel limit and decodes fully.

    Returns the sniffed type; raises :class:`PhotoError` otherwise.
    """
    im, kind = _open_header(data, max_pixels)
    with im, _decoding:
        _refuse_damaged_jpeg(data, kind)
        _load(im, kind)
    return kind


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, verify and fully decode a photo, returning a loaded Pillow image.

    Raises :class:`PhotoError` for unaccepted types, more than ``max_pixels`` declared pixels
    (checked before decoding), or damaged data (see the module rules).
    """
    im, kind = _open_header(data, max_pixels)
    try:
        with _decoding:
            _refuse_damaged_jpeg(data, kind)
            _load(im, kind)
    except BaseException:
        im.close()
        raise
    return im


_SRGB = None


def _to_srgb_rgb(im: Image.Image) -> Image.Image:
    """Pixels only, as sRGB RGB; alpha is flattened onto white; the ICC profile is applied."""
    icc = im.info.get("icc_profile")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        im = im.point(lambda v: v / 256).convert("L")
    elif im.mode == "F":
        im = im.convert("L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        base = Image.new("RGB", rgba.size, (255, 255, 255))
        base.paste(rgba, mask=rgba.getchannel("A"))
        im = base
    elif im.mode != "RGB":
        im = im.convert("RGB")
    if icc:
        global _SRGB
        try:
            if _SRGB is None:
                _SRGB = ImageCms.createProfile("sRGB")
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            im = ImageCms.profileToProfile(im, src, _SRGB, outputMode="RGB") or im
        except Exception:  # noqa: BLE001 - a broken profile is dropped, pixels kept as they are
            pass
    return im


def _render(data: bytes, max_side: int, max_pixels: int, quality: int) -> bytes:
    im, kind = _open_header(data, max_pixels)  # refused from the header: before waiting for a slot
    with im, _decoding:
        _refuse_damaged_jpeg(data, kind)
        if kind == "jpeg":
            im.draft("RGB", (max_side, max_side))  # DCT scaling: decode big JPEGs at reduced size
        _load(im, kind)
        try:
            oriented = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - unreadable EXIF: keep the stored orientation
            oriented = im.copy()
        oriented.info = {"icc_profile": im.info.get("icc_profile")} if im.info.get("icc_profile") else {}
        out = _to_srgb_rgb(oriented)
        if max(out.size) > max_side:
            out.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        clean = Image.new("RGB", out.size)
        clean.paste(out)
        buf = io.BytesIO()
        # Not optimize=True: Pillow's optimised encoder holds the interpreter lock for the whole image
        # (200 ms for 2048 px, measured), which stops the event loop of the server that called it.
        clean.save(buf, format="JPEG", quality=quality)
        return buf.getvalue()


def public_copy(data: bytes, max_side: int = PUBLIC_MAX_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """JPEG for publication: oriented, sRGB, long side ≤ ``max_side``, no metadata at all.

    Raises :class:`PhotoError` when the photo is refused (type, size or damage).
    """
    return _render(data, max_side, max_pixels, PUBLIC_QUALITY)


def thumbnail(data: bytes, size: int = 320, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """Small metadata-free JPEG, long side ≤ ``size`` (same rules as :func:`public_copy`)."""
    if size < 1:
        raise ValueError("thumbnail size must be positive")
    return _render(data, size, max_pixels, 80)
