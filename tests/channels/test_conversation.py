"""The WeChat official account end to end: a whole conversation (subscribe → 我要反映 → location →
photo → confirm → case → dispatched → closed → template messages in order, exactly once, across a
worker restart and a crash → rated in the chat), refusals (signature, replay, decryption) that write
nothing, the H5 page's sign-in, and SMS for a hotline caller from the same outbox."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import text

from layers.core.users import User
from tests.channels.conftest import AES_KEY, APP_ID, SECRET, TOKEN, Citizen, Transcript, signed_query
from tests.conftest import SHARED, auth, count

PHOTO = SHARED / "photos" / "DSCN0010.jpg"
# A place in Haimen town as WeChat sends it (GCJ-02).
LAT, LON, LABEL = 31.9101, 121.2103, "江苏省南通市海门区人民中路（测试位置）"


def _user(engine, role):
    from layers.core.users import add_user

    with engine.begin() as conn:
        user, tok = add_user(conn, f"wx_{role}_{uuid.uuid4().hex[:8]}", role)
    return user, tok


def _act(engine, case_id, action, actor, **kw):
    from layers.cases import workflow as wf

    with engine.begin() as conn:
        return wf.transition(conn, case_id, action, actor, **kw)


def _send_notifications(engine, transcript, fake, *, after_send=None, label="worker"):
    """One worker (a new instance: a restart) sends what is due; the new template messages are put
    in the transcript as the citizen sees them."""
    from layers.channels import notify

    try:
        return notify.run_once(engine, notify.senders(engine), after_send=after_send)
    finally:
        for m in fake.delivered[transcript.shown:]:
            d = m["data"]
            transcript.template(f"{d['first']['value']} · 编号 {d['keyword1']['value']} · {d['keyword2']['value']} · "
                                f"{d['remark']['value']}")
        transcript.shown = len(fake.delivered)


def test_whole_conversation(client, engine, haimen, tokens, fakewx, tmp_path):
    from layers.cases import citizen as lcit
    from layers.cases.workflow import ensure_departments
    from layers.channels import wechat as lwx

    with engine.begin() as conn:
        ensure_departments(conn, haimen)
        notice = lcit.add_notice(conn, haimen, "停水通知（测试）", "12月6日 9:00-15:00 人民中路一带停水。", None)
    t = Transcript()
    t.shown = len(fakewx.delivered)
    me = Citizen(client, transcript=t)
    fakewx.media["MEDIA_PHOTO_1"] = (PHOTO.read_bytes(), "image/jpeg")

    r = me.event("subscribe", shown="[关注公众号]")
    assert "我要反映" in r["Content"]
    r = me.event("CLICK", "REPORT", shown="[菜单] 我要反映")
    assert "位置" in r["Content"]
    r = me.location(LAT, LON, LABEL)
    assert LABEL in r["Content"] and "照片" in r["Content"]
    r = me.image("MEDIA_PHOTO_1")
    assert "第 1 张" in r["Content"] and "1. 占道经营" in r["Content"] and "2. 生活垃圾暴露" in r["Content"]
    r = me.text("路边垃圾堆了好几天，没人清理")
    assert "描述" in r["Content"]
    r = me.text("2")
    assert "已受理" in r["Content"]
    case_no = r["Content"].split("案卷编号：")[1].split("\n")[0]

    # The case as recorded: a citizen's WeChat case, in its cell, the photo in the content-addressed store.
    with engine.connect() as conn:
        case = conn.execute(text("""
            SELECT c.id, c.source, c.channel, c.category_code, c.cell_code, c.address, c.description, c.state,
                   k.openid, ST_X(ST_Transform(c.location, 4326)) AS lon, ST_Y(ST_Transform(c.location, 4326)) AS lat
            FROM case_file c JOIN case_contact k ON k.case_id = c.id WHERE c.case_no = :n"""),
            {"n": case_no}).mappings().one()
        photos = conn.execute(text("SELECT id, sha256, public_sha256, thumb_sha256 FROM wechat_photo WHERE case_id = :c"),
                              {"c": case["id"]}).all()
        note = conn.execute(text("""SELECT photos, data->>'photo_from' FROM case_event WHERE case_id = :c AND kind = 'note'"""),
                            {"c": case["id"]}).one()
        from layers.core.grid import snapper
        from tests.cases.conftest import working_point

        loaded = snapper(conn, haimen)
    assert (case["source"], case["channel"], case["category_code"], case["state"]) == ("citizen", "微信", "E10101", "collected")
    assert case["openid"] == me.openid and case["address"] == LABEL and "好几天" in case["description"]
    # GCJ-02 in, WGS-84 stored (a few hundred metres apart here), and the cell is the one of that point.
    assert 121.203 < case["lon"] < 121.209 and 31.909 < case["lat"] < 31.914
    p = working_point(haimen, case["lon"], case["lat"])
    j = int(loaded.locate([p.x], [p.y])[0])
    assert case["cell_code"] == str(loaded.codes[j]) and len(case["cell_code"]) == 15
    assert len(photos) == 1
    import hashlib

    store = lwx.photo_store()
    assert photos[0][1] == hashlib.sha256(PHOTO.read_bytes()).hexdigest()
    assert store.read("original", photos[0][1]) == PHOTO.read_bytes()
    public = store.read("public", photos[0][2])
    assert public[:2] == b"\xff\xd8" and b"Exif" not in public[:64]
    assert note == ([lwx.photo_url(case["id"], photos[0][0])], "wechat")
    r = client.get(note[0][0], headers=auth(tokens["operator"]))
    assert r.status_code == 200 and r.content == public
    assert client.get(note[0][0]).status_code == 401

    # The case moves: accepted, dispatched; the worker sends what is due.
    sup_user, _ = _user(engine, "supervisor")
    sup = User(sup_user.id, sup_user.name, "supervisor", None, None)
    cid = case["id"]
    _act(engine, cid, "accept", sup)
    _act(engine, cid, "dispatch", sup)
    t.note("受理员立案、派遣")
    c1 = _send_notifications(engine, t, fakewx)
    assert c1["sent"] == 2
    assert _send_notifications(engine, t, fakewx) == {"sent": 0, "retry": 0, "failed": 0, "skipped": 0}

    r = me.text("查询进度")
    assert case_no in r["Content"] and "办理中" in r["Content"]

    _act(engine, cid, "start", sup)
    _act(engine, cid, "feedback", sup, note="已安排环卫清运，现场已清理干净。")
    with engine.connect() as conn:
        state = conn.execute(text("SELECT state FROM case_file WHERE id = :c"), {"c": cid}).scalar_one()
    if state == "verifying":
        _act(engine, cid, "verify_ok", sup, photos=["/api/v1/verifications/0/photos/0/public"])
    _act(engine, cid, "close", sup)
    t.note("部门处置、反馈，核查后结案")

    # A worker restarted dies between sending 'closed' and recording it: the row stays pending and the
    # next worker sends it again with the same client_msg_id, which WeChat delivers once.
    died = []

    def die_once(row_id):
        if not died:
            died.append(row_id)
            raise RuntimeError("worker killed after the send")

    with pytest.raises(RuntimeError):
        _send_notifications(engine, t, fakewx, after_send=die_once)
    t.note("通知进程在发送后、记账前中断；重启")
    c3 = _send_notifications(engine, t, fakewx)
    assert c3["sent"] == 2

    r = me.text("查询进度")
    assert "已办结" in r["Content"] and "答复：已安排环卫清运" in r["Content"] and "满意" in r["Content"]
    r = me.text("满意")
    assert "感谢您的评价" in r["Content"] and case_no in r["Content"]
    r = me.text("不满意")
    assert "没有待评价" in r["Content"]
    r = me.text("便民公告")
    assert r["MsgType"] == "news"
    items = r["Articles"]["item"] if isinstance(r["Articles"]["item"], list) else [r["Articles"]["item"]]
    mine_notice = [i for i in items if i["Title"] == "停水通知（测试）"]
    assert mine_notice and mine_notice[0]["Url"] == f"https://12345.example.cn/public#notice-{notice['id']}"

    # Template messages: in order, exactly once each, though 'closed' was posted twice.
    mine = [m for m in fakewx.delivered if m["touser"] == me.openid]
    assert [m["template_id"] for m in mine] == ["TPL_ACCEPTED", "TPL_DISPATCHED", "TPL_CLOSED", "TPL_RATE"]
    assert all(m["data"]["keyword1"]["value"] == case_no for m in mine)
    posts = [m["client_msg_id"] for m in fakewx.template_calls if m["touser"] == me.openid]
    assert len(posts) == 5 and len(set(posts)) == 4 and posts.count(f"cg-outbox-{died[0]}") == 2
    with engine.connect() as conn:
        rows = conn.execute(text("""SELECT kind, state, attempts FROM notify_outbox
                                    WHERE case_id = :c AND channel = 'wechat' ORDER BY id"""), {"c": cid}).all()
        rated = conn.execute(text("""SELECT c.rating, e.actor_role, e.data->>'by' FROM case_file c
                                     JOIN case_event e ON e.case_id = c.id AND e.kind = 'rated' WHERE c.id = :c"""),
                             {"c": cid}).one()
    assert [tuple(r) for r in rows] == [("accepted", "sent", 1), ("dispatched", "sent", 1), ("closed", "sent", 1),
                                        ("rate", "sent", 1)]
    assert tuple(rated) == ("satisfied", "citizen", "citizen")

    out = tmp_path / "conversation.txt"
    out.write_text(t.render(), encoding="utf-8")
    print("\n=== 微信对话 The conversation as the citizen sees it (" + str(out) + ") ===\n" + t.render())


def _draft_ready(client, engine):
    """A citizen whose draft has a location: the text "1" would record a case."""
    me = Citizen(client)
    me.event("CLICK", "REPORT")
    me.location(LAT, LON, LABEL)
    return me


def _cases_of(engine, openid) -> int:
    return count(engine, "SELECT count(*) FROM case_contact WHERE openid = :o", o=openid)


def test_refusals_write_nothing(client, engine, haimen, fakewx):
    from wechatpy.crypto import WeChatCrypto

    me = _draft_ready(client, engine)
    confirm = me.xml("text", "<Content><![CDATA[1]]></Content>")
    ts = str(int(time.time()))

    # A wrong signature (another token).
    enc = me.crypto.encrypt_message(confirm, "n-sig", ts)
    r = me.post(confirm, timestamp=ts, nonce="n-sig", body=enc, query=signed_query("not-the-token", ts, "n-sig"))
    assert r.status_code == 403 and "signature" in r.text
    # A timestamp outside the window (an old message replayed, correctly signed).
    old = str(int(time.time()) - 3600)
    r = me.post(confirm, timestamp=old, nonce="n-old")
    assert r.status_code == 403 and "timestamp" in r.text
    # A nonce seen before: the first request is answered, its replay refused.
    fresh = me.xml("text", "<Content><![CDATA[垃圾很多]]></Content>")
    assert me.post(fresh, timestamp=ts, nonce="n-once").status_code == 200
    r = me.post(confirm, timestamp=ts, nonce="n-once")
    assert r.status_code == 403 and "nonce" in r.text
    # Encrypted with another key: the signature over it is valid, the decryption fails.
    other = WeChatCrypto(TOKEN, AES_KEY[::-1], APP_ID).encrypt_message(confirm, "n-key", ts)
    r = me.post(confirm, timestamp=ts, nonce="n-key", body=other)
    assert r.status_code in (400, 403) and "decrypt" in r.text
    # A wrong msg_signature over the encrypted body.
    r = me.post(confirm, timestamp=ts, nonce="n-msgsig", query={"msg_signature": "0" * 40})
    assert r.status_code == 403 and "msg_signature" in r.text
    # For another app id.
    other_app = WeChatCrypto(TOKEN, AES_KEY, "wxanotherapp0000").encrypt_message(confirm, "n-app", ts)
    r = me.post(confirm, timestamp=ts, nonce="n-app", body=other_app)
    assert r.status_code == 403 and "app id" in r.text
    # Plain mode sent to a safe-mode account (the plain signature does not cover the body).
    r = client.post("/wechat/haimen", params={**signed_query(TOKEN, ts, "n-plain"), "openid": me.openid},
                    content=confirm.encode())
    assert r.status_code == 403 and "safe mode" in r.text
    # Unsigned.
    assert client.post("/wechat/haimen", content=confirm.encode()).status_code == 403
    assert _cases_of(engine, me.openid) == 0
    # The draft is intact: the real confirmation records the case.
    r = me.text("1")
    assert "已受理" in r["Content"] and _cases_of(engine, me.openid) == 1
    # WeChat's retry of the same message (same MsgId, new nonce) is answered without a second case.
    me.msg_id -= 1
    r = me.post(me.xml("text", "<Content><![CDATA[1]]></Content>"))
    assert r.text == "success" and _cases_of(engine, me.openid) == 1


def test_url_verification(client, fakewx):
    ts = str(int(time.time()))
    ok = client.get("/wechat/haimen", params={**signed_query(TOKEN, ts, "v-1"), "echostr": "echo-123"})
    assert ok.status_code == 200 and ok.text == "echo-123"
    again = client.get("/wechat/haimen", params={**signed_query(TOKEN, ts, "v-1"), "echostr": "echo-123"})
    assert again.status_code == 403
    bad = client.get("/wechat/haimen", params={**signed_query("x", ts, "v-2"), "echostr": "e"})
    assert bad.status_code == 403
    assert client.get("/wechat/nowhere", params={**signed_query(TOKEN, ts, "v-3"), "echostr": "e"}).status_code == 404


def test_h5_sign_in_lists_own_cases(client, engine, haimen, fakewx):
    me = _draft_ready(client, engine)
    r = me.text("3")
    case_no = r["Content"].split("案卷编号：")[1].split("\n")[0]
    client.cookies.clear()
    anon = client.get("/api/v1/public/wechat/me")
    assert anon.json()["signed_in"] is False and anon.json()["authorize"].startswith("/wechat/haimen/oauth/start")
    start = client.get("/wechat/haimen/oauth/start", params={"next": "/public"}, follow_redirects=False)
    loc = start.headers["location"]
    assert start.status_code == 302 and loc.startswith(fakewx.url + "connect/oauth2/authorize")
    assert f"appid={APP_ID}" in loc and "scope=snsapi_base" in loc and "wechat%2Fhaimen%2Foauth" in loc
    assert client.get("/wechat/haimen/oauth", params={"code": "bogus"}, follow_redirects=False).status_code == 422
    fakewx.codes["CODE_1"] = me.openid
    back = client.get("/wechat/haimen/oauth", params={"code": "CODE_1", "next": "/public"}, follow_redirects=False)
    assert back.status_code == 302 and back.headers["location"].startswith("/public")
    assert "httponly" in back.headers["set-cookie"].lower() and me.openid not in back.headers["set-cookie"]
    mine = client.get("/api/v1/public/wechat/me").json()
    assert mine["signed_in"] and [c["case_no"] for c in mine["cases"]] == [case_no]
    assert me.openid not in str(mine)
    client.cookies.clear()
    assert client.get("/api/v1/public/wechat/me").json()["cases"] == []


def test_retry_backoff_and_order(client, engine, haimen, fakewx):
    """A send that fails is retried after a backoff; the citizen's later messages wait for it."""
    from layers.channels import notify

    me = _draft_ready(client, engine)
    case_no = me.text("4")["Content"].split("案卷编号：")[1].split("\n")[0]
    with engine.connect() as conn:
        cid = conn.execute(text("SELECT id FROM case_file WHERE case_no = :n"), {"n": case_no}).scalar_one()
    sup_user, _ = _user(engine, "supervisor")
    sup = User(sup_user.id, sup_user.name, "supervisor", None, None)
    _act(engine, cid, "accept", sup)
    _act(engine, cid, "dispatch", sup)
    fakewx.fail_template.append(-1)  # system busy
    counts = notify.run_once(engine, notify.senders(engine))
    assert counts["retry"] == 1 and counts["sent"] == 0
    with engine.connect() as conn:
        rows = conn.execute(text("""SELECT kind, state, attempts, next_attempt_at - now() FROM notify_outbox
                                    WHERE case_id = :c AND channel = 'wechat' ORDER BY id"""), {"c": cid}).all()
    assert [(r[0], r[1], r[2]) for r in rows] == [("accepted", "pending", 1), ("dispatched", "pending", 0)]
    assert 55 <= rows[0][3].total_seconds() <= 60
    assert notify.run_once(engine, notify.senders(engine))["sent"] == 0  # not due; 'dispatched' waits behind it
    with engine.begin() as conn:
        conn.execute(text("UPDATE notify_outbox SET next_attempt_at = now() WHERE case_id = :c"), {"c": cid})
    assert notify.run_once(engine, notify.senders(engine))["sent"] == 2
    mine = [m["template_id"] for m in fakewx.delivered if m["touser"] == me.openid]
    assert mine == ["TPL_ACCEPTED", "TPL_DISPATCHED"]
    assert notify.backoff_s(1) == 60 and notify.backoff_s(3) == 240


