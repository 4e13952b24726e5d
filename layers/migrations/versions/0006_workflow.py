"""Workflow: case numbers per day, public notices (便民公告), the gazetteer of named places.

Revision ID: 0006
Revises: 0003
"""

from alembic import op

revision = "0006"
down_revision = "0003"
branch_labels = ("workflow",)
depends_on = None


def upgrade() -> None:
    # 0003 declared rating varchar(8), too short for its own value 'satisfied': widen it.
    op.execute("ALTER TABLE case_file ALTER COLUMN rating TYPE varchar(12)")
    # Case numbers: <adcode><yyyymmdd><6-digit sequence of the day>, counted per city and day.
    op.execute("""
    CREATE TABLE case_no_counter (
        city_id integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        day     date NOT NULL,
        n       integer NOT NULL,
        PRIMARY KEY (city_id, day)
    )""")
    op.execute("""
    CREATE TABLE notice (
        id           serial PRIMARY KEY,
        city_id      integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        title        text NOT NULL,
        body         text NOT NULL,
        published_at timestamptz NOT NULL DEFAULT now(),
        expires_at   timestamptz,
        author_id    integer REFERENCES app_user(id) ON DELETE SET NULL,
        active       boolean NOT NULL DEFAULT true
    )""")
    op.execute("CREATE INDEX notice_city_idx ON notice (city_id, published_at DESC)")
    # Named places for address matching: roads, communities, POIs, key zones (geometry in the
    # city's working CRS). Admin areas are matched from admin_area directly.
    op.execute("""
    CREATE TABLE gazetteer (
        id       bigserial PRIMARY KEY,
        city_id  integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        name     text NOT NULL,
        kind     varchar(16) NOT NULL,
        source   text,
        geom     geometry NOT NULL,
        CONSTRAINT gazetteer_srid CHECK (ST_SRID(geom) > 0)
    )""")
    op.execute("CREATE INDEX gazetteer_city_name_idx ON gazetteer (city_id, name)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS gazetteer")
    op.execute("DROP TABLE IF EXISTS notice")
    op.execute("DROP TABLE IF EXISTS case_no_counter")
