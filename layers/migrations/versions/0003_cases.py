"""Cases: one case file for hotline calls, inspector reports and citizen requests; its append-only
event log; departments; caller contacts kept apart from the case (personal data).

The workflow that moves a case along (layers/workflow.py) and the analytics that read the events
are built on these tables; the vocabulary of states and events is in layers/case_vocab.py.

Revision ID: 0003
Revises: 0001
"""

from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = ("cases",)
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE department (
        id         serial PRIMARY KEY,
        city_id    integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        code       varchar(40) NOT NULL,
        name       text NOT NULL,
        -- 'department' (a 处置部门 / 主管部门), 'street' (属地: a street/town office), 'district'
        kind       varchar(12) NOT NULL DEFAULT 'department' CHECK (kind IN ('department', 'street', 'district')),
        area_code  varchar(12),
        parent_id  integer REFERENCES department(id) ON DELETE SET NULL,
        active     boolean NOT NULL DEFAULT true,
        UNIQUE (city_id, code)
    )""")
    op.execute("""
    CREATE TABLE case_file (
        id                  bigserial PRIMARY KEY,
        city_id             integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        case_no             varchar(40) NOT NULL,
        -- where it came from: the hotline (12345), an inspector, a citizen (WeChat/web), Open311, other
        source              varchar(12) NOT NULL CHECK (source IN ('hotline', 'inspector', 'citizen', 'open311', 'other')),
        channel             varchar(12) NOT NULL,
        source_ref          varchar(80),
        received_at         timestamptz NOT NULL,
        category_code       varchar(40) NOT NULL,
        category_name       text,
        request_type        varchar(8),
        urgency             varchar(10) NOT NULL DEFAULT 'normal' CHECK (urgency IN ('normal', 'urgent', 'emergency')),
        title               text,
        description         text,
        address             text,
        location            geometry(Point),
        location_source     varchar(12),
        location_accuracy_m double precision,
        location_confidence double precision,
        cell_id             bigint REFERENCES grid_cell(id) ON DELETE SET NULL,
        cell_code           varchar(15),
        area_code           varchar(12),
        asset_id            bigint,
        department_id       integer REFERENCES department(id) ON DELETE SET NULL,
        state               varchar(16) NOT NULL,
        step_deadline_at    timestamptz,
        close_deadline_at   timestamptz,
        closed_at           timestamptz,
        rating              varchar(8) CHECK (rating IN ('satisfied', 'basic', 'unsatisfied')),
        merged_into         bigint REFERENCES case_file(id) ON DELETE SET NULL,
        rework_count        integer NOT NULL DEFAULT 0,
        query_code_hash     char(64),
        created_at          timestamptz NOT NULL DEFAULT now(),
        updated_at          timestamptz NOT NULL DEFAULT now(),
        UNIQUE (city_id, case_no),
        CONSTRAINT case_location_srid CHECK (location IS NULL OR ST_SRID(location) > 0)
    )""")
    op.execute("CREATE UNIQUE INDEX case_source_ref ON case_file (city_id, source, source_ref) WHERE source_ref IS NOT NULL")
    op.execute("CREATE INDEX case_location_idx ON case_file USING gist (location)")
    op.execute("CREATE INDEX case_cell_idx ON case_file (cell_id)")
    op.execute("CREATE INDEX case_state_idx ON case_file (city_id, state)")
    op.execute("CREATE INDEX case_received_idx ON case_file (city_id, received_at)")
    op.execute("CREATE INDEX case_department_idx ON case_file (department_id, state)")
    op.execute("CREATE INDEX case_open_category_idx ON case_file (city_id, category_code, received_at) "
               "WHERE merged_into IS NULL")
    # Personal data of the caller, apart from the case: exports, public views and logs never join it.
    op.execute("""
    CREATE TABLE case_contact (
        case_id   bigint PRIMARY KEY REFERENCES case_file(id) ON DELETE CASCADE,
        name      text,
        phone     varchar(40),
        openid    varchar(80)
    )""")
    op.execute("CREATE INDEX case_contact_phone_idx ON case_contact (phone) WHERE phone IS NOT NULL")
    # The audit log and the source of every KPI: append-only.
    op.execute("""
    CREATE TABLE case_event (
        id             bigserial PRIMARY KEY,
        case_id        bigint NOT NULL REFERENCES case_file(id) ON DELETE CASCADE,
        at             timestamptz NOT NULL DEFAULT now(),
        kind           varchar(16) NOT NULL,
        actor_id       integer REFERENCES app_user(id) ON DELETE SET NULL,
        actor_role     varchar(20),
        from_state     varchar(16),
        to_state       varchar(16),
        department_id  integer REFERENCES department(id) ON DELETE SET NULL,
        note           text,
        photos         text[],
        data           jsonb
    )""")
    op.execute("CREATE INDEX case_event_case_idx ON case_event (case_id, at)")
    op.execute("CREATE INDEX case_event_kind_idx ON case_event (kind, at)")
    op.execute("""
    CREATE FUNCTION case_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'case events are append-only: % is not allowed', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END $$""")
    op.execute("""
    CREATE TRIGGER case_event_no_update BEFORE UPDATE OR DELETE ON case_event
        FOR EACH ROW EXECUTE FUNCTION case_event_append_only()""")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS case_event CASCADE")
    op.execute("DROP FUNCTION IF EXISTS case_event_append_only()")
    op.execute("DROP TABLE IF EXISTS case_contact CASCADE")
    op.execute("DROP TABLE IF EXISTS case_file CASCADE")
    op.execute("DROP TABLE IF EXISTS department CASCADE")