def test_sms_for_a_hotline_caller(engine, haimen, fakewx):
    """A hotline caller with a phone hears of the case by SMS from the same outbox; the phone is
    read when sending, never stored in the outbox."""
    from layers.cases import workflow as wf
    from layers.cases.workflow import ensure_departments
    from layers.channels import notify
    from tests.cases.conftest import working_point

    phone = "139" + f"{uuid.uuid4().int % 10**8:08d}"
    with engine.begin() as conn:
        ensure_departments(conn, haimen)
        opened = wf.open_case(conn, haimen, source="hotline", channel="电话", category_code="H10201",
                              received_at=__import__("layers.cases.calendar", fromlist=["now"]).now(),
                              location=working_point(haimen, 121.17, 31.89), description="停水了",
                              contact={"name": "测试", "phone": phone})
    sup_user, _ = _user(engine, "supervisor")
    sup = User(sup_user.id, sup_user.name, "supervisor", None, None)
    _act(engine, opened.id, "accept", sup)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM notify_outbox WHERE case_id = :c"), {"c": opened.id}).mappings().all()
    assert [(r["channel"], r["kind"]) for r in row] == [("sms", "accepted")]
    assert phone not in str([dict(r) for r in row])
    before = len(fakewx.sms_calls)
    notify.run_once(engine, notify.senders(engine))
    sent = [m for m in fakewx.sms_calls[before:] if m["TemplateParamSet"][0] == opened.case_no]
    assert len(sent) == 1 and sent[0]["PhoneNumberSet"] == ["+86" + phone] and sent[0]["TemplateId"] == "101"
    assert sent[0]["SessionContext"] == f"cg-outbox-{row[0]['id']}"


