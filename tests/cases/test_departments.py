"""One department list, and dispatch proposals only to departments someone works in: a candidate
without a department user is flagged unstaffed (无人员), a staffed one is proposed before it, and
the API's department list says which are staffed."""

from __future__ import annotations

from sqlalchemy import text

from tests.conftest import auth


def test_the_department_list_has_no_duplicates(client, tokens, departments):
    deps = client.get("/api/v1/departments", headers=auth(tokens["operator"])).json()["departments"]
    names = [d["name"].split(" ")[0] for d in deps]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert len({d["code"] for d in deps}) == len(deps)
    assert all(isinstance(d["staffed"], bool) for d in deps)
    assert [d["name"] for d in deps if d["code"] == "sanitation"] == ["环卫处 Sanitation office"]


def test_proposals_prefer_staffed_departments(client, tokens, departments, make_user, spot, engine):
    op = auth(tokens["operator"])
    lon, lat = spot()
    r = client.post("/api/v1/cases", headers=op, json={
        "category_code": "E50401", "channel": "电话", "description": "桥下有人露宿", "address": "某桥下",
        "location": {"x": lon, "y": lat}})
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    street = "street-" + r.json()["cell_code"][:9]
    with engine.begin() as conn:  # nobody works in this street office nor in civil affairs
        conn.execute(text("UPDATE app_user SET active = false WHERE role = 'department' AND department IN (:a, :b)"),
                     {"a": street, "b": "civil_affairs"})
    p = client.get(f"/api/v1/cases/{cid}/proposal", headers=op).json()
    assert [c["code"] for c in p["candidates"]] == [street, "civil_affairs"]  # events: territory first
    assert p["proposed"]["code"] == street and p["unstaffed"] is True
    assert [c["staffed"] for c in p["candidates"]] == [False, False]
    # a user of the owner department: it is proposed, the street office stays listed as unstaffed
    user, _ = make_user("department", department="civil_affairs")
    try:
        p = client.get(f"/api/v1/cases/{cid}/proposal", headers=op).json()
        assert p["proposed"]["code"] == "civil_affairs" and p["unstaffed"] is False
        assert [(c["code"], c["staffed"]) for c in p["candidates"]] == [(street, False), ("civil_affairs", True)]
        deps = {d["code"]: d for d in client.get("/api/v1/departments", headers=op).json()["departments"]}
        assert deps["civil_affairs"]["staffed"] is True and deps[street]["staffed"] is False
        # the dispatch without naming a department goes to the proposal, no override needed
        assert client.post(f"/api/v1/cases/{cid}/actions/accept", headers=op, json={}).status_code == 200
        r = client.post(f"/api/v1/cases/{cid}/actions/dispatch", headers=op, json={})
        assert r.status_code == 200, r.text
        with engine.connect() as conn:
            assert conn.execute(text("SELECT d.code FROM case_file c JOIN department d ON d.id = c.department_id "
                                     "WHERE c.id = :i"), {"i": cid}).scalar() == "civil_affairs"
    finally:
        with engine.begin() as conn:
            conn.execute(text("UPDATE app_user SET active = false WHERE id = :i"), {"i": user.id})
