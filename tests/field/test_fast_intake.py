"""The fast intake of JSON reports (layers/field/intake.py, one call of cg_file_report_as): the same answers
as the synchronous path, a new grid noticed at once, the token checked before any refusal,
concurrent retries over real HTTP, duplicates written merged, and the one-statement write."""

from __future__ import annotations

import uuid

import numpy as np
import shapely
from sqlalchemy import text

from tests.conftest import auth, concurrently, count, metric_city
from tests.field.test_reports import spot


def _post(client, h, body, key=None, **params):
    return client.post("/api/v1/reports/json", json=body, params=params,
                       headers={**h, "Idempotency-Key": key or uuid.uuid4().hex})


def _cell_by_postgis(engine, city_id, lon, lat):
    """The active grid's cell covering the point, by PostGIS alone (south-west edges belong to it)."""
    with engine.connect() as c:
        return c.execute(text("""
            SELECT gc.code FROM grid_cell gc JOIN grid g ON g.id = gc.grid_id AND g.active
            JOIN city ON city.id = g.city_id
            WHERE g.city_id = :c AND ST_Covers(gc.geom, ST_Transform(ST_SetSRID(ST_MakePoint(:x, :y), 4326),
                                                                    city.working_srid))
            ORDER BY gc.code LIMIT 1"""), {"c": city_id, "x": lon, "y": lat}).scalar()


def test_answer_is_stored_whole_and_matches_the_database(client, make_inspector, engine, haimen):
    user, h = make_inspector()
    lon, lat = spot()
    r = _post(client, h, {"category_code": "E10301", "lon": lon, "lat": lat, "accuracy": 7, "description": "快速"})
    assert r.status_code == 201, r.text
    out = r.json()
    with engine.connect() as c:
        row = c.execute(text("""
            SELECT r.user_id, r.case_id, r.response, r.cell_code, r.flags, c.case_no, c.state, c.source, c.channel,
                   c.cell_code, c.description, c.step_deadline_at IS NOT NULL,
                   ST_X(ST_Transform(r.location, 4326)), ST_Y(ST_Transform(r.location, 4326))
            FROM field_report r JOIN case_file c ON c.id = r.case_id WHERE r.id = :i"""), {"i": out["id"]}).one()
        events = c.execute(text("SELECT kind, actor_id, actor_role, to_state FROM case_event WHERE case_id = :c"),
                           {"c": row[1]}).all()
    assert row[0] == user.id and row[1] == out["case"]["id"]
    assert row[2] == out  # the stored answer is the one given (a retry returns it)
    assert row[3] == out["cell_code"] == row[9] == _cell_by_postgis(engine, haimen.id, lon, lat)
    assert list(row[4]) == out["flags"] == ["no_photos"]
    assert (row[5], row[7], row[8], row[10]) == (out["case"]["case_no"], "inspector", "督查员", "快速")
    assert row[6] == out["case"]["state"] and row[11] == (row[6] == "collected")
    assert abs(row[12] - lon) < 1e-7 and abs(row[13] - lat) < 1e-7
    assert ("received", user.id, "inspector", "collected") in [tuple(e) for e in events]


def test_a_new_grid_is_noticed_at_once(client, make_inspector, engine):
    """The process caches the city's grid; the database refuses a report snapped with a grid that is
    no longer active (410 inside), so the report is snapped again with the new one."""
    from gis import crs as gcrs
    from layers.core import city as lcity

    with engine.begin() as conn:
        city, _ = metric_city(conn, f"regrid-{uuid.uuid4().hex[:6]}", "换网格测试", "990101",
                              shapely.box(640_000, 3_530_000, 641_000, 3_531_000))
    x, y = gcrs.transform_xy(np.array([640_555.0]), np.array([3_530_555.0]), city.working_crs, "EPSG:4326")
    lon, lat = float(x[0]), float(y[0])
    _, h = make_inspector()
    first = _post(client, h, {"category_code": "E10301", "lon": lon, "lat": lat, "accuracy": 5}, city=city.slug)
    assert first.status_code == 201, first.text
    with engine.begin() as conn:
        new_grid = lcity.generate_grid(conn, city, size=250.0)
    second = _post(client, h, {"category_code": "E20102", "lon": lon, "lat": lat, "accuracy": 5}, city=city.slug)
    assert second.status_code == 201, second.text
    with engine.connect() as c:
        grids = dict(c.execute(text("""SELECT r.id, gc.grid_id FROM field_report r JOIN grid_cell gc ON gc.id = r.cell_id
                                       WHERE r.id IN (:a, :b)"""), {"a": first.json()["id"], "b": second.json()["id"]}).all())
    assert grids[second.json()["id"]] == new_grid != grids[first.json()["id"]]
    assert second.json()["cell_code"] == _cell_by_postgis(engine, city.id, lon, lat)