def test_outbox_off_unless_configured_and_old_events(engine, haimen):
    """Without configured channels the trigger writes nothing; an imported old event is not news."""
    from layers.cases import calendar as lcal
    from layers.cases import workflow as wf
    from tests.cases.conftest import working_point

    with engine.begin() as conn:
        conn.execute(text("UPDATE notify_channel SET enabled = false"))
        opened = wf.open_case(conn, haimen, source="citizen", channel="微信", category_code="E10101",
                              received_at=lcal.now(), location=working_point(haimen, 121.17, 31.89),
                              description="x", contact={"openid": "o_off_test"})
        conn.execute(text("""INSERT INTO case_event (case_id, at, kind, from_state, to_state)
                             VALUES (:c, now(), 'accepted', 'collected', 'accepted')"""), {"c": opened.id})
        assert conn.execute(text("SELECT count(*) FROM notify_outbox WHERE case_id = :c"), {"c": opened.id}).scalar() == 0
        conn.execute(text("INSERT INTO notify_channel (city_id, channel, enabled) VALUES (:c, 'wechat', true) "
                          "ON CONFLICT (city_id, channel) DO UPDATE SET enabled = true"), {"c": haimen.id})
        conn.execute(text("""INSERT INTO case_event (case_id, at, kind, from_state, to_state)
                             VALUES (:c, now() - interval '30 days', 'dispatched', 'accepted', 'dispatched')"""),
                     {"c": opened.id})
        assert conn.execute(text("SELECT count(*) FROM notify_outbox WHERE case_id = :c"), {"c": opened.id}).scalar() == 0
        conn.execute(text("""INSERT INTO case_event (case_id, at, kind, from_state, to_state)
                             VALUES (:c, now(), 'closed', 'feedback', 'closed')"""), {"c": opened.id})
        kinds = conn.execute(text("SELECT kind FROM notify_outbox WHERE case_id = :c ORDER BY id"),
                             {"c": opened.id}).scalars().all()
        assert kinds == ["closed", "rate"]
        conn.execute(text("UPDATE notify_channel SET enabled = false"))


