"""Reply quality: a full, relevant, prompt reply scores high; an empty, late one is flagged with its
reasons; department feedback in the database scored through the API without personal data; the
calibration file's anchors come from the real replies."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from sqlalchemy import text

from layers.text import replies
from tests.conftest import auth
from tests.text.conftest import zh_file

TZ = dt.timezone(dt.timedelta(hours=8))
COMPLAINT = "青檀苑小区南门的污水井盖破损，车辆经过很危险，请尽快维修。"
GOOD = ("您好！关于您反映的青檀苑小区南门污水井盖破损问题，经调查核实，排水管理处于2031年3月4日派人到现场，"
        "已更换破损的污水井盖，目前已恢复正常通行。感谢您的监督。")
POOR = "您好，留言已收悉。"


def test_good_and_poor_replies():
    asked = dt.datetime(2031, 3, 3, 9, 0, tzinfo=TZ)  # a Monday
    s = replies.score([COMPLAINT, COMPLAINT], [GOOD, POOR], [asked, asked],
                      [asked + dt.timedelta(days=1), asked + dt.timedelta(days=42)])
    good, poor = s.iloc[0], s.iloc[1]
    assert good["action"] and good["result"] and good["time"] and good["completeness"] == 1.0
    assert good["timeliness"] == 1.0 and good["relevance"] > 0.5 and not good["weak"] and good["score"] > 0.8
    assert poor["completeness"] == 0 and poor["timeliness"] == 0 and poor["weak"]
    assert poor["working_days"] == 30 and poor["days_basis"] in ("calendar", "weekdays")
    assert "not about the complaint" in poor["reasons"] and "late (30 working days)" in poor["reasons"]


def test_calibration_anchors_come_from_the_real_replies():
    df = pd.read_csv(zh_file("messages_with_replies.csv"), dtype=str, keep_default_na=False)
    from layers.text.classify import texts_of

    raw = replies.raw_relevance(texts_of(df, ["留言主题", "留言详情"]), texts_of(df, ["答复意见"]))
    cal = replies.calibration()
    assert cal["n"] == len(df) == 2816 and cal["source"] == "messages_with_replies.csv"
    assert abs(cal["relevance_raw"]["q10"] - float(pd.Series(raw).quantile(0.1))) < 1e-3
    assert abs(cal["relevance_raw"]["q90"] - float(pd.Series(raw).quantile(0.9))) < 1e-3


@pytest.fixture(scope="module")
def feedback(engine, haimen):
    """Two department replies in June 2031: an empty late one (its caller's phone in the texts) and a full one."""
    from layers.demo.synthetic import CaseBatch, bulk_insert_cases

    at = dt.datetime(2031, 6, 2, 9, 0, tzinfo=TZ)
    b = CaseBatch(case_no=["T2031Q0001", "T2031Q0002"], received_at=[at, at], category_code=["010202", "010202"],
                  channel=["电话", "电话"], source=["hotline", "hotline"],
                  description=[COMPLAINT + "我的电话13912345678", COMPLAINT], phone=["13912345678", None],
                  state=["verifying", "verifying"])
    with engine.begin() as conn:
        ids = bulk_insert_cases(conn, haimen, b)
        for cid, note, later in ((ids[0], POOR + "联系13912345678", 45), (ids[1], GOOD, 1)):
            conn.execute(text("""INSERT INTO case_event (case_id, at, kind, actor_role, from_state, to_state, note)
                                 VALUES (:c, :at, 'feedback', 'department', 'processing', 'verifying', :n)"""),
                         {"c": int(cid), "at": at + dt.timedelta(days=later), "n": note})
    return ids


def test_weak_department_feedback_flagged_to_the_supervisor(client, tokens, feedback):
    sup = auth(tokens["supervisor"])
    r = client.get("/api/v1/text/replies", headers=sup, params={"since": "2031-06-01", "until": "2031-08-31"})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["scored"] == 2 and d["weak"] == 1
    (w,) = d["replies"]
    assert w["case_no"] == "T2031Q0001" and w["weak"] and w["score"] < d["threshold"]
    assert "13912345678" not in r.text and "[电话]" in w["reply"]
    every = client.get("/api/v1/text/replies", headers=sup,
                       params={"since": "2031-06-01", "until": "2031-08-31", "weak_only": "false"}).json()
    assert {x["case_no"] for x in every["replies"]} == {"T2031Q0001", "T2031Q0002"}
    assert client.get("/api/v1/text/replies", headers=auth(tokens["department"])).status_code == 403
    assert client.get("/api/v1/text/replies", headers=sup, params={"since": "June"}).status_code == 422


def test_supervisor_page_lists_weak_replies(browser, live_server, tokens, feedback):
    ctx = browser.new_context(viewport={"width": 1440, "height": 900}, locale="zh-CN")
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(live_server + "/supervisor#token=" + tokens["supervisor"])
    li = page.locator('#weak-replies li[data-case="T2031Q0001"]')
    li.wait_for(timeout=20000)
    t = li.inner_text()
    assert "答非所问" in t or "未说明" in t or "迟缓" in t
    assert page.locator('#weak-replies li[data-case="T2031Q0002"]').count() == 0  # the good one is not flagged
    assert "13912345678" not in page.content()
    assert not errors, errors
    ctx.close()
