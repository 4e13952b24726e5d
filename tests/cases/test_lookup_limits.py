"""Limits on wrong query codes of the public channel (status look-up and rating): a case number is
locked for one client address after 5 wrong codes from it in 15 minutes, an address for all numbers
after 30 in an hour; guesses from elsewhere never lock the rightful holder out; an unknown number is
counted and answered exactly like a wrong code; X-Forwarded-For only when the proxy is trusted; the
failures live in the database (two apps share them, concurrent guesses are counted exactly); the
/public page shows the 429 message. Each test uses its own client addresses and case numbers."""

from __future__ import annotations

import concurrent.futures
import json
import random
import urllib.error
import urllib.request
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.cases.test_public import close_directly
from tests.conftest import count

STATUS, RATE = "/api/v1/public/status", "/api/v1/public/rate"


def new_address() -> str:
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


@pytest.fixture
def from_address(app, client):
    """A test client whose requests come from a socket address of its own (``client``: the app is started)."""
    def make(address: str | None = None) -> TestClient:
        return TestClient(app, client=(address or new_address(), 40000))

    return make


def unknown_number() -> str:
    return "320614" + "2099" + f"{random.randrange(10**10):010d}"  # no such day: never a real case


def submit(client, spot) -> tuple[str, str]:
    lon, lat = spot()
    r = client.post("/api/v1/public/requests", data={"category_code": "E10301", "description": "路面脏 dirty road",
                                                     "lon": str(lon), "lat": str(lat), "crs": "EPSG:4326"})
    assert r.status_code == 201, r.text
    return r.json()["case_no"], r.json()["query_code"]


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


def failures(engine, case_no: str) -> int:
    return count(engine, "SELECT count(*) FROM lookup_failure WHERE case_key = :n", n=case_no)


def test_case_locked_after_five_wrong_codes_then_free_again(from_address, engine, clock, spot):
    addr = new_address()
    c = from_address(addr)
    no, code = submit(c, spot)
    for left in (4, 3, 2, 1):
        r = c.post(STATUS, json={"case_no": no, "query_code": wrong(code)})
        assert r.status_code == 404 and f"还可再试 {left} 次" in r.json()["detail"]
    r = c.post(STATUS, json={"case_no": no, "query_code": wrong(code)})
    assert r.status_code == 404 and "查询已暂停" in r.json()["detail"]
    assert failures(engine, no) == 5
    # Locked: even the right code is refused, with when to retry (16:00 + 15 min, Asia/Shanghai).
    r = c.post(STATUS, json={"case_no": no, "query_code": code})
    assert r.status_code == 429 and r.headers["Retry-After"] == "900"
    d = r.json()
    assert d["limit"] == "case" and d["retry_after"] == 900
    assert "16:15" in d["detail"] and "再试" in d["detail"] and "try again after 16:15" in d["detail"]
    assert "status" not in d and no not in r.text
    assert d["code"] == "too_many_requests" and d["message"].startswith("查询码错误次数过多")  # said in Chinese
    assert d["message_en"].startswith("Too many wrong query codes")
    # Refusals during the lock are not counted. The number is locked for this address only: another
    # (the rightful holder's, say) gets in with the right code.
    clock.advance(minutes=14, seconds=30)
    r = c.post(STATUS, json={"case_no": no, "query_code": code})
    assert r.status_code == 429 and r.headers["Retry-After"] == "30" and "约 1 分钟后" in r.json()["detail"]
    r = from_address().post(STATUS, json={"case_no": no, "query_code": code})
    assert r.status_code == 200 and r.json()["case_no"] == no
    assert failures(engine, no) == 5
    clock.advance(seconds=30)
    r = c.post(STATUS, json={"case_no": no, "query_code": code})
    assert r.status_code == 200 and r.json()["case_no"] == no
    # The query code tried is never stored; the address only as a keyed hash of 16 bytes.
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM lookup_failure WHERE case_key = :n"), {"n": no}).mappings().all()
    assert {r["endpoint"] for r in rows} == {"status"} and all(len(r["addr_key"]) == 16 for r in rows)
    stored = repr([dict(r) for r in rows])
    assert wrong(code) not in stored and addr not in stored
    # After the lock a new window begins: one wrong code leaves four tries.
    r = c.post(STATUS, json={"case_no": no, "query_code": wrong(code)})
    assert r.status_code == 404 and "还可再试 4 次" in r.json()["detail"]