def test_public_page_in_wechat_lists_my_cases(client, engine, haimen, fakewx, live_server, browser):
    """/public opened inside WeChat signs the citizen in (snsapi_base, silent) and lists their cases;
    in another browser the page is as before (no list, no redirect)."""
    me = Citizen(client)
    me.event("CLICK", "REPORT")
    me.location(LAT + 0.004, LON - 0.004, "海门区测试路口")
    case_no = me.text("5")["Content"].split("案卷编号：")[1].split("\n")[0]
    fakewx.browser_openid = me.openid

    plain = browser.new_context()
    page = plain.new_page()
    page.goto(live_server + "/public")
    page.wait_for_function("document.getElementById('notice-list').textContent.indexOf('加载中') < 0")
    assert page.locator("#my-cases").is_hidden() and page.url == live_server + "/public"
    plain.close()

    ua = ("Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36 "
          "MicroMessenger/8.0.47.2560(0x28002F35) NetType/WIFI Language/zh_CN")
    wx = browser.new_context(user_agent=ua)
    page = wx.new_page()
    page.goto(live_server + "/public")
    page.wait_for_selector("#my-cases:not([hidden]) .my-case", timeout=15000)
    listed = page.locator("#my-case-list").inner_text()
    assert case_no in listed and "已受理" in listed
    assert page.url.startswith(live_server + "/public")
    cookies = {c["name"]: c for c in wx.cookies()}
    assert cookies["cg_wx_haimen"]["httpOnly"] and me.openid not in cookies["cg_wx_haimen"]["value"]
    wx.close()


