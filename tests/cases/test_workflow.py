"""The closed loop through the API with a frozen clock: a call to a rated close, every event logged,
deadlines right across the May Day holiday; roles; impossible transitions; 并单."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import text

from tests.cases.conftest import CST, working_point
from tests.conftest import auth


def local(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso).astimezone(CST).replace(tzinfo=None)


def new_case(client, headers, spot, **kw):
    lon, lat = spot()
    body = {"category_code": "E10101", "channel": "电话", "request_type": "投诉",
            "description": "小区门口垃圾堆放 rubbish piled at the gate", "address": "海门街道某小区",
            "location": {"x": lon, "y": lat, "crs": "EPSG:4326"},
            "contact": {"name": "张三", "phone": "13800000000"}, **kw}
    r = client.post("/api/v1/cases", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def act(client, headers, case_id, action, **body):
    return client.post(f"/api/v1/cases/{case_id}/actions/{action}", json=body, headers=headers)


def test_call_to_rated_close_across_the_holiday(client, tokens, departments, make_user, clock, spot, engine):
    op = auth(tokens["operator"])
    clock.set(dt.datetime(2026, 4, 30, 16, 0, tzinfo=CST))  # Thursday; 1–5 May are holidays
    c = new_case(client, op, spot)
    cid = c["id"]
    assert c["state"] == "collected" and len(c["query_code"]) == 6 and c["cell_code"].startswith("320614")
    assert c["case_no"].startswith("32061420260430")
    assert local(c["step_deadline_at"]) == dt.datetime(2026, 4, 30, 17, 0)   # 立案 within 1 工作时
    assert local(c["close_deadline_at"]) == dt.datetime(2026, 5, 25, 17, 30)  # 投诉: 15 工作日 (9 May is a workday)

    clock.set(dt.datetime(2026, 4, 30, 16, 30, tzinfo=CST))
    r = act(client, op, cid, "accept")
    assert r.status_code == 200, r.text
    assert r.json()["data"]["met"] is True
    assert local(r.json()["step_deadline_at"]) == dt.datetime(2026, 4, 30, 17, 30)

    # 事件先属地: the street office of the cell is proposed first, the owner (环卫处) second.
    p = client.get(f"/api/v1/cases/{cid}/proposal", headers=op).json()
    street = c["cell_code"][:9]
    assert p["proposed"]["code"] == f"street-{street}"
    assert [x["code"] for x in p["candidates"]] == [f"street-{street}", "sanitation"]

    clock.set(dt.datetime(2026, 4, 30, 17, 20, tzinfo=CST))
    r = act(client, op, cid, "dispatch")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "dispatched"
    # 签收 within 1 工作时: 10 minutes on Thursday, 50 on Wednesday 6 May after the holiday.
    assert local(r.json()["step_deadline_at"]) == dt.datetime(2026, 5, 6, 9, 20)

    _, dept = make_user("department", department=f"street-{street}")
    _, other = make_user("department", department="sanitation")
    _, insp = make_user("inspector", area_code=street)
    _, far_insp = make_user("inspector", area_code="320614999")

    clock.set(dt.datetime(2026, 5, 6, 9, 0, tzinfo=CST))
    r = act(client, other, cid, "start")
    assert r.status_code == 403 and "not assigned to your department" in r.json()["detail"]
    r = act(client, op, cid, "start")
    assert r.status_code == 403 and "may not 'start'" in r.json()["detail"]
    r = act(client, dept, cid, "start")
    assert r.status_code == 200, r.text
    assert r.json()["data"]["met"] is True
    assert local(r.json()["step_deadline_at"]) == dt.datetime(2026, 5, 6, 14, 30)  # 4 工作时 over lunch

    clock.set(dt.datetime(2026, 5, 6, 15, 0, tzinfo=CST))
    r = act(client, dept, cid, "feedback", note="已清运 cleared", photos=["after.jpg"])
    assert r.json()["state"] == "verifying" and r.json()["data"]["met"] is False  # 30 minutes late

    clock.set(dt.datetime(2026, 5, 6, 15, 10, tzinfo=CST))
    assert act(client, far_insp, cid, "verify_ok").status_code == 403
    assert act(client, insp, cid, "verify_fail", photos=["c.jpg"]).status_code == 422  # needs a reason
    r = act(client, insp, cid, "verify_ok")
    assert r.status_code == 422 and "needs at least one photo" in r.json()["detail"]
    r = act(client, insp, cid, "verify_fail", reason="仍有残留 rubbish still there", photos=["check.jpg"])
    assert r.json()["state"] == "processing" and r.json()["data"]["rework"] == 1
    assert local(r.json()["step_deadline_at"]) == dt.datetime(2026, 5, 7, 10, 10)

    clock.set(dt.datetime(2026, 5, 7, 9, 0, tzinfo=CST))
    assert act(client, dept, cid, "feedback", note="再次清运").json()["state"] == "verifying"
    assert act(client, insp, cid, "verify_ok", photos=["ok.jpg"]).json()["state"] == "feedback"
    r = act(client, op, cid, "close")
    assert r.json()["state"] == "closed" and r.json()["data"]["close_met"] is True
    assert act(client, op, cid, "rate", rating="great").status_code == 422
    r = act(client, op, cid, "rate", rating="satisfied")
    assert r.status_code == 200 and r.json()["data"]["rating"] == "satisfied"
    assert act(client, op, cid, "rate", rating="basic").status_code == 409

    d = client.get(f"/api/v1/cases/{cid}", headers=op).json()
    kinds = [(e["kind"], e["from_state"], e["to_state"]) for e in d["events"]]
    assert kinds == [("received", None, "collected"), ("accepted", "collected", "accepted"),
                     ("dispatched", "accepted", "dispatched"), ("started", "dispatched", "processing"),
                     ("feedback", "processing", "verifying"), ("verify_fail", "verifying", "processing"),
                     ("feedback", "processing", "verifying"), ("verify_ok", "verifying", "feedback"),
                     ("closed", "feedback", "closed"), ("rated", "closed", "closed")]
    roles = [e["actor_role"] for e in d["events"]]
    assert roles == ["operator", "operator", "operator", "department", "department", "inspector", "department",
                     "inspector", "operator", "operator"]
    assert d["events"][2]["department"] == f"street-{street}"
    assert d["rating"] == "satisfied" and d["rework_count"] == 1
    assert d["contact"] == {"name": "张三", "phone": "13800000000"}
    # Events are append-only in the database itself.
    with engine.connect() as conn, pytest.raises(Exception, match="append-only"):
        conn.execute(text("UPDATE case_event SET note = 'x' WHERE case_id = :c"), {"c": cid})


def test_personal_data_only_for_roles_that_need_it(client, tokens, clock, spot, departments):
    c = new_case(client, auth(tokens["operator"]), spot)
    d = client.get(f"/api/v1/cases/{c['id']}", headers=auth(tokens["planner"]))
    assert d.status_code == 200 and "contact" not in d.json()
    assert "13800000000" not in d.text and "张三" not in d.text
    listing = client.get("/api/v1/cases", headers=auth(tokens["operator"]), params={"q": c["case_no"]})
    assert listing.json()["total"] == 1 and "13800000000" not in listing.text
    assert "query_code" not in listing.text


def test_impossible_and_bad_transitions_write_nothing(client, tokens, clock, spot, departments, engine):
    op = auth(tokens["operator"])
    c = new_case(client, op, spot)
    cid = c["id"]

    def n_events():
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM case_event WHERE case_id = :c"), {"c": cid}).scalar_one()

    r = act(client, op, cid, "close")
    assert r.status_code == 409 and "needs one of" in r.json()["detail"]
    assert act(client, op, cid, "fly").status_code == 422
    assert act(client, op, cid, "reject").status_code == 422  # no reason
    assert act(client, op, cid, "accept").status_code == 200
    r = act(client, op, cid, "dispatch", department="water")
    assert r.status_code == 422 and "override_reason" in r.json()["detail"]
    r = act(client, op, cid, "dispatch", department="nosuch", override_reason="x")
    assert r.status_code == 422 and "no active department" in r.json()["detail"]
    before = n_events()
    r = act(client, op, cid, "dispatch", department="water", override_reason="供水管破裂引起 a burst main")
    assert r.status_code == 200 and r.json()["data"]["override_reason"].startswith("供水管")
    assert r.json()["data"]["proposed"].startswith("street-")
    assert n_events() == before + 1
    assert act(client, op, cid, "dispatch", department="water", override_reason="again").status_code == 409
    r = client.post("/api/v1/cases/999999999/actions/accept", json={}, headers=op)
    assert r.status_code == 404
    # 回退: the department returns it; the case waits for a new dispatch.
    r = act(client, auth(tokens["supervisor"]), cid, "supervise", note="请加快 speed up")
    assert r.status_code == 200 and r.json()["state"] == "dispatched"
    r = act(client, auth(tokens["supervisor"]), cid, "return", reason="非本单位职责 not ours")
    assert r.json()["state"] == "accepted" and r.json()["department_id"] is None
    assert act(client, op, cid, "defer", reason="待审批 awaiting approval").json()["state"] == "deferred"
    assert act(client, op, cid, "dispatch").status_code == 409
    assert act(client, op, cid, "resume").json()["state"] == "accepted"
    assert act(client, auth(tokens["planner"]), cid, "void", reason="x").status_code == 403


def test_bad_case_input(client, tokens, clock):
    op = auth(tokens["operator"])
    base = {"category_code": "E10101", "channel": "电话", "description": "垃圾堆放", "address": "某路 1 号"}
    r = client.post("/api/v1/cases", json={**base, "category_code": "ZZ99"}, headers=op)
    assert r.status_code == 422 and "unknown category" in r.json()["detail"]
    r = client.post("/api/v1/cases", json={**base, "channel": "pigeon"}, headers=op)
    assert r.status_code == 422 and "unknown channel" in r.json()["detail"]
    r = client.post("/api/v1/cases", json={**base, "location": {"x": 116.4, "y": 39.9}}, headers=op)
    assert r.status_code == 422 and "outside the city" in r.json()["detail"]
    r = client.post("/api/v1/cases", json={**base, "location": {"x": 31.89, "y": 121.17}}, headers=op)
    assert r.status_code == 422 and "lon/lat" in r.json()["detail"]
    r = client.post("/api/v1/cases", json={**base, "received_at": "2026-02-30T10:00:00"}, headers=op)
    assert r.status_code == 422
    r = client.post("/api/v1/cases", json={**base, "source_ref": "dup-ref-1"}, headers=op)
    assert r.status_code == 201
    r = client.post("/api/v1/cases", json={**base, "source_ref": "dup-ref-1"}, headers=op)
    assert r.status_code == 409 and "recorded already" in r.json()["detail"]
    # Without a location the case waits in the needs-location queue; an operator places it.
    cid = client.post("/api/v1/cases", json={**base, "address": "无名路口"}, headers=op).json()["id"]
    queue = client.get("/api/v1/cases/needs-location", headers=op, params={"limit": 1000}).json()
    assert cid in [c["id"] for c in queue["cases"]]
    r = client.post(f"/api/v1/cases/{cid}/location", json={"x": 121.2, "y": 31.9, "crs": "GCJ-02"}, headers=op)
    assert r.status_code == 200 and r.json()["cell_code"].startswith("320614")
    queue = client.get("/api/v1/cases/needs-location", headers=op, params={"limit": 1000}).json()
    assert cid not in [c["id"] for c in queue["cases"]]


def test_duplicates_are_merged_across_channels(conn, haimen, clock):
    from layers.cases import duplicates as ldup
    from layers.cases import workflow as wf
    from layers.core.errors import Conflict

    at = clock()
    clock.advance(days=5)  # "now" after all the receipts below
    p = working_point(haimen, 121.31, 31.93)
    near = working_point(haimen, 121.3103, 31.9302)  # ~35 m away
    a = wf.open_case(conn, haimen, source="hotline", channel="电话", category_code="E10201", received_at=at, location=p)
    b = wf.open_case(conn, haimen, source="inspector", channel="督查员", category_code="E10201",
                     received_at=at + dt.timedelta(hours=5), location=near)
    other_class = wf.open_case(conn, haimen, source="hotline", channel="微信", category_code="E10301",
                               received_at=at + dt.timedelta(hours=5), location=near)
    late = wf.open_case(conn, haimen, source="hotline", channel="电话", category_code="E10201",
                        received_at=at + dt.timedelta(hours=80), location=near)
    assert a.state == "collected" and a.merged_into is None
    assert b.state == "merged" and b.merged_into == a.id and b.step_deadline_at is None
    assert other_class.merged_into is None and late.merged_into is None  # other class; outside 72 h
    assert ldup.find_duplicate(conn, haimen.id, "E10201", near, at + dt.timedelta(hours=6)) == a.id
    assert ldup.find_duplicate(conn, haimen.id, "E10201", None, at) is None
    kinds = conn.execute(text("SELECT case_id, kind FROM case_event WHERE case_id IN (:a, :b) AND kind = 'merged'"),
                         {"a": a.id, "b": b.id}).all()
    assert sorted(k[0] for k in kinds) == sorted([a.id, b.id])
    # A merged case is never dispatched.
    from layers.core.users import User

    op = User(0, "op", "operator", None, None)
    with pytest.raises(Conflict, match="merged into"):
        wf.transition(conn, b.id, "accept", op)
    with pytest.raises(Conflict):
        ldup.link_duplicate(conn, b.id, a.id)


def test_components_go_to_the_owner_first(conn, haimen, departments, clock):
    from layers.cases import workflow as wf

    c = wf.open_case(conn, haimen, source="hotline", channel="电话", category_code="010101", received_at=clock(),
                     location=working_point(haimen, 121.25, 31.95))
    assert c.state == "collected"
    p = wf.propose_department(conn, c.id)
    assert p["kind"] == "component" and p["proposed"]["code"] == "water"
    assert p["candidates"][1]["code"].startswith("street-")
    # A missing manhole cover is an emergency by class: the step limits are clock time.
    urg = conn.execute(text("SELECT urgency, step_deadline_at FROM case_file WHERE id = :i"), {"i": c.id}).one()
    assert urg[0] == "emergency" and urg[1] == clock() + dt.timedelta(minutes=15)


def test_alerts_show_overdue_cases(client, tokens, clock, spot, departments):
    op = auth(tokens["operator"])
    clock.set(dt.datetime(2026, 11, 30, 9, 0, tzinfo=CST))  # Monday
    c = new_case(client, op, spot)
    clock.set(dt.datetime(2026, 11, 30, 9, 50, tzinfo=CST))  # 50 of 60 minutes used: yellow
    a = client.get("/api/v1/cases/alerts", headers=op, params={"level": "yellow"}).json()
    hit = [x for x in a["cases"] if x["id"] == c["id"]]
    assert hit and hit[0]["clock"]["level"] == "yellow" and hit[0]["clock"]["left_seconds"] == 600
    clock.set(dt.datetime(2026, 11, 30, 10, 30, tzinfo=CST))
    a = client.get("/api/v1/cases/alerts", headers=op, params={"level": "red"}).json()
    assert c["id"] in [x["id"] for x in a["cases"]]
    r = client.get("/api/v1/cases", headers=op, params={"overdue": True, "q": c["case_no"]}).json()
    assert r["total"] == 1


def test_extend_reopen_and_escalation(conn, haimen, departments, clock, tokens):
    from layers.cases import workflow as wf
    from layers.core.users import User

    uid = conn.execute(text("SELECT id FROM app_user WHERE name = 'test_operator'")).scalar_one()
    op = User(uid, "test_operator", "operator", None, None)
    clock.set(dt.datetime(2026, 9, 30, 10, 0, tzinfo=CST))  # Wednesday before the National Day week
    c = wf.open_case(conn, haimen, source="hotline", channel="电话", category_code="E50301", received_at=clock(),
                     location=working_point(haimen, 121.28, 31.96), request_type="举报")
    wf.transition(conn, c.id, "accept", op)
    wf.transition(conn, c.id, "dispatch", op)
    r = wf.transition(conn, c.id, "extend", op, amount=2, unit="wd", reason="需协调 needs coordination")
    # 签收 deadline 11:00 on 30 Sep + 2 工作日 → 1–7 Oct are holidays, 8 and 9 Oct are workdays … and
    # 10 Oct (Saturday) is a make-up workday: the end of 9 Oct is the 2nd working day.
    assert r["state"] == "dispatched"
    assert dt.datetime.fromisoformat(r["data"]["new_deadline"]).astimezone(CST).replace(tzinfo=None) == \
        dt.datetime(2026, 10, 9, 17, 30)
    for _ in range(3):
        wf.transition(conn, c.id, "supervise", op.__class__(op.id, op.name, "supervisor", None, None), note="督办")
        conn.execute(text("UPDATE case_file SET state = 'feedback' WHERE id = :i"), {"i": c.id})  # fast-forward
        wf.transition(conn, c.id, "close", op)
        r = wf.transition(conn, c.id, "reopen", op, reason="市民不满意 citizen not satisfied")
        assert r["state"] == "accepted"
    assert r["data"]["reopen_count"] == 3 and r["data"]["escalated"] is True
    kinds = conn.execute(text("SELECT kind FROM case_event WHERE case_id = :c ORDER BY id"), {"c": c.id}).scalars().all()
    assert kinds.count("reopened") == 3 and kinds.count("supervised") == 3 and kinds[0] == "received"


def test_future_received_time_is_refused(client, tokens, clock):
    r = client.post("/api/v1/cases", json={"category_code": "E10101", "channel": "电话", "description": "垃圾",
                                           "address": "某路 1 号", "received_at": "2030-01-01T10:00:00+08:00"},
                    headers=auth(tokens["operator"]))
    assert r.status_code == 422 and "in the future" in r.json()["detail"]


def test_asset_owner_comes_first_for_components(conn, haimen, departments, clock):
    from layers.cases import workflow as wf

    p = working_point(haimen, 121.26, 31.94)
    asset_id = conn.execute(text("""
        INSERT INTO asset (city_id, code, class_code, name, dept_code1, geom, geom_kind)
        VALUES (:c, '3206140101999901', '0101', '测试井盖', 'drainage', ST_SetSRID(ST_MakePoint(:x, :y), :s), 'point')
        RETURNING id"""), {"c": haimen.id, "x": p.x, "y": p.y, "s": haimen.srid}).scalar_one()
    c = wf.open_case(conn, haimen, source="inspector", channel="督查员", category_code="010102", received_at=clock(),
                     location=p, asset_id=asset_id)
    prop = wf.propose_department(conn, c.id)
    assert prop["proposed"]["code"] == "drainage" and "asset" in prop["proposed"]["why"]
    assert prop["candidates"][1]["code"].startswith("street-")
