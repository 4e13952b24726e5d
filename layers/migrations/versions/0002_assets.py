"""Assets (部件) and published layers: the class catalogs (components and events), assets with their
derived grid cell and append-only history, object-code counters, layer versions for tile caches and
a cached EPSG:3857 copy of grid cells for vector tiles.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = ("assets",)
depends_on = None

# Derived values, kept right by the database whatever writes the row: kind, length, area, and the grid
# cell of the active grid holding the geometry's representative point (a point on a shared edge goes to
# the cell to its north-east, the rule of gis.snap). A generic plan and the GiST index only (not the
# grid_id index, which would scan the whole grid): ~0.1 ms per row.
ASSET_DERIVE = """
CREATE OR REPLACE FUNCTION asset_derive() RETURNS trigger LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    rep geometry;
    gid integer;
    cell record;
BEGIN
    -- Unchanged geometry keeps its cell; setting cell_id to NULL forces a new derivation.
    IF TG_OP = 'UPDATE' AND NEW.geom IS NOT DISTINCT FROM OLD.geom AND NEW.city_id = OLD.city_id
       AND NEW.cell_id IS NOT NULL THEN
        RETURN NEW;
    END IF;
    NEW.geom_kind := CASE ST_Dimension(NEW.geom) WHEN 0 THEN 'point' WHEN 1 THEN 'line' ELSE 'polygon' END;
    NEW.length_m := CASE WHEN ST_Dimension(NEW.geom) = 1 THEN ST_Length(NEW.geom) END;
    NEW.area_m2 := CASE WHEN ST_Dimension(NEW.geom) = 2 THEN ST_Area(NEW.geom) END;
    rep := CASE ST_Dimension(NEW.geom)
             WHEN 0 THEN CASE WHEN GeometryType(NEW.geom) = 'POINT' THEN NEW.geom ELSE ST_PointOnSurface(NEW.geom) END
             WHEN 1 THEN ST_LineInterpolatePoint(ST_LineMerge(ST_GeometryN(NEW.geom, 1)), 0.5)
             ELSE ST_PointOnSurface(NEW.geom) END;
    IF rep IS NULL OR ST_IsEmpty(rep) THEN
        rep := ST_PointOnSurface(NEW.geom);
    END IF;
    SELECT g.id INTO gid FROM grid g WHERE g.city_id = NEW.city_id AND g.active;
    SELECT c.id, c.code INTO cell FROM grid_cell c
    WHERE c.geom && rep AND (c.grid_id + 0) = gid AND ST_Intersects(c.geom, rep)
    ORDER BY ST_Intersects(c.geom, ST_Translate(rep, 1e-6, 0.618e-6)) DESC, c.id LIMIT 1;
    NEW.cell_id := cell.id;
    NEW.cell_code := cell.code;
    RETURN NEW;
END $$"""

# Grid cells in EPSG:3857 for the vector tiles, kept in step set-based from the transition tables; and when
# cells arrive in a city's active grid (a new grid generated or imported as active), the city's assets get
# their cells derived again.
GRID_CELL_SYNC = """
CREATE OR REPLACE FUNCTION grid_cell_3857_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO grid_cell_3857 (cell_id, grid_id, geom)
    SELECT n.id, n.grid_id, ST_Multi(ST_Transform(n.geom, 3857)) FROM new_rows n;
    UPDATE asset a SET cell_id = NULL
    WHERE a.city_id IN (SELECT g.city_id FROM grid g
                        WHERE g.active AND g.id IN (SELECT DISTINCT grid_id FROM new_rows));
    RETURN NULL;
END $$"""

# Updates touch the copy only where a cell's geometry changed (not when, e.g., a deleted admin area sets
# area_id to NULL on cells that are being deleted themselves).
GRID_CELL_SYNC_UPDATE = """
CREATE OR REPLACE FUNCTION grid_cell_3857_sync_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE grid_cell_3857 t SET geom = ST_Multi(ST_Transform(n.geom, 3857)), grid_id = n.grid_id
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE t.cell_id = n.id AND (n.geom IS DISTINCT FROM o.geom OR n.grid_id <> o.grid_id);
    RETURN NULL;