def test_unknown_number_answered_and_counted_like_a_wrong_code(from_address, engine, clock, spot):
    no, code = submit(from_address(), spot)
    ghost = unknown_number()
    known, unknown = from_address(), from_address()
    for _ in range(6):
        a = known.post(STATUS, json={"case_no": no, "query_code": wrong(code)})
        b = unknown.post(STATUS, json={"case_no": ghost, "query_code": "123456"})
        assert a.status_code == b.status_code and a.json() == b.json()
        assert dict(a.headers).get("retry-after") == dict(b.headers).get("retry-after")
    assert a.status_code == 429 and a.json()["limit"] == "case"
    assert failures(engine, no) == failures(engine, ghost) == 5


def test_address_limit_across_case_numbers(from_address, engine, clock, spot):
    owner = from_address()
    no, code = submit(owner, spot)
    guesser = from_address()
    for i in range(29):
        r = guesser.post(STATUS, json={"case_no": unknown_number(), "query_code": f"{i:06d}"})
        assert r.status_code == 404
    assert "还可再试 1 次" in r.json()["detail"]
    # A right code (the guesser's own case, say) does not reset the address's count.
    r = guesser.post(STATUS, json={"case_no": no, "query_code": code})
    assert r.status_code == 200 and r.json()["case_no"] == no
    clock.advance(minutes=10)
    r = guesser.post(RATE, json={"case_no": unknown_number(), "query_code": "000000", "rating": "satisfied"})
    assert r.status_code == 404 and "查询已暂停" in r.json()["detail"]
    r = guesser.post(STATUS, json={"case_no": no, "query_code": code})
    assert r.status_code == 429 and r.json()["limit"] == "address"
    # Locked for 60 minutes after the 30th failure; the number itself is not locked for others.
    assert r.headers["Retry-After"] == "3600" and "来自您网络地址的查询" in r.json()["detail"]
    r = owner.post(STATUS, json={"case_no": no, "query_code": code})
    assert r.status_code == 200 and r.json()["case_no"] == no
    clock.advance(minutes=60)
    r = guesser.post(STATUS, json={"case_no": no, "query_code": code})
    assert r.status_code == 200 and r.json()["case_no"] == no


