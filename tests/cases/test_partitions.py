"""Monthly partitions of case_file / case_event (migration 0025, layers/cases/partitions.py): the tables
are partitioned, cases and events land in their month, the default partition's rows move out when their
month is made (children, rollup untouched), unique keys hold across partitions through case_key, deletes
cascade through case_key, the import creates its months, case_verification.event_id is still checked, and
a closed month is archived (dumped, restorable, gone)."""

from __future__ import annotations

import datetime as dt
import subprocess
import uuid

import psycopg
import pytest
from sqlalchemy import exc, text

from layers.cases import hotline, partitions
from layers.core.errors import Conflict
from tests.conftest import metric_city, rollup_equals_cases

UTC = dt.UTC


def _case(conn, city, at: dt.datetime, *, no: str | None = None, ref: str | None = None, state: str = "collected",
          events: list[dt.datetime] = (), phone: str | None = None) -> int:
    """One case written straight into case_file (no partition made for it), its events and contact."""
    cid = conn.execute(text("""
        INSERT INTO case_file (city_id, case_no, source, channel, source_ref, received_at, category_code, state)
        VALUES (:c, :no, 'hotline', '电话', :ref, :at, 'E40101', :st) RETURNING id"""),
        {"c": city.id, "no": no or f"T-{uuid.uuid4().hex[:12]}", "ref": ref, "at": at, "st": state}).scalar_one()
    for k, t in enumerate(events):
        conn.execute(text("""INSERT INTO case_event (case_id, at, kind, to_state) VALUES (:id, :at, :k, 'collected')"""),
                     {"id": cid, "at": t, "k": "received" if k == 0 else "supervised"})
    if phone:
        conn.execute(text("INSERT INTO case_contact (case_id, phone) VALUES (:id, :p)"), {"id": cid, "p": phone})
    return cid


def _where(conn, table: str, col: str, value: int) -> list[str]:
    return conn.execute(text(f"SELECT tableoid::regclass::text FROM {table} WHERE {col} = :v ORDER BY id"),
                        {"v": value}).scalars().all()


def _rollup(conn, city) -> list:
    return [tuple(r) for r in conn.execute(text("""SELECT cell_id, day, category_code, channel, n FROM case_rollup
                                                    WHERE city_id = :c ORDER BY 1, 2, 3, 4"""), {"c": city.id})]


def test_tables_are_partitioned(conn):
    parted = dict(conn.execute(text("""SELECT partrelid::regclass::text, partstrat FROM pg_partitioned_table""")).all())
    assert parted.get("case_file") == "r" and parted.get("case_event") == "r"
    keys = conn.execute(text("""SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint
                                WHERE conname IN ('case_file_pkey', 'case_event_pkey')""")).all()
    assert sorted(d for _, d in keys) == ["PRIMARY KEY (id, at)", "PRIMARY KEY (id, received_at)"]
    # Nothing references the partitioned tables; every former key to case_file now points at case_key.
    assert conn.execute(text("""SELECT count(*) FROM pg_constraint WHERE contype = 'f'
                                AND confrelid IN ('case_file'::regclass, 'case_event'::regclass)""")).scalar_one() == 0
    to_key = set(conn.execute(text("""SELECT conrelid::regclass::text || '.' || conname FROM pg_constraint
                                      WHERE contype = 'f' AND conparentid = 0 AND confrelid = 'case_key'::regclass""")
                              ).scalars())
    assert {"case_file.case_file_merged_into_fkey", "case_event.case_event_case_id_fkey",
            "case_contact.case_contact_case_id_fkey", "case_verification.case_verification_case_id_fkey",
            "field_report.field_report_case_id_fkey", "notify_outbox.notify_outbox_case_id_fkey"} <= to_key
    # The triggers of 0022 stay ENABLE ALWAYS, case_key's are too (bulk imports run in replica mode).
    trig = dict(conn.execute(text("""SELECT tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal AND tgparentid = 0
                                     AND tgrelid IN ('case_file'::regclass, 'case_event'::regclass)""")).all())
    assert {n: trig.get(n) for n in ("case_rollup_ins", "case_rollup_upd", "case_rollup_del", "case_event_notify",
                                     "case_event_no_update", "case_key_ins", "case_key_upd", "case_key_del")} \
        == dict.fromkeys(("case_rollup_ins", "case_rollup_upd", "case_rollup_del", "case_event_notify",
                          "case_event_no_update", "case_key_ins", "case_key_upd", "case_key_del"), "A")
    # The current month and three ahead exist (migration, service start).
    m = partitions.month_of(dt.datetime.now(UTC))
    for _ in range(4):
        for t in ("case_file", "case_event"):
            assert conn.execute(text("SELECT to_regclass(:n) IS NOT NULL"), {"n": partitions.name(t, m)}).scalar_one()
        m = partitions.next_month(m)


