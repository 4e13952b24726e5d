"""Batch import: the real LA file into a Los Angeles test city (every row accounted for), Boston's
default point, Chinese headers in GBK, XLSX, JSON, bad files, idempotency, all-or-nothing rows."""

from __future__ import annotations

import json
import uuid

import openpyxl
import pytest
from sqlalchemy import text

from layers.cases import hotline
from layers.core.errors import InputError
from tests.conftest import SHARED, auth, rollup_equals_cases

LA = SHARED / "311" / "la_311_2020-01-01_03.csv"


@pytest.fixture(scope="module")
def la_city(engine):
    from layers.core import city as lcity

    slug = f"la-{uuid.uuid4().hex[:6]}"
    with engine.begin() as conn:
        boundary, src = lcity.read_boundary(SHARED / "311" / "la_neighborhood_councils.geojson", None)
        city = lcity.create_city(conn, slug=slug, name="洛杉矶 (test)", name_en="Los Angeles", adcode="999001",
                                 boundary=boundary, src_crs=src)
        lcity.generate_grid(conn, city, size=500)
    return city


def test_la_file_every_row_accounted_for(engine, la_city):
    with engine.begin() as conn:
        rep = hotline.import_cases(conn, la_city, LA, mapping="la_311", progress=False)
    d = rep.as_dict()
    assert rep.rows == 10_000 and d["accounted"]
    assert rep.imported + rep.rejected + rep.skipped == 10_000
    assert rep.imported > 9_000
    # Rows without coordinates are imported and wait for a location; rows outside the neighbourhood
    # councils are rejected with that reason.
    assert rep.needs_location >= 11
    reasons = {e["reason"] for e in rep.errors}
    assert reasons <= {"the location is outside the city"}, reasons
    with engine.connect() as conn:
        n, closed, void, located, no_loc = conn.execute(text("""
            SELECT count(*), count(*) FILTER (WHERE state = 'closed'), count(*) FILTER (WHERE state = 'void'),
                   count(cell_id), count(*) FILTER (WHERE location IS NULL)
            FROM case_file WHERE city_id = :c"""), {"c": la_city.id}).one()
        events = conn.execute(text("""SELECT count(*) FROM case_event e JOIN case_file c ON c.id = e.case_id
                                      WHERE c.city_id = :c AND e.kind = 'received'"""), {"c": la_city.id}).scalar_one()
        one = conn.execute(text("""SELECT category_code, channel, state, received_at AT TIME ZONE 'America/Los_Angeles',
                                          cell_code IS NOT NULL FROM case_file
                                   WHERE city_id = :c AND source_ref = '1-1523590121'"""), {"c": la_city.id}).one()
    assert n == rep.imported and events == n and located == rep.located and no_loc == rep.needs_location
    assert closed > 8_000 and void > 200
    assert one[0] == "E10201" and one[1] == "电话" and one[2] == "closed" and str(one[3]) == "2020-01-01 00:05:00"
    assert one[4]
    # Idempotent: a second run skips every row imported before.
    with engine.begin() as conn:
        again = hotline.import_cases(conn, la_city, LA, mapping="la_311", progress=False)
    assert again.imported == 0 and again.skipped == rep.imported and again.as_dict()["accounted"]


def test_boston_default_point_is_unknown(engine, tmp_path):
    from shapely.geometry import box

    from layers.core import city as lcity

    slug = f"bos-{uuid.uuid4().hex[:6]}"
    with engine.begin() as conn:
        city = lcity.create_city(conn, slug=slug, name="波士顿 (test)", adcode="999002",
                                 boundary=box(-71.20, 42.22, -70.98, 42.40), src_crs="EPSG:4326")
        lcity.generate_grid(conn, city, size=1000)
        # No mapping list of sentinels: the rule finds City Hall by itself.
        m = hotline.load_mapping("boston_311")
        m.pop("sentinel_points")
        rep = hotline.import_cases(conn, city, SHARED / "311" / "boston311-100.csv", mapping=m, progress=False)
        at_hall = conn.execute(text("""SELECT count(*) FROM case_file WHERE city_id = :c AND location IS NOT NULL
            AND ST_DWithin(ST_Transform(location, 4326), ST_SetSRID(ST_MakePoint(-71.0587, 42.3594), 4326), 1e-6)"""),
            {"c": city.id}).scalar_one()
    assert rep.sentinel_points == [{"lon": -71.0587, "lat": 42.3594, "rows": 19}]
    assert at_hall == 0
    assert rep.as_dict()["accounted"] and rep.rows == 100
    assert rep.needs_location >= 19


