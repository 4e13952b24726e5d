"""Monthly partitions of ``case_file`` (by ``received_at``) and ``case_event`` (by ``at``): creating the
months ahead, moving rows that fell into the DEFAULT partition into their month, and archiving a closed
month (migration 0025 made the tables; docs/SCALING.md §7, docs/OPERATIONS.md).

Months are UTC calendar months: ``case_file_202611`` holds ``[2026-11-01 00:00 UTC, 2026-12-01 00:00 UTC)``
(the same boundaries for every city, whatever its time zone). A row of a month without a partition goes to
``case_file_default`` / ``case_event_default``: an insert never fails, and :func:`ensure_months` moves such
rows into their month's new partition — on detached tables, which have none of the parent's triggers, so
the case rollup is not touched and no notification is queued. The children of a case reference
``case_key`` (unpartitioned, migration 0025), not ``case_file``: moving a case between partitions leaves
them alone.

Every function takes a connection and works in the caller's transaction.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from pathlib import Path

from sqlalchemy import Connection, text

from layers.core.errors import Conflict, InputError, NotFound

#: (table, partition column) of the partitioned case tables.
TABLES = (("case_file", "received_at"), ("case_event", "at"))
#: How many months after the current one the service start and ``citygrid db partitions`` create.
MONTHS_AHEAD = 3
#: The advisory lock (one key, any value unique to this module) that serialises partition changes.
LOCK_KEY = 7_202_511
FINAL_STATES = ("rejected", "closed", "merged", "void")


def month_of(t: dt.date | dt.datetime) -> dt.date:
    """The first day of the UTC month of ``t`` (a date is taken as it is)."""
    if isinstance(t, dt.datetime):
        if t.tzinfo is not None:
            t = t.astimezone(dt.UTC)
        t = t.date()
    return dt.date(t.year, t.month, 1)


def next_month(m: dt.date) -> dt.date:
    return dt.date(m.year + (m.month == 12), m.month % 12 + 1, 1)


def months(lo, hi) -> list[dt.date]:
    """Every month from that of ``lo`` to that of ``hi`` (first days)."""
    out, m, last = [], month_of(lo), month_of(hi)
    while m <= last:
        out.append(m)
        m = next_month(m)
    return out


def name(table: str, month: dt.date) -> str:
    return f"{table}_{month.year:04d}{month.month:02d}"


def _bound(m: dt.date) -> str:
    return f"{m.isoformat()} 00:00:00+00"


def _exists(conn: Connection, relname: str) -> bool:
    return conn.execute(text("SELECT to_regclass(:n) IS NOT NULL"), {"n": relname}).scalar_one()


def _columns(conn: Connection, table: str) -> str:
    cols = conn.execute(text("""SELECT quote_ident(attname) FROM pg_attribute
                                WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 AND NOT attisdropped
                                ORDER BY attnum"""), {"t": table}).scalars().all()
    return ", ".join(cols)


def partitions(conn: Connection) -> list[dict]:
    """The partitions of both tables: name, bounds (NULL for the default), rows (estimate)."""
    rows = conn.execute(text("""
        SELECT p.relname::text AS parent, c.relname::text AS name, pg_get_expr(c.relpartbound, c.oid) AS bound,
               greatest(c.reltuples, 0)::bigint AS rows_estimate
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
        WHERE i.inhparent = ANY(ARRAY['case_file', 'case_event']::regclass[])
        ORDER BY 1, 2""")).mappings().all()
    return [dict(r) for r in rows]


def estimated_rows(conn: Connection, table: str) -> int:
    """The planner's row estimate of a (partitioned) table: the sum over its partitions (the parent's own
    ``reltuples`` is -1 or 0)."""
    return int(conn.execute(text("""
        SELECT COALESCE(sum(greatest(c.reltuples, 0)), 0)::bigint
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = CAST(:t AS regclass)"""), {"t": table}).scalar_one())


def ensure_months(conn: Connection, lo, hi) -> list[str]:
    """Create the monthly partitions of ``case_file`` and ``case_event`` for every month from that of
    ``lo`` to that of ``hi`` (dates or datetimes) that has none; rows of such a month waiting in a
    DEFAULT partition move into the new one. Returns the partitions created.

    Creating a partition takes a brief exclusive lock of the parent (and a scan of the default
    partition, normally empty); concurrent callers are serialised by an advisory lock. A caller that
    knows its months exist pays one catalog look-up per month."""
    wanted = months(lo, hi)
    missing = [(t, c, m) for m in wanted for t, c in TABLES if not _exists(conn, name(t, m))]
    if not missing:
        return []
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
    created = []
    for table, col, m in missing:
        part = name(table, m)
        if _exists(conn, part):  # made by another session while we waited
            continue
        _create_month(conn, table, col, m)
        created.append(part)
    return created


def name_indexes(conn: Connection, part: str) -> None:
    """Name a partition's indexes after the parent's: ``case_department_idx_202611`` (PostgreSQL would say
    ``case_file_202611_department_id_state_idx``), so that a plan or a log names the index one knows."""
    suffix = part.rsplit("_", 1)[1]
    rows = conn.execute(text("""
        SELECT ci.relname::text, pi.relname::text
        FROM pg_index x JOIN pg_class ci ON ci.oid = x.indexrelid
        JOIN pg_inherits ii ON ii.inhrelid = ci.oid JOIN pg_class pi ON pi.oid = ii.inhparent
        WHERE x.indrelid = CAST(:p AS regclass)"""), {"p": part}).all()
    for child, parent in rows:
        want = f"{parent}_{suffix}"[:63]
        if child != want and not _exists(conn, want):
            conn.execute(text(f'ALTER INDEX "{child}" RENAME TO "{want}"'))


def _create_month(conn: Connection, table: str, col: str, m: dt.date) -> None:
    part, default = name(table, m), f"{table}_default"
    lo, hi = _bound(m), _bound(next_month(m))
    waiting = _exists(conn, default) and conn.execute(text(
        f"SELECT EXISTS (SELECT 1 FROM {default} WHERE {col} >= CAST(:lo AS timestamptz) "
        f"AND {col} < CAST(:hi AS timestamptz))"), {"lo": lo, "hi": hi}).scalar_one()
    if not waiting:
        conn.execute(text(f"CREATE TABLE {part} PARTITION OF {table} FOR VALUES FROM ('{lo}') TO ('{hi}')"))
        name_indexes(conn, part)
        return
    # Rows of this month sit in the default partition: detach it (it loses the parent's triggers, so the
    # move fires none: rollup, notifications, append-only guard), move them into a table of the month,
    # attach both. One transaction: nobody sees the rows missing.
    cols = _columns(conn, table)
    conn.execute(text(f"ALTER TABLE {table} DETACH PARTITION {default}"))
    conn.execute(text(f"CREATE TABLE {part} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                      f"INCLUDING STORAGE)"))
    where = f"{col} >= CAST(:lo AS timestamptz) AND {col} < CAST(:hi AS timestamptz)"
    conn.execute(text(f"INSERT INTO {part} ({cols}) SELECT {cols} FROM {default} WHERE {where}"),
                 {"lo": lo, "hi": hi})
    conn.execute(text(f"DELETE FROM {default} WHERE {where}"), {"lo": lo, "hi": hi})
    conn.execute(text(f"ALTER TABLE {table} ATTACH PARTITION {part} FOR VALUES FROM ('{lo}') TO ('{hi}')"))
    conn.execute(text(f"ALTER TABLE {table} ATTACH PARTITION {default} DEFAULT"))
    name_indexes(conn, part)


def ensure_for(conn: Connection, *times) -> list[str]:
    """The monthly partitions for the span of some instants about to be written (iterables of aware
    datetimes, ISO texts, pandas timestamps; None and NaT skipped): the import and the demo generators
    call it before they write. Months after the current one + :data:`MONTHS_AHEAD` are left to the default
    partition (a wrong far-future date makes no partitions).

    Creating a partition locks the parent table exclusively until its transaction ends. When the caller's
    transaction has not touched the case tables yet, the missing months are made in a short transaction of
    their own (another connection, committed at once, waiting at most ``lock_timeout`` = 3 s: when it
    cannot have the lock, the rows go to the default partition and :func:`upkeep` moves them later), so
    that a long import does not hold every other writer of cases. When the caller's transaction holds
    locks on them already, another transaction would wait for it: the months are made in the caller's."""
    import pandas as pd

    values = pd.to_datetime(pd.Series([t for ts in times for t in ts], dtype=object), utc=True, errors="coerce",
                            format="mixed").dropna()
    if values.empty:
        return []
    horizon = dt.datetime.now(dt.UTC)
    for _ in range(MONTHS_AHEAD + 1):
        horizon = dt.datetime.combine(next_month(month_of(horizon)), dt.time(), dt.UTC)
    lo = values.min().to_pydatetime()
    hi = max(lo, min(values.max().to_pydatetime(), horizon - dt.timedelta(seconds=1)))
    if all(_exists(conn, name(t, m)) for m in months(lo, hi) for t, _ in TABLES):
        return []
    if _holds_case_locks(conn):
        return ensure_months(conn, lo, hi)
    from sqlalchemy import exc

    with conn.engine.connect() as other:
        try:
            other.execute(text("SET LOCAL lock_timeout = '3s'"))
            made = ensure_months(other, lo, hi)
            other.commit()
            return made
        except exc.OperationalError as e:
            other.rollback()
            if getattr(e.orig, "sqlstate", None) == "55P03":  # lock_not_available: the default partition waits
                return []
            raise