def test_case_lands_in_its_month(conn, haimen):
    from layers.cases import workflow as wf

    at = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    out = wf.open_case(conn, haimen, source="hotline", channel="电话", category_code="E40101", received_at=at,
                       description="partition test", contact={"phone": "13800000000"})
    month = partitions.month_of(at)
    assert _where(conn, "case_file", "id", out.id) == [partitions.name("case_file", month)]
    assert set(_where(conn, "case_event", "case_id", out.id)) == {partitions.name("case_event", month)}
    key = conn.execute(text("SELECT city_id, case_no, received_at FROM case_key WHERE id = :i"), {"i": out.id}).one()
    assert tuple(key) == (haimen.id, out.case_no, at)


def test_default_partition_then_ensure_months(conn, haimen):
    at = dt.datetime(2011, 5, 10, 3, 0, tzinfo=UTC)
    assert partitions.ensure_months(conn, dt.date(2011, 4, 1), dt.date(2011, 4, 30)) == \
        ["case_file_201104", "case_event_201104"]
    cid = _case(conn, haimen, at, events=[at, at + dt.timedelta(days=1)], phone="13900000000")
    other = _case(conn, haimen, dt.datetime(2011, 7, 1, tzinfo=UTC), events=[dt.datetime(2011, 7, 1, tzinfo=UTC)])
    assert _where(conn, "case_file", "id", cid) == ["case_file_default"]
    assert _where(conn, "case_event", "case_id", cid) == ["case_event_default"] * 2
    before = _rollup(conn, haimen)
    outbox = conn.execute(text("SELECT count(*) FROM notify_outbox")).scalar_one()
    made = partitions.ensure_months(conn, dt.datetime(2011, 5, 1, tzinfo=UTC), dt.datetime(2011, 5, 31, tzinfo=UTC))
    assert made == ["case_file_201105", "case_event_201105"]
    assert _where(conn, "case_file", "id", cid) == ["case_file_201105"]
    assert _where(conn, "case_event", "case_id", cid) == ["case_event_201105"] * 2
    # The other month's case stays in the default partition; nothing was lost, counted twice or notified.
    assert _where(conn, "case_file", "id", other) == ["case_file_default"]
    assert _where(conn, "case_event", "case_id", other) == ["case_event_default"]
    assert conn.execute(text("SELECT phone FROM case_contact WHERE case_id = :i"), {"i": cid}).scalar_one() == "13900000000"
    assert conn.execute(text("SELECT count(*) FROM case_key WHERE id IN (:a, :b)"), {"a": cid, "b": other}).scalar_one() == 2
    assert _rollup(conn, haimen) == before
    assert conn.execute(text("SELECT count(*) FROM notify_outbox")).scalar_one() == outbox
    rollup_equals_cases(conn, haimen)
    # The default partition is attached again, the month's partition has the parent's indexes and keys.
    assert conn.execute(text("""SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class c
                                WHERE c.relname = 'case_file_default'""")).scalar_one() == "DEFAULT"
    idx = conn.execute(text("SELECT count(*) FROM pg_indexes WHERE tablename = 'case_file_201105'")).scalar_one()
    assert idx == conn.execute(text("SELECT count(*) FROM pg_indexes WHERE tablename = 'case_file_201104'")).scalar_one()
    # A second call has nothing to do.
    assert partitions.ensure_months(conn, dt.date(2011, 5, 1), dt.date(2011, 5, 2)) == []
    # The upkeep (service start, citygrid db partitions) makes the month of every row left in a default partition.
    assert {"case_file_201107", "case_event_201107"} <= set(partitions.upkeep(conn))
    assert _where(conn, "case_file", "id", other) == ["case_file_201107"]
    assert conn.execute(text("SELECT count(*) FROM case_file_default")).scalar_one() == 0
    assert conn.execute(text("SELECT count(*) FROM case_event_default")).scalar_one() == 0
    assert _rollup(conn, haimen) == before