def test_chinese_headers_gbk_and_row_errors(engine, haimen, tmp_path):
    ref = uuid.uuid4().hex[:8]
    rows = [
        "工单编号,受理时间,类别,渠道,诉求类型,诉求内容,地址,经度,纬度,来电人,联系电话",
        f"{ref}-1,2026-03-02 09:15,E10101,电话,投诉,垃圾暴露,海门街道,121.17,31.89,李四,13900000001",
        f"{ref}-2,2026年3月2日 10时05分,010102,微信,求助,井盖破损,,121.18,31.90,,",
        f"{ref}-3,2026-02-30 09:00,E10101,电话,投诉,日期不存在,,121.17,31.89,,",
        f"{ref}-4,2026-03-02 09:00,X999,电话,投诉,类别不存在,,121.17,31.89,,",
        f"{ref}-5,2026-03-02 09:00,E10101,飞鸽,投诉,渠道不存在,,121.17,31.89,,",
        f"{ref}-6,2026-03-02 09:00,E10101,电话,投诉,城外,,116.40,39.90,,",
        f"{ref}-1,2026-03-02 09:00,E10101,电话,投诉,重复编号,,121.17,31.89,,",
        f"{ref}-7,2026-03-02 09:00,E10101,电话,投诉,没有坐标,某某路口,,,,",
    ]
    p = tmp_path / "hotline_gbk.csv"
    p.write_bytes("\n".join(rows).encode("gbk"))
    with engine.begin() as conn:
        rep = hotline.import_cases(conn, haimen, p, progress=False)
    assert (rep.rows, rep.imported, rep.rejected) == (8, 3, 5)
    why = {e["source_ref"]: e["reason"] for e in rep.errors}
    assert why[f"{ref}-3"].startswith("impossible or unreadable received time '2026-02-30")
    assert why[f"{ref}-4"] == "unknown category 'X999'"
    assert why[f"{ref}-5"].startswith("unknown channel '飞鸽'")
    assert why[f"{ref}-6"] == "the location is outside the city"
    assert why[f"{ref}-1"] == "duplicate source case number in the file"
    assert rep.needs_location == 1
    assert "13900000001" not in json.dumps(rep.as_dict(), ensure_ascii=False)
    with engine.connect() as conn:
        got = dict(conn.execute(text("""SELECT source_ref, urgency FROM case_file
                                        WHERE source_ref LIKE :r"""), {"r": f"{ref}-%"}).all())
        phone = conn.execute(text("""SELECT k.phone FROM case_contact k JOIN case_file c ON c.id = k.case_id
                                     WHERE c.source_ref = :r"""), {"r": f"{ref}-1"}).scalar_one()
        t2 = conn.execute(text("""SELECT received_at AT TIME ZONE 'Asia/Shanghai' FROM case_file
                                  WHERE source_ref = :r"""), {"r": f"{ref}-2"}).scalar_one()
    assert set(got) == {f"{ref}-1", f"{ref}-2", f"{ref}-7"} and phone == "13900000001"
    assert str(t2) == "2026-03-02 10:05:00"


