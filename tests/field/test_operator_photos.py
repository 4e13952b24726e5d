"""The back office's 核查 on /operator (a supervisor): the photos of the site uploaded on the page (no
photo-reference box), the check recorded with them and shown in the case's photo strip."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import shapely
from sqlalchemy import text

from tests.field.conftest import PHOTOS

pytestmark = pytest.mark.browser


def test_supervisor_checks_with_photos_on_the_operator_page(browser, live_server, engine, haimen, departments):
    from gis import crs as gcrs
    from layers.cases import calendar as lcal
    from layers.cases import workflow as lwf
    from layers.core.users import add_user

    lon, lat = 121.131, 31.935
    with engine.begin() as conn:
        x, y = gcrs.transform_xy(np.array([lon]), np.array([lat]), "EPSG:4326", haimen.working_crs)
        op, _ = add_user(conn, f"sup_op_{uuid.uuid4().hex[:8]}", "operator")
        sup, sup_tok = add_user(conn, f"sup_{uuid.uuid4().hex[:8]}", "supervisor")
        case = lwf.open_case(conn, haimen, source="hotline", channel="电话", category_code="E10101",
                             received_at=lcal.now(), location=shapely.Point(float(x[0]), float(y[0])),
                             description="垃圾 rubbish", actor=op)
        dept, _ = add_user(conn, f"sup_dept_{uuid.uuid4().hex[:8]}", "department", department=f"street-{case.cell_code[:9]}")
        lwf.transition(conn, case.id, "accept", op)
        lwf.transition(conn, case.id, "dispatch", op)
        lwf.transition(conn, case.id, "start", dept)
        assert lwf.transition(conn, case.id, "feedback", dept, note="已清运")["state"] == "verifying"
    ctx = browser.new_context(viewport={"width": 1366, "height": 900}, locale="zh-CN")
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{live_server}/operator#token={sup_tok}")
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    page.click("#tabs [data-tab='list']")
    page.wait_for_selector(f"#case-list li[data-id='{case.id}']", timeout=20_000)
    page.click(f"#case-list li[data-id='{case.id}']")
    page.wait_for_selector(f"#detail-body[data-case-id='{case.id}'][data-state='verifying']")
    assert page.locator("#d-photos").count() == 0  # no photo-reference box any more
    page.wait_for_selector("#d-photos-box .cp-empty")
    page.set_input_files("#cp-verify", str(PHOTOS / "DSCN0029.jpg"))
    page.fill("#d-note", "抽查合格 spot check passed")
    page.click("#d-buttons button[data-action='verify_ok']")
    page.wait_for_selector("#detail-body[data-state='feedback'] #d-result .ok", timeout=20_000)
    page.wait_for_function("document.querySelector('#d-photos-box img.cp-thumb[data-kind=verification]') && "
                           "document.querySelector('#d-photos-box img.cp-thumb[data-kind=verification]').naturalWidth > 0",
                           timeout=20_000)
    with engine.connect() as conn:
        n, note = conn.execute(text("""SELECT count(p.*), max(v.note) FROM case_verification v
                                       JOIN case_verification_photo p ON p.verification_id = v.id
                                       WHERE v.case_id = :c AND v.user_id = :u"""), {"c": case.id, "u": sup.id}).one()
    assert (n, note) == (1, "抽查合格 spot check passed")
    assert not errors, errors
    ctx.close()
