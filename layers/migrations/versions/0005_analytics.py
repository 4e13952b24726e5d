"""Analytics: the case rollup (cell × day × class × channel) kept current by statement-level
triggers on case_file, the per-city analytics settings (time zone of the "day"), and stored alerts
(space-time scan clusters, per-class surges, petition risks).

The rollup is a table maintained set-based: one INSERT/UPDATE/DELETE statement on case_file updates
it once, through transition tables (no per-row trigger work). A case counts while it is not merged
into another (并单 duplicates would count twice); cases without a cell count under cell_id 0.

Revision ID: 0005
Revises: 0003
"""

from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = ("analytics",)
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE analytics_city (
        city_id   integer PRIMARY KEY REFERENCES city(id) ON DELETE CASCADE,
        timezone  text NOT NULL DEFAULT 'Asia/Shanghai',
        epoch     integer NOT NULL DEFAULT 0      -- bumped by a full rebuild of the city's rollup
    )""")
    # Which days of a city's rollup changed, and when (a sequence number): in-process caches of the
    # rollup (layers/analytics.py) reload only those days.
    op.execute("CREATE SEQUENCE case_rollup_seq")
    op.execute("""
    CREATE TABLE case_rollup_change (
        city_id  integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        day      date NOT NULL,
        version  bigint NOT NULL,
        PRIMARY KEY (city_id, day)
    )""")
    op.execute("CREATE INDEX case_rollup_change_version_idx ON case_rollup_change (city_id, version)")
    op.execute("""
    CREATE TABLE case_rollup (
        city_id        integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        cell_id        bigint NOT NULL,          -- grid_cell.id, 0 = no cell
        day            date NOT NULL,            -- local day of received_at (analytics_city.timezone)
        category_code  varchar(40) NOT NULL,
        channel        varchar(12) NOT NULL,
        n              integer NOT NULL,
        PRIMARY KEY (city_id, day, cell_id, category_code, channel)
    )""")
    op.execute("CREATE INDEX case_rollup_cell_idx ON case_rollup (cell_id)")
    # One function per operation: a transition table that does not exist cannot even be named.
    def key(alias: str) -> str:
        return f"({alias}.received_at AT TIME ZONE COALESCE(ac.timezone, 'Asia/Shanghai'))::date"
    changed = ("(nw.cell_id IS DISTINCT FROM o.cell_id OR nw.category_code <> o.category_code "
               "OR nw.channel <> o.channel OR nw.received_at <> o.received_at "
               "OR nw.merged_into IS DISTINCT FROM o.merged_into OR nw.city_id <> o.city_id)")
    subtract = f"""
            WITH o AS (
                SELECT o.city_id, COALESCE(o.cell_id, 0) AS cell_id, {key('o')} AS day,
                       o.category_code, o.channel, count(*)::integer AS n
                FROM old_rows o LEFT JOIN analytics_city ac ON ac.city_id = o.city_id
                WHERE o.merged_into IS NULL AND %s
                GROUP BY 1, 2, 3, 4, 5)
            UPDATE case_rollup r SET n = r.n - o.n FROM o
            WHERE r.city_id = o.city_id AND r.cell_id = o.cell_id AND r.day = o.day
              AND r.category_code = o.category_code AND r.channel = o.channel;
            DELETE FROM case_rollup r USING (SELECT DISTINCT city_id FROM old_rows) c
            WHERE r.city_id = c.city_id AND r.n <= 0;"""
    add = f"""
            INSERT INTO case_rollup AS r (city_id, cell_id, day, category_code, channel, n)
            SELECT nw.city_id, COALESCE(nw.cell_id, 0), {key('nw')}, nw.category_code, nw.channel, count(*)::integer
            FROM new_rows nw LEFT JOIN analytics_city ac ON ac.city_id = nw.city_id
            WHERE nw.merged_into IS NULL AND %s
            GROUP BY 1, 2, 3, 4, 5
            ON CONFLICT (city_id, day, cell_id, category_code, channel) DO UPDATE SET n = r.n + EXCLUDED.n;"""
    def mark(table: str, alias: str) -> str:
        return f"""
            INSERT INTO case_rollup_change AS ch (city_id, day, version)
            SELECT DISTINCT {alias}.city_id, {key(alias)}, v
            FROM {table} {alias} LEFT JOIN analytics_city ac ON ac.city_id = {alias}.city_id
            ON CONFLICT (city_id, day) DO UPDATE SET version = EXCLUDED.version;"""

    bodies = {
        "ins": add % "true" + mark("new_rows", "nw"),
        "del": subtract % "true" + mark("old_rows", "o"),
        "upd": (subtract % f"EXISTS (SELECT 1 FROM new_rows nw WHERE nw.id = o.id AND {changed})")
        + (add % f"EXISTS (SELECT 1 FROM old_rows o WHERE o.id = nw.id AND {changed})")
        + mark("(SELECT o.* FROM old_rows o JOIN new_rows nw ON nw.id = o.id WHERE " + changed + ")", "o")
        + mark("(SELECT nw.* FROM new_rows nw JOIN old_rows o ON o.id = nw.id WHERE " + changed + ")", "nw"),
    }
    for name, body in bodies.items():
        op.execute(f"""CREATE FUNCTION case_rollup_{name}() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE v bigint := nextval('case_rollup_seq');
        BEGIN {body}
            RETURN NULL;
        END $$""")
    op.execute("""CREATE TRIGGER case_rollup_ins AFTER INSERT ON case_file
        REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION case_rollup_ins()""")
    op.execute("""CREATE TRIGGER case_rollup_upd AFTER UPDATE ON case_file
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION case_rollup_upd()""")
    op.execute("""CREATE TRIGGER case_rollup_del AFTER DELETE ON case_file
        REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION case_rollup_del()""")
    op.execute("""
    CREATE TABLE analytics_alert (
        id               bigserial PRIMARY KEY,
        city_id          integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        kind             varchar(12) NOT NULL CHECK (kind IN ('scan', 'surge', 'petition')),
        detected_on      date NOT NULL,
        category_code    varchar(40),
        window_start     date NOT NULL,
        window_end       date NOT NULL,
        cell_ids         bigint[] NOT NULL DEFAULT '{}',
        cell_codes       text[] NOT NULL DEFAULT '{}',
        observed         integer NOT NULL,
        expected         double precision NOT NULL,
        p_value          double precision,
        llr              double precision,
        recurrence_days  double precision,
        signature        text NOT NULL,           -- what makes an alert the same alert on a rerun
        details          jsonb NOT NULL DEFAULT '{}',  -- never personal data
        created_at       timestamptz NOT NULL DEFAULT now(),
        UNIQUE (city_id, kind, detected_on, signature)
    )""")
    op.execute("CREATE INDEX analytics_alert_feed_idx ON analytics_alert (city_id, detected_on DESC)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS analytics_alert")
    op.execute("DROP TRIGGER IF EXISTS case_rollup_ins ON case_file")
    op.execute("DROP TRIGGER IF EXISTS case_rollup_upd ON case_file")
    op.execute("DROP TRIGGER IF EXISTS case_rollup_del ON case_file")
    for name in ("ins", "upd", "del"):
        op.execute(f"DROP FUNCTION IF EXISTS case_rollup_{name}()")
    op.execute("DROP TABLE IF EXISTS case_rollup")
    op.execute("DROP TABLE IF EXISTS case_rollup_change")
    op.execute("DROP SEQUENCE IF EXISTS case_rollup_seq")
    op.execute("DROP TABLE IF EXISTS analytics_city")
