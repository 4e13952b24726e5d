"""The citizen channel: submit (GCJ-02, photo), case number + query code, status without personal
data or internal notes, rating, public notices; the /public page in headless Chromium."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from layers.core.users import User
from tests.conftest import SHARED, auth

PHOTO = SHARED / "photos" / "DSCN0010.jpg"


def close_directly(engine, case_no, note="已电话答复 内部备注 internal-note-xyz"):
    from layers.cases import workflow as wf

    with engine.begin() as conn:
        uid = conn.execute(text("SELECT id FROM app_user WHERE name = 'test_operator'")).scalar_one()
        op = User(uid, "test_operator", "operator", None, None)
        cid = conn.execute(text("SELECT id FROM case_file WHERE case_no = :n"), {"n": case_no}).scalar_one()
        wf.transition(conn, cid, "accept", op)
        wf.transition(conn, cid, "close", op, note=note)
    return cid


def test_submit_lookup_rate(client, engine, tokens):
    r = client.post("/api/v1/public/requests", data={
        "category_code": "E10301", "description": "路面很脏 dirty road", "lon": "121.21", "lat": "31.91",
        "crs": "GCJ-02", "name": "赵六", "phone": "13600000000", "channel": "微信"},
        files={"photo": ("p.jpg", PHOTO.read_bytes(), "image/jpeg")})
    assert r.status_code == 201, r.text
    d = r.json()
    no, code = d["case_no"], d["query_code"]
    assert d["state"] == "collected" and len(code) == 6
    with engine.connect() as conn:
        row = conn.execute(text("""SELECT c.channel, c.source, c.location_source, k.phone, k.name,
                                          ST_X(ST_Transform(c.location, 4326)), ST_Y(ST_Transform(c.location, 4326))
                                   FROM case_file c JOIN case_contact k ON k.case_id = c.id WHERE c.case_no = :n"""),
                           {"n": no}).one()
        photos = conn.execute(text("""SELECT photos FROM case_event e JOIN case_file c ON c.id = e.case_id
                                      WHERE c.case_no = :n AND e.photos IS NOT NULL"""), {"n": no}).scalar_one()
    assert row[:5] == ("微信", "citizen", "citizen", "13600000000", "赵六")
    # GCJ-02 in, WGS-84 stored about 500 m south-west of the GCJ point in this area.
    assert 121.204 < row[5] < 121.208 and 31.911 < row[6] < 31.914
    from layers.cases.citizen import photo_dir

    stored = (photo_dir() / photos[0]).read_bytes()
    assert stored[:2] == b"\xff\xd8" and b"Exif" not in stored[:64]

    s = client.post("/api/v1/public/status", json={"case_no": no, "query_code": code})
    assert s.status_code == 200 and s.json()["status"].startswith("已受理") and not s.json()["can_rate"]
    wrong = client.post("/api/v1/public/status", json={"case_no": no, "query_code": "000000" if code != "000000" else "1"})
    assert wrong.status_code == 404
    assert client.post("/api/v1/public/rate", json={"case_no": no, "query_code": code,
                                                    "rating": "satisfied"}).status_code == 409
    close_directly(engine, no)
    s = client.post("/api/v1/public/status", json={"case_no": no, "query_code": code})
    body = s.text
    assert s.json()["status"].startswith("已办结") and s.json()["can_rate"]
    for secret in ("13600000000", "赵六", "internal-note-xyz", "operator"):
        assert secret not in body
    r = client.post("/api/v1/public/rate", json={"case_no": no, "query_code": code, "rating": "meh"})
    assert r.status_code == 422
    r = client.post("/api/v1/public/rate", json={"case_no": no, "query_code": code, "rating": "basic",
                                                 "comment": "还行"})
    assert r.status_code == 200 and r.json()["rating"] == "基本满意" and not r.json()["can_rate"]
    assert client.post("/api/v1/public/rate", json={"case_no": no, "query_code": code,
                                                    "rating": "satisfied"}).status_code == 409


def test_bad_submissions(client):
    base = {"category_code": "E10301", "description": "x"}
    r = client.post("/api/v1/public/requests", data={**base, "lon": "116.4", "lat": "39.9"})
    assert r.status_code == 422 and "outside the city" in r.json()["detail"]
    r = client.post("/api/v1/public/requests", data={**base, "lon": "121.2"})
    assert r.status_code == 422 and "both lon and lat" in r.json()["detail"]
    r = client.post("/api/v1/public/requests", data={**base, "category_code": "ZZ"})
    assert r.status_code == 422 and "unknown category" in r.json()["detail"]
    r = client.post("/api/v1/public/requests", data={**base, "description": "  "})
    assert r.status_code == 422
    r = client.post("/api/v1/public/requests", data=base, files={"photo": ("x.jpg", b"not an image", "image/jpeg")})
    assert r.status_code == 422 and "photo refused" in r.json()["detail"]


def test_notices(client, tokens):
    title = f"停水通知 {uuid.uuid4().hex[:6]}"
    r = client.post("/api/v1/notices", json={"title": title, "body": "明日 8:00–12:00 停水 water off"},
                    headers=auth(tokens["operator"]))
    assert r.status_code == 201
    assert client.post("/api/v1/notices", json={"title": "x", "body": "y"},
                       headers=auth(tokens["inspector"])).status_code == 403
    got = client.get("/api/v1/public/notices").json()["notices"]
    assert title in [n["title"] for n in got]


def test_public_page_in_chromium(live_server, browser, engine, tokens):
    page = browser.new_page()
    try:
        page.goto(live_server + "/public")
        page.wait_for_selector("#category[data-loaded='1']")
        assert "市民服务" in page.title()
        page.select_option("#category", "E50201")
        page.fill("#description", "店家占道经营 shop spilling onto the pavement")
        page.wait_for_selector("body[data-map-ready='1']")
        page.evaluate("CGPublic.pick(31.915, 121.215)")  # the place, as a tap on the map there
        page.fill("#phone", "13500000000")
        page.set_input_files("#photo", str(PHOTO))
        page.click("#submit")
        page.wait_for_selector("#new-case-no")
        no = page.inner_text("#new-case-no")
        assert no.startswith("320614")
        page.click("#tab-lookup")
        page.click("#lookup-btn")
        page.wait_for_selector("#status-text")
        assert page.inner_text("#status-text").startswith("已受理")
        assert "13500000000" not in page.content()
        close_directly(engine, no)
        page.click("#lookup-btn")
        page.wait_for_function("document.getElementById('status-text').textContent.startsWith('已办结')")
        assert page.is_visible("#rate-form")
        page.select_option("#rating", "satisfied")
        page.click("#rate-btn")
        page.wait_for_selector("#rating-text")
        assert page.inner_text("#rating-text") == "满意"
        assert "internal-note-xyz" not in page.content()
    finally:
        page.close()