def test_xlsx_and_json_and_bad_files(engine, haimen, tmp_path):
    ref = uuid.uuid4().hex[:8]
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["case_no", "received_at", "category", "channel", "description", "lon", "lat"])
    ws.append([f"{ref}-x1", "2026-03-03 08:00:00", "E10301", "APP", "dirty road", 121.2, 31.9])
    wb.save(tmp_path / "c.xlsx")
    (tmp_path / "c.json").write_text(json.dumps([{"source_ref": f"{ref}-j1", "received_at": "2026-03-03T08:00:00+08:00",
                                                  "category": "E10301", "channel": "网站", "lon": 121.21, "lat": 31.91}]))
    with engine.begin() as conn:
        assert hotline.import_cases(conn, haimen, tmp_path / "c.xlsx", progress=False).imported == 1
        assert hotline.import_cases(conn, haimen, tmp_path / "c.json", progress=False).imported == 1
    (tmp_path / "nohdr.csv").write_text("a,b\n1,2\n")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.xlsx").write_bytes(b"PK\x03\x04garbage")
    with engine.begin() as conn:
        with pytest.raises(InputError, match="no column for received_at"):
            hotline.import_cases(conn, haimen, tmp_path / "nohdr.csv", progress=False)
        with pytest.raises(InputError, match="malformed"):
            hotline.import_cases(conn, haimen, tmp_path / "bad.json", progress=False)
        with pytest.raises(InputError, match="XLSX"):
            hotline.import_cases(conn, haimen, tmp_path / "bad.xlsx", progress=False)
        with pytest.raises(InputError, match="mapping names column"):
            hotline.import_cases(conn, haimen, tmp_path / "c.xlsx", mapping={"columns": {"lon": "nope"}}, progress=False)


def test_import_through_the_api(client, tokens, tmp_path):
    ref = uuid.uuid4().hex[:8]
    csv = f"source_ref,received_at,category,channel,lon,lat\n{ref},2026-03-04 09:00,E10101,电话,121.17,31.89\n"
    r = client.post("/api/v1/cases/import", files={"file": ("x.csv", csv.encode())},
                    headers=auth(tokens["operator"]))
    assert r.status_code == 200, r.text
    assert r.json()["imported"] == 1 and r.json()["accounted"]
    r = client.post("/api/v1/cases/import", files={"file": ("x.csv", csv.encode())},
                    headers=auth(tokens["operator"]))
    assert r.json()["skipped"] == 1 and r.json()["imported"] == 0
    r = client.post("/api/v1/cases/import", files={"file": ("x.csv", b"\xff\xfe\x00garbage\x81")},
                    headers=auth(tokens["operator"]))
    assert r.status_code == 422


def test_cli(engine, haimen, tmp_path, monkeypatch, capsys, db_url):
    ref = uuid.uuid4().hex[:8]
    p = tmp_path / "cli.csv"
    p.write_text(f"source_ref,received_at,category,channel,lon,lat\n{ref},2026-03-04 09:00,E10101,电话,121.17,31.89\n"
                 f"{ref}b,2026-13-04 09:00,E10101,电话,121.17,31.89\n")
    monkeypatch.setenv("DATABASE_URL", db_url)
    from citygrid import settings

    settings.database.cache_clear() if hasattr(settings.database, "cache_clear") else None
    errs = tmp_path / "errors.csv"
    assert hotline.main_import_cases([str(p), "--city", "haimen", "--no-progress", "--errors", str(errs)]) == 0
    out = capsys.readouterr().out
    assert "1 imported" in out and "1 rejected" in out
    assert "impossible or unreadable received time" in errs.read_text(encoding="utf-8-sig")
    with engine.connect() as conn:  # written to the database DATABASE_URL names
        assert conn.execute(text("SELECT count(*) FROM case_file WHERE source_ref = :r"), {"r": ref}).scalar_one() == 1
    settings.database.cache_clear() if hasattr(settings.database, "cache_clear") else None


def _rows_of(conn, refs):
    """What an import wrote for these source case numbers: cases, events, contacts (by source_ref)."""
    cases = conn.execute(text("""
        SELECT source_ref, channel, received_at, category_code, urgency, request_type, description, address,
               ST_AsEWKB(location), location_source, cell_id, cell_code, area_code, state, step_deadline_at,
               close_deadline_at, closed_at FROM case_file WHERE source_ref = ANY(:r) ORDER BY source_ref"""),
        {"r": refs}).all()
    events = conn.execute(text("""
        SELECT c.source_ref, e.kind, e.at, e.from_state, e.to_state, e.data FROM case_event e
        JOIN case_file c ON c.id = e.case_id WHERE c.source_ref = ANY(:r) ORDER BY 1, 2"""), {"r": refs}).all()
    contacts = conn.execute(text("""
        SELECT c.source_ref, k.name, k.phone FROM case_contact k JOIN case_file c ON c.id = k.case_id
        WHERE c.source_ref = ANY(:r) ORDER BY 1"""), {"r": refs}).all()
    return cases, events, contacts