def test_the_token_is_checked_before_any_refusal(client, tokens):
    bad = {"category_code": "nope", "lon": "x"}
    outside = {"category_code": "E10301", "lon": 100.0, "lat": 20.0, "accuracy": 5}
    for body in (bad, outside, None):
        r = client.post("/api/v1/reports/json", json=body, headers=auth("cg_not_a_token"))
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
        r = client.post("/api/v1/reports/json", json=body, headers=auth(tokens["planner"]))
        assert r.status_code == 403 and "planner" in r.json()["detail"], r.text
    assert client.post("/api/v1/reports/json", json=bad).status_code == 401
    # A signed-in inspector gets the reasons.
    r = client.post("/api/v1/reports/json", json=bad, headers=auth(tokens["inspector"]))
    assert r.status_code == 422 and "lon" in r.json()["detail"]
    r = client.post("/api/v1/reports/json", json=outside, headers=auth(tokens["inspector"]))
    assert r.status_code == 422 and "outside the city" in r.json()["detail"]
    r = client.post("/api/v1/reports/json", content=b"{not json", headers={**auth(tokens["inspector"]),
                                                                         "Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    r = client.post("/api/v1/reports/json", json=outside, headers={**auth(tokens["inspector"]), "Idempotency-Key": "a b"})
    assert r.status_code == 422 and "Idempotency-Key" in r.json()["detail"]


def test_same_key_other_report_is_a_conflict(client, make_inspector):
    _, h = make_inspector()
    lon, lat = spot()
    key = uuid.uuid4().hex
    assert _post(client, h, {"category_code": "E10301", "lon": lon, "lat": lat}, key).status_code == 201
    r = _post(client, h, {"category_code": "E20102", "lon": lon, "lat": lat}, key)
    assert r.status_code == 409 and "different report" in r.json()["detail"]


def test_concurrent_retries_over_http_make_one_report(live_server, make_inspector, engine):
    import httpx

    _, h = make_inspector()
    key = f"fast-{uuid.uuid4().hex}"
    lon, lat = spot()

    def send():
        with httpx.Client(timeout=60) as c:
            r = c.post(f"{live_server}/api/v1/reports/json", headers={**h, "Idempotency-Key": key},
                       json={"category_code": "E10301", "lon": lon, "lat": lat, "accuracy": 5})
            return r.status_code, r.json()

    results = concurrently(12, send)
    statuses = sorted(s for s, _ in results)
    assert statuses.count(201) == 1 and statuses.count(200) == 11, statuses
    assert len({b["id"] for _, b in results}) == 1 and len({b["case"]["case_no"] for _, b in results}) == 1
    assert count(engine, "SELECT count(*) FROM field_report WHERE idempotency_key = :k", k=key) == 1
    assert count(engine, "SELECT count(*) FROM case_file WHERE source_ref = :r",
                 r=f"field-report-{results[0][1]['id']}") == 1


def test_a_duplicate_is_written_merged_and_leaves_the_rollup_alone(client, make_inspector, engine, haimen):
    _, h = make_inspector()
    lon, lat = spot()
    a = _post(client, h, {"category_code": "E40101", "lon": lon, "lat": lat, "accuracy": 5}).json()
    with engine.connect() as c:
        before = c.execute(text("SELECT coalesce(sum(n), 0) FROM case_rollup WHERE city_id = :c"),
                           {"c": haimen.id}).scalar()
    b = _post(client, h, {"category_code": "E40101", "lon": lon + 0.0001, "lat": lat, "accuracy": 5}).json()
    assert b["case"]["state"] == "merged" and b["case"]["merged_into"] == a["case"]["id"]
    assert b["case"]["merged_into_no"] == a["case"]["case_no"]
    with engine.connect() as c:
        after = c.execute(text("SELECT coalesce(sum(n), 0) FROM case_rollup WHERE city_id = :c"),
                          {"c": haimen.id}).scalar()
        dup = c.execute(text("SELECT state, merged_into, step_deadline_at FROM case_file WHERE id = :i"),
                        {"i": b["case"]["id"]}).one()
        kinds = c.execute(text("""SELECT case_id, kind, from_state, to_state, data FROM case_event
                                  WHERE case_id IN (:a, :b) ORDER BY id"""),
                          {"a": a["case"]["id"], "b": b["case"]["id"]}).all()
    assert after == before  # a duplicate is not a case of its own in the counts
    assert dup == ("merged", a["case"]["id"], None)
    assert [(k[0], k[1], k[2], k[3]) for k in kinds] == [
        (a["case"]["id"], "received", None, "collected"), (b["case"]["id"], "received", None, "collected"),
        (b["case"]["id"], "merged", "collected", "merged"), (a["case"]["id"], "merged", "collected", "collected")]
    assert kinds[2][4] == {"merged_into": a["case"]["id"], "merged_into_no": a["case"]["case_no"]}
    assert kinds[3][4] == {"duplicate": b["case"]["id"], "duplicate_no": b["case"]["case_no"]}


def test_component_reports_take_the_synchronous_path_with_the_same_answer(client, make_inspector, engine, haimen):
    """A component class asks the asset registry: the answer has the same form."""
    _, h = make_inspector()
    lon, lat = spot()
    key = uuid.uuid4().hex
    r = _post(client, h, {"category_code": "010101", "lon": lon, "lat": lat, "accuracy": 5}, key)
    assert r.status_code == 201, r.text
    slow = r.json()
    again = _post(client, h, {"category_code": "010101", "lon": lon, "lat": lat, "accuracy": 5}, key)
    assert again.status_code == 200 and again.json() == slow  # the retry: the first answer, nothing new
    fast = _post(client, h, {"category_code": "E10301", "lon": lon, "lat": lat, "accuracy": 5}).json()
    assert set(slow) == set(fast)
    assert set(slow["case"]) == set(fast["case"]) and set(slow["location"]) == set(fast["location"])
    with engine.connect() as c:
        row = c.execute(text("""SELECT r.response, c.category_code, c.source, c.cell_code, c.asset_id
                                FROM field_report r JOIN case_file c ON c.id = r.case_id WHERE r.id = :i"""),
                        {"i": slow["id"]}).one()
    assert row[0] == slow and (row[1], row[2], row[3]) == ("010101", "inspector", slow["cell_code"])
    if slow["asset"] is None:  # no water cover within 15 m: the device point decides the cell
        assert slow["cell_code"] == _cell_by_postgis(engine, haimen.id, lon, lat) and row[4] is None
    else:
        assert slow["location"]["source"] == "asset" and row[4] is not None


def test_the_common_case_is_answered_before_routing_and_the_rest_by_the_route(client, make_inspector):
    """api.fastpath.ReportIntakeFastPath answers a recorded report and a retry itself; a refusal, a
    missing or unknown token are handed on to the route with the body, which answers as always."""
    _, h = make_inspector()
    counts = lambda: dict(getattr(client.app.state, "intake_fast_path", {"answered": 0, "handed_on": 0}))  # noqa: E731
    lon, lat = spot()
    body = {"category_code": "E10301", "lon": lon, "lat": lat, "accuracy": 5}
    key = uuid.uuid4().hex
    before = counts()
    first = _post(client, h, body, key)
    again = _post(client, h, body, key)
    mid = counts()
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["Idempotent-Replayed"] == "true" and again.json() == first.json()
    assert first.headers["content-type"] == "application/json" and int(first.headers["content-length"]) == len(first.content)
    assert mid["answered"] - before["answered"] == 2 and mid["handed_on"] == before["handed_on"]

    refused = [
        (_post(client, h, {**body, "lon": "east"}), 422, "lon"),
        (_post(client, h, {**body, "lon": 2.35, "lat": 48.85}), 422, "outside"),
        (_post(client, h, {**body, "category_code": "NOPE"}), 422, "NOPE"),
        (_post(client, h, body, "bad key with spaces"), 422, "Idempotency-Key"),
        (_post(client, {}, body), 401, "authentication required"),
        (_post(client, auth("cg_not_a_token"), body), 401, "unknown or revoked token"),
        (_post(client, h, {**body, "lon": lon + 0.01}, key), 409, "different report"),
    ]
    for r, status, words in refused:
        assert r.status_code == status, r.text
        assert words in r.text, r.text
    after = counts()
    assert after["handed_on"] - mid["handed_on"] == len(refused) and after["answered"] == mid["answered"]


def test_an_oversized_report_is_refused_unread(client, make_inspector):
    """A body over the cap is a 413, by the fast path as by the route; without a token it is a 401
    before the body is read."""
    from api.routers.inspector import MAX_JSON_REPORT_BYTES

    _, h = make_inspector()
    big = b'{"category_code": "E10301", "description": "' + b"x" * MAX_JSON_REPORT_BYTES + b'"}'
    r = client.post("/api/v1/reports/json", content=big, headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 413 and f"{MAX_JSON_REPORT_BYTES:,} bytes" in r.json()["detail"]
    r = client.post("/api/v1/reports/json", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 401 and "authentication required" in r.json()["detail"]
    # The route's own reader (behind the fast path) stops at the cap too, in chunks or by the header.
    import asyncio

    from fastapi import HTTPException
    from starlette.requests import Request

    from api.routers.inspector import read_capped

    def request(chunks, length=None):
        msgs = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        headers = [] if length is None else [(b"content-length", str(length).encode())]

        async def receive():
            return msgs.pop(0)

        return Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)

    from concurrent.futures import ThreadPoolExecutor

    def read(req):  # in a thread of its own: the browser tests' Playwright keeps an event loop in this one
        with ThreadPoolExecutor(1) as ex:
            return ex.submit(asyncio.run, read_capped(req, 4)).result()

    assert read(request([b"ab", b"cd"])) == b"abcd"
    for req in (request([b"ab", b"cd", b"e"]), request([b"a"], length=5)):
        try:
            read(req)
        except HTTPException as e:
            assert e.status_code == 413 and "4 bytes" in e.detail
        else:
            raise AssertionError("not refused")
