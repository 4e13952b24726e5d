"""Time partitions: ``case_file`` by month of ``received_at``, ``case_event`` by month of ``at``
(declarative range partitioning), with a slim unpartitioned ``case_key`` that keeps what must be unique
across partitions and what the case's children reference.

* ``case_key (id, city_id, case_no, source, source_ref, received_at)``: one row per case. It carries the
  unique keys a partitioned table cannot enforce without the partition key — ``UNIQUE (city_id, case_no)``
  (constraint still named ``case_file_city_id_case_no_key``) and the partial unique index
  ``case_source_ref`` — and it is what every foreign key that referenced ``case_file(id)`` now references
  (``case_file.merged_into``, ``case_event``, ``case_contact``, ``case_media``, ``case_verification``,
  ``field_report``, ``notify_outbox``, ``wechat_photo``, ``case_feedback_photo`` …, found in
  ``pg_constraint``, each with its own ON DELETE action). The children are otherwise untouched, and a
  case row may move between partitions (a corrected ``received_at``, ``layers.cases.partitions``) without
  touching them (``case_file.merged_into``'s key is checked at commit: a batch may merge a case into
  one written by the same statement, whose key exists only once the statement's trigger ran).
  Statement-level triggers with transition tables on ``case_file`` keep it
  (``case_key_ins/upd/del``), ``ENABLE ALWAYS`` like the rollup triggers (0022: bulk imports write with
  ``session_replication_role = replica``). Deleting a case deletes its key, which cascades to the children.
* ``case_file``: primary key ``(id, received_at)``, partitions ``case_file_YYYYMM`` of UTC calendar months
  (``[YYYY-MM-01 00:00 UTC, next month)``) and ``case_file_default`` (an insert never fails for want of a
  partition; ``layers.cases.partitions.ensure_months`` moves its rows out when their month is created).
  Every other index of the old table (read from the catalog, whatever migration made it) is created on the
  partitioned parent.
* ``case_event``: primary key ``(id, at)``, partitions ``case_event_YYYYMM`` (UTC months) and
  ``case_event_default``; its append-only guard and the notification trigger (0018) are recreated on the
  parent (row triggers, cloned to every partition). The guard now lets a session that sets
  ``citygrid.archiving = on`` delete events: ``layers.cases.partitions.archive`` (after dumping them).
* ``case_verification.event_id`` referenced ``case_event(id)``, which is no longer unique on its own: the
  foreign key becomes a constraint trigger (``case_verification_event_id_fkey``) that refuses an id that no
  event has, on insert and on update of ``event_id``. Its ON DELETE SET NULL is not kept: events are
  append-only and disappear only with their case, whose verification rows cascade away with it.

* ``cg_nearest_open`` (0012, the duplicate rule) searches the city's cases of the time window only (its inner
  scan read every city's cases within the radius, trusting the spatial index to meet the city's points alone;
  a generic plan on the partitioned table may scan a small partition, where another city's SRID raised an
  error): the window prunes the partitions as the plan starts.

The data moves with one ``INSERT … SELECT`` per table into the partitioned parent (one scan of the old
table; the parent routes each row to its month) before any trigger exists on the new tables: the case
rollup (0005/0009) and its change log are neither recomputed nor doubled, no notification is queued. Then
``case_key`` is filled, the indexes, foreign keys and triggers (with their ENABLE ALWAYS state) are made,
the sequences change owner and the old tables are dropped. The migration holds the old tables exclusively
for the whole copy (downtime ≈ the copy: ~1 min per million cases here).

Revision ID: 0025
Revises: 0024
"""

import re

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
# Every migration that adds a table referencing case_file / case_event or a trigger or index on them.
depends_on = ("0010", "0013", "0016", "0017", "0022", "0023")  # 0022 brings 0009 and 0018

TABLES = (("case_file", "received_at"), ("case_event", "at"))
OLD = "_old0025"
KEY_COLUMNS = "id, city_id, case_no, source, source_ref, received_at"

