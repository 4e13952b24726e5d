"""Case photo thumbnails (issue 13). `make bench` or `.venv/bin/python bench/bench_photos.py`.

* a case's photo strip: the thumbnail of a citizen's re-encoded copy served from the content-addressed
  cache (``layers.field.casephotos``) beside rendering it with Pillow on every request (the anchor),
  same photos, same run                                             target ≥ 50× faster
* every served copy carries no EXIF (re-read with Pillow)            target 0 with EXIF
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from gis import photos as gphotos  # noqa: E402

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"


def main() -> None:
    os.environ["CITYGRID_DATA_DIR"] = tempfile.mkdtemp(prefix="bench_photos_")
    from citygrid import settings

    settings.paths.cache_clear()
    from layers.field import casephotos

    names = [p for p in sorted(PHOTOS.glob("*.jpg")) if p.name != "corrupted.jpg"]
    copies = [gphotos.public_copy(p.read_bytes()) for p in names]
    shas = [hashlib.sha256(c).hexdigest() for c in copies]
    rounds = 20
    t = time.perf_counter()
    for _ in range(rounds):
        anchor = [gphotos.thumbnail(c, casephotos.THUMB_PX) for c in copies]
    render = (time.perf_counter() - t) / (rounds * len(copies))
    for c, s in zip(copies, shas, strict=True):
        casephotos._cached_thumb(c, s)  # first request: rendered once, kept
    t = time.perf_counter()
    for _ in range(rounds):
        ours = [casephotos._cached_thumb(c, s) for c, s in zip(copies, shas, strict=True)]
    cached = (time.perf_counter() - t) / (rounds * len(copies))
    assert ours == anchor, "the cached thumbnails differ from a fresh rendering"
    with_exif = sum(1 for b in ours + copies if Image.open(io.BytesIO(b)).getexif())
    print(f"thumbnail of a case photo ({len(copies)} real camera JPEGs): cached {cached * 1e3:.3f} ms "
          f"beside Pillow every time {render * 1e3:.1f} ms  → {render / cached:.0f}× (target ≥ 50×)")
    print(f"served copies with EXIF: {with_exif} of {len(ours) + len(copies)} (target 0)")


if __name__ == "__main__":
    main()