def test_unique_keys_hold_across_partitions(conn, haimen):
    partitions.ensure_months(conn, dt.date(2011, 4, 1), dt.date(2011, 4, 1))
    no, ref = f"U-{uuid.uuid4().hex[:10]}", f"ref-{uuid.uuid4().hex[:10]}"
    _case(conn, haimen, dt.datetime(2011, 4, 2, tzinfo=UTC), no=no, ref=ref)
    for kw, constraint in (({"no": no}, "case_file_city_id_case_no_key"), ({"ref": ref}, "case_source_ref")):
        sp = conn.begin_nested()
        with pytest.raises(exc.IntegrityError) as e:
            _case(conn, haimen, dt.datetime.now(UTC), **kw)  # another month, another partition
        sp.rollback()
        assert e.value.orig.diag.constraint_name == constraint
    assert conn.execute(text("SELECT count(*) FROM case_key WHERE case_no = :n"), {"n": no}).scalar_one() == 1


def test_delete_and_move_go_through_case_key(conn, haimen):
    partitions.ensure_months(conn, dt.date(2011, 4, 1), dt.date(2011, 4, 1))
    cid = _case(conn, haimen, dt.datetime.now(UTC) - dt.timedelta(days=1), phone="13700000000")
    # A corrected receipt time moves the row to another month: its children stay, the rollup follows.
    conn.execute(text("UPDATE case_file SET received_at = '2011-04-20T08:00:00Z' WHERE id = :i"), {"i": cid})
    assert _where(conn, "case_file", "id", cid) == ["case_file_201104"]
    assert conn.execute(text("SELECT received_at FROM case_key WHERE id = :i"), {"i": cid}).scalar_one() \
        == dt.datetime(2011, 4, 20, 8, tzinfo=UTC)
    assert conn.execute(text("SELECT count(*) FROM case_contact WHERE case_id = :i"), {"i": cid}).scalar_one() == 1
    rollup_equals_cases(conn, haimen)
    # Deleting the case deletes its key, which cascades to its children.
    conn.execute(text("DELETE FROM case_file WHERE id = :i"), {"i": cid})
    assert conn.execute(text("SELECT count(*) FROM case_key WHERE id = :i"), {"i": cid}).scalar_one() == 0
    assert conn.execute(text("SELECT count(*) FROM case_contact WHERE case_id = :i"), {"i": cid}).scalar_one() == 0
    rollup_equals_cases(conn, haimen)
    # A merge target that goes away leaves merged_into NULL (ON DELETE SET NULL, now through case_key).
    a = _case(conn, haimen, dt.datetime.now(UTC))
    b = _case(conn, haimen, dt.datetime(2011, 4, 3, tzinfo=UTC))
    conn.execute(text("UPDATE case_file SET merged_into = :a, state = 'merged' WHERE id = :b"), {"a": a, "b": b})
    conn.execute(text("DELETE FROM case_file WHERE id = :a"), {"a": a})
    assert conn.execute(text("SELECT merged_into FROM case_file WHERE id = :b"), {"b": b}).scalar_one() is None
    rollup_equals_cases(conn, haimen)
    # A case merged into one written by the same statement (cg_file_reports' batches): its key is checked
    # at commit, when the statement trigger has made the other's.
    ids = conn.execute(text("SELECT nextval('case_file_id_seq') FROM generate_series(1, 2)")).scalars().all()
    conn.execute(text("""
        INSERT INTO case_file (id, city_id, case_no, source, channel, received_at, category_code, state, merged_into)
        VALUES (:a, :c, :na, 'inspector', '督查员', now(), 'E40101', 'collected', NULL),
               (:b, :c, :nb, 'inspector', '督查员', now(), 'E40101', 'merged', :a)"""),
                 {"a": ids[0], "b": ids[1], "c": haimen.id, "na": f"M-{ids[0]}", "nb": f"M-{ids[1]}"})
    sp = conn.begin_nested()  # a key to nothing is still refused (at the latest at commit: here, SET CONSTRAINTS)
    conn.execute(text("UPDATE case_file SET merged_into = -9 WHERE id = :b"), {"b": ids[1]})
    with pytest.raises(exc.IntegrityError, match="case_file_merged_into_fkey"):
        conn.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))
    sp.rollback()
    rollup_equals_cases(conn, haimen)
    # A child of a case that does not exist is refused.
    sp = conn.begin_nested()
    with pytest.raises(exc.IntegrityError, match="case_contact_case_id_fkey"):
        conn.execute(text("INSERT INTO case_contact (case_id, phone) VALUES (-5, '1')"))
    sp.rollback()