CASE_KEY_FUNCTIONS = {
    "ins": f"""INSERT INTO case_key ({KEY_COLUMNS}) SELECT {KEY_COLUMNS} FROM new_rows;""",
    "upd": """UPDATE case_key k SET city_id = nw.city_id, case_no = nw.case_no, source = nw.source,
                   source_ref = nw.source_ref, received_at = nw.received_at
              FROM new_rows nw
              WHERE k.id = nw.id AND (k.city_id, k.case_no, k.source, k.source_ref, k.received_at)
                    IS DISTINCT FROM (nw.city_id, nw.case_no, nw.source, nw.source_ref, nw.received_at);""",
    "del": """DELETE FROM case_key k USING old_rows o WHERE k.id = o.id;""",
}
CASE_KEY_TRIGGERS = {
    "ins": "AFTER INSERT ON case_file REFERENCING NEW TABLE AS new_rows",
    "upd": "AFTER UPDATE ON case_file REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "del": "AFTER DELETE ON case_file REFERENCING OLD TABLE AS old_rows",
}

# The append-only guard of case_event (0003); from here on a session that sets citygrid.archiving
# (layers.cases.partitions.archive, after the month's dump) may delete.
_APPEND_ONLY = """
    CREATE OR REPLACE FUNCTION case_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN{archiving}
        RAISE EXCEPTION 'case events are append-only: % is not allowed', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END $$"""
APPEND_ONLY = _APPEND_ONLY.format(archiving="""
        IF TG_OP = 'DELETE' AND current_setting('citygrid.archiving', true) = 'on' THEN
            RETURN OLD;
        END IF;""")
APPEND_ONLY_0003 = _APPEND_ONLY.format(archiving="")

EVENT_CHECK = """
    CREATE OR REPLACE FUNCTION case_verification_event_check() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.event_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM case_event e WHERE e.id = NEW.event_id) THEN
            RAISE EXCEPTION 'insert or update on table "case_verification" violates foreign key constraint '
                            '"case_verification_event_id_fkey"'
                USING ERRCODE = 'foreign_key_violation', TABLE = 'case_verification',
                      CONSTRAINT = 'case_verification_event_id_fkey',
                      DETAIL = format('Key (event_id)=(%s) is not present in table "case_event".', NEW.event_id);
        END IF;
        RETURN NULL;
    END $$"""


NAME_INDEXES = """
    DO $$
    DECLARE r record; want text;
    BEGIN
        FOR r IN SELECT ci.relname AS child, pi.relname AS parent, substring(c.relname from '_([^_]+)$') AS suffix
                 FROM pg_inherits pt JOIN pg_class c ON c.oid = pt.inhrelid
                 JOIN pg_index x ON x.indrelid = c.oid JOIN pg_class ci ON ci.oid = x.indexrelid
                 JOIN pg_inherits ii ON ii.inhrelid = ci.oid JOIN pg_class pi ON pi.oid = ii.inhparent
                 WHERE pt.inhparent IN ('case_file'::regclass, 'case_event'::regclass) LOOP
            want := left(r.parent || '_' || r.suffix, 63);
            IF r.child <> want AND to_regclass(quote_ident(want)) IS NULL THEN
                EXECUTE format('ALTER INDEX %I RENAME TO %I', r.child, want);
            END IF;
        END LOOP;
    END $$"""


#: cg_nearest_open (0012), the duplicate rule's search: its inner scan (kept apart by OFFSET 0) read every case
#: within the radius of any city and any time, trusting the GiST index to meet only the city's own points. On
#: the partitioned table its generic plan may scan a small partition sequentially, and ST_DWithin then meets
#: points of another city in another SRID (an error). The city and the time window go into the inner scan:
#: the partitions outside the window are pruned when the plan starts, and no other city's point is compared.
NEAREST_OLD = "WHERE c.location IS NOT NULL AND ST_DWithin(c.location, p_loc, p_radius)"
NEAREST_NEW = ("WHERE c.city_id = p_city AND c.location IS NOT NULL AND ST_DWithin(c.location, p_loc, p_radius) "
               "AND c.received_at BETWEEN p_at - make_interval(secs => p_window_h * 3600) AND p_at")


def _rewrite_function(name: str, old: str, new: str) -> str:
    return f"""
    DO $$
    DECLARE src text := pg_get_functiondef('{name}'::regproc);
    BEGIN
        IF position($q${old}$q$ IN src) = 0 THEN
            RAISE EXCEPTION 'function {name} does not have the expected text';
        END IF;
        EXECUTE replace(src, $q${old}$q$, $q${new}$q$);
    END $$"""


