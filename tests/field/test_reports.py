"""POST /api/v1/reports: photos, EXIF, location rules, snapping, files, bad input, idempotency."""

from __future__ import annotations

import io
import itertools
import uuid

import pytest
from PIL import Image
from sqlalchemy import text

from gis import crs as gcrs
from tests.conftest import count
from tests.field.conftest import jpeg, photo

# Haimen old town (WGS-84). The suite's test database is new each session; each spot() is a new
# point of a lattice 0.002° (~200 m) apart, so that no two tests' reports are ever duplicates (并单:
# same class within 50 m, and tests offset up to ~80 m from their spot), whatever the order they
# run in. (Random spots collided now and then: a test's first report became a duplicate.)
BASE = (121.17, 31.89)
_STEP = 0.002
_SIDE = 20  # 20 x 20 spots in BASE ± 0.02°
_SPOTS = itertools.count()


def spot():
    k = next(_SPOTS) % (_SIDE * _SIDE)
    return (BASE[0] - 0.02 + _STEP * (k % _SIDE + 0.5), BASE[1] - 0.02 + _STEP * (k // _SIDE + 0.5))


def post(client, headers, photos, key=None, city=None, **fields):
    files = [("photos", (name, data, "application/octet-stream")) for name, data in photos]
    data = {k: str(v) for k, v in fields.items() if v is not None}
    data.setdefault("category_code", "E10101")
    h = dict(headers)
    if key:
        h["Idempotency-Key"] = key
    return client.post("/api/v1/reports", data=data, files=files, headers=h,
                       params={"city": city} if city else None)


@pytest.fixture(scope="module")
def insp(make_inspector):
    return make_inspector()


def _cell_of(engine, slug, lon, lat):
    """Independent: the cell whose polygon covers the point, by PostGIS."""
    with engine.connect() as c:
        return c.execute(text("""
            SELECT gc.code FROM grid_cell gc JOIN grid g ON g.id = gc.grid_id AND g.active
            JOIN city ON city.id = g.city_id AND city.slug = :s
            WHERE ST_Covers(gc.geom, ST_Transform(ST_SetSRID(ST_MakePoint(:x, :y), 4326), city.working_srid))"""),
            {"s": slug, "x": lon, "y": lat}).scalar()


def test_report_with_device_location(client, insp, engine, field_var_dir):
    user, h = insp
    lon, lat = spot()
    data = jpeg(1)
    r = post(client, h, [("a.jpg", data)], key=uuid.uuid4().hex, lon=lon, lat=lat, accuracy=8,
             description="路边垃圾 rubbish by the road", device_time="2026-11-28T10:00:00+08:00")
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["cell_code"] == _cell_of(engine, "haimen", lon, lat)
    assert out["location"]["source"] == "device" and out["location"]["accuracy_ok"] is True
    assert out["location"]["accuracy_gate_m"] == 30
    assert out["location"]["lon"] == pytest.approx(lon, abs=1e-6)
    assert "accuracy_over_gate" not in out["flags"]
    p = out["photos"][0]
    import hashlib
    assert p["sha256"] == hashlib.sha256(data).hexdigest() and p["exif_status"] == "no_position"
    # The case joined the one workflow.
    with engine.connect() as c:
        case = c.execute(text("SELECT source, channel, cell_code, category_code, state, source_ref FROM case_file "
                              "WHERE id = :i"), {"i": out["case"]["id"]}).one()
        rep = c.execute(text("SELECT case_id, user_id, accuracy_m, accuracy_gate_m FROM field_report WHERE id = :i"),
                        {"i": out["id"]}).one()
        ev = c.execute(text("SELECT kind FROM case_event WHERE case_id = :i ORDER BY id"), {"i": out["case"]["id"]}).scalars().all()
    assert case[:4] == ("inspector", "督查员", out["cell_code"], "E10101")
    assert case[5] == f"field-report-{out['id']}"
    assert rep == (out["case"]["id"], user.id, 8.0, 30.0)
    assert ev[0] == "received"
    # Files: content-addressed under the data dir; the public copy and thumbnail carry no EXIF.
    root = field_var_dir / "photos"
    orig = root / "original" / p["sha256"][:2] / p["sha256"]
    assert orig.read_bytes() == data
    pub = client.get(p["public_url"], headers=h)
    assert pub.status_code == 200 and pub.headers["content-type"] == "image/jpeg"
    psha = hashlib.sha256(pub.content).hexdigest()
    assert (root / "public" / psha[:2] / psha).read_bytes() == pub.content  # content-addressed
    with engine.connect() as c:
        assert c.execute(text("SELECT public_sha256 FROM field_photo WHERE report_id = :i"), {"i": out["id"]}).scalar() == psha
    im = Image.open(io.BytesIO(pub.content))
    assert not im.getexif() and im.size == (64, 48)
    th = client.get(p["thumb_url"], headers=h)
    assert th.status_code == 200 and max(Image.open(io.BytesIO(th.content)).size) <= 320
    assert not list((root / "tmp").glob("*"))  # nothing left staged
    # Reading it back; the original stays private to its inspector.
    got = client.get(f"/api/v1/reports/{out['id']}", headers=h).json()
    assert got["id"] == out["id"] and got["cell_code"] == out["cell_code"]


def test_original_is_private(client, insp, make_inspector):
    _, h = insp
    r = post(client, h, [("a.jpg", jpeg(2))], lon=BASE[0], lat=BASE[1], accuracy=5)
    assert r.status_code == 201
    rid = r.json()["id"]
    assert client.get(f"/api/v1/reports/{rid}/photos/0/original", headers=h).content == jpeg(2)
    _, other = make_inspector()
    assert client.get(f"/api/v1/reports/{rid}/photos/0/original", headers=other).status_code == 403
    assert client.get(f"/api/v1/reports/{rid}/photos/0/public", headers=other).status_code == 200
    assert client.get(f"/api/v1/reports/{rid}", headers=other).status_code == 403
    _, sup = make_inspector("supervisor")
    assert client.get(f"/api/v1/reports/{rid}/photos/0/original", headers=sup).status_code == 200


def test_gcj02_and_bd09_land_in_the_same_cell(client, insp):
    _, h = insp
    lon, lat = spot()
    glon, glat = (float(v) for v in gcrs.wgs84_to_gcj02(lon, lat))
    blon, blat = (float(v) for v in gcrs.wgs84_to_bd09(lon, lat))
    cells = []
    for crs, (x, y) in (("WGS-84", (lon, lat)), ("GCJ-02", (glon, glat)), ("BD-09", (blon, blat))):
        r = post(client, h, [("a.jpg", jpeg(3))], lon=x, lat=y, accuracy=5, crs=crs, category_code="E20101")
        assert r.status_code == 201, r.text
        cells.append(r.json()["cell_code"])
        assert r.json()["location"]["lon"] == pytest.approx(lon, abs=1e-5)  # stored de-obfuscated
    assert len(set(cells)) == 1


def test_accuracy_gate_is_recorded(client, insp, engine):
    _, h = insp
    r = post(client, h, [("a.jpg", jpeg(4))], lon=BASE[0], lat=BASE[1], accuracy=65)
    assert r.status_code == 201
    out = r.json()
    assert out["location"]["accuracy_ok"] is False and "accuracy_over_gate" in out["flags"]
    with engine.connect() as c:
        assert c.execute(text("SELECT accuracy_ok, flags FROM field_report WHERE id = :i"), {"i": out["id"]}).one() == \
            (False, ["accuracy_over_gate"])
    r = post(client, h, [("a.jpg", jpeg(4))], lon=BASE[0], lat=BASE[1])
    assert r.json()["location"]["accuracy_ok"] is None and "accuracy_unknown" in r.json()["flags"]


# Every photo of ../shared/data/photos has a stated outcome: (status code, exif_status, flags expected).
OUTCOMES = {
    "DSCN0010.jpg": (201, "ok", []),
    "DSCN0012.jpg": (201, "ok", []),
    "DSCN0021.jpg": (201, "ok", []),
    "DSCN0025.jpg": (201, "ok", []),
    "DSCN0027.jpg": (201, "ok", []),
    "DSCN0029.jpg": (201, "ok", []),
    "iphone_hdr_NO.jpg": (201, "ok", []),
    "HMD_Nokia_8.3_5G.jpg": (201, "ok", []),
    "IMG_5195.HEIC": (201, "ok", []),
    "Canon_40D.jpg": (201, "no_position", ["gps_no_position"]),
    "exif_gps.jpg": (201, "invalid_position", ["gps_malformed", "gps_out_of_range"]),
    "empty_gps_ifd.jpg": (201, "no_position", ["gps_empty_ifd", "gps_no_position"]),
    "exif_gps_typeerror.jpg": (201, "no_position", ["gps_malformed"]),
    "corrupted.jpg": (422, None, None),
}


def test_every_shared_photo_has_an_outcome(client, insp, engine):
    from tests.field.conftest import PHOTOS

    assert {p.name for p in PHOTOS.iterdir()} == set(OUTCOMES)
    _, h = insp
    for name, (status, exif_status, flags) in OUTCOMES.items():
        before = count(engine, "SELECT count(*) FROM field_report")
        r = post(client, h, [(name, photo(name))], lon=BASE[0], lat=BASE[1], accuracy=10)
        assert r.status_code == status, (name, r.text[:300])
        if status != 201:
            assert "photos[0]" in r.json()["detail"] and "damaged" in r.json()["detail"], r.text
            assert count(engine, "SELECT count(*) FROM field_report") == before
            continue
        p = r.json()["photos"][0]
        assert p["exif_status"] == exif_status, name
        assert p["exif_flags"] == flags, name
        if exif_status == "ok":
            # All these photos were taken far from Haimen: the mismatch is flagged, the distance stored.
            assert "exif_device_mismatch" in r.json()["flags"] and p["exif_distance_m"] > 1_000_000
        else:
            assert p["exif_distance_m"] is None and "exif_device_mismatch" not in r.json()["flags"]
    # Without a device location, a photo without a usable EXIF position cannot be placed.
    for name in ("Canon_40D.jpg", "exif_gps.jpg", "empty_gps_ifd.jpg", "exif_gps_typeerror.jpg"):
        r = post(client, h, [(name, photo(name))])
        assert r.status_code == 422 and "no location" in r.json()["detail"], name
    # With no device location, an EXIF position outside the city is refused as outside.
    r = post(client, h, [("n.jpg", photo("HMD_Nokia_8.3_5G.jpg"))])
    assert r.status_code == 422 and "outside the city" in r.json()["detail"]


def test_heic_and_exif_west_longitude_read(client, insp):
    _, h = insp
    r = post(client, h, [("i.heic", photo("IMG_5195.HEIC")), ("s.jpg", photo("iphone_hdr_NO.jpg"))],
             lon=BASE[0], lat=BASE[1], accuracy=3)
    assert r.status_code == 201
    heic, jpg = r.json()["photos"]
    assert heic["media_type"] == "heic" and heic["exif_lon"] == pytest.approx(-94.288772, abs=1e-5)
    assert heic["exif_direction"] == pytest.approx(348.06, abs=0.01)
    assert jpg["exif_lon"] == pytest.approx(-3.724753, abs=1e-5) and jpg["exif_lat"] == pytest.approx(40.446972, abs=1e-5)


def test_exif_agrees_with_device(client, insp):
    """A photo whose EXIF lies 13 m from the device position: distance stored, no mismatch."""
    from tests.field.gps import jpeg_with_gps

    _, h = insp
    lon, lat = spot()
    data = jpeg_with_gps(lat + 0.0001, lon + 0.00003)
    r = post(client, h, [("g.jpg", data)], lon=lon, lat=lat, accuracy=5)
    assert r.status_code == 201
    out = r.json()
    assert out["photos"][0]["exif_status"] == "ok"
    assert 10 < out["exif_distance_m"] < 14 and "exif_device_mismatch" not in out["flags"]
    # Only EXIF (no device location): the report is placed there.
    r = post(client, h, [("g.jpg", data)])
    assert r.status_code == 201 and r.json()["location"]["source"] == "exif"
    assert r.json()["location"]["lat"] == pytest.approx(lat + 0.0001, abs=1e-6)
    assert "location_from_exif" in r.json()["flags"]


def test_bad_input_writes_nothing(client, insp, engine, field_var_dir):
    _, h = insp
    bomb = io.BytesIO()
    Image.new("1", (12_000, 9_000)).save(bomb, format="PNG")
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, format="GIF")
    ok = [("a.jpg", jpeg(5))]
    cases = [
        (dict(photos=[("x.txt", b"hello, not an image")]), 422, "not a recognised image"),
        (dict(photos=[("x.gif", gif.getvalue())]), 422, "GIF"),
        (dict(photos=[("bomb.png", bomb.getvalue())]), 422, "decompression bomb"),
        (dict(photos=[("e.jpg", b"")]), 422, "empty"),
        (dict(photos=[("t.jpg", jpeg(5)[:300])]), 422, "photos[0]"),
        (dict(photos=ok * 10), 422, "at most 9"),
        (dict(photos=ok, category_code="NOPE"), 422, "unknown category"),
        (dict(photos=ok, lon=121.17), 422, "both lon and lat"),
        (dict(photos=ok, lon=121.17, lat=95), 422, "latitude"),
        (dict(photos=ok, lon="abc", lat=31.9), 422, "not a number"),
        (dict(photos=ok, lon="nan", lat=31.9), 422, "finite"),
        (dict(photos=ok, lon=116.40, lat=39.90), 422, "outside the city"),
        (dict(photos=ok, lon=121.17, lat=31.89, crs="EPSG:4549"), 422, "lon/lat"),
        (dict(photos=ok, lon=121.17, lat=31.89, crs="mars"), 422, "CRS"),
        (dict(photos=ok, lon=121.17, lat=31.89, accuracy=-1), 422, "negative"),
        (dict(photos=ok, lon=121.17, lat=31.89, accuracy=50_000), 422, "beyond"),
        (dict(photos=ok, lon=121.17, lat=31.89, device_time="yesterday"), 422, "device_time"),
        (dict(photos=ok, lon=121.17, lat=31.89, key="bad key!"), 422, "Idempotency-Key"),
        (dict(photos=ok, lon=121.17, lat=31.89, category_code="E10101", asset_code="3206140101000001"), 422,
         "not a component"),
    ]
    before = count(engine, "SELECT count(*) FROM field_report"), count(engine, "SELECT count(*) FROM case_file")
    files_before = sorted(p.name for p in (field_var_dir / "photos").rglob("*") if p.is_file()) \
        if (field_var_dir / "photos").exists() else []
    for kw, status, word in cases:
        kw = dict(kw)
        photos = kw.pop("photos")
        key = kw.pop("key", None)
        r = post(client, h, photos, key=key, **kw)
        assert r.status_code == status, (kw, r.text[:300])
        assert word.lower() in r.json()["detail"].lower(), (kw, r.json())
    r = client.post("/api/v1/reports", data={"category_code": "E10101"}, headers=h)
    assert r.status_code == 422 and "photos" in r.json()["detail"]
    assert (count(engine, "SELECT count(*) FROM field_report"), count(engine, "SELECT count(*) FROM case_file")) == before
    files_after = sorted(p.name for p in (field_var_dir / "photos").rglob("*") if p.is_file()) \
        if (field_var_dir / "photos").exists() else []
    assert files_after == files_before


def test_size_limit(client, insp, monkeypatch):
    from layers.field import reports

    _, h = insp
    monkeypatch.setitem(reports.config(), "max_photo_bytes", 1000)
    r = post(client, h, [("big.jpg", jpeg(6, size=(400, 300)))], lon=BASE[0], lat=BASE[1])
    assert r.status_code == 413 and "1,000 bytes" in r.json()["detail"]


def test_roles(client, tokens):
    from tests.conftest import auth

    for role in ("operator", "department", "planner"):
        r = post(client, auth(tokens[role]), [("a.jpg", jpeg(7))], lon=BASE[0], lat=BASE[1])
        assert r.status_code == 403
    assert post(client, {}, [("a.jpg", jpeg(7))]).status_code == 401