def test_cli_notify_once(engine, haimen, fakewx, monkeypatch, capsys):
    from citygrid import cli

    monkeypatch.setattr(cli, "_engine", lambda: engine)  # the test database, never the service's
    assert cli.main(["notify", "run", "--once"]) == 0
    out = __import__("json").loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["channels_on"]["haimen"] == ["wechat", "sms"] and set(out) >= {"sent", "retry", "failed", "skipped"}


def _wechat_case(engine, haimen, openid, lon, lat, category="E10301"):
    from layers.cases import calendar as lcal
    from layers.cases import workflow as wf
    from tests.cases.conftest import working_point

    with engine.begin() as conn:
        return wf.open_case(conn, haimen, source="citizen", channel="微信", category_code=category,
                            received_at=lcal.now(), location=working_point(haimen, lon, lat),
                            description="测试", contact={"openid": openid})


def test_concurrent_workers_send_each_once(engine, haimen, fakewx):
    """Three workers at once over the same due rows: each message is posted once, in order per citizen."""
    from layers.cases.workflow import ensure_departments
    from layers.channels import notify
    from tests.conftest import concurrently

    with engine.begin() as conn:
        ensure_departments(conn, haimen)
    sup_user, _ = _user(engine, "supervisor")
    sup = User(sup_user.id, sup_user.name, "supervisor", None, None)
    openids = [f"o_conc_{uuid.uuid4().hex[:10]}" for _ in range(8)]
    for i, o in enumerate(openids):
        c = _wechat_case(engine, haimen, o, 121.10 + i * 0.01, 31.87)
        _act(engine, c.id, "accept", sup)
        _act(engine, c.id, "dispatch", sup)
    before = len(fakewx.template_calls)
    results = concurrently(3, lambda: notify.run_once(engine, notify.senders(engine), limit=3))
    assert len(results) == 3 and all(r["retry"] == r["failed"] == 0 for r in results)
    with engine.connect() as conn:
        states = conn.execute(text("""SELECT o.state, o.attempts, count(*) FROM notify_outbox o
                                      JOIN case_contact k ON k.case_id = o.contact_case_id
                                      WHERE k.openid = ANY(:o) GROUP BY 1, 2"""), {"o": openids}).all()
    assert [tuple(r) for r in states] == [("sent", 1, 16)]
    calls = [m for m in fakewx.template_calls[before:] if m["touser"] in openids]
    assert len(calls) == 16 and len({m["client_msg_id"] for m in calls}) == 16
    for o in openids:
        assert [m["template_id"] for m in calls if m["touser"] == o] == ["TPL_ACCEPTED", "TPL_DISPATCHED"]