def test_rating_limited_and_sharing_the_count_with_lookups(from_address, engine, tokens, clock, spot):
    no, code = submit(from_address(), spot)
    close_directly(engine, no)
    c = from_address()
    for _ in range(3):
        assert c.post(STATUS, json={"case_no": no, "query_code": wrong(code)}).status_code == 404
    for _ in range(2):
        r = c.post(RATE, json={"case_no": no, "query_code": wrong(code), "rating": "unsatisfied"})
        assert r.status_code == 404
    r = c.post(RATE, json={"case_no": no, "query_code": code, "rating": "unsatisfied"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) == 900
    with engine.connect() as conn:
        rating = conn.execute(text("SELECT rating FROM case_file WHERE case_no = :n"), {"n": no}).scalar_one()
        rated = conn.execute(text("""SELECT count(*) FROM case_event e JOIN case_file c ON c.id = e.case_id
                                     WHERE c.case_no = :n AND e.kind = 'rated'"""), {"n": no}).scalar_one()
        endpoints = conn.execute(text("SELECT endpoint, count(*) FROM lookup_failure WHERE case_key = :n "
                                      "GROUP BY 1 ORDER BY 1"), {"n": no}).all()
    assert rating is None and rated == 0 and endpoints == [("rate", 2), ("status", 3)]
    clock.advance(minutes=15)
    r = c.post(RATE, json={"case_no": no, "query_code": code, "rating": "satisfied"})
    assert r.status_code == 200 and r.json()["rating"] == "满意" and r.json()["can_rate"] is False
    assert r.json()["case_no"] == no and r.json()["state"] == "closed"


def test_guesses_from_elsewhere_never_lock_the_holder_out(from_address, engine, clock, spot):
    """An attacker who exhausts the limit of a case number from address A is paused there, whatever
    the code; the holder at address B still gets in with the right code, and has their own count."""
    holder = from_address()
    no, code = submit(holder, spot)
    attacker = from_address()
    for _ in range(5):
        assert attacker.post(STATUS, json={"case_no": no, "query_code": wrong(code)}).status_code == 404
    for guess in (wrong(wrong(code)), code):  # paused: not even the right code gets through, nothing counted
        r = attacker.post(STATUS, json={"case_no": no, "query_code": guess})
        assert r.status_code == 429 and r.json()["limit"] == "case" and int(r.headers["Retry-After"]) == 900
        assert "status" not in r.json()
    assert failures(engine, no) == 5
    for _ in range(3):
        r = holder.post(STATUS, json={"case_no": no, "query_code": code})
        assert r.status_code == 200 and r.json()["case_no"] == no and r.json()["state"] == "collected"
    r = holder.post(STATUS, json={"case_no": no, "query_code": wrong(code)})  # the holder's own count
    assert r.status_code == 404 and "还可再试 4 次" in r.json()["detail"]
    r = attacker.post(STATUS, json={"case_no": no, "query_code": code})
    assert r.status_code == 429
    # Exhausting the address limit across numbers from A changes nothing for B either.
    for i in range(25):
        attacker.post(STATUS, json={"case_no": unknown_number(), "query_code": f"{i:06d}"})
    r = attacker.post(STATUS, json={"case_no": unknown_number(), "query_code": "000000"})
    assert r.status_code == 429 and r.json()["limit"] == "address"
    r = holder.post(STATUS, json={"case_no": no, "query_code": code})
    assert r.status_code == 200 and r.json()["case_no"] == no


@pytest.fixture
def trusted_hops(monkeypatch):
    from citygrid import settings

    def set_hops(n: int):
        monkeypatch.setenv("CITYGRID_API_TRUSTED_PROXY_HOPS", str(n))
        settings.api.cache_clear()

    yield set_hops
    monkeypatch.delenv("CITYGRID_API_TRUSTED_PROXY_HOPS", raising=False)
    settings.api.cache_clear()


def addr_keys(engine, case_no) -> list[bytes]:
    with engine.connect() as conn:
        return [bytes(k) for k in conn.execute(text("SELECT addr_key FROM lookup_failure WHERE case_key = :n "
                                                    "ORDER BY id"), {"n": case_no}).scalars()]


def key_of(engine, address: str) -> bytes:
    from layers.cases.citizen import _addr_key

    with engine.connect() as conn:
        return bytes(_addr_key(conn, address))


def test_forwarded_for_only_when_the_proxy_is_trusted(from_address, engine, clock, trusted_hops):
    proxy = new_address()
    c = from_address(proxy)
    ghost = unknown_number()
    # Not trusted (the default): the header is the client's to forge, the socket's address counts.
    for forged in ("1.1.1.1", "2.2.2.2"):
        c.post(STATUS, json={"case_no": ghost, "query_code": "111111"}, headers={"X-Forwarded-For": forged})
    assert addr_keys(engine, ghost) == [key_of(engine, proxy)] * 2
    # One trusted proxy: the last address it appended counts, not what the client wrote before it.
    trusted_hops(1)
    ghost = unknown_number()
    c.post(STATUS, json={"case_no": ghost, "query_code": "111111"},
           headers={"X-Forwarded-For": "1.1.1.1, 203.0.113.7"})
    c.post(STATUS, json={"case_no": ghost, "query_code": "111111"}, headers={"X-Forwarded-For": "203.0.113.8"})
    c.post(STATUS, json={"case_no": ghost, "query_code": "111111"})  # no header: the socket's address
    assert addr_keys(engine, ghost) == [key_of(engine, "203.0.113.7"), key_of(engine, "203.0.113.8"),
                                        key_of(engine, proxy)]
    trusted_hops(2)
    ghost = unknown_number()
    c.post(STATUS, json={"case_no": ghost, "query_code": "111111"},
           headers={"X-Forwarded-For": "1.1.1.1, 198.51.100.9, 10.0.0.2"})
    assert addr_keys(engine, ghost) == [key_of(engine, "198.51.100.9")]


def test_address_counted_by_ipv6_64():
    from layers.core.sessions import address_source

    assert address_source("2001:db8:1:2:aaaa::1") == address_source("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_source("2001:db8:1:3::1") != address_source("2001:db8:1:2::1")
    assert address_source("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_source("192.0.2.1") == "192.0.2.1" and address_source("") == "unknown"


def test_old_failures_deleted_on_write(from_address, engine, clock):
    old_key = f"old-{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        city = conn.execute(text("SELECT id FROM city WHERE slug = 'haimen'")).scalar_one()
        for minutes in (121, 200, 119):
            conn.execute(text("""INSERT INTO lookup_failure (at, city_id, case_key, addr_key, endpoint)
                                 VALUES (CAST(:now AS timestamptz) - make_interval(mins => :m), :c, :k, :a, 'status')"""),
                         {"now": clock(), "m": minutes, "c": city, "k": old_key, "a": b"\0" * 16})
    from_address().post(STATUS, json={"case_no": unknown_number(), "query_code": "123456"})
    # Kept: the longest window + lock (60 + 60 minutes); older rows are gone.
    with engine.connect() as conn:
        left = conn.execute(text("SELECT round(extract(epoch FROM CAST(:now AS timestamptz) - at) / 60) "
                                 "FROM lookup_failure WHERE case_key = :k"), {"now": clock(), "k": old_key}).scalars().all()
    assert left == [119]


def _post(url: str, body: dict) -> tuple[int, dict, str | None]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read()), None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers.get("Retry-After")


def test_concurrent_guesses_counted_exactly_and_shared_by_apps(live_server, db_url, engine):
    ghost = unknown_number()
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda _: _post(live_server + STATUS, {"case_no": ghost, "query_code": "222222"}),
                            range(12)))
    codes = sorted(s for s, _, _ in got)
    assert codes == [404] * 5 + [429] * 7 and failures(engine, ghost) == 5
    assert all(ra and int(ra) > 800 for s, _, ra in got if s == 429)
    # Another app (its own pool, as another worker would be) sees the failures written by the first.
    from api.app import create_app

    other = unknown_number()
    for _ in range(3):
        assert _post(live_server + STATUS, {"case_no": other, "query_code": "333333"})[0] == 404
    with TestClient(create_app(db_url), client=("127.0.0.1", 40000)) as c2:  # the live server's client
        for _ in range(2):
            assert c2.post(STATUS, json={"case_no": other, "query_code": "333333"}).status_code == 404
        assert c2.post(STATUS, json={"case_no": other, "query_code": "333333"}).status_code == 429
    assert _post(live_server + STATUS, {"case_no": other, "query_code": "333333"})[0] == 429