def test_verification_event_id_is_checked(conn, haimen):
    from layers.core.users import add_user

    user, _ = add_user(conn, f"insp_{uuid.uuid4().hex[:6]}", "inspector")
    uid = user.id
    at = dt.datetime.now(UTC)
    cid = _case(conn, haimen, at, events=[at])
    ev = conn.execute(text("SELECT id FROM case_event WHERE case_id = :i"), {"i": cid}).scalar_one()
    row = {"c": haimen.id, "i": cid, "u": uid, "h": "0" * 64}

    def insert(event_id, key):
        conn.execute(text("""INSERT INTO case_verification (city_id, case_id, user_id, idempotency_key, request_hash,
                                                            result, event_id)
                             VALUES (:c, :i, :u, :k, :h, 'ok', :e)"""), {**row, "k": key, "e": event_id})

    insert(ev, "a")
    insert(None, "b")
    for bad in (ev + 10_000_000, -1):
        sp = conn.begin_nested()
        with pytest.raises(exc.IntegrityError, match="case_verification_event_id_fkey"):
            insert(bad, f"bad{bad}")
        sp.rollback()
    sp = conn.begin_nested()
    with pytest.raises(exc.IntegrityError, match="is not present in table"):
        conn.execute(text("UPDATE case_verification SET event_id = -7 WHERE idempotency_key = 'b' AND case_id = :i"),
                     {"i": cid})
    sp.rollback()


@pytest.mark.parametrize("bulk", [True, False])
def test_import_makes_its_months(engine, haimen, tmp_path, bulk):
    month = dt.date(2012, 2, 1) if bulk else dt.date(2012, 3, 1)
    tag = uuid.uuid4().hex[:8]
    p = tmp_path / "cases.csv"
    p.write_text("source_ref,received_at,category,channel,status,closed_at\n"
                 f"p-{tag}-1,{month:%Y-%m}-03 10:00:00,E40101,电话,closed,{month:%Y-%m}-05 10:00:00\n"
                 f"p-{tag}-2,{month:%Y-%m}-04 10:00:00,E40101,电话,,\n", encoding="utf-8")
    with engine.connect() as conn:
        tx = conn.begin()
        try:
            assert conn.execute(text("SELECT to_regclass(:n)"), {"n": partitions.name("case_file", month)}).scalar() \
                is None
            rep = hotline.import_cases(conn, haimen, p, progress=False, bulk=bulk)
            assert rep.imported == 2 and rep.pipeline["bulk"] is bulk
            parts = conn.execute(text("""SELECT DISTINCT tableoid::regclass::text FROM case_file
                                         WHERE source_ref LIKE :r"""), {"r": f"p-{tag}-%"}).scalars().all()
            assert parts == [partitions.name("case_file", month)]
            evs = conn.execute(text("""SELECT DISTINCT e.tableoid::regclass::text FROM case_event e
                                       JOIN case_key k ON k.id = e.case_id WHERE k.source_ref LIKE :r"""),
                               {"r": f"p-{tag}-%"}).scalars().all()
            assert evs == [partitions.name("case_event", month)]
            rollup_equals_cases(conn, haimen)
            # The source ref is unique across partitions: a second import skips both rows.
            assert hotline.import_cases(conn, haimen, p, progress=False, bulk=bulk).skipped == 2
        finally:
            tx.rollback()


