"""核查: the on-site check of a department's work with real photos (POST /api/v1/cases/{id}/verify),
through the workflow (verify_ok → 反馈, verify_fail → 返工), its photos stored and served by role,
idempotent retries, bad input writing nothing; and the 核查 panel of /inspector in Chromium."""

from __future__ import annotations

import hashlib
import itertools
import uuid

import numpy as np
import pytest
import shapely
from sqlalchemy import text

from tests.conftest import auth
from tests.field.conftest import PHOTOS, inspector_context, jpeg, photo

# Haimen, east of the town centre, clear of the other field tests' points; each case ~400 m apart
# so that no two are merged as duplicates (并单: same class within 50 m).
_SPOTS = itertools.count()


def _spot() -> tuple[float, float]:
    k = next(_SPOTS)
    return 121.215 + 0.004 * (k % 10), 31.905 + 0.004 * (k // 10)


def _user(conn, role, **kw):
    from layers.core.users import add_user

    user, tok = add_user(conn, f"verify_{role}_{uuid.uuid4().hex[:8]}", role, **kw)
    return user, auth(tok)


@pytest.fixture
def verifying(engine, haimen, departments):
    """A case taken by the workflow to 'verifying' (accept → dispatch → start → feedback), the
    department user it was dispatched to, and an inspector of its street."""
    from gis import crs as gcrs
    from layers.cases import calendar as lcal
    from layers.cases import workflow as lwf

    lon, lat = _spot()
    with engine.begin() as conn:
        x, y = gcrs.transform_xy(np.array([lon]), np.array([lat]), "EPSG:4326", haimen.working_crs)
        operator, _ = _user(conn, "operator")
        case = lwf.open_case(conn, haimen, source="hotline", channel="电话", category_code="E10101",
                             received_at=lcal.now(), location=shapely.Point(float(x[0]), float(y[0])),
                             description="路边垃圾堆放 rubbish by the road", address="海门街道核查测试路 1 号",
                             actor=operator)
        assert case.state == "collected" and case.merged_into is None
        street = case.cell_code[:9]
        dept, dept_h = _user(conn, "department", department=f"street-{street}")
        lwf.transition(conn, case.id, "accept", operator)
        lwf.transition(conn, case.id, "dispatch", operator)
        lwf.transition(conn, case.id, "start", dept)
        out = lwf.transition(conn, case.id, "feedback", dept, note="已清运 cleared", photos=["after.jpg"])
        assert out["state"] == "verifying"
        insp, insp_h = _user(conn, "inspector", area_code=street)
    return {"id": case.id, "case_no": case.case_no, "lon": lon, "lat": lat, "street": street, "dept": dept_h,
            "inspector": insp, "h": insp_h}


def _post(client, case_id, headers, photos, key=None, **fields):
    files = [("photos", (name, data, "image/jpeg")) for name, data in photos]
    h = {**headers, **({"Idempotency-Key": key} if key else {})}
    return client.post(f"/api/v1/cases/{case_id}/verify", data=fields, files=files, headers=h)


def _state(engine, case_id):
    with engine.connect() as c:
        return c.execute(text("SELECT state, rework_count FROM case_file WHERE id = :i"), {"i": case_id}).one()


def _events(engine, case_id):
    with engine.connect() as c:
        return c.execute(text("""SELECT kind, from_state, to_state, actor_role, note, photos FROM case_event
                                 WHERE case_id = :i ORDER BY at, id"""), {"i": case_id}).all()


def _rows(engine, case_id):
    with engine.connect() as c:
        return c.execute(text("SELECT count(*) FROM case_verification WHERE case_id = :i"), {"i": case_id}).scalar_one()


def _files():
    from layers.field.verification import photo_store

    root = photo_store().root
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_verify_ok_with_a_real_photo(client, engine, verifying, tokens):
    from layers.field.verification import photo_store

    v = verifying
    real = photo("DSCN0010.jpg")  # a real camera JPEG, with an EXIF GPS position far from Haimen
    # ~22 m north of the case, a good fix
    r = _post(client, v["id"], v["h"], [("DSCN0010.jpg", real), ("p2.jpg", jpeg(7301))], key=f"k-{v['id']}",
              result="ok", note="已清理干净 clean now", lon=str(v["lon"]), lat=str(v["lat"] + 0.0002), accuracy="8")
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["state"] == "feedback" and out["from_state"] == "verifying" and out["action"] == "verify_ok"
    assert out["distance_m"] == pytest.approx(22.2, abs=1.0) and "far_from_case" not in out["flags"]
    assert "exif_far_from_case" in out["flags"] and out["photos"][0]["exif_distance_m"] > 1000
    assert [p["sha256"] for p in out["photos"]] == [hashlib.sha256(real).hexdigest(),
                                                   hashlib.sha256(jpeg(7301)).hexdigest()]
    assert _state(engine, v["id"]) == ("feedback", 0)

    # The event: who, from → to, the note, and the photos as the URLs of their public copies.
    ev = _events(engine, v["id"])[-1]
    assert ev[:5] == ("verify_ok", "verifying", "feedback", "inspector", "已清理干净 clean now")
    assert ev[5] == [p["public_url"] for p in out["photos"]]
    assert ev[5][0] == f"/api/v1/verifications/{out['id']}/photos/0/public"

    # The rows and the files: original, public copy and thumbnail of each photo.
    with engine.connect() as c:
        row = c.execute(text("""SELECT result, event_id, user_id, distance_m, accuracy_m, flags,
                                       ST_SRID(device_location) FROM case_verification WHERE id = :i"""),
                        {"i": out["id"]}).one()
        photos = c.execute(text("""SELECT seq, sha256, public_sha256, thumb_sha256, media_type, exif_status
                                   FROM case_verification_photo WHERE verification_id = :i ORDER BY seq"""),
                           {"i": out["id"]}).all()
        event_id = c.execute(text("SELECT max(id) FROM case_event WHERE case_id = :i"), {"i": v["id"]}).scalar_one()
    assert row[0] == "ok" and row[1] == event_id == out["event_id"] and row[2] == v["inspector"].id
    assert row[3] == out["distance_m"] and row[4] == 8 and "exif_far_from_case" in row[5] and row[6] == 4549
    assert [p[0] for p in photos] == [0, 1] and photos[0][4] == "jpeg" and photos[0][5] == "ok"
    store = photo_store()
    for p in photos:
        assert store.read("original", p[1]) in (real, jpeg(7301))
        assert hashlib.sha256(store.read("public", p[2])).hexdigest() == p[2]
        assert store.path("thumb", p[3]).exists()
    assert not store.staged_files()

    # Served to staff by role: the public copy (no EXIF) to the inspector, the case's department and
    # operators; the original only to its inspector and supervisors; not to planners.
    url = out["photos"][0]["public_url"]
    for h in (v["h"], v["dept"], auth(tokens["operator"]), auth(tokens["supervisor"])):
        g = client.get(url, headers=h)
        assert g.status_code == 200 and g.headers["content-type"] == "image/jpeg"
        assert hashlib.sha256(g.content).hexdigest() == photos[0][2] and b"Exif" not in g.content[:200]
    g = client.get(out["photos"][0]["thumb_url"], headers=v["h"])
    assert g.status_code == 200 and g.headers["content-type"] == "image/jpeg"
    assert hashlib.sha256(g.content).hexdigest() == photos[0][3]
    orig = url.replace("/public", "/original")
    assert client.get(orig, headers=v["h"]).content == real
    assert client.get(orig, headers=auth(tokens["supervisor"])).status_code == 200
    g = client.get(orig, headers=auth(tokens["operator"]))
    assert g.status_code == 403 and "private" in g.json()["detail"]
    assert client.get(url, headers=auth(tokens["planner"])).status_code == 403
    assert client.get(url.replace("/0/", "/5/"), headers=v["h"]).status_code == 404
    with engine.begin() as conn:
        _, other_dept = _user(conn, "department", department="sanitation")
        _, other_insp = _user(conn, "inspector", area_code="320614999")
    assert client.get(url, headers=other_dept).status_code == 403
    assert client.get(url, headers=other_insp).status_code == 403
    g = client.get(f"/api/v1/verifications/{out['id']}", headers=auth(tokens["operator"]))
    assert g.status_code == 200 and g.json()["case_state"] == "feedback" and g.json()["photos"] == out["photos"]

    # A retry with the same key and the same request: the first answer, nothing written again.
    files_before, events_before = _files(), _events(engine, v["id"])
    r2 = _post(client, v["id"], v["h"], [("DSCN0010.jpg", real), ("p2.jpg", jpeg(7301))], key=f"k-{v['id']}",
               result="ok", note="已清理干净 clean now", lon=str(v["lon"]), lat=str(v["lat"] + 0.0002), accuracy="8")
    assert r2.status_code == 200 and r2.headers["Idempotent-Replayed"] == "true" and r2.json() == out
    assert _rows(engine, v["id"]) == 1 and _events(engine, v["id"]) == events_before
    assert _files() == files_before
    # The same key for another request: refused.
    r3 = _post(client, v["id"], v["h"], [("DSCN0010.jpg", real)], key=f"k-{v['id']}", result="ok")
    assert r3.status_code == 409 and "different verification" in r3.json()["detail"]
    # A new key on a case already checked: refused by the workflow's state.
    r4 = _post(client, v["id"], v["h"], [("DSCN0010.jpg", real)], result="ok")
    assert r4.status_code == 409 and "核查 Verifying" in r4.json()["detail"]

    # The loop goes on: the operator closes the case.
    r = client.post(f"/api/v1/cases/{v['id']}/actions/close", json={}, headers=auth(tokens["operator"]))
    assert r.status_code == 200 and r.json()["state"] == "closed"


def test_verify_fail_needs_a_reason_and_sends_it_back(client, engine, verifying):
    v = verifying
    pic = [("DSCN0012.jpg", photo("DSCN0012.jpg"))]
    events_before = _events(engine, v["id"])
    for reason in ({}, {"note": "   "}):
        r = _post(client, v["id"], v["h"], pic, result="fail", **reason)
        assert r.status_code == 422 and "needs a reason" in r.json()["detail"]
    assert _rows(engine, v["id"]) == 0 and _events(engine, v["id"]) == events_before
    assert _state(engine, v["id"]) == ("verifying", 0)

    # With the reason, from 2 km away: kept, flagged far_from_case, sent back for rework.
    r = _post(client, v["id"], v["h"], pic, result="fail", reason="垃圾仍在 still there", lon=str(v["lon"] + 0.021),
              lat=str(v["lat"]), accuracy="10")
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["state"] == "processing" and out["action"] == "verify_fail" and out["rework"] == 1
    assert out["distance_m"] > 1900 and "far_from_case" in out["flags"] and out["far_m"] == 100
    assert _state(engine, v["id"]) == ("processing", 1)
    ev = _events(engine, v["id"])[-1]
    assert ev[:5] == ("verify_fail", "verifying", "processing", "inspector", "垃圾仍在 still there")
    assert ev[5] == [out["photos"][0]["public_url"]]

    # The department sees why, with the photo (the case is theirs again).
    t = client.get(f"/api/v1/cases/{v['id']}/verify", headers=v["dept"])
    assert t.status_code == 200, t.text
    task = t.json()
    assert task["case"]["state"] == "processing" and task["case"]["rework_count"] == 1
    assert [x["note"] for x in task["verifications"]] == ["垃圾仍在 still there"]
    assert task["can_verify"] == {"ok": False, "fail": False}
    g = client.get(out["photos"][0]["public_url"], headers=v["dept"])
    assert g.status_code == 200 and g.headers["content-type"] == "image/jpeg" and g.content[:2] == b"\xff\xd8"


def test_verify_task_for_the_inspector(client, verifying):
    v = verifying
    r = client.get(f"/api/v1/cases/{v['id']}/verify", headers=v["h"])
    assert r.status_code == 200, r.text
    t = r.json()
    assert t["case"]["case_no"] == v["case_no"] and t["case"]["state"] == "verifying"
    # The inspector reads the address generalised to its road (publication policy: no house number).
    assert t["case"]["category_code"] == "E10101" and t["case"]["address"] == "海门街道核查测试路"
    assert t["case"]["description"].startswith("路边垃圾")
    assert t["case"]["lon"] == pytest.approx(v["lon"], abs=1e-6) and t["case"]["lat"] == pytest.approx(v["lat"], abs=1e-6)
    assert t["feedback"]["note"] == "已清运 cleared" and t["feedback"]["department"] == f"street-{v['street']}"
    assert t["can_verify"] == {"ok": True, "fail": True} and t["fail_needs_reason"] is True
    assert "contact" not in t["case"]
    # The worklist lists it as a check to do.
    w = client.get("/api/v1/worklist", headers=v["h"]).json()
    assert any(c["id"] == v["id"] and c["state"] == "verifying" for c in w["cases"])


def test_wrong_inspector_and_wrong_state_are_refused(client, engine, verifying, make_inspector, tokens):
    v = verifying
    pic = [("DSCN0012.jpg", photo("DSCN0012.jpg"))]
    files_before = _files()
    _, far = make_inspector(area_code="320614999")
    r = _post(client, v["id"], far, pic, result="ok")
    assert r.status_code == 403 and "outside your area 320614999" in r.json()["detail"]
    assert client.get(f"/api/v1/cases/{v['id']}/verify", headers=far).status_code == 403
    r = _post(client, v["id"], v["dept"], pic, result="ok")  # a department may not check its own work
    assert r.status_code == 403 and "department" in r.json()["detail"]
    r = _post(client, 999_999_999, v["h"], pic, result="ok")
    assert r.status_code == 404 and "no case 999999999" in r.json()["detail"]
    assert _rows(engine, v["id"]) == 0 and _state(engine, v["id"]) == ("verifying", 0) and _files() == files_before
    # A 督办 notice keeps the case waiting for the check; once checked, it waits no more: 409.
    from layers.cases import workflow as lwf
    from layers.core.users import user_for_token

    with engine.begin() as conn:
        lwf.transition(conn, v["id"], "supervise", user_for_token(conn, tokens["supervisor"]), note="督办 hurry")
    r = _post(client, v["id"], v["h"], pic, result="ok")
    assert r.status_code == 201 and r.json()["from_state"] == "verifying"  # 督办 keeps the state
    assert r.json()["state"] == "feedback"
    r = _post(client, v["id"], v["h"], pic, result="fail", note="again")
    assert r.status_code == 409 and "反馈 Handled" in r.json()["detail"]


def test_bad_input_writes_nothing(client, engine, verifying):
    from layers.field.verification import photo_store

    v = verifying
    good = ("DSCN0012.jpg", photo("DSCN0012.jpg"))
    files_before = _files()
    events_before = _events(engine, v["id"])
    cases = [
        ([good, ("corrupted.jpg", photo("corrupted.jpg"))], {"result": "ok"}, 422, "photos[1] (corrupted.jpg)"),
        ([("notes.jpg", b"this is not a photo at all")], {"result": "ok"}, 422, "not a recognised image"),
        ([("empty.jpg", b"")], {"result": "ok"}, 422, "photos[0]"),
        ([], {"result": "ok"}, 422, "photos"),
        ([good] * 10, {"result": "ok"}, 422, "at most 9"),
        ([good], {"result": "maybe"}, 422, "result"),
        ([good], {"result": "ok", "lon": "121.2"}, 422, "both lon and lat"),
        ([good], {"result": "ok", "lon": "east", "lat": "31.9"}, 422, "not a number"),
        ([good], {"result": "ok", "lon": "31.9", "lat": "121.2"}, 422, "lon/lat swapped"),
        ([good], {"result": "ok", "lon": "121.2", "lat": "31.9", "accuracy": "5000"}, 422, "says nothing"),
        ([good], {"result": "ok", "lon": "121.2", "lat": "31.9", "crs": "EPSG:4549"}, 422, "must be lon/lat"),
        ([good], {"result": "ok"}, 422, "Idempotency-Key"),
    ]
    for photos, fields, status, needle in cases:
        key = "bad key with spaces" if needle == "Idempotency-Key" else None
        r = _post(client, v["id"], v["h"], photos, key=key, **fields)
        assert r.status_code == status, (needle, r.status_code, r.text)
        assert needle in r.text, (needle, r.text)
    assert _rows(engine, v["id"]) == 0 and _events(engine, v["id"]) == events_before
    assert _state(engine, v["id"]) == ("verifying", 0)
    assert _files() == files_before and not photo_store().staged_files()


def test_concurrent_retry_gets_the_first_answer(engine, haimen, verifying):
    """Two requests with one key at the same time (a double tap, a retry while the first is still
    running): the second waits for the first and answers with its result; one check, one event."""
    import threading

    from layers.field import reports as lreports
    from layers.field import verification as lver

    v = verifying
    data = photo("DSCN0012.jpg")
    inp = lver.VerifyInput(result="ok", note="并发 concurrent")
    h = lver.request_hash(v["id"], inp, [data])
    key = f"conc-{v['id']}"
    store = lver.photo_store()
    out = {}

    def second():
        with engine.begin() as conn:
            staged = store.new_stage()
            out["second"] = lver.verify_case(conn, haimen, v["id"], v["inspector"], inp,
                                             [lreports.prepare_photo(0, "b.jpg", data)], key, h, store, staged)
            staged.discard()

    with engine.connect() as conn:
        tx = conn.begin()
        staged = store.new_stage()
        first, created = lver.verify_case(conn, haimen, v["id"], v["inspector"], inp,
                                          [lreports.prepare_photo(0, "a.jpg", data)], key, h, store, staged)
        assert created
        t = threading.Thread(target=second)
        t.start()
        t.join(timeout=1.5)
        assert t.is_alive()  # waiting on the unique (user, key)
        tx.commit()
        staged.promote()
    t.join(timeout=20)
    assert out["second"] == (first, False)
    assert _rows(engine, v["id"]) == 1 and [e[0] for e in _events(engine, v["id"])].count("verify_ok") == 1
    assert not store.staged_files()


def test_recover_keeps_committed_and_drops_orphans(client, engine, verifying, tmp_path):
    """A crash between commit and promotion: the committed photo is promoted at start; a staged file of
    a transaction that never committed, and a stored file no row refers to, are deleted."""
    from layers.field import verification as lver
    from layers.field.photostore import PhotoStore

    v = verifying
    r = _post(client, v["id"], v["h"], [("DSCN0012.jpg", photo("DSCN0012.jpg"))], result="ok")
    assert r.status_code == 201, r.text
    sha = r.json()["photos"][0]["sha256"]  # committed: a row refers to it
    store = PhotoStore(tmp_path / "vp")
    with engine.connect() as conn:
        store.claim(conn)
        kept, dropped = store.new_stage(), store.new_stage()
        store.stage(kept, "original", sha, b"committed bytes")
        orphan = hashlib.sha256(b"orphan").hexdigest()
        store.stage(dropped, "original", orphan, b"orphan")
        store.path("thumb", orphan).parent.mkdir(parents=True)
        store.path("thumb", orphan).write_bytes(b"x")
        counts = lver.recover(conn, store)
    assert counts == {"promoted": 1, "deleted_staged": 1, "deleted_orphans": 1}
    assert store.read("original", sha) == b"committed bytes" and not store.staged_files()
    assert not store.path("thumb", orphan).exists()


@pytest.mark.browser
def test_inspector_page_verifies_a_case(browser, live_server, engine, verifying, tmp_path):
    v = verifying
    ctx, page, errors = inspector_context(browser, v["h"], height=1200, lang="zh",
                                          geolocation={"latitude": v["lat"] + 0.0001, "longitude": v["lon"], "accuracy": 9})
    page.goto(live_server + "/inspector")
    page.click("#tabs button[data-tab=work]")
    btn = f"#cases button.verify-btn[data-case='{v['id']}']"
    page.wait_for_selector(btn, timeout=20_000)
    page.click(btn)
    page.wait_for_function("document.querySelector('#vcase dd[data-field=feedback]') !== null", timeout=20_000)
    assert v["case_no"] in page.inner_text("#vcaseno")
    assert "已清运 cleared" in page.inner_text("#vcase dd[data-field=feedback]")
    assert "核查测试路" in page.inner_text("#vcase dd[data-field=address]")
    assert page.inner_text("#vcase dd[data-field=category]") == "生活垃圾暴露"  # the class in words, not its code
    page.wait_for_function("document.getElementById('vdist').textContent.includes('距案件')")
    assert "✓" in page.inner_text("#vdist")  # ~11 m from the case
    assert page.locator("#vmap path.leaflet-interactive").count() >= 2  # the case and me

    # Offline: the check says it needs a connection; the buttons wait.
    ctx.set_offline(True)
    page.wait_for_function("!document.getElementById('voffline').hidden")
    assert page.is_disabled("#vok") and page.is_disabled("#vfail")
    ctx.set_offline(False)
    page.wait_for_function("document.getElementById('voffline').hidden && !document.getElementById('vok').disabled")

    # A fail without a reason is stopped on the page; a broken photo is refused by the API, shown.
    page.set_input_files("#vphotos", str(PHOTOS / "corrupted.jpg"))
    page.click("#vfail")
    assert "必须填写原因" in page.inner_text("#vstatus")
    page.click("#vok")
    page.wait_for_function("document.getElementById('vstatus').textContent.includes('HTTP 422')", timeout=20_000)
    assert "photos[0] (corrupted.jpg)" in page.inner_text("#vstatus")
    assert _state(engine, v["id"]) == ("verifying", 0)

    # A real photo: passed; the result and the stored thumbnail are shown.
    page.set_input_files("#vphotos", str(PHOTOS / "DSCN0021.jpg"))
    page.fill("#vnote", "现场已清理 clean")
    page.click("#vok")
    page.wait_for_function("document.getElementById('vresult').textContent.includes('核查通过')", timeout=20_000)
    assert v["case_no"] in page.inner_text("#vstatus") and "反馈 Handled" in page.inner_text("#vresult")
    assert "m from the case" in page.inner_text("#vresult") and "照片 EXIF 位置远离案件" in page.inner_text("#vresult")
    assert "反馈 Handled" in page.inner_text("#vcase dd[data-field=state]")
    page.wait_for_function("document.querySelector('#vresult img') && document.querySelector('#vresult img').naturalWidth > 0",
                           timeout=20_000)
    assert page.is_disabled("#vok")
    assert _state(engine, v["id"]) == ("feedback", 0)
    with engine.connect() as c:
        note, photos = c.execute(text("""SELECT note, photos FROM case_event WHERE case_id = :i AND kind = 'verify_ok'"""),
                                 {"i": v["id"]}).one()
    assert note == "现场已清理 clean" and len(photos) == 1
    page.screenshot(path="/tmp/verify.png", full_page=True)
    # English beside: the panel in English.
    page.click("#lang")
    assert page.inner_text("#vok") == "✓ Pass" and "Check passed" in page.inner_text("#vresult")
    page.click("#vback")
    page.wait_for_function("!document.getElementById('worklist').hidden")
    assert not errors, errors
    ctx.close()