def _months_sql(table: str, lo: str, hi: str) -> str:
    """A DO block creating the monthly partitions of ``table`` (UTC months) from the month of ``lo``
    to the month of ``hi`` (timestamptz expressions), skipping those that exist."""
    return f"""
    DO $$
    DECLARE m timestamp; lo timestamp; hi timestamp;
    BEGIN
        lo := date_trunc('month', ({lo}) AT TIME ZONE 'UTC');
        hi := date_trunc('month', ({hi}) AT TIME ZONE 'UTC');
        IF lo IS NULL THEN RETURN; END IF;
        m := lo;
        WHILE m <= hi LOOP
            IF to_regclass(format('%I', '{table}_' || to_char(m, 'YYYYMM'))) IS NULL THEN
                EXECUTE format('CREATE TABLE %I PARTITION OF {table} FOR VALUES FROM (%L) TO (%L)',
                               '{table}_' || to_char(m, 'YYYYMM'), m::text || '+00', (m + interval '1 month')::text || '+00');
            END IF;
            m := m + interval '1 month';
        END LOOP;
    END $$"""


def _all(conn, sql: str, **params) -> list:
    return conn.execute(sa.text(sql), params).all()


def _grants(conn, old: str, new: list[str]) -> list[str]:
    out = []
    for grantee, priv in _all(conn, """SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END,
                                              a.privilege_type
                                       FROM pg_class c, aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee
                                       WHERE c.oid = CAST(:t AS regclass) AND a.grantee <> c.relowner""", t=old):
        out += [f"GRANT {priv} ON {t} TO {grantee}" for t in new]
    return out


def _referencing(conn, tables) -> list:
    """(table, name, definition) of every foreign key that references one of ``tables`` (parents only)."""
    return _all(conn, """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), confrelid::regclass::text
                         FROM pg_constraint WHERE contype = 'f' AND conparentid = 0
                           AND confrelid = ANY(CAST(:t AS regclass[])) ORDER BY 1, 2""", t=list(tables))


