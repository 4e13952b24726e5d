"""Every 4xx answer carries ``detail`` (English, as always), a stable ``code`` from the catalog
(layers/core/data/error_codes.json, docs/ERRORS.md), ``message`` in Chinese and ``message_en``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from layers.core.errors import error_catalog
from tests.conftest import auth, count

CJK = re.compile(r"[\u4e00-\u9fff]")
KNOWN = set(error_catalog()["codes"]) | {v["code"] for v in error_catalog()["status"].values()}


def coded(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, f"{r.status_code} {r.text[:300]}"
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["code"] in KNOWN, body
    if code:
        assert body["code"] == code, body
    assert CJK.search(body["message"]), body  # said in Chinese
    assert body["message_en"] and not CJK.search(body["message_en"].split("(")[0][:1] or ""), body
    return body


@pytest.fixture(scope="module")
def spot(haimen, engine):
    """A lon/lat inside the city (the centroid of a grid cell)."""
    from sqlalchemy import text

    with engine.connect() as c:
        lon, lat = c.execute(text("""
            SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_Transform(ST_Centroid(geom), 4326) p FROM grid_cell
            WHERE grid_id = (SELECT id FROM grid WHERE city_id = :c AND active) ORDER BY id LIMIT 1 OFFSET 500) t"""),
            {"c": haimen.id}).one()
    return lon, lat


def test_validation_errors_in_chinese(client, tokens):
    op = auth(tokens["operator"])
    body = coded(client.post("/api/v1/cases", json={}, headers=op), 422, "validation_error")
    assert "缺少字段" in body["message"] and "案件类别" in body["message"]
    assert body["errors"][0]["type"] == "missing" and "缺少字段" in body["errors"][0]["message"]
    body = coded(client.post("/api/v1/cases", json={"category_code": "E10101", "urgency": "very"}, headers=op), 422)
    assert "紧急程度" in body["message"] and "取值不对" in body["message"]
    body = coded(client.get("/api/v1/cases", params={"limit": "many"}, headers=op), 422, "validation_error")
    assert "格式不对" in body["message"]
    body = coded(client.post("/api/v1/cases", content=b"{not json", headers={**op, "content-type": "application/json"}),
                 422, "validation_error")
    assert "JSON" in body["message"]


def test_the_call_form_is_refused_empty(client, tokens, engine, spot):
    op = auth(tokens["operator"])
    before = count(engine, "SELECT count(*) FROM case_file")
    body = coded(client.post("/api/v1/cases", json={"category_code": "E10101", "urgency": "normal"}, headers=op),
                 422, "call_description_missing")
    assert body["message"] == "请填写问题描述" and "description" in body["detail"]
    body = coded(client.post("/api/v1/cases", json={"category_code": "E10101", "description": "  "}, headers=op),
                 422, "call_description_missing")
    body = coded(client.post("/api/v1/cases", json={"category_code": "E10101", "description": "垃圾堆放"}, headers=op),
                 422, "call_place_missing")
    assert "地址" in body["message"]
    assert count(engine, "SELECT count(*) FROM case_file") == before  # nothing written
    # with an address, or a location, it is recorded; the urgency is the one chosen
    r = client.post("/api/v1/cases", json={"category_code": "E10101", "description": "垃圾堆放", "address": "某路 1 号",
                                           "urgency": "urgent"}, headers=op)
    assert r.status_code == 201, r.text
    r = client.post("/api/v1/cases", json={"category_code": "E10101", "description": "垃圾堆放",
                                           "location": {"x": spot[0], "y": spot[1]}}, headers=op)
    assert r.status_code == 201, r.text
    case = client.get(f"/api/v1/cases/{r.json()['id']}", headers=op).json()
    assert case["urgency"] == "normal"


def test_layer_errors_have_codes(client, tokens, spot):
    op = auth(tokens["operator"])
    base = {"category_code": "E20101", "description": "小广告", "address": "某路 1 号"}
    body = coded(client.post("/api/v1/cases", json={**base, "location": {"x": 116.4, "y": 39.9}}, headers=op),
                 422, "location_outside_city")
    assert "outside the city" in body["detail"] and body["message"] == "所选位置不在本市范围内，请重新选择"
    body = coded(client.post("/api/v1/cases", json={**base, "category_code": "ZZ99"}, headers=op), 422, "unknown_class")
    assert "ZZ99" in body["message"] and "unknown category" in body["detail"]
    r = client.post("/api/v1/cases", json={**base, "location": {"x": spot[0], "y": spot[1]}}, headers=op)
    cid = r.json()["id"]
    assert client.post("/api/v1/departments/setup", headers=auth(tokens["admin"])).status_code == 200
    client.post(f"/api/v1/cases/{cid}/actions/accept", json={}, headers=op)
    body = coded(client.post(f"/api/v1/cases/{cid}/actions/dispatch", json={"department": "water"}, headers=op),
                 422, "override_reason_missing")
    assert "改派理由" in body["message"] and "override_reason" in body["detail"]
    body = coded(client.post(f"/api/v1/cases/{cid}/actions/rate", json={"rating": "satisfied"}, headers=op),
                 409, "bad_transition")
    assert "不能执行" in body["message"] and "评价" in body["message"] and "立案" in body["message"]
    body = coded(client.post(f"/api/v1/cases/{cid}/actions/reject", json={}, headers=op), 409)
    coded(client.post(f"/api/v1/cases/{cid}/actions/void", json={}, headers=op), 422, "reason_missing")
    coded(client.post(f"/api/v1/cases/{cid}/actions/start", json={}, headers=auth(tokens["planner"])), 403)
    # a department's user and another department's case: the layer's code and words through the router
    body = coded(client.get(f"/api/v1/cases/{cid}", headers=auth(tokens["department"])), 403, "case_not_visible")
    assert body["message"] == f"您无权查看案件 {cid}" and body["detail"].startswith("无权限 ")


def test_http_errors_have_codes(client, tokens):
    body = coded(client.get("/api/v1/cases"), 401, "unauthorized")
    assert body["message"].startswith("未登录")
    coded(client.get("/api/v1/cases", headers={"Authorization": "Bearer nope"}), 401, "unauthorized")
    body = coded(client.post("/api/v1/departments/setup", headers=auth(tokens["inspector"])), 403, "forbidden")
    assert body["message"].startswith("无权限")
    coded(client.get("/api/v1/cases/999999999", headers=auth(tokens["operator"])), 404)
    coded(client.get("/api/v1/no-such-route"), 404, "not_found")
    body = coded(client.post("/api/v1/public/status", json={"case_no": "NO-SUCH", "query_code": "000000"}), 404)
    assert body["code"] in ("case_code_wrong", "not_found")


def test_body_cap_answers_with_a_code(client, tokens):
    big = b'{"category_code": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    r = client.post("/api/v1/cases", content=big, headers={**auth(tokens["operator"]), "content-type": "application/json"})
    coded(r, 413, "too_large")


def test_every_code_is_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "ERRORS.md").read_text(encoding="utf-8")
    for code in KNOWN:
        assert f"`{code}`" in doc, code
