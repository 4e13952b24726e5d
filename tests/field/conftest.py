"""Fixtures of the field-work tests: a private data directory for photos, inspectors, photo bytes."""

from __future__ import annotations

import io
import uuid

import pytest
from PIL import Image

from tests.conftest import SHARED, auth

PHOTOS = SHARED / "photos"


@pytest.fixture(scope="session", autouse=True)
def field_var_dir(tmp_path_factory):
    """Photos go to a temporary data directory, never into the checkout."""
    from citygrid import settings

    var = tmp_path_factory.mktemp("field_var")
    mp = pytest.MonkeyPatch()
    mp.setenv("CITYGRID_DATA_DIR", str(var))
    settings.paths.cache_clear()
    yield var
    mp.undo()
    settings.paths.cache_clear()


@pytest.fixture(scope="session")
def make_inspector(engine):
    from layers.core.users import add_user

    def make(role="inspector", area_code=None):
        with engine.begin() as conn:
            user, tok = add_user(conn, f"field_{role}_{uuid.uuid4().hex[:8]}", role, area_code=area_code)
        return user, auth(tok)

    return make


@pytest.fixture(scope="session")
def departments(engine, haimen):
    from layers.cases.workflow import ensure_departments

    with engine.begin() as conn:
        return ensure_departments(conn, haimen)


def jpeg(seed: int = 0, size=(64, 48)) -> bytes:
    """A small JPEG whose pixels (and so digest) depend on ``seed``."""
    im = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed // 256) % 256))
    im.putpixel((seed % size[0], 0), (255 - (seed % 256), 0, 0))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def photo(name: str) -> bytes:
    return (PHOTOS / name).read_bytes()


def inspector_context(browser, headers, *, geolocation=None, height=844, lang=None):
    """(context, page, errors): a phone-sized zh-CN Chromium page signed in with the bearer token of
    ``headers``, optionally at ``geolocation``; ``errors`` collects the exceptions its scripts raise.
    The caller goes to the page and closes the context."""
    token = headers["Authorization"].split(" ", 1)[1]
    kw = {"locale": "zh-CN", "viewport": {"width": 390, "height": height}, "is_mobile": True, "has_touch": True}
    if geolocation is not None:
        kw |= {"geolocation": geolocation, "permissions": ["geolocation"]}
    ctx = browser.new_context(**kw)
    script = f"localStorage.setItem('citygrid_token', {token!r});"
    if lang is not None:
        script += f" localStorage.setItem('citygrid_lang', {lang!r});"
    ctx.add_init_script(script)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return ctx, page, errors