def test_estimated_rows_sums_partitions(conn):
    conn.execute(text("ANALYZE case_file"))
    assert partitions.estimated_rows(conn, "case_file") == \
        conn.execute(text("SELECT sum(greatest(reltuples, 0))::bigint FROM pg_class c JOIN pg_inherits i "
                          "ON i.inhrelid = c.oid WHERE i.inhparent = 'case_file'::regclass")).scalar_one()


def _scratch_db(engine, name: str):
    info = engine.raw_connection().driver_connection.info
    params = {"host": info.host, "port": info.port, "user": info.user}
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(dbname=name, autocommit=True, **params) as c:
        c.execute("CREATE EXTENSION postgis")
    return params


def test_archive_a_closed_month(engine, tmp_path):
    from shapely.geometry import box

    month = dt.datetime(2010, 3, 1, tzinfo=UTC)
    with engine.begin() as conn:
        # A city of its own: the archived month stays in its rollup (the statistics keep it), which the
        # other tests' check "rollup = count of cases" of Haimen would not expect.
        haimen, _ = metric_city(conn, "archive-test", "归档测试市", "320697", box(654_000, 3_560_000, 655_000, 3_561_000))
        partitions.ensure_months(conn, month, dt.datetime(2010, 6, 30, tzinfo=UTC))
        done = [_case(conn, haimen, month + dt.timedelta(days=d, hours=2), state="closed", phone="13600000000",
                      events=[month + dt.timedelta(days=d, hours=2), month + dt.timedelta(days=d + 20)])
                for d in (1, 15, 27)]  # the last two's second events fall in April
        open_one = _case(conn, haimen, dt.datetime(2010, 6, 2, tzinfo=UTC), state="accepted")
        before = _rollup(conn, haimen)
    assert engine.connect().execute(text("SELECT count(*) FROM case_event_201004")).scalar_one() == 2
    # A month that still has an open case is refused, and so is an unknown one.
    with pytest.raises(Conflict, match="not closed: 1 case"):
        partitions.archive(engine, "2010-06", tmp_path)
    with pytest.raises(Exception, match="no partition case_file_200901"):
        partitions.archive(engine, "2009-01", tmp_path)
    info = partitions.archive(engine, "2010-03", tmp_path)
    assert info["cases"] == 3 and info["events"] == 6 and info["event_partition_dropped"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM case_key WHERE id = ANY(:i)"), {"i": done}).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM case_contact WHERE case_id = ANY(:i)"), {"i": done}).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM case_event WHERE case_id = ANY(:i)"), {"i": done}).scalar_one() == 0
        for t in ("case_file_201003", "case_event_201003", "case_event_archive_201003"):
            assert conn.execute(text("SELECT to_regclass(:n)"), {"n": t}).scalar() is None
        assert conn.execute(text("SELECT to_regclass('case_event_201004')")).scalar() is not None
        assert _rollup(conn, haimen) == before  # the statistics keep the archived month
    # The dump restores into an empty PostGIS database with every case and event.
    name = f"{engine.url.database}_archive"
    params = _scratch_db(engine, name)
    try:
        r = subprocess.run([partitions._pg_tool(engine.connect(), "pg_restore"), "--no-owner", "-h", params["host"],
                            "-p", str(params["port"]), "-U", params["user"], "-d", name, info["file"]],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        with psycopg.connect(dbname=name, **params) as c:
            assert c.execute("SELECT count(*), count(DISTINCT state) FROM case_file_201003").fetchone() == (3, 1)
            assert c.execute("SELECT count(*) FROM case_event_archive_201003").fetchone()[0] == 6
    finally:
        with psycopg.connect(dbname="postgres", autocommit=True, **params) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    # Never overwritten; the open case of June is left as it was.
    with pytest.raises(Conflict, match="exists"):
        partitions.archive(engine, "2010-03", tmp_path)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM case_file WHERE id = :i"), {"i": open_one})


def test_cli_partitions_and_archive_refusals(engine, db_url, monkeypatch, capsys, tmp_path):
    import json

    from citygrid import cli, settings

    monkeypatch.setenv("DATABASE_URL", db_url)
    settings.database.cache_clear() if hasattr(settings.database, "cache_clear") else None
    assert cli.main(["db", "partitions"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = {p["name"] for p in out["partitions"]}
    m = partitions.month_of(dt.datetime.now(UTC))
    assert {"case_file_default", "case_event_default", partitions.name("case_file", m),
            partitions.name("case_event", m)} <= names
    assert cli.main(["db", "archive", "1999-01", "--to", str(tmp_path)]) == 2
    assert "no partition case_file_199901" in capsys.readouterr().err
    assert cli.main(["db", "archive", "1999-13", "--to", str(tmp_path)]) == 2
    assert "a month is YYYY-MM" in capsys.readouterr().err
    assert cli.main(["db", "archive", "1999-01"]) == 2
    assert list(tmp_path.iterdir()) == []


def test_duplicate_search_never_meets_another_citys_srid(conn, haimen):
    """cg_nearest_open (the duplicate rule) scans only its city's cases of the window (migration 0025): a
    sequential scan of a partition holding another city's points in another SRID raises nothing."""
    from shapely.geometry import box

    other, _ = metric_city(conn, "srid-test", "坐标测试市", "320696", box(680_000, 4_800_000, 681_000, 4_801_000),
                           srid=32632)
    at = dt.datetime.now(UTC) - dt.timedelta(hours=1)
    foreign = _case(conn, other, at)
    conn.execute(text("UPDATE case_file SET location = ST_SetSRID(ST_MakePoint(680500, 4800500), 32632) WHERE id = :i"),
                 {"i": foreign})
    mine = _case(conn, haimen, at - dt.timedelta(minutes=5))
    conn.execute(text("UPDATE case_file SET location = ST_SetSRID(ST_MakePoint(652500, 3560500), 4549) WHERE id = :i"),
                 {"i": mine})
    conn.execute(text("SET LOCAL enable_indexscan = off"))
    conn.execute(text("SET LOCAL enable_bitmapscan = off"))
    conn.execute(text("DISCARD PLANS"))
    hit = conn.execute(text("""SELECT id FROM cg_nearest_open(:c, 'E40101', ST_SetSRID(ST_MakePoint(652510, 3560500), 4549),
                                                      now(), 50, 72, ARRAY['collected'], NULL)"""),
                       {"c": haimen.id}).scalar()
    assert hit == mine


def test_the_service_keeps_its_months_while_it_runs(engine, haimen, db_url, monkeypatch):
    """The start makes the months; a server that runs for months keeps making them (its upkeep runs
    again every CITYGRID_CASES_PARTITION_UPKEEP_HOURS): a case written into a month without a partition
    while the server runs moves to its month's partition without a restart."""
    import time

    from fastapi.testclient import TestClient

    from api.app import create_app

    monkeypatch.setenv("CITYGRID_CASES_PARTITION_UPKEEP_HOURS", str(0.3 / 3600))
    drop = "DROP TABLE IF EXISTS case_file_201202, case_event_201202"  # a month no other test writes
    with engine.begin() as c:
        c.execute(text(drop))
    with TestClient(create_app(db_url)):
        with engine.begin() as c:
            cid = _case(c, haimen, dt.datetime(2012, 2, 10, 3, 0, tzinfo=UTC))
            assert _where(c, "case_file", "id", cid) == ["case_file_default"]
        try:
            deadline = time.monotonic() + 20
            where = None
            while time.monotonic() < deadline:
                with engine.connect() as c:
                    where = _where(c, "case_file", "id", cid)
                if where == ["case_file_201202"]:
                    break
                time.sleep(0.2)
            assert where == ["case_file_201202"]
        finally:
            with engine.begin() as c:
                c.execute(text("DELETE FROM case_file WHERE id = :i"), {"i": cid})
                c.execute(text(drop))