def upgrade() -> None:
    conn = op.get_bind()
    # What the old tables have, read from the catalog (whatever earlier migrations of any branch made).
    indexes, triggers, own_fks = {}, {}, {}
    for table, _ in TABLES:
        indexes[table] = _all(conn, """
            SELECT i.relname, pg_get_indexdef(i.oid), x.indisunique
            FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
            WHERE x.indrelid = CAST(:t AS regclass)
              AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid AND c.conrelid = x.indrelid)
            ORDER BY 1""", t=table)
        triggers[table] = _all(conn, """SELECT tgname, pg_get_triggerdef(oid), tgenabled FROM pg_trigger
                                        WHERE tgrelid = CAST(:t AS regclass) AND NOT tgisinternal ORDER BY 1""", t=table)
        own_fks[table] = _all(conn, """SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
                                       WHERE conrelid = CAST(:t AS regclass) AND contype = 'f'
                                         AND confrelid <> ALL(ARRAY['case_file', 'case_event']::regclass[])
                                       ORDER BY 1""", t=table)
    refs = _referencing(conn, ["case_file", "case_event"])
    grants = {t: _grants(conn, t, [t, "case_key"] if t == "case_file" else [t]) for t, _ in TABLES}
    for _, idx in indexes.items():
        for name, _, unique in idx:
            if unique and name != "case_source_ref":
                raise RuntimeError(f"unique index {name} on a case table: this migration does not know where it goes")

    op.execute("LOCK TABLE case_file, case_event IN ACCESS EXCLUSIVE MODE")
    # 1. Off the old tables: the foreign keys that reference them, their triggers and plain indexes.
    for table, name, _, _ in refs:
        op.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for table, _ in TABLES:
        for name, _, _ in triggers[table]:
            op.execute(f'DROP TRIGGER "{name}" ON {table}')
        for name, _, _ in indexes[table]:
            op.execute(f'DROP INDEX "{name}"')
        op.execute(f"ALTER TABLE {table} RENAME TO {table}{OLD}")
        for (name,) in _all(conn, """SELECT conname FROM pg_constraint WHERE conrelid = CAST(:t AS regclass)
                                     AND contype IN ('p', 'u', 'x')""", t=table + OLD):
            op.execute(f'ALTER TABLE {table}{OLD} RENAME CONSTRAINT "{name}" TO "{name}{OLD}"')

    # 2. The partitioned tables (same columns in the same order, defaults, NOT NULL and CHECKs) and case_key.
    for table, col in TABLES:
        op.execute(f"""CREATE TABLE {table} (LIKE {table}{OLD} INCLUDING DEFAULTS INCLUDING CONSTRAINTS
                       INCLUDING STORAGE INCLUDING COMMENTS) PARTITION BY RANGE ({col})""")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY (id, {col})")
        op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
        op.execute(_months_sql(table, f"(SELECT min({col}) FROM {table}{OLD})", f"(SELECT max({col}) FROM {table}{OLD})"))
        op.execute(_months_sql(table, "now()", "now() + interval '3 months'"))
    op.execute("""
    CREATE TABLE case_key (
        id           bigint PRIMARY KEY,
        city_id      integer NOT NULL,
        case_no      varchar(40) NOT NULL,
        source       varchar(12) NOT NULL,
        source_ref   varchar(80),
        received_at  timestamptz NOT NULL,
        CONSTRAINT case_file_city_id_case_no_key UNIQUE (city_id, case_no)
    )""")

    # 3. The data, before any trigger exists on the new tables (the rollup stays as it is).
    op.execute(f"INSERT INTO case_file SELECT * FROM case_file{OLD}")
    op.execute(f"INSERT INTO case_event SELECT * FROM case_event{OLD}")
    op.execute(f"INSERT INTO case_key ({KEY_COLUMNS}) SELECT {KEY_COLUMNS} FROM case_file{OLD}")
    op.execute("CREATE UNIQUE INDEX case_source_ref ON case_key (city_id, source, source_ref) WHERE source_ref IS NOT NULL")

    # 4. Indexes (on the parent: one per partition), foreign keys, sequences, old tables gone.
    for table, _ in TABLES:
        for name, ddl, _ in indexes[table]:
            if name != "case_source_ref":
                op.execute(ddl)
        for name, ddl in own_fks[table]:
            op.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {ddl}')
    for table, name, ddl, target in refs:
        if target == "case_event":
            if (table, name) != ("case_verification", "case_verification_event_id_fkey"):
                raise RuntimeError(f"foreign key {name} of {table} references case_event: not expected")
            continue
        ddl = re.sub(r"REFERENCES (public\.)?case_file\(id\)", "REFERENCES case_key(id)", ddl)
        if (table, name) == ("case_file", "case_file_merged_into_fkey") and "DEFERRABLE" not in ddl:
            # A case merged into one written by the same statement (cg_file_reports: a batch of reports whose
            # later ones join an earlier one): its key is made by case_key_ins at the end of the statement,
            # after the row-level check of an immediate key would have run.
            ddl += " DEFERRABLE INITIALLY DEFERRED"
        op.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {ddl}')
    op.execute(EVENT_CHECK)
    op.execute("""CREATE CONSTRAINT TRIGGER case_verification_event_id_fkey
                  AFTER INSERT OR UPDATE OF event_id ON case_verification
                  FOR EACH ROW EXECUTE FUNCTION case_verification_event_check()""")
    for table, _ in TABLES:
        op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY {table}.id")
        op.execute(f"DROP TABLE {table}{OLD}")

    # 5. Triggers: the old ones as they were (ENABLE ALWAYS kept), and case_key's.
    op.execute(APPEND_ONLY)
    for table, _ in TABLES:
        for name, ddl, enabled in triggers[table]:
            op.execute(ddl)
            state = {"A": "ENABLE ALWAYS", "R": "ENABLE REPLICA", "D": "DISABLE"}.get(enabled)
            if state:
                op.execute(f'ALTER TABLE {table} {state} TRIGGER "{name}"')
    for name, body in CASE_KEY_FUNCTIONS.items():
        op.execute(f"""CREATE FUNCTION case_key_{name}() RETURNS trigger LANGUAGE plpgsql AS $$
                       BEGIN {body} RETURN NULL; END $$""")
        op.execute(f"CREATE TRIGGER case_key_{name} {CASE_KEY_TRIGGERS[name]} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION case_key_{name}()")
        op.execute(f"ALTER TABLE case_file ENABLE ALWAYS TRIGGER case_key_{name}")
    op.execute(_rewrite_function("cg_nearest_open", NEAREST_OLD, NEAREST_NEW))
    # Partitions' indexes named after the parent's (case_department_idx_202611), as ensure_months names them.
    op.execute(NAME_INDEXES)
    for stmts in grants.values():
        for s in stmts:
            op.execute(s)
    op.execute("ANALYZE case_file, case_event, case_key")