def _mixed_file(path, ref: str, n: int = 23) -> list[str]:
    """n rows: located, address-only, closed (in time and late), void; awkward CSV text in some."""
    lines = ["工单编号,受理时间,类别,渠道,诉求类型,诉求内容,地址,经度,纬度,来电人,联系电话,状态,办结时间"]
    refs = []
    for i in range(n):
        r = f"{ref}-{i}"
        refs.append(r)
        state, closed = ["", ""], ""
        if i % 5 == 1:
            state, closed = ["办结", "2026-03-05 10:00:00"], ""
        elif i % 5 == 3:
            state = ["作废", ""]
        lon, lat = (f"{121.15 + 0.003 * i:.4f}", f"{31.88 + 0.001 * i:.4f}") if i % 4 else ("", "")
        text_ = f'"问题 {i}, 含逗号 ""引号""\r\n和换行"' if i % 3 == 0 else f"问题 {i}"
        who = ("王五", f"1380000{i:04d}") if i % 2 else ("", "")
        lines.append(f"{r},2026-03-0{1 + i % 4} 0{i % 10}:1{i % 6}:00,{['E10101', '010102', 'E10301'][i % 3]},"
                     f"{['电话', '微信'][i % 2]},{['投诉', '求助'][i % 2]},{text_},海门街道某路{i}号,{lon},{lat},"
                     f"{who[0]},{who[1]},{state[0]},{state[1] or closed}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return refs


def test_rounds_write_what_one_round_writes(engine, haimen, tmp_path):
    """The write is pipelined in rounds (a thread COPYs round k while round k+1 is built): any round
    size writes the same cases, events, contacts and rollup; quotes, commas and line breaks survive."""
    got = []
    for chunk in (1_000, 4, 1):
        ref = uuid.uuid4().hex[:8]
        refs = _mixed_file(tmp_path / f"m{chunk}.csv", ref)
        with engine.begin() as conn:
            rep = hotline.import_cases(conn, haimen, tmp_path / f"m{chunk}.csv", progress=False, chunk=chunk)
        assert rep.as_dict()["accounted"] and (rep.imported, rep.rejected) == (23, 0), rep.errors
        assert rep.pipeline["rounds"] == -(-23 // chunk)
        assert rep.pipeline["rows"] == {"case_file": 23, "case_event": 23 + 5 + 4, "case_contact": 11}
        with engine.connect() as conn:
            cases, events, contacts = _rows_of(conn, refs)
            rollup_equals_cases(conn, haimen)
        strip = lambda rows: [(r[0].split("-", 1)[1], *r[1:]) for r in rows]  # noqa: E731
        got.append((strip(cases), strip(events), strip(contacts)))
        assert len(cases) == 23 and len(events) == 32 and len(contacts) == 11
        d0 = {r[0]: r for r in cases}[f"{ref}-0"]
        assert d0[6] == '问题 0, 含逗号 "引号"\r\n和换行' and d0[8] is None and d0[9] is None  # address only
        assert {r[0]: r[13] for r in cases}[f"{ref}-1"] == "closed"
        assert {r[0]: r[13] for r in cases}[f"{ref}-3"] == "void"
    assert got[0] == got[1] == got[2]


def test_failed_round_leaves_nothing(engine, haimen, tmp_path, monkeypatch):
    """A COPY the server refuses in a later round: the error reaches the caller, and the transaction
    holds nothing of the file (not even the rounds written before)."""
    ref = uuid.uuid4().hex[:8]
    refs = _mixed_file(tmp_path / "f.csv", ref)
    real = hotline._Pipeline._copy
    seen = []

    def copy(self, table, columns, payload):
        seen.append(table)
        if table == "case_file" and seen.count("case_file") == 3:
            payload = b"x" + payload[payload.index(b","):]  # an id the server cannot read
        return real(self, table, columns, payload)

    monkeypatch.setattr(hotline._Pipeline, "_copy", copy)
    import psycopg

    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        with engine.begin() as conn:
            hotline.import_cases(conn, haimen, tmp_path / "f.csv", progress=False, chunk=5)
    assert seen.count("case_file") == 3  # rounds 1 and 2 were written, round 3 failed, the rest never sent
    with engine.connect() as conn:
        assert _rows_of(conn, refs) == ([], [], [])
        rollup_equals_cases(conn, haimen)
    # The same file imports whole afterwards.
    monkeypatch.setattr(hotline._Pipeline, "_copy", real)
    with engine.begin() as conn:
        assert hotline.import_cases(conn, haimen, tmp_path / "f.csv", progress=False, chunk=5).imported == 23


def test_contact_error_does_not_quote_the_phone(engine, haimen, tmp_path, monkeypatch):
    ref = uuid.uuid4().hex[:8]
    _mixed_file(tmp_path / "c.csv", ref)
    real = hotline._Pipeline._copy

    def copy(self, table, columns, payload):
        if table == "case_contact":
            payload = payload.replace(b",13800000001", b",13800000001" + b"9" * 40)  # too long for varchar(40)
        return real(self, table, columns, payload)

    monkeypatch.setattr(hotline._Pipeline, "_copy", copy)
    with pytest.raises(RuntimeError, match="writing the contacts failed") as e:
        with engine.begin() as conn:
            hotline.import_cases(conn, haimen, tmp_path / "c.csv", progress=False)
    assert "1380000" not in str(e.value) and "王五" not in str(e.value) and e.value.__cause__ is None


def test_time_formats_fast_and_slow_agree():
    import pandas as pd

    vals = pd.Series(["2026-03-02 09:15:00", "2026-03-02 09:15", "2026年3月2日 10时05分", "2026-02-30 09:00:00", "",
                      "03/02/2026 09:15:00 AM", "2026-03-08 02:30:00"])
    got = hotline.parse_times(vals, "Asia/Shanghai")
    one_by_one = [hotline.parse_times(pd.Series([v]), "Asia/Shanghai").iloc[0] for v in vals]
    assert [str(x) for x in got] == [str(x) for x in one_by_one]
    assert str(got[0]) == "2026-03-02 01:15:00+00:00" and str(got[2]) == "2026-03-02 02:05:00+00:00"
    assert pd.isna(got[3]) and pd.isna(got[4])
    # Zoned values beside plain ones go through the reader of every format, as a whole column.
    zoned = hotline.parse_times(pd.Series(["2026-03-03T08:00:00+08:00", "2026-03-03T09:00:00+08:00"]), "UTC")
    assert [str(x) for x in zoned] == ["2026-03-03 00:00:00+00:00", "2026-03-03 01:00:00+00:00"]


def test_department_index_skips_cases_without_a_department(engine, haimen):
    """Migration 0010: imported (undispatched) cases add no entry to the department worklist index,
    and a query by department still uses it."""
    with engine.connect() as conn:
        ddl = conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = 'case_department_idx'")).scalar_one()
        assert ddl.endswith("WHERE (department_id IS NOT NULL)"), ddl
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(r[0] for r in conn.execute(text(
            "EXPLAIN SELECT id FROM case_file WHERE department_id = 1 AND state = 'dispatched'")))
    assert "case_department_idx" in plan, plan


def test_failed_build_stops_the_writer(engine, haimen, tmp_path, monkeypatch):
    """An error while a round is built (here: round 3) reaches the caller as it is; the writer thread
    stops and the transaction holds nothing of the file."""
    import threading

    ref = uuid.uuid4().hex[:8]
    refs = _mixed_file(tmp_path / "b.csv", ref)
    real, calls = hotline._csv, []

    def csv_(columns):
        calls.append(1)
        if len(calls) == 7:  # rounds 1 and 2 made 3 payloads each
            raise MemoryError("no memory for round 3")
        return real(columns)

    monkeypatch.setattr(hotline, "_csv", csv_)
    with pytest.raises(MemoryError, match="round 3"):
        with engine.begin() as conn:
            hotline.import_cases(conn, haimen, tmp_path / "b.csv", progress=False, chunk=5)
    assert not [t for t in threading.enumerate() if t.name == "citygrid-import-copy"]
    with engine.connect() as conn:
        assert _rows_of(conn, refs) == ([], [], [])


# -- issue 10: text kept as given, one rule for long text and bad closures, the source's words ------

def test_text_kept_as_given_and_the_source_words_kept(engine, haimen, tmp_path):
    ref = uuid.uuid4().hex[:8]
    descr = "　　小区门口路灯不亮。\n　　已持续三天, 请尽快处理。"  # full-width paragraph indents, two paragraphs
    long = "很长的描述" * 1400  # 7,000 characters: over the API's 5,000
    rows = [["工单编号", "受理时间", "类别", "渠道", "诉求类型", "诉求内容", "地址", "状态", "办结时间", "经度", "纬度"],
            [f"{ref}-1", "2026-03-02 09:15", "E10101", "电话", "投诉", descr, "  海门街道 ", "", "", "121.17", "31.89"],
            [f"{ref}-2", "2026-03-02 09:20", "E10101", "电话", "投诉", long, "", "", "", "121.17", "31.89"],
            # Closed before it was received: the case is kept, the closure dropped.
            [f"{ref}-3", "2026-03-02 10:00", "E10101", "电话", "投诉", "结案早于受理", "", "办结", "2026-03-01 10:00",
             "121.18", "31.90"]]
    p = tmp_path / "text.csv"
    import csv as _csv

    with p.open("w", encoding="utf-8", newline="") as f:
        _csv.writer(f).writerows(rows)
    with engine.begin() as conn:
        rep = hotline.import_cases(conn, haimen, p, progress=False)
    assert (rep.rows, rep.imported, rep.rejected) == (3, 2, 1)
    why = {e["source_ref"]: e["reason"] for e in rep.errors}
    assert why[f"{ref}-2"] == "description is longer than 5000 characters (the API's limit)"
    assert rep.trimmed_cells == 1  # the address's spaces; the indents are text
    assert rep.closed_before_received == 1
    with engine.connect() as conn:
        got = {r[0]: r[1:] for r in conn.execute(text("""
            SELECT source_ref, description, address, state, closed_at, source_data FROM case_file
            WHERE source_ref LIKE :r"""), {"r": f"{ref}-%"})}
    assert got[f"{ref}-1"][0] == descr and got[f"{ref}-1"][1] == "海门街道"
    assert got[f"{ref}-1"][4] == {"category": "E10101"}
    state, closed_at, said = got[f"{ref}-3"][2:]
    assert state == "collected" and closed_at is None
    assert said == {"category": "E10101", "status": "办结", "closed_at_dropped": "2026-03-01 10:00",
                    "closed_at_dropped_reason": "closed before it was received"}


def test_unmapped_value_takes_the_star_default_and_raw_labels_are_kept(engine, la_city, tmp_path):
    """An LA row with a channel the mapping does not list ("Fax") takes its "*" default; the LA
    request type and status stay beside the mapped class and state."""
    ref = f"9-{uuid.uuid4().hex[:8]}"
    header = "srnumber,createddate,requesttype,requestsource,address,latitude,longitude,status,closeddate"
    rows = [header, f"{ref},01/02/2020 08:00:00 AM,Bulky Items,Fax,1 Main St,34.05,-118.25,Closed,01/03/2020 09:00:00 AM"]
    (tmp_path / "fax.csv").write_text("\n".join(rows), encoding="utf-8")
    with engine.begin() as conn:
        rep = hotline.import_cases(conn, la_city, tmp_path / "fax.csv", mapping="la_311", progress=False)
        row = conn.execute(text("SELECT channel, category_code, state, source_data FROM case_file WHERE source_ref = :r"),
                           {"r": ref}).one()
    assert rep.imported == 1, rep.errors
    assert row[0] == "其他" and row[1] == "E10102" and row[2] == "closed"
    assert row[3] == {"category": "Bulky Items", "status": "Closed"}


def test_bulk_path_writes_what_the_per_row_path_writes(engine, haimen, tmp_path):
    """A superuser's import checks the foreign keys once per import (replica mode, migration 0022):
    it writes the same cases, events, contacts and rollup as the per-row path; the case tables' own
    triggers (rollup, outbox, append-only) still fire in replica mode."""
    with engine.connect() as conn:
        if not hotline.bulk_mode(conn):
            pytest.skip("the test database's role is not a superuser: no bulk path to compare")
        enabled = dict(conn.execute(text("""SELECT tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal
            AND tgrelid = ANY(ARRAY['case_file', 'case_event']::regclass[])""")).all())
    assert {enabled[t] for t in ("case_rollup_ins", "case_rollup_upd", "case_rollup_del", "case_event_notify",
                                 "case_event_no_update")} == {"A"}
    got = []
    for bulk in (True, False):
        ref = uuid.uuid4().hex[:8]
        refs = _mixed_file(tmp_path / f"b{bulk}.csv", ref)
        with engine.begin() as conn:
            rep = hotline.import_cases(conn, haimen, tmp_path / f"b{bulk}.csv", progress=False, chunk=7, bulk=bulk)
            # The session is back in origin mode after the import: per-row keys are checked again.
            assert conn.execute(text("SHOW session_replication_role")).scalar_one() == "origin"
        assert rep.pipeline["bulk"] is bulk and rep.imported == 23
        with engine.connect() as conn:
            cases, events, contacts = _rows_of(conn, refs)
            rollup_equals_cases(conn, haimen)
        strip = lambda rows: [(r[0].split("-", 1)[1], *r[1:]) for r in rows]  # noqa: E731
        got.append((strip(cases), strip(events), strip(contacts)))
    assert got[0] == got[1] and len(got[0][0]) == 23 and len(got[0][1]) == 32 and len(got[0][2]) == 11
    # The append-only guard of case_event holds in replica mode too.
    import sqlalchemy.exc

    with pytest.raises(sqlalchemy.exc.DBAPIError, match="append-only"):
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            conn.execute(text("""UPDATE case_event SET note = 'x' WHERE case_id =
                                 (SELECT id FROM case_file WHERE source_ref = :r)"""), {"r": refs[0]})


def test_bulk_check_finds_a_dangling_key(engine, haimen, tmp_path):
    """The per-import check reads every foreign key of the case tables from the catalog: a cell that
    does not exist is found, and the import's transaction fails."""
    ref = uuid.uuid4().hex[:8]
    refs = _mixed_file(tmp_path / "d.csv", ref)
    with engine.connect() as conn:
        if not hotline.bulk_mode(conn):
            pytest.skip("no bulk path for a non-superuser")
        conn.rollback()
        with conn.begin():
            hotline.import_cases(conn, haimen, tmp_path / "d.csv", progress=False, bulk=True)
            lo, hi, some = conn.execute(text("""SELECT min(id), max(id), min(id) FILTER (WHERE cell_id IS NOT NULL)
                                                FROM case_file WHERE source_ref = ANY(:r)"""), {"r": refs}).one()
            hotline.check_foreign_keys(conn, lo, hi)  # all good
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            conn.execute(text("UPDATE case_file SET cell_id = -7 WHERE id = :i"), {"i": some})
            with pytest.raises(RuntimeError, match="cell_id is not in grid_cell"):
                hotline.check_foreign_keys(conn, lo, hi)
            conn.rollback()


def test_bulk_path_refused_beside_an_origin_only_trigger(engine):
    """A trigger someone adds later to a case table, enabled in origin mode only, would be skipped by
    replica mode: the import then takes the per-row path."""
    with engine.connect() as conn:
        if not hotline.bulk_mode(conn):
            pytest.skip("no bulk path for a non-superuser")
        conn.rollback()
        with conn.begin():
            conn.execute(text("""CREATE FUNCTION pg_temp.noop() RETURNS trigger LANGUAGE plpgsql
                                 AS $$ BEGIN RETURN NULL; END $$"""))
            conn.execute(text("""CREATE TRIGGER test_later AFTER INSERT ON case_contact
                                 FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.noop()"""))
            assert hotline.bulk_mode(conn) is False
            conn.rollback()
        assert hotline.bulk_mode(conn) is True
