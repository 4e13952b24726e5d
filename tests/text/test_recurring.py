"""Recurring problems on data of known truth: injected groups (same problem, place and period, said in
different words) are found whole, one-off cases are not grouped; the heat index's parts; 共性/个性."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pytest
from sqlalchemy import text

from layers.text import recurring
from tests.conftest import auth

OBJECTS = ["路灯", "井盖", "垃圾桶", "公交站台", "下水道", "人行道", "绿化带", "健身器材", "围墙", "信号灯",
           "停车场", "菜市场", "护栏", "桥梁", "排水沟", "广告牌", "电线", "树木", "楼道", "路面"]
PROBLEMS = ["坏了很久没人修", "被人损毁", "发出异味", "存在安全隐患", "堵塞严重", "长期占用", "噪声太大",
            "缺失", "积水严重", "倒塌", "漏水", "晚上不亮", "被乱停车辆挡住", "脏乱差", "松动"]
GROUPS = [  # (texts said differently, centre (x, y) offsets in m from the city's centre, start day)
    (["青檀苑南门污水井盖破损，车辆经过很危险", "青檀苑南门口的污水井盖又破了，车开过去很危险", "反映青檀苑南门污水井盖破损问题，很危险",
      "青檀苑南门污水井盖破损好几天了，请尽快维修", "青檀苑小区南门污水井盖破损，晚上行人容易摔倒"], (0, 0), 5),
    (["紫藤路菜场早上五点卸货噪音扰民", "紫藤路菜场每天清晨卸货噪音很大，扰民", "紫藤路菜场凌晨卸货噪音扰民，睡不着",
      "投诉紫藤路菜场早上卸货噪音扰民", "紫藤路菜场卸货噪音扰民问题一直没有解决", "紫藤路菜场早上卸货噪音扰民严重",
      "紫藤路菜场卸货太早噪音扰民"], (3000, -2000), 20),
    (["银杏小学门口占道经营的摊贩很多，上学堵", "银杏小学门口占道经营摊贩多，孩子上学堵塞", "银杏小学门口摊贩占道经营，堵得走不动",
      "银杏小学门口占道经营问题请城管处理"], (-2500, 1500), 40),
]


def corpus(seed: int = 7):
    rng = np.random.default_rng(seed)
    texts, t, x, y, truth = [], [], [], [], []
    for gi, (says, (ox, oy), day) in enumerate(GROUPS):
        for s in says:
            texts.append(s)
            t.append(day + rng.uniform(0, 12))
            x.append(ox + rng.normal(0, 80))
            y.append(oy + rng.normal(0, 80))
            truth.append(gi)
    # other problems at the groups' places in the same days: the same place, not the same problem
    for s, gi in (("青檀苑南门路灯晚上不亮", 0), ("青檀苑小区垃圾桶满了没人清运", 0), ("青檀苑南门有人占道摆摊", 0),
                  ("紫藤路菜场门口车辆乱停", 1), ("银杏小学门口路灯坏了", 2)):
        (ox, oy), day = GROUPS[gi][1], GROUPS[gi][2]
        texts.append(s)
        t.append(day + rng.uniform(0, 12))
        x.append(ox + rng.normal(0, 80))
        y.append(oy + rng.normal(0, 80))
        truth.append(-1)
    for _ in range(400):  # one-off cases: random problems anywhere in a 40 km square over 90 days
        texts.append(f"{rng.choice(OBJECTS)}{rng.choice(PROBLEMS)}，位置在{rng.integers(1, 999)}号附近")
        t.append(rng.uniform(0, 90))
        x.append(rng.uniform(-20_000, 20_000))
        y.append(rng.uniform(-20_000, 20_000))
        truth.append(-1)
    return texts, np.array(t), np.array(x), np.array(y), np.array(truth)


def test_injected_groups_found_one_offs_not_grouped():
    texts, t, x, y, truth = corpus()
    groups, _ = recurring.group(texts, t, x, y, np.zeros(len(texts), int), similarity=0.4, radius_m=500,
                                pair_days=30)
    found = sorted(sorted(truth[g].tolist()) for g in groups)
    want = sorted([[gi] * len(says) for gi, (says, _, _) in enumerate(GROUPS)])
    assert found == want, found


def test_same_text_elsewhere_or_later_is_not_the_same_problem():
    says = GROUPS[0][0]
    bg, bt, bx, by, btruth = corpus()  # the background (IDF is computed over the period's cases)
    bg = [s for s, k in zip(bg, btruth, strict=True) if k == -1]
    far = np.full(len(bg), 50_000.0)
    texts = says + says + bg
    t = np.concatenate([[1, 2, 3, 4, 5, 1, 2, 3, 4, 5], bt[btruth == -1]])
    x = np.concatenate([[0, 10, 20, 30, 40] + [5000] * 5, far])  # the second five 5 km away
    y = np.concatenate([np.zeros(10), by[btruth == -1]])
    groups, _ = recurring.group(texts, t, x, y, np.zeros(len(texts), int), similarity=0.4, radius_m=500,
                                pair_days=30)
    assert sorted(sorted(g.tolist()) for g in groups if g[0] < 10) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    t2 = t.copy()
    t2[5:10] += 100  # same place, 100 days later
    x2 = x.copy()
    x2[5:10] = x2[:5]
    groups, _ = recurring.group(texts, t2, x2, y, np.zeros(len(texts), int), similarity=0.4, radius_m=500,
                                pair_days=30)
    assert sorted(sorted(g.tolist()) for g in groups if g[0] < 10) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_heat_index_parts():
    base = recurring.heat(5, 10, 90, 0.0, 1.0)
    assert recurring.heat(10, 10, 90, 0.0, 1.0) > base  # more cases
    assert recurring.heat(5, 40, 90, 0.0, 1.0) > base   # longer
    assert recurring.heat(5, 10, 90, 0.4, 1.0) > base   # repeat callers
    assert recurring.heat(5, 10, 90, 0.0, 3.0) > base   # growing
    assert base == pytest.approx(np.log(6) * (1 + np.log(11) / np.log(91)))


@pytest.fixture(scope="module")
def stored(engine, haimen):
    """The corpus as Haimen cases in January–March 2018 (before the demo year and every other test's cases:
    in the past, it does not crowd the newest-first lists that later tests read); group 1's callers repeat."""
    from layers.demo.synthetic import CaseBatch, bulk_insert_cases

    texts, t, x, y, truth = corpus()
    with engine.connect() as conn:
        cx, cy = conn.execute(text("SELECT ST_X(ST_Centroid(boundary)), ST_Y(ST_Centroid(boundary)) FROM city "
                                   "WHERE id = :c"), {"c": haimen.id}).one()
    start = dt.datetime(2018, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    n = len(texts)
    phones = [None] * n
    g1 = np.flatnonzero(truth == 1)
    for k, i in enumerate(g1):
        phones[i] = "13800000001" if k < 4 else f"1390000000{k}"
    cats = ["E50201" if tr == 2 else "H10102" if tr == 1 else "010202" if tr == 0 else "H90101" for tr in truth]
    b = CaseBatch(case_no=[f"T2018R{i:05d}" for i in range(n)], received_at=[start + dt.timedelta(days=float(v)) for v in t],
                  category_code=cats, channel=["电话"] * n, source=["hotline"] * n, x=x + cx, y=y + cy,
                  description=texts, phone=phones, state=["accepted"] * n)
    with engine.begin() as conn:
        ids = bulk_insert_cases(conn, haimen, b)
    return ids, truth


def test_run_stores_groups_api_and_report(client, tokens, engine, haimen, stored):
    ids, truth = stored
    sup = auth(tokens["supervisor"])
    r = client.post("/api/v1/text/recurring/run", headers=sup, params={"until": "2018-03-31", "days": 90})
    assert r.status_code == 200, r.text
    assert r.json()["cases"] == len(truth) and r.json()["n_groups"] == 3
    top = client.get("/api/v1/text/recurring", headers=sup, params={"limit": 5}).json()
    assert top["window_start"] == "2018-01-01" and len(top["groups"]) == 3
    got = {frozenset(g["case_nos"]) for g in top["groups"]}
    want = {frozenset(f"T2018R{i:05d}" for i in np.flatnonzero(truth == k)) for k in range(3)}
    assert got == want
    noise = next(g for g in top["groups"] if g["n_cases"] == 7)
    assert noise["repeat_callers"] == 1 and "紫藤路菜场" in noise["representative"]
    assert noise["heat"] == max(g["heat"] for g in top["groups"])  # most cases and a repeat caller
    assert "13800000001" not in r.text + str(top)
    rep = client.get(f"/api/v1/text/recurring/{noise['id']}/report", headers=sup)
    assert rep.status_code == 200 and "热点问题专报" in rep.text and "紫藤路菜场" in rep.text
    assert client.get("/api/v1/text/recurring/999999999/report", headers=sup).status_code == 404
    assert client.get("/api/v1/text/recurring", headers=auth(tokens["operator"])).status_code == 403
    bad = client.post("/api/v1/text/recurring/run", headers=sup, params={"until": "2018-02-30"})
    assert bad.status_code == 422 and "YYYY-MM-DD" in bad.text


def test_spread_shared_or_local(client, tokens, stored):
    r = client.get("/api/v1/text/spread", headers=auth(tokens["supervisor"]), params={"until": "2018-03-31", "days": 90})
    assert r.status_code == 200, r.text
    d = r.json()
    by = {c["category_code"]: c for c in d["classes"]}
    assert "normalised entropy" in d["measure"] and d["streets_in_city"] > 1
    # the 400 one-offs spread over the city are shared; a group's class in one place is local
    assert by["H901"]["kind"] == "shared" and by["H901"]["street_share"] >= 0.3
    assert by["H101"]["kind"] == "local" and by["H101"]["streets"] == 1 and by["H101"]["cases"] == 7
    assert by["E502"]["kind"] == "few" and by["E502"]["cases"] == 4  # below MIN_SPREAD: no verdict


def test_bulletin_lists_the_months_recurring_problems(engine, haimen, stored):
    from layers.analytics import bulletin

    with engine.connect() as conn:
        d = bulletin.collect(conn, haimen, "2018-01")
        doc = bulletin.render_html(conn, haimen, "2018-01", data=d, images={})
    rec = d["recurring"]
    assert rec and any("青檀苑" in g["representative"] for g in rec)
    assert "热点问题 Recurring problems" in doc and "青檀苑南门" in doc


def test_supervisor_page_shows_groups_and_a_report(browser, live_server, client, tokens, stored):
    sup = tokens["supervisor"]
    assert client.post("/api/v1/text/recurring/run", headers=auth(sup),
                       params={"until": "2018-03-31", "days": 90}).status_code == 200
    ctx = browser.new_context(viewport={"width": 1440, "height": 900}, locale="zh-CN")
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    def slow_sign_in(route):  # the #token= exchange answers late: the section must wait for it, not fail
        time.sleep(1.5)
        route.continue_()

    page.route("**/api/v1/auth/login", slow_sign_in)
    page.goto(live_server + "/supervisor#token=" + sup)
    rows = page.locator("#recurring-table tbody tr[data-id]")
    rows.first.wait_for(timeout=20000)
    assert rows.count() == 3
    assert "紫藤路菜场" in rows.first.inner_text()  # the hottest first
    page.locator("#spread-table tbody tr").first.wait_for(timeout=20000)
    assert "共性" in page.locator("#spread-table").inner_text() and "个性" in page.locator("#spread-table").inner_text()
    assert "normalised entropy" in page.locator("#spread-measure").inner_text()
    page.locator("#recurring-table button.recurring-report").first.click()
    page.wait_for_function("() => window.lastRecurringReport || window.lastRecurringReportError", timeout=30_000)
    html = page.evaluate("() => window.lastRecurringReport || window.lastRecurringReportError || ''")
    assert "热点问题专报" in html and "紫藤路菜场" in html
    assert not errors, errors
    ctx.close()


def test_template_texts_are_left_out():
    n = 200
    d = {"n": n, "id": np.arange(n), "text": ["合成数据 synthetic demo case"] * 150 + [f"第{i}号路灯不亮" for i in range(50)],
         "x": np.zeros(n)}
    out, dropped = recurring._drop_templates(d)
    assert dropped == 150 and out["n"] == 50 and out["text"][0] == "第0号路灯不亮" and out["id"][0] == 150
    few = {"n": 20, "id": np.arange(20), "text": ["同一句话"] * 20, "x": np.zeros(20)}
    assert recurring._drop_templates(few)[1] == 0  # under TEMPLATE_MIN: a real repeated complaint stays