def _holds_case_locks(conn: Connection) -> bool:
    """Does this session hold a lock on case_file, case_event or one of their partitions?"""
    return conn.execute(text("""
        SELECT EXISTS (SELECT 1 FROM pg_locks l
                       WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted
                         AND (l.relation = ANY(ARRAY['case_file', 'case_event']::regclass[])
                              OR l.relation IN (SELECT inhrelid FROM pg_inherits
                                                WHERE inhparent = ANY(ARRAY['case_file', 'case_event']::regclass[]))))
        """)).scalar_one()


def drain_default(conn: Connection) -> list[str]:
    """Make the month of every row waiting in a default partition (which moves them there)."""
    waiting = conn.execute(text("""
        SELECT DISTINCT (date_trunc('month', received_at AT TIME ZONE 'UTC'))::date FROM case_file_default
        UNION SELECT DISTINCT (date_trunc('month', at AT TIME ZONE 'UTC'))::date FROM case_event_default
        ORDER BY 1""")).scalars().all()
    made = []
    for m in waiting:
        made += ensure_months(conn, m, m)
    return made


def upkeep(conn: Connection) -> list[str]:
    """What the service start and ``citygrid db partitions`` do: the current month and the next
    :data:`MONTHS_AHEAD`, the months of rows waiting in the default partitions, and every partition's
    indexes named after the parent's (an index a later migration adds to the parent gets PostgreSQL's
    generated names on the partitions)."""
    made = ensure_ahead(conn) + drain_default(conn)
    for (part,) in conn.execute(text("""SELECT inhrelid::regclass::text FROM pg_inherits
                                        WHERE inhparent = ANY(ARRAY['case_file', 'case_event']::regclass[])""")).all():
        name_indexes(conn, part)
    return made


