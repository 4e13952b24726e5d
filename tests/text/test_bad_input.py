"""Bad input to the text endpoints: a 4xx saying what is wrong, never a 500, nothing written."""

from __future__ import annotations

from sqlalchemy import text

from tests.conftest import auth


def test_text_endpoints_refuse_bad_input(client, tokens, engine, city_model):
    op, sup = auth(tokens["operator"]), auth(tokens["supervisor"])
    with engine.connect() as conn:
        before = conn.execute(text("SELECT (SELECT count(*) FROM case_event), (SELECT count(*) FROM text_recurring_group)")).one()
    cases = [
        ("post", "/api/v1/text/suggest", op, {"json": {"description": "路灯\x00不亮"}}, 422, None),
        ("post", "/api/v1/text/suggest", op, {"json": {"description": "x" * 5001}}, 422, None),
        ("post", "/api/v1/text/suggest", op, {"json": {}}, 422, None),
        ("post", "/api/v1/text/places", op, {"json": {"description": ""}}, 422, None),
        ("post", "/api/v1/text/cases/999999999/place", op, {"json": {"name": "某地", "kind": "poi"}}, 404, "no case"),
        ("post", "/api/v1/text/cases/999999999/auto-dispatch", op, {}, 404, "no case"),
        ("post", "/api/v1/text/cases/0/place", op, {"json": {"name": "某地", "kind": "poi"}}, 422, None),
        ("get", "/api/v1/text/needs-location", op, {"params": {"limit": 0}}, 422, None),
        ("post", "/api/v1/text/recurring/run", sup, {"params": {"until": "2031-13-01"}}, 422, "YYYY-MM-DD"),
        ("post", "/api/v1/text/recurring/run", sup, {"params": {"days": 0}}, 422, None),
        ("get", "/api/v1/text/spread", sup, {"params": {"until": "yesterday"}}, 422, "YYYY-MM-DD"),
        ("get", "/api/v1/text/recurring", sup, {"params": {"limit": 500}}, 422, None),
        ("get", "/api/v1/text/replies", sup, {"params": {"limit": 0}}, 422, None),
        ("post", "/api/v1/text/suggest", {}, {"json": {"description": "路灯不亮"}}, 401, None),
    ]
    for method, path, headers, kw, status, words in cases:
        r = getattr(client, method)(path, headers=headers, **kw)
        assert r.status_code == status, (path, kw, r.status_code, r.text[:300])
        if words:
            assert words in r.text, (path, r.text[:300])
    with engine.connect() as conn:
        after = conn.execute(text("SELECT (SELECT count(*) FROM case_event), (SELECT count(*) FROM text_recurring_group)")).one()
    assert after == before