def test_public_page_shows_the_429_message(live_server, browser):
    ghost = unknown_number()
    page = browser.new_page()
    try:
        page.goto(live_server + "/public")
        page.wait_for_selector("#category[data-loaded='1']")
        page.click("#tab-lookup")  # the look-up has its own tab
        page.fill("#case-no", ghost)
        page.fill("#query-code", "654321")
        for expect in ("还可再试 4 次", "还可再试 3 次", "还可再试 2 次", "还可再试 1 次", "查询已暂停"):
            page.click("#lookup-btn")
            page.wait_for_function("(t) => document.getElementById('status').textContent.includes(t)", arg=expect)
            assert page.inner_text("#status").startswith("查询失败")
        page.click("#lookup-btn")
        page.wait_for_selector("#limit-msg")
        msg = page.inner_text("#limit-msg")
        assert "查询码错误次数过多" in msg and "再试" in msg and "分钟后" in msg  # zh-CN: when to try again
        assert "Look-ups paused" in page.inner_text("#status") and page.is_hidden("#rate-form")
    finally:
        page.close()


def test_a_guess_that_waited_counts_the_failures_written_meanwhile(engine, haimen, clock):
    """A guess that waits for its address's lock while another transaction writes 4 failures of that
    number from that address counts them all: its own is the 5th, and the number is now paused for
    the address. (The time is read under the lock: read before, the guess counted only the failures
    up to the moment it arrived.)"""
    import threading
    import time

    from layers.cases import citizen

    ghost, addr = unknown_number(), new_address()
    key = key_of(engine, addr)
    holder = engine.connect()
    tx = holder.begin()
    holder.execute(text("SELECT pg_advisory_xact_lock(:c, hashtext(encode(:k, 'hex')))"),
                   {"c": citizen._LOCK_ADDR, "k": key})
    box = {}

    def guess():
        with engine.begin() as conn:
            try:
                citizen.status(conn, haimen, ghost, "123456", client=addr)
            except citizen.WrongCode as e:
                box["message"] = str(e)

    t = threading.Thread(target=guess)
    t.start()
    deadline = time.monotonic() + 20
    with engine.connect() as c:  # until the guess waits for the lock
        while time.monotonic() < deadline and not c.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'")).scalar():
            c.rollback()  # pg_stat_activity is read once per transaction
            time.sleep(0.02)
    clock.advance(seconds=1)
    for _ in range(4):
        holder.execute(text("""INSERT INTO lookup_failure (at, city_id, case_key, addr_key, endpoint)
                               VALUES (:at, :c, :k, :a, 'status')"""),
                       {"at": clock(), "c": haimen.id, "k": ghost, "a": key})
    clock.advance(seconds=1)
    tx.commit()
    holder.close()
    t.join(30)
    assert failures(engine, ghost) == 5
    assert "查询已暂停" in box["message"], box