def ensure_ahead(conn: Connection, *, ahead: int = MONTHS_AHEAD, today: dt.date | None = None) -> list[str]:
    """The current UTC month and ``ahead`` months after it (service start, ``citygrid db partitions``)."""
    m = month_of(today or dt.datetime.now(dt.UTC))
    last = m
    for _ in range(ahead):
        last = next_month(last)
    return ensure_months(conn, m, last)


# -- archiving ------------------------------------------------------------------------------------

def parse_month(s: str) -> dt.date:
    try:
        d = dt.datetime.strptime(str(s).strip(), "%Y-%m")
    except ValueError:
        raise InputError(f"a month is YYYY-MM (e.g. 2024-01), not '{s}'") from None
    return dt.date(d.year, d.month, 1)


def _pg_tool(conn: Connection, tool: str) -> str:
    major = int(conn.execute(text("SHOW server_version_num")).scalar_one()) // 10000
    p = Path(f"/usr/lib/postgresql/{major}/bin/{tool}")
    if p.exists():
        return str(p)
    found = shutil.which(tool)
    if not found:
        raise RuntimeError(f"{tool} is not installed (PostgreSQL {major} client tools)")
    return found


def _libpq_env(conn: Connection) -> dict:
    info = conn.connection.driver_connection.info
    env = dict(os.environ)
    env.update({"PGHOST": info.host, "PGPORT": str(info.port), "PGUSER": info.user, "PGDATABASE": info.dbname})
    pw = conn.engine.url.password
    if pw:
        env["PGPASSWORD"] = pw
    return env


def archive_check(conn: Connection, month: dt.date) -> dict:
    """Why ``month`` may not be archived (raises), else what it holds."""
    part = name("case_file", month)
    if not _exists(conn, part):
        raise NotFound(f"no partition {part}: nothing to archive for {month:%Y-%m}")
    lo, hi = _bound(month), _bound(next_month(month))
    if conn.execute(text("SELECT EXISTS (SELECT 1 FROM case_file_default WHERE received_at >= CAST(:lo AS timestamptz) "
                         "AND received_at < CAST(:hi AS timestamptz))"), {"lo": lo, "hi": hi}).scalar_one():
        raise Conflict(f"cases of {month:%Y-%m} wait in case_file_default: run ensure_months "
                       f"(citygrid db partitions) first")
    open_n = conn.execute(text(f"SELECT count(*) FROM {part} WHERE state <> ALL(:f)"),
                          {"f": list(FINAL_STATES)}).scalar_one()
    if open_n:
        raise Conflict(f"{month:%Y-%m} is not closed: {open_n} case(s) received that month are not in a final "
                       f"state ({', '.join(FINAL_STATES)}); archive it when they are")
    # A case of the month that another (live) case was merged into would leave that one pointing at nothing.
    merged_in = conn.execute(text(f"""SELECT count(*) FROM case_file c WHERE c.merged_into IN (SELECT id FROM {part})
                                      AND NOT (c.received_at >= CAST(:lo AS timestamptz)
                                               AND c.received_at < CAST(:hi AS timestamptz))"""),
                             {"lo": lo, "hi": hi}).scalar_one()
    if merged_in:
        raise Conflict(f"{merged_in} case(s) of other months were merged into cases of {month:%Y-%m}: "
                       f"archive those months together, oldest first")
    n = conn.execute(text(f"SELECT count(*) FROM {part}")).scalar_one()
    return {"month": f"{month:%Y-%m}", "partition": part, "cases": int(n)}