END $$"""

GRID_CELL_UPD_TRIGGER = """CREATE TRIGGER grid_cell_3857_upd AFTER UPDATE ON grid_cell
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION grid_cell_3857_sync_update()"""

# A grid made active later (an imported official grid): the city's assets move to its cells.
GRID_ACTIVATED = """
CREATE OR REPLACE FUNCTION grid_activated_assets() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE asset SET cell_id = NULL WHERE city_id = NEW.city_id;
    RETURN NULL;
END $$"""


def upgrade() -> None:
    # Class catalogs. city_id NULL = the default catalog; a city with rows of its own uses only those.
    op.execute("""
    CREATE TABLE asset_class (
        id         serial PRIMARY KEY,
        city_id    integer REFERENCES city(id) ON DELETE CASCADE,
        kind       varchar(10) NOT NULL CHECK (kind IN ('component', 'event')),
        code       varchar(4) NOT NULL CHECK (code ~ '^[0-9]{2}([0-9]{2})?$'),
        name       text NOT NULL,
        name_en    text,
        geom_kind  varchar(8) NOT NULL DEFAULT 'any' CHECK (geom_kind IN ('point', 'line', 'polygon', 'any')),
        official   boolean NOT NULL DEFAULT false
    )""")
    op.execute("CREATE UNIQUE INDEX asset_class_key ON asset_class (coalesce(city_id, 0), kind, code)")

    op.execute("""
    CREATE TABLE asset (
        id            bigserial PRIMARY KEY,
        city_id       integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        code          varchar(16) NOT NULL CHECK (code ~ '^[0-9]{16}$'),
        class_code    varchar(4) NOT NULL CHECK (class_code ~ '^[0-9]{4}$'),
        name          text CHECK (length(name) <= 200),
        status        varchar(8) NOT NULL DEFAULT '完好',
        dept_code1    text,            -- 主管部门
        dept_code2    text,            -- 权属单位
        dept_code3    text,            -- 养护单位
        geom          geometry NOT NULL,
        geom_kind     varchar(8) NOT NULL,
        length_m      double precision,
        area_m2       double precision,
        cell_id       bigint REFERENCES grid_cell(id) ON DELETE SET NULL,
        cell_code     varchar(15),
        installed_on  date,            -- 初始日期
        updated_at    timestamptz NOT NULL DEFAULT now(),   -- 变更日期
        created_at    timestamptz NOT NULL DEFAULT now(),
        retired_at    timestamptz,
        source        text,            -- 数据来源
        source_id     text,
        photo         text,
        note          text CHECK (length(note) <= 2000),   -- 备注
        synthetic     boolean NOT NULL DEFAULT false,
        version       integer NOT NULL DEFAULT 1,
        UNIQUE (city_id, code),
        CHECK (geom_kind IN ('point', 'line', 'polygon'))
    )""")
    op.execute("CREATE INDEX asset_geom_idx ON asset USING gist (geom)")
    op.execute("CREATE INDEX asset_city_class_idx ON asset (city_id, class_code)")
    op.execute("CREATE INDEX asset_cell_idx ON asset (cell_id)")
    op.execute("CREATE UNIQUE INDEX asset_source_key ON asset (city_id, source, source_id) "
               "WHERE source_id IS NOT NULL")
    # Derived values, kept right by the database whatever writes the row: kind, length, area, and the
    # grid cell of the active grid holding the geometry's representative point (a point on a shared
    # edge goes to the cell to its north-east, the rule of gis.snap).
    op.execute(ASSET_DERIVE)
    op.execute("""CREATE TRIGGER asset_derive BEFORE INSERT OR UPDATE ON asset
                  FOR EACH ROW EXECUTE FUNCTION asset_derive()""")

    op.execute("""
    CREATE TABLE asset_history (
        id        bigserial PRIMARY KEY,
        asset_id  bigint NOT NULL REFERENCES asset(id) ON DELETE CASCADE,
        at        timestamptz NOT NULL DEFAULT clock_timestamp(),
        actor     text NOT NULL,
        action    varchar(10) NOT NULL CHECK (action IN ('create', 'update', 'retire', 'import')),
        changes   jsonb NOT NULL DEFAULT '{}'
    )""")
    op.execute("CREATE INDEX asset_history_asset_idx ON asset_history (asset_id, id)")
    op.execute("""
    CREATE FUNCTION asset_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' AND NOT EXISTS (SELECT 1 FROM asset WHERE id = OLD.asset_id) THEN
            RETURN OLD;  -- the asset itself is being deleted (cascade)
        END IF;
        RAISE EXCEPTION 'asset_history is append-only';
    END $$""")
    op.execute("""CREATE TRIGGER asset_history_no_update BEFORE UPDATE OR DELETE ON asset_history
                  FOR EACH ROW EXECUTE FUNCTION asset_history_append_only()""")

    # 6-digit sequences of object codes, per city and 10-digit prefix (admin code + big + small class).
    op.execute("""
    CREATE TABLE asset_code_counter (
        city_id  integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        prefix   varchar(10) NOT NULL,
        last     integer NOT NULL,
        PRIMARY KEY (city_id, prefix)
    )""")

    # Versions of published layers: tile caches key on them, so a change invalidates cached tiles.
    op.execute("""
    CREATE TABLE layer_version (
        layer       varchar(60) PRIMARY KEY,
        version     bigint NOT NULL DEFAULT 1,
        changed_at  timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE FUNCTION layer_version_bump() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        v bigint;
    BEGIN
        INSERT INTO layer_version (layer) VALUES (TG_ARGV[0])
        ON CONFLICT (layer) DO UPDATE SET version = layer_version.version + 1, changed_at = now()
        RETURNING version INTO v;
        -- delivered at commit: tile caches in every server process drop the layer's tiles then
        PERFORM pg_notify('citygrid_layer_version', TG_ARGV[0] || ' ' || v);
        RETURN NULL;
    END $$""")
    for table, layer in (("asset", "assets"), ("grid_cell", "grid"), ("grid", "grid"),
                         ("admin_area", "admin_areas")):
        op.execute(f"""CREATE TRIGGER {table}_layer_version AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
                       ON {table} FOR EACH STATEMENT EXECUTE FUNCTION layer_version_bump('{layer}')""")

    # Grid cells in EPSG:3857 for vector tiles, maintained set-based from the transition tables.
    op.execute("""
    CREATE TABLE grid_cell_3857 (
        cell_id  bigint PRIMARY KEY REFERENCES grid_cell(id) ON DELETE CASCADE,
        grid_id  integer NOT NULL,
        geom     geometry(MultiPolygon, 3857) NOT NULL
    )""")
    op.execute("CREATE INDEX grid_cell_3857_geom_idx ON grid_cell_3857 USING gist (geom)")
    op.execute("CREATE INDEX grid_cell_3857_grid_idx ON grid_cell_3857 (grid_id)")
    op.execute(GRID_CELL_SYNC)
    op.execute(GRID_CELL_SYNC_UPDATE)
    op.execute(GRID_ACTIVATED)
    op.execute("""CREATE TRIGGER grid_cell_3857_ins AFTER INSERT ON grid_cell REFERENCING NEW TABLE AS new_rows
                  FOR EACH STATEMENT EXECUTE FUNCTION grid_cell_3857_sync()""")
    op.execute(GRID_CELL_UPD_TRIGGER)
    op.execute("""CREATE TRIGGER grid_activated_assets AFTER UPDATE OF active ON grid
                  FOR EACH ROW WHEN (NEW.active AND NOT OLD.active) EXECUTE FUNCTION grid_activated_assets()""")
    # Cells that exist already (a database migrated after its grid was loaded).
    op.execute("""INSERT INTO grid_cell_3857 (cell_id, grid_id, geom)
                  SELECT id, grid_id, ST_Multi(ST_Transform(geom, 3857)) FROM grid_cell""")


def downgrade() -> None:
    for table in ("asset", "grid_cell", "grid", "admin_area"):
        op.execute(f"DROP TRIGGER IF EXISTS {table}_layer_version ON {table}")
    op.execute("DROP TRIGGER IF EXISTS grid_cell_3857_ins ON grid_cell")
    op.execute("DROP TRIGGER IF EXISTS grid_cell_3857_upd ON grid_cell")
    op.execute("DROP TRIGGER IF EXISTS grid_activated_assets ON grid")
    for table in ("grid_cell_3857", "layer_version", "asset_code_counter", "asset_history", "asset",
                  "asset_class"):
        op.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    for fn in ("grid_activated_assets", "grid_cell_3857_sync", "grid_cell_3857_sync_update", "layer_version_bump", "asset_history_append_only", "asset_derive"):
        op.execute(f"DROP FUNCTION IF EXISTS {fn}()")