def test_merged_reporter_hears_too(engine, haimen, fakewx):
    """并单: a second citizen whose report was merged into the first case is told of that case's steps."""
    from layers.cases.workflow import ensure_departments
    from layers.channels import notify

    with engine.begin() as conn:
        ensure_departments(conn, haimen)
    first, second = f"o_m1_{uuid.uuid4().hex[:8]}", f"o_m2_{uuid.uuid4().hex[:8]}"
    a = _wechat_case(engine, haimen, first, 121.33, 31.93, "E40101")
    b = _wechat_case(engine, haimen, second, 121.33, 31.93, "E40101")
    assert b.state == "merged" and b.merged_into == a.id
    sup_user, _ = _user(engine, "supervisor")
    sup = User(sup_user.id, sup_user.name, "supervisor", None, None)
    _act(engine, a.id, "accept", sup)
    notify.run_once(engine, notify.senders(engine))
    got = {m["touser"]: m for m in fakewx.delivered if m["touser"] in (first, second)}
    assert set(got) == {first, second}
    assert all(m["data"]["keyword1"]["value"] == a.case_no for m in got.values())


def test_plain_mode_account(client, engine, haimen, fakewx, monkeypatch):
    """An account without an AES key speaks plain mode: signed, unencrypted XML both ways."""
    import json

    import xmltodict

    monkeypatch.setenv("CITYGRID_WECHAT_ACCOUNTS", json.dumps({"haimen": {"app_id": APP_ID, "secret": SECRET,
                                                                          "token": TOKEN}}))
    ts, openid = str(int(time.time())), f"o_plain_{uuid.uuid4().hex[:8]}"
    xml = (f"<xml><ToUserName>gh</ToUserName><FromUserName>{openid}</FromUserName><CreateTime>{ts}</CreateTime>"
           f"<MsgType>text</MsgType><Content>查询进度</Content><MsgId>{ts}1</MsgId></xml>")
    r = client.post("/wechat/haimen", params={**signed_query(TOKEN, ts, "p-1"), "openid": openid}, content=xml.encode())
    assert r.status_code == 200
    reply = xmltodict.parse(r.text)["xml"]
    assert reply["ToUserName"] == openid and "还没有" in reply["Content"]
    r = client.post("/wechat/haimen", params={**signed_query("wrong", ts, "p-2"), "openid": openid}, content=xml.encode())
    assert r.status_code == 403


