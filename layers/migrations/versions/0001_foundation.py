"""Foundation: cities, admin areas, unit grids and their cells, users.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    op.execute("""
    CREATE TABLE city (
        id            serial PRIMARY KEY,
        slug          varchar(40) NOT NULL UNIQUE CHECK (slug ~ '^[a-z][a-z0-9_-]*$'),
        name          text NOT NULL,
        name_en       text,
        adcode        varchar(6) NOT NULL CHECK (adcode ~ '^[0-9]{6}$'),
        working_srid  integer NOT NULL,
        source_crs    text NOT NULL,
        boundary      geometry(MultiPolygon) NOT NULL,
        area_m2       double precision NOT NULL,
        created_at    timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT city_boundary_srid CHECK (ST_SRID(boundary) = working_srid),
        CONSTRAINT city_boundary_valid CHECK (ST_IsValid(boundary))
    )""")
    op.execute("""
    CREATE TABLE admin_area (
        id         serial PRIMARY KEY,
        city_id    integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        level      varchar(12) NOT NULL CHECK (level IN ('district', 'street', 'community')),
        code       varchar(12) NOT NULL CHECK (code ~ '^[0-9]{6}([0-9]{3}([0-9]{3})?)?$'),
        name       text NOT NULL,
        name_en    text,
        parent_id  integer REFERENCES admin_area(id) ON DELETE CASCADE,
        made_up    boolean NOT NULL DEFAULT false,
        geom       geometry(MultiPolygon) NOT NULL,
        UNIQUE (city_id, code),
        CHECK (length(code) = CASE level WHEN 'district' THEN 6 WHEN 'street' THEN 9 ELSE 12 END)
    )""")
    op.execute("CREATE INDEX admin_area_geom_idx ON admin_area USING gist (geom)")
    op.execute("CREATE INDEX admin_area_parent_idx ON admin_area (parent_id)")
    op.execute("""
    CREATE TABLE grid (
        id          serial PRIMARY KEY,
        city_id     integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        name        text NOT NULL,
        kind        varchar(12) NOT NULL CHECK (kind IN ('regular', 'imported')),
        cell_size   double precision CHECK (cell_size > 0),
        srid        integer NOT NULL,
        active      boolean NOT NULL DEFAULT false,
        valid_from  date NOT NULL DEFAULT current_date,
        valid_to    date,
        source      text,
        cell_count  integer NOT NULL DEFAULT 0,
        created_at  timestamptz NOT NULL DEFAULT now(),
        CHECK ((kind = 'regular') = (cell_size IS NOT NULL))
    )""")
    op.execute("CREATE UNIQUE INDEX grid_one_active_per_city ON grid (city_id) WHERE active")
    op.execute("""
    CREATE TABLE grid_cell (
        id           bigserial PRIMARY KEY,
        grid_id      integer NOT NULL REFERENCES grid(id) ON DELETE CASCADE,
        code         varchar(15) NOT NULL CHECK (code ~ '^[0-9]{14,15}$'),
        col          integer,
        "row"        integer,
        partial      boolean NOT NULL DEFAULT false,
        area_id      integer REFERENCES admin_area(id) ON DELETE SET NULL,
        area_m2      double precision NOT NULL,
        responsible  text,
        geom         geometry(MultiPolygon) NOT NULL,
        UNIQUE (grid_id, code),
        CHECK ((col IS NULL) = ("row" IS NULL))
    )""")
    op.execute('CREATE UNIQUE INDEX grid_cell_key ON grid_cell (grid_id, col, "row") WHERE col IS NOT NULL')
    op.execute("CREATE INDEX grid_cell_geom_idx ON grid_cell USING gist (geom)")
    op.execute("CREATE INDEX grid_cell_area_idx ON grid_cell (area_id)")
    op.execute("""
    CREATE TABLE app_user (
        id          serial PRIMARY KEY,
        name        varchar(80) NOT NULL UNIQUE,
        role        varchar(20) NOT NULL CHECK (role IN
                        ('inspector', 'operator', 'department', 'supervisor', 'planner', 'admin')),
        department  text,
        area_code   varchar(15),
        token_hash  char(64) NOT NULL UNIQUE,
        active      boolean NOT NULL DEFAULT true,
        created_at  timestamptz NOT NULL DEFAULT now(),
        CHECK (role <> 'department' OR department IS NOT NULL)
    )""")


def downgrade() -> None:
    for table in ("app_user", "grid_cell", "grid", "admin_area", "city"):
        op.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
