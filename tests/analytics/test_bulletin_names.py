"""Bulletin file names a careless or hostile caller may send: a 422 saying what to ask for, never a 500
(the name's month goes into the Content-Disposition header, which only takes Latin-1)."""

import pytest

from tests.conftest import auth


@pytest.mark.parametrize("name", ["２０２６-１０.pdf", "٢٠٢٦-١٠.xlsx", "2026-10.PDF", "2026-10.pdf."])
def test_odd_bulletin_names_are_refused_with_422(client, tokens, name):
    r = client.get(f"/api/v1/bulletins/{name}", headers=auth(tokens["supervisor"]))
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "invalid_input" and "YYYY-MM.pdf" in body["detail"] and body["message"].startswith("输入有误")


@pytest.mark.parametrize("month", ["２０２６-１０", "2026-1", " 2026-10", "2026-10 "])
def test_odd_kpi_months_are_refused_with_422(client, tokens, month):
    r = client.get("/api/v1/supervisor/kpis", params={"month": month}, headers=auth(tokens["supervisor"]))
    assert r.status_code == 422, r.text
    body = r.json()  # a blank at either end is refused before the route (validation_error), the rest by the route
    assert body["code"] in ("invalid_input", "validation_error") and body["message"].startswith("输入有误")
    if body["code"] == "invalid_input":
        assert "YYYY-MM" in body["detail"]