def test_bad_images_are_refused_in_the_chat(client, engine, haimen, fakewx, tokens):
    """An image the media API does not have, or bytes that are not a photo: the citizen is told, the
    draft keeps no photo; a department that does not handle the case cannot fetch its chat photos."""
    me = _draft_ready(client, engine)
    r = me.image("MEDIA_GONE")
    assert "暂时无法获取" in r["Content"]
    fakewx.media["MEDIA_TEXT"] = (b"not an image at all", "image/jpeg")
    r = me.image("MEDIA_TEXT")
    assert "无法使用" in r["Content"]
    assert count(engine, "SELECT count(*) FROM wechat_photo WHERE openid = :o", o=me.openid) == 0
    fakewx.media["MEDIA_OK"] = (PHOTO.read_bytes(), "image/jpeg")
    assert "第 1 张" in me.image("MEDIA_OK")["Content"]
    r = me.text("6")
    with engine.connect() as conn:
        cid, pid = conn.execute(text("""SELECT case_id, id FROM wechat_photo WHERE openid = :o"""), {"o": me.openid}).one()
    url = f"/api/v1/cases/{cid}/wechat-photos/{pid}/thumb"
    assert client.get(url, headers=auth(tokens["operator"])).status_code == 200
    assert client.get(url, headers=auth(tokens["department"])).status_code == 404  # not its case
    assert client.get(url.replace("/thumb", "/original"), headers=auth(tokens["operator"])).status_code == 422