def archive(engine, month: dt.date | str, to_dir, *, log=lambda *_: None) -> dict:
    """Archive a closed month: dump its cases and their events (``pg_dump`` custom format, restorable
    with ``pg_restore`` into any PostgreSQL + PostGIS database), then remove them from the database.

    Takes an engine (three transactions and a ``pg_dump`` in between):

    1. check (:func:`archive_check`: every case of the month final, none waiting in the default partition),
       detach ``case_file_YYYYMM`` (its foreign keys and id default dropped: the dump stands alone) and copy every event of
       its cases, whatever month they fall in, into ``case_event_archive_YYYYMM``;
    2. ``pg_dump -Fc -t case_file_YYYYMM -t case_event_archive_YYYYMM`` into ``to_dir``; on failure the
       partition is attached back and nothing is lost;
    3. delete the month's ``case_key`` rows (cascading to their events, contacts, media, verification
       rows, …; inspectors' reports keep their row with ``case_id`` NULL), drop the two tables, and drop the
       month's ``case_event`` partition when nothing is left in it (events of older, live cases stay).

    The case rollup is not changed: the month keeps counting in the statistics (a full rebuild of a
    city's rollup would drop it). Between steps 1 and 3 the month's cases are invisible."""
    m = parse_month(month) if isinstance(month, str) else month_of(month)
    part, events, epart = name("case_file", m), f"case_event_archive_{m:%Y%m}", name("case_event", m)
    out_dir = Path(to_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"citygrid-cases-{m:%Y-%m}.dump"
    if out.exists():
        raise Conflict(f"{out} exists: an archive is never overwritten")
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
        info = archive_check(conn, m)
        conn.execute(text(f"ALTER TABLE case_file DETACH PARTITION {part}"))
        for (fk,) in conn.execute(text("SELECT conname FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) "
                                       "AND contype = 'f'"), {"t": part}).all():
            conn.execute(text(f'ALTER TABLE {part} DROP CONSTRAINT "{fk}"'))
        conn.execute(text(f"ALTER TABLE {part} ALTER COLUMN id DROP DEFAULT"))  # the sequence is not dumped
        conn.execute(text(f"DROP TABLE IF EXISTS {events}"))
        conn.execute(text(f"CREATE TABLE {events} AS SELECT e.* FROM case_event e "
                          f"WHERE e.case_id IN (SELECT id FROM {part}) ORDER BY e.id"))
        info["events"] = conn.execute(text(f"SELECT count(*) FROM {events}")).scalar_one()
        pg_dump = _pg_tool(conn, "pg_dump")
        env = _libpq_env(conn)
    log(f"archive {m:%Y-%m}: {info['cases']} cases, {info['events']} events → {out}")
    tmp = out.with_suffix(".dump.part")
    r = subprocess.run([pg_dump, "-Fc", "--no-owner", "--no-privileges", "-t", part, "-t", events, "-f", str(tmp)],
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        with engine.begin() as conn:  # back as it was
            conn.execute(text(f"DROP TABLE IF EXISTS {events}"))
            conn.execute(text(f"ALTER TABLE {part} ALTER COLUMN id SET DEFAULT nextval('case_file_id_seq')"))
            lo, hi = _bound(m), _bound(next_month(m))
            conn.execute(text(f"ALTER TABLE case_file ATTACH PARTITION {part} FOR VALUES FROM ('{lo}') TO ('{hi}')"))
        raise RuntimeError(f"pg_dump failed, {m:%Y-%m} is unchanged: {r.stderr.strip()[-500:]}")
    tmp.rename(out)
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
        conn.execute(text("SET LOCAL citygrid.archiving = on"))  # the append-only guard lets these go
        conn.execute(text(f"DELETE FROM case_key WHERE id IN (SELECT id FROM {part})"))
        conn.execute(text(f"DROP TABLE {part}, {events}"))
        if _exists(conn, epart) and not conn.execute(text(f"SELECT EXISTS (SELECT 1 FROM {epart})")).scalar_one():
            conn.execute(text(f"ALTER TABLE case_event DETACH PARTITION {epart}"))
            conn.execute(text(f"DROP TABLE {epart}"))
            info["event_partition_dropped"] = True
        else:
            info["event_partition_dropped"] = False
    info["file"] = str(out)
    info["bytes"] = out.stat().st_size
    return info
