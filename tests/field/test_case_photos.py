"""Photos through the loop (issue 13): one listing of every photo of a case (上报照片, 处置前/处置后,
核查照片) per kind and role, thumbnails re-read with Pillow (size, no EXIF), the department's 处置反馈
with photos (required by some classes: refused when missing, nothing written), and the citizen's
photos through the look-up as the publication policy allows."""

from __future__ import annotations

import io
import itertools
import uuid

import pytest
from PIL import Image
from sqlalchemy import text

from tests.conftest import auth
from tests.field.conftest import jpeg, photo

_SPOTS = itertools.count()


def _spot() -> tuple[float, float]:
    k = next(_SPOTS)
    return 121.165 + 0.004 * (k % 10), 31.925 + 0.004 * (k // 10)


def _user(conn, role, **kw):
    from layers.core.users import add_user

    user, tok = add_user(conn, f"photos_{role}_{uuid.uuid4().hex[:8]}", role, **kw)
    return user, auth(tok)


def _no_exif(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    assert im.format == "JPEG"
    assert not im.getexif(), "a served photo must carry no EXIF"
    assert "exif" not in im.info and "icc_profile" not in im.info
    return im


@pytest.fixture
def processing(engine, haimen, departments, client):
    """A citizen's request with a photo (GPS EXIF in it), accepted, dispatched and started by the
    street office; its operator, department and a department of another street."""
    lon, lat = _spot()
    r = client.post("/api/v1/public/requests", data={
        "category_code": "E40101", "description": "路口积水很深 deep water at the crossing", "lon": lon, "lat": lat,
        "crs": "EPSG:4326", "channel": "网站"}, files={"photo": ("site.jpg", photo("DSCN0010.jpg"), "image/jpeg")})
    assert r.status_code == 201, r.text
    sub = r.json()
    with engine.begin() as conn:
        cid, cell = conn.execute(text("SELECT id, cell_code FROM case_file WHERE case_no = :n"),
                                 {"n": sub["case_no"]}).one()
        street = cell[:9]
        _, op_h = _user(conn, "operator")
        dept, dept_h = _user(conn, "department", department=f"street-{street}")
        other = conn.execute(text("SELECT code FROM department WHERE city_id = :c AND kind = 'street' AND code <> :me "
                                  "ORDER BY code LIMIT 1"), {"c": haimen.id, "me": f"street-{street}"}).scalar_one()
        _, other_h = _user(conn, "department", department=other)
        _, insp_h = _user(conn, "inspector", area_code=street)
        _, sup_h = _user(conn, "supervisor")
    for action, h, body in (("accept", op_h, {}), ("dispatch", op_h, {}), ("start", dept_h, {})):
        a = client.post(f"/api/v1/cases/{cid}/actions/{action}", json=body, headers=h)
        assert a.status_code == 200, a.text
    return {"id": cid, "case_no": sub["case_no"], "query_code": sub["query_code"], "op": op_h, "dept": dept_h,
            "other": other_h, "insp": insp_h, "sup": sup_h, "lon": lon, "lat": lat}


def _count(engine, sql, **p):
    with engine.connect() as c:
        return c.execute(text(sql), p).scalar_one()


def _feedback(client, case, headers, before=(), after=(), note="已抽水疏通 pumped and cleared"):
    files = [("before", (f"b{i}.jpg", b, "image/jpeg")) for i, b in enumerate(before)] + \
            [("after", (f"a{i}.jpg", b, "image/jpeg")) for i, b in enumerate(after)]
    return client.post(f"/api/v1/cases/{case['id']}/feedback", data={"note": note}, files=files or None, headers=headers)


def test_required_feedback_photos_refused_when_missing(client, engine, processing):
    c = processing
    before = (_count(engine, "SELECT count(*) FROM case_event WHERE case_id = :c", c=c["id"]),
              _count(engine, "SELECT count(*) FROM case_feedback_photo WHERE case_id = :c", c=c["id"]))
    # multipart with only a before photo: the class (E4 突发事件) needs an after photo
    r = _feedback(client, c, c["dept"], before=[jpeg(501)])
    assert r.status_code == 422
    assert "处置后照片" in r.text
    # the JSON action cannot pass the rule either
    r = client.post(f"/api/v1/cases/{c['id']}/actions/feedback", json={"note": "done", "photos": ["x.jpg"]},
                    headers=c["dept"])
    assert r.status_code == 422 and "处置后照片" in r.text
    # a broken after photo: refused with its name, nothing written either
    r = _feedback(client, c, c["dept"], before=[jpeg(502)], after=[b"\xff\xd8 not a photo"])
    assert r.status_code == 422 and "photos[0] (a0.jpg)" in r.text, r.text
    after = (_count(engine, "SELECT count(*) FROM case_event WHERE case_id = :c", c=c["id"]),
             _count(engine, "SELECT count(*) FROM case_feedback_photo WHERE case_id = :c", c=c["id"]))
    assert after == before
    assert _count(engine, "SELECT count(*) FROM case_file WHERE id = :c AND state = 'processing'", c=c["id"]) == 1
    # another street's department may not give feedback on it
    assert _feedback(client, c, c["other"], after=[jpeg(503)]).status_code == 403


def test_listing_per_kind_and_role_thumbnails_without_exif(client, engine, processing):
    c = processing
    r = _feedback(client, c, c["dept"], before=[jpeg(511, (800, 600))], after=[jpeg(512, (800, 600)), jpeg(513)])
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["state"] == "verifying" and [p["kind"] for p in out["photos"]] == ["before", "after", "after"]
    assert _count(engine, "SELECT count(*) FROM case_feedback_photo WHERE case_id = :c", c=c["id"]) == 3
    # the inspector's on-site check with a photo
    v = client.post(f"/api/v1/cases/{c['id']}/verify", data={"result": "ok", "note": "已无积水"},
                    files=[("photos", ("v.jpg", jpeg(514), "image/jpeg"))], headers=c["insp"])
    assert v.status_code == 201, v.text

    lst = client.get(f"/api/v1/cases/{c['id']}/photos", headers=c["op"])
    assert lst.status_code == 200, lst.text
    body = lst.json()
    kinds = [p["kind"] for p in body["photos"]]
    assert body["counts"] == {"report": 1, "before": 1, "after": 2, "verification": 1}
    assert kinds == ["report", "before", "after", "after", "verification"]
    labels = {p["kind"]: p["kind_label"] for p in body["photos"]}
    assert labels == {"report": "上报照片", "before": "处置前", "after": "处置后", "verification": "核查照片"}
    assert {p["step"] for p in body["photos"]} == {"received", "feedback", "verify_ok"}

    # every thumbnail and public copy: a JPEG re-read with Pillow, small, without EXIF
    for p in body["photos"]:
        t = client.get(p["thumb_url"], headers=c["op"])
        assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
        im = _no_exif(t.content)
        assert max(im.size) <= 320
        full = client.get(p["url"], headers=c["op"])
        assert full.status_code == 200
        fim = _no_exif(full.content)
        assert max(fim.size) >= max(im.size)
    # the citizen's photo had a GPS position and a camera model: gone from what is served
    report = next(p for p in body["photos"] if p["kind"] == "report")
    raw = Image.open(io.BytesIO(photo("DSCN0010.jpg")))
    assert raw.getexif().get_ifd(0x8825), "the test photo must carry GPS EXIF"
    thumb = _no_exif(client.get(report["thumb_url"], headers=c["op"]).content)
    assert max(thumb.size) == 320
    # content-addressed cache: the second read is the same bytes, and a file sits in the cache
    assert client.get(report["thumb_url"], headers=c["op"]).content == client.get(report["thumb_url"], headers=c["sup"]).content

    # roles: the department of the case and the supervisor see the same list; another department is refused
    assert client.get(f"/api/v1/cases/{c['id']}/photos", headers=c["dept"]).json()["counts"] == body["counts"]
    assert client.get(f"/api/v1/cases/{c['id']}/photos", headers=c["sup"]).json()["counts"] == body["counts"]
    other = client.get(f"/api/v1/cases/{c['id']}/photos", headers=c["other"])
    assert other.status_code == 403 and "不在您的角色可查看的范围内" in other.text
    assert client.get(report["thumb_url"], headers=c["other"]).status_code == 403
    # planners read layers with scrubbed text, never case photos (a citizen's photo may show a doorstep)
    with engine.begin() as conn:
        _, planner_h = _user(conn, "planner")
    assert client.get(f"/api/v1/cases/{c['id']}/photos", headers=planner_h).status_code == 403
    assert client.get(report["thumb_url"], headers=planner_h).status_code == 403
    # anonymous: nothing
    assert client.get(f"/api/v1/cases/{c['id']}/photos").status_code == 401
    assert client.get(report["thumb_url"]).status_code == 401
    # a photo of another case is not served under this one
    fb = next(p for p in body["photos"] if p["kind"] == "after")
    assert client.get(fb["thumb_url"].replace(f"/cases/{c['id']}/", f"/cases/{c['id'] + 100000}/"),
                      headers=c["op"]).status_code == 404


def test_citizen_sees_the_policy_kinds_through_the_lookup(client, engine, processing):
    c = processing
    assert _feedback(client, c, c["dept"], before=[jpeg(521)], after=[jpeg(522)]).status_code == 201
    v = client.post(f"/api/v1/cases/{c['id']}/verify", data={"result": "ok"},
                    files=[("photos", ("v.jpg", jpeg(523), "image/jpeg"))], headers=c["insp"])
    assert v.status_code == 201
    from layers.core import publication

    wanted = publication.lookup_photo_kinds("citizen")
    r = client.post("/api/v1/public/photos", json={"case_no": c["case_no"], "query_code": c["query_code"]})
    assert r.status_code == 200, r.text
    got = r.json()["photos"]
    assert {p["kind"] for p in got} == wanted == {"report", "before", "after"}  # no 核查照片 for the citizen
    for p in got:
        assert set(p) == {"kind", "kind_label", "kind_label_en", "at", "step", "step_label", "thumb_url", "url"}
        im = _no_exif(client.get(p["thumb_url"]).content)  # signed: no token needed
        assert max(im.size) <= 320
        _no_exif(client.get(p["url"]).content)
    # a forged or altered signature, and a wrong query code, get nothing
    bad = got[0]["url"].replace("sig=", "sig=0")[:-1]
    assert client.get(bad).status_code in (403, 422)
    other = got[0]["url"].replace("/public?", "/thumb?")
    assert client.get(other).status_code == 403
    assert client.post("/api/v1/public/photos", json={"case_no": c["case_no"], "query_code": "000000x"}).status_code == 404


def test_report_sources_merged_open311_and_inspector_area(client, engine, haimen, departments, processing,
                                                          field_var_dir):
    """An inspector's report photos, those of a report merged into the case (并单), an Open311 address
    (listed, never fetched); an inspector outside the case's area sees nothing; thumbnails of a
    citizen's copy are cached by the sha256 of the copy."""
    import hashlib

    from tests.field.conftest import jpeg as make

    c = processing
    with engine.begin() as conn:
        street = conn.execute(text("SELECT cell_code FROM case_file WHERE id = :i"), {"i": c["id"]}).scalar_one()[:9]
        _, insp_h = _user(conn, "inspector", area_code=street)
        _, far_h = _user(conn, "inspector", area_code="320684999")
    # An inspector reports the same problem 5 m away: merged into the case (并单), its 2 photos listed with it.
    r = client.post("/api/v1/reports", data={"category_code": "E40101", "lon": c["lon"] + 0.00005, "lat": c["lat"],
                                             "accuracy": 5, "description": "积水"},
                    files=[("photos", ("r0.jpg", make(541), "image/jpeg")), ("photos", ("r1.jpg", make(542), "image/jpeg"))],
                    headers=insp_h)
    assert r.status_code == 201, r.text
    assert r.json()["case"]["merged_into"] == c["id"] or r.json()["case"]["id"] == c["id"], r.json()["case"]
    body = client.get(f"/api/v1/cases/{c['id']}/photos", headers=c["op"]).json()
    reports = [p for p in body["photos"] if p["kind"] == "report"]
    assert [p["source"] for p in reports] == ["citizen", "report", "report"]
    assert all(p["merged_from"] for p in reports if p["source"] == "report")
    for p in reports:
        _no_exif(client.get(p["thumb_url"], headers=c["op"]).content)
    # The citizen's look-up never shows another reporter's merged photos.
    mine = client.post("/api/v1/public/photos", json={"case_no": c["case_no"], "query_code": c["query_code"]}).json()
    assert [p["kind"] for p in mine["photos"]] == ["report"]
    # The content-addressed thumbnail cache of the citizen's copy.
    citizen = reports[0]
    copy = client.get(citizen["url"], headers=c["op"]).content
    sha = hashlib.sha256(copy).hexdigest()
    cached = field_var_dir / "photo_thumbs" / sha[:2] / f"{sha}.jpg"
    assert cached.is_file() and cached.read_bytes() == client.get(citizen["thumb_url"], headers=c["op"]).content
    # An inspector of another area: refused (the rule of the case list).
    assert client.get(f"/api/v1/cases/{c['id']}/photos", headers=far_h).status_code == 403

    # Open311: the media_url is listed as an outside address, for staff only.
    with engine.begin() as conn:
        _, op_tok = _user(conn, "operator")
    url = "https://img.example.org/p/flood.jpg"
    r = client.post("/open311/v2/requests.json", data={"api_key": op_tok["Authorization"].split()[1],
                                                       "service_code": "E10301", "lat": "31.93", "long": "121.12",
                                                       "media_url": url})
    assert r.status_code == 200, r.text
    with engine.connect() as conn:
        oid = conn.execute(text("SELECT id FROM case_file WHERE case_no = :n"),
                           {"n": r.json()[0]["service_request_id"]}).scalar_one()
    listed = client.get(f"/api/v1/cases/{oid}/photos", headers=c["op"]).json()["photos"]
    assert [(p["kind"], p["external_url"], p["thumb_url"]) for p in listed] == [("report", url, None)]


def test_wechat_chat_photos_are_listed_and_served_without_exif(client, engine, haimen, processing, field_var_dir):
    """A photo the citizen sent in the WeChat chat (wechat_photo, its own store): a 上报照片 of the case."""
    from gis import photos as gphotos
    from layers.field.photostore import PhotoStore

    c = processing
    raw = photo("DSCN0021.jpg")
    public = gphotos.public_copy(raw)
    thumb = gphotos.thumbnail(public)
    shas = [gphotos.sha256_hex(b) for b in (raw, public, thumb)]
    store = PhotoStore(field_var_dir / "wechat_photos")
    with engine.begin() as conn:
        store.claim(conn)
        staged = store.new_stage()
        for kind, sha, data in zip(("original", "public", "thumb"), shas, (raw, public, thumb), strict=True):
            store.stage(staged, kind, sha, data)
        pid = conn.execute(text("""
            INSERT INTO wechat_photo (city_id, openid, case_id, media_id, sha256, public_sha256, thumb_sha256,
                                      media_type, size_bytes, width, height, exif_status)
            VALUES (:city, 'o-test-photos', :case, 'm1', :s0, :s1, :s2, 'jpeg', :n, 640, 480, 'ok') RETURNING id"""),
            {"city": haimen.id, "case": c["id"], "s0": shas[0], "s1": shas[1], "s2": shas[2], "n": len(raw)}).scalar_one()
    staged.promote()
    listed = client.get(f"/api/v1/cases/{c['id']}/photos", headers=c["op"]).json()["photos"]
    chat = [p for p in listed if p["source"] == "wechat"]
    assert [(p["kind"], p["ref"], p["kind_label"]) for p in chat] == [("report", str(pid), "上报照片")]
    got = client.get(chat[0]["thumb_url"], headers=c["dept"])
    assert got.status_code == 200 and got.content == thumb
    assert max(_no_exif(got.content).size) <= 320
    _no_exif(client.get(chat[0]["url"], headers=c["dept"]).content)
    assert client.get(chat[0]["url"], headers=c["other"]).status_code == 403