def downgrade() -> None:
    """Back to plain tables (same move the other way; case_key's unique keys return to case_file)."""
    conn = op.get_bind()
    indexes, triggers, own_fks = {}, {}, {}
    for table, _ in TABLES:
        indexes[table] = _all(conn, """
            SELECT i.relname, pg_get_indexdef(i.oid)
            FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
            WHERE x.indrelid = CAST(:t AS regclass)
              AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid AND c.conrelid = x.indrelid)
            ORDER BY 1""", t=table)
        triggers[table] = _all(conn, """SELECT tgname, pg_get_triggerdef(oid), tgenabled FROM pg_trigger
                                        WHERE tgrelid = CAST(:t AS regclass) AND NOT tgisinternal
                                          AND tgname NOT LIKE 'case_key_%' ORDER BY 1""", t=table)
        own_fks[table] = _all(conn, """SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
                                       WHERE conrelid = CAST(:t AS regclass) AND contype = 'f' AND conparentid = 0
                                         AND confrelid <> 'case_key'::regclass ORDER BY 1""", t=table)
    refs = [r for r in _referencing(conn, ["case_key"])]
    op.execute("LOCK TABLE case_file, case_event, case_key IN ACCESS EXCLUSIVE MODE")
    op.execute("DROP TRIGGER IF EXISTS case_verification_event_id_fkey ON case_verification")
    op.execute("DROP FUNCTION IF EXISTS case_verification_event_check()")
    for table, name, _, _ in refs:
        op.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for table, _ in TABLES:
        op.execute(f"ALTER TABLE {table} RENAME TO {table}{OLD}")
        op.execute(f"ALTER TABLE {table}{OLD} RENAME CONSTRAINT {table}_pkey TO {table}_pkey{OLD}")
        for name, _ in indexes[table]:
            op.execute(f'ALTER INDEX "{name}" RENAME TO "{name}{OLD}"')
        op.execute(f"""CREATE TABLE {table} (LIKE {table}{OLD} INCLUDING DEFAULTS INCLUDING CONSTRAINTS
                       INCLUDING STORAGE INCLUDING COMMENTS)""")
        op.execute(f"INSERT INTO {table} SELECT * FROM {table}{OLD}")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY (id)")
    op.execute("ALTER TABLE case_key RENAME CONSTRAINT case_file_city_id_case_no_key TO case_key_city_case_no_old")
    op.execute("DROP INDEX case_source_ref")
    op.execute("ALTER TABLE case_file ADD CONSTRAINT case_file_city_id_case_no_key UNIQUE (city_id, case_no)")
    op.execute("CREATE UNIQUE INDEX case_source_ref ON case_file (city_id, source, source_ref) WHERE source_ref IS NOT NULL")
    for table, _ in TABLES:
        for _name, ddl in indexes[table]:
            op.execute(ddl)
        for name, ddl in own_fks[table]:
            op.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {ddl}')
    for table, name, ddl, _ in refs:
        ddl = ddl.replace("REFERENCES case_key(id)", "REFERENCES case_file(id)")
        if name == "case_file_merged_into_fkey":
            ddl = ddl.replace(" DEFERRABLE INITIALLY DEFERRED", "")
        op.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {ddl}')
    op.execute("""ALTER TABLE case_verification ADD CONSTRAINT case_verification_event_id_fkey
                  FOREIGN KEY (event_id) REFERENCES case_event(id) ON DELETE SET NULL""")
    for table, _ in TABLES:
        op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY {table}.id")
        op.execute(f"DROP TABLE {table}{OLD} CASCADE")
    op.execute("DROP TABLE case_key")
    for name in CASE_KEY_FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS case_key_{name}()")
    op.execute(APPEND_ONLY_0003)
    op.execute(_rewrite_function("cg_nearest_open", NEAREST_NEW, NEAREST_OLD))
    for table, _ in TABLES:
        for name, ddl, enabled in triggers[table]:
            op.execute(ddl)
            state = {"A": "ENABLE ALWAYS", "R": "ENABLE REPLICA", "D": "DISABLE"}.get(enabled)
            if state:
                op.execute(f'ALTER TABLE {table} {state} TRIGGER "{name}"')