def test_worker_in_the_app(engine, db_url, haimen, fakewx, monkeypatch):
    """CITYGRID_NOTIFY_IN_APP runs the worker in the app's lifespan; it stops with the app."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from layers.cases.workflow import ensure_departments

    monkeypatch.setenv("CITYGRID_NOTIFY_IN_APP", "1")
    monkeypatch.setenv("CITYGRID_NOTIFY_POLL_S", "0.2")
    with engine.begin() as conn:
        ensure_departments(conn, haimen)
    openid = f"o_inapp_{uuid.uuid4().hex[:8]}"
    c = _wechat_case(engine, haimen, openid, 121.36, 31.95, "E20102")
    sup_user, _ = _user(engine, "supervisor")
    with TestClient(create_app(db_url)):
        _act(engine, c.id, "accept", User(sup_user.id, sup_user.name, "supervisor", None, None))
        deadline = time.monotonic() + 15
        while not any(m["touser"] == openid for m in fakewx.delivered) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert [m["template_id"] for m in fakewx.delivered if m["touser"] == openid] == ["TPL_ACCEPTED"]
    assert not any(t.name == "citygrid-notify" for t in __import__("threading").enumerate())


def test_cli_creates_the_menu(engine, haimen, fakewx, monkeypatch, capsys):
    """`citygrid wechat menu haimen`: the menu whose keys the dialogue answers, sent to WeChat."""
    from citygrid import cli
    from layers.channels import wechat as lwx

    monkeypatch.setattr(cli, "_engine", lambda: engine)
    monkeypatch.setenv("CITYGRID_WECHAT_PUBLIC_BASE", "https://12345.example.cn")
    assert cli.main(["wechat", "menu", "haimen"]) == 0
    sent = fakewx.menus[-1]
    keys = [b.get("key") for b in sent["button"][:2]] + [sent["button"][2]["sub_button"][0]["key"]]
    assert [lwx.dialogue_config()["menu"][k] for k in keys] == ["report", "query", "notices"]
    assert sent["button"][2]["sub_button"][1]["url"] == "https://12345.example.cn/wechat/haimen/oauth/start?next=/public"
    assert cli.main(["wechat", "menu", "nowhere"]) == 2


def test_same_nonce_in_two_processes(engine, haimen, fakewx):
    """Two requests with one nonce at the same moment (two workers of the server): one is answered,
    the other waits for its commit and is refused."""
    import threading

    from layers.channels import wechat as lwx
    from tests.conftest import concurrently

    acct = lwx.account("haimen")
    ts, nonce = str(int(time.time())), f"race-{uuid.uuid4().hex[:8]}"
    q = signed_query(TOKEN, ts, nonce)
    gate = threading.Barrier(2)

    def attempt():
        try:
            with engine.begin() as conn:
                gate.wait()
                lwx.check_request(conn, haimen, acct, signature=q["signature"], timestamp=ts, nonce=nonce)
                time.sleep(0.3)  # still in the transaction: the other waits on the nonce's key
            return "ok"
        except lwx.Refused as e:
            return str(e)

    results = concurrently(2, attempt)
    assert sorted(results) == ["ok", "this nonce was used before: a replay"]


def test_sign_in_callback_is_limited_per_address(engine, db_url, haimen, fakewx, monkeypatch):
    """The sign-in callback is anonymous and each request costs a call to WeChat: past the look-up
    limit of an address it is refused (429) before WeChat is asked."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from citygrid import settings

    monkeypatch.setenv("CITYGRID_API_RATE_LIMIT_LOOKUP", "3/minute")
    settings.api.cache_clear()
    try:
        with TestClient(create_app(db_url)) as c:  # an app of its own: its counters start at 0
            before = fakewx.oauth_calls
            got = [c.get("/wechat/haimen/oauth", params={"code": f"bogus{i}"}, follow_redirects=False)
                   for i in range(4)]
            assert [r.status_code for r in got] == [422, 422, 422, 429]
            assert int(got[3].headers["Retry-After"]) >= 1
            assert fakewx.oauth_calls - before == 3  # the refused request never reached WeChat
    finally:
        monkeypatch.delenv("CITYGRID_API_RATE_LIMIT_LOOKUP")
        settings.api.cache_clear()  # later apps read the real settings
