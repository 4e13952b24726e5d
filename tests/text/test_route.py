"""On intake: the top 3 classes with probabilities and the proposed department for a text; automatic
dispatch only at or above the configured confidence and when the model agrees with the case's class."""

from __future__ import annotations

from sqlalchemy import text

from tests.conftest import auth


def test_suggest_top3_with_departments(client, tokens, city_model):
    r = client.post("/api/v1/text/suggest", headers=auth(tokens["operator"]),
                    json={"title": "路灯", "description": "人民路上的路灯坏了好几天，晚上很黑"})
    assert r.status_code == 200, r.text
    d = r.json()
    assert [c["code"] for c in d["classes"]][0] == "0110" and len(d["classes"]) == 3
    ps = [c["probability"] for c in d["classes"]]
    assert ps == sorted(ps, reverse=True) and 0 < sum(ps) <= 1.0001 and ps[0] > 0.5
    assert d["classes"][0]["name"] == "路灯" and d["proposed_department"]["code"] == "lighting"
    assert d["model"]["name"] == "haimen" and d["threshold"] == 0.9
    assert d["confident"] == (ps[0] >= 0.9)
    # roles and bad input
    assert client.post("/api/v1/text/suggest", headers=auth(tokens["planner"]),
                       json={"description": "路灯"}).status_code == 403
    bad = client.post("/api/v1/text/suggest", headers=auth(tokens["operator"]), json={"description": ""})
    assert bad.status_code == 422


def test_no_model_for_a_city_is_a_clear_404(client, tokens, monkeypatch, city_model):
    monkeypatch.setenv("CITYGRID_TEXT_MODEL", "no-such-model")
    r = client.post("/api/v1/text/suggest", headers=auth(tokens["operator"]), json={"description": "路灯不亮"})
    assert r.status_code == 404 and "no text model 'no-such-model'" in r.text


def test_auto_dispatch_only_above_the_threshold(client, tokens, engine, city_model, monkeypatch):
    op = auth(tokens["operator"])
    r = client.post("/api/v1/cases", headers=op, json={
        "category_code": "011001", "description": "解放路的路灯坏了晚上很黑，请处理",
        "location": {"x": 121.171, "y": 31.891}})
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    with engine.connect() as conn:
        state = conn.execute(text("SELECT state FROM case_file WHERE id = :i"), {"i": cid}).scalar_one()
    if state == "collected":
        assert client.post(f"/api/v1/cases/{cid}/actions/accept", headers=op, json={}).status_code == 200
    p = city_model.predict(["解放路的路灯坏了晚上很黑，请处理"], k=1)[0][0]
    assert p[0] == "0110"
    monkeypatch.setenv("CITYGRID_TEXT_AUTO_DISPATCH_CONFIDENCE", "1.0")
    low = client.post(f"/api/v1/text/cases/{cid}/auto-dispatch", headers=op)
    assert low.status_code == 200 and low.json()["dispatched"] is False and "低于阈值" in low.json()["reason"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT state FROM case_file WHERE id = :i"), {"i": cid}).scalar_one() == "accepted"
    # where the dispatch must go: the workflow's proposal (部件先属主; a department with users first)
    from layers.cases.workflow import propose_department

    with engine.connect() as conn:
        proposal = propose_department(conn, cid)
    assert proposal["proposed"]["code"] in {c["code"] for c in proposal["candidates"]} and \
        "lighting" in {c["code"] for c in proposal["candidates"]}
    monkeypatch.setenv("CITYGRID_TEXT_AUTO_DISPATCH_CONFIDENCE", str(max(0.5, p[1] - 0.01)))
    ok = client.post(f"/api/v1/text/cases/{cid}/auto-dispatch", headers=op)
    assert ok.status_code == 200 and ok.json()["dispatched"] is True, ok.text
    with engine.connect() as conn:
        row = conn.execute(text("""SELECT f.state, d.code FROM case_file f JOIN department d ON d.id = f.department_id
                                   WHERE f.id = :i"""), {"i": cid}).one()
    assert row == ("dispatched", proposal["proposed"]["code"])
    again = client.post(f"/api/v1/text/cases/{cid}/auto-dispatch", headers=op)
    assert again.status_code == 409
