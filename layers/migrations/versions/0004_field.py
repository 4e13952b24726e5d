"""Field work: inspector reports with their photos, key zones (重点区域) and patrol tracks.

A report (``field_report``) is what an inspector sent: where the device said it was, what the photos'
EXIF said, the accuracy gate, the cell and asset it was snapped to, and the case file it opened
(``case_id``; the case itself lives in ``case_file``, one workflow for all channels). The
``Idempotency-Key`` of the upload is unique per user: a retried upload finds the first report.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = ("field",)
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE field_report (
        id                bigserial PRIMARY KEY,
        city_id           integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        user_id           integer NOT NULL REFERENCES app_user(id) ON DELETE RESTRICT,
        idempotency_key   varchar(100) NOT NULL,
        request_hash      char(64) NOT NULL,
        case_id           bigint REFERENCES case_file(id) ON DELETE SET NULL,
        category_code     varchar(40) NOT NULL,
        description       text,
        device_time       timestamptz,
        received_at       timestamptz NOT NULL DEFAULT now(),
        -- what the device sent, as sent (lon/lat in input_crs), and the point used, in the working CRS
        input_lon         double precision,
        input_lat         double precision,
        input_crs         varchar(40),
        accuracy_m        double precision,
        accuracy_gate_m   double precision NOT NULL,
        accuracy_ok       boolean,
        location_source   varchar(12) NOT NULL CHECK (location_source IN ('device', 'exif', 'asset')),
        device_location   geometry(Point),
        location          geometry(Point) NOT NULL,
        exif_distance_m   double precision,
        cell_id           bigint REFERENCES grid_cell(id) ON DELETE SET NULL,
        cell_code         varchar(15),
        asset_id          bigint,
        asset_code        varchar(16),
        asset_distance_m  double precision,
        flags             text[] NOT NULL DEFAULT '{}',
        response          jsonb,
        UNIQUE (user_id, idempotency_key),
        CONSTRAINT field_report_srid CHECK (ST_SRID(location) > 0)
    )""")
    op.execute("CREATE INDEX field_report_city_idx ON field_report (city_id, received_at)")
    op.execute("CREATE INDEX field_report_case_idx ON field_report (case_id)")
    op.execute("CREATE INDEX field_report_location_idx ON field_report USING gist (location)")
    op.execute("""
    CREATE TABLE field_photo (
        id             bigserial PRIMARY KEY,
        report_id      bigint NOT NULL REFERENCES field_report(id) ON DELETE CASCADE,
        seq            smallint NOT NULL,
        sha256         char(64) NOT NULL,          -- the private original
        public_sha256  char(64) NOT NULL,          -- auto-rotated, ≤ 2048 px, no metadata
        thumb_sha256   char(64) NOT NULL,
        media_type     varchar(12) NOT NULL,
        size_bytes     integer NOT NULL,
        width          integer,
        height         integer,
        exif_status    varchar(20) NOT NULL,
        exif_lon       double precision,
        exif_lat       double precision,
        exif_time      text,
        exif_direction double precision,
        exif_distance_m double precision,
        flags          text[] NOT NULL DEFAULT '{}',
        UNIQUE (report_id, seq)
    )""")
    op.execute("CREATE INDEX field_photo_sha_idx ON field_photo (sha256)")
    op.execute("CREATE INDEX field_photo_public_idx ON field_photo (public_sha256)")
    op.execute("CREATE INDEX field_photo_thumb_idx ON field_photo (thumb_sha256)")

    # Key zones: polygons, or lines with a buffer (a road is its centreline), in the working CRS.
    op.execute("""
    CREATE TABLE key_zone (
        id           serial PRIMARY KEY,
        city_id      integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        code         varchar(40) NOT NULL,
        name         text NOT NULL,
        zone_type    varchar(20) NOT NULL,
        frequency    varchar(20) NOT NULL,
        area_code    varchar(12),
        geom         geometry NOT NULL,
        buffer_m     double precision NOT NULL DEFAULT 0,
        measure      varchar(8) NOT NULL CHECK (measure IN ('area', 'length', 'points')),
        source       text,
        made_up      boolean NOT NULL DEFAULT false,
        active       boolean NOT NULL DEFAULT true,
        created_at   timestamptz NOT NULL DEFAULT now(),
        UNIQUE (city_id, code),
        CONSTRAINT key_zone_srid CHECK (ST_SRID(geom) > 0)
    )""")
    op.execute("CREATE INDEX key_zone_geom_idx ON key_zone USING gist (geom)")
    op.execute("CREATE INDEX key_zone_area_idx ON key_zone (city_id, area_code)")

    # Patrol tracks: the kept fixes as a line in the working CRS, their times, what was dropped.
    op.execute("""
    CREATE TABLE patrol_track (
        id            bigserial PRIMARY KEY,
        city_id       integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        user_id       integer NOT NULL REFERENCES app_user(id) ON DELETE RESTRICT,
        started_at    timestamptz NOT NULL,
        ended_at      timestamptz NOT NULL,
        geom          geometry(LineString) NOT NULL,
        times         double precision[] NOT NULL,
        fixes         integer NOT NULL,
        kept          integer NOT NULL,
        dropped       jsonb NOT NULL,
        length_m      double precision NOT NULL,
        source_format varchar(10) NOT NULL,
        source_crs    varchar(40) NOT NULL,
        name          text,
        uploaded_at   timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT patrol_track_srid CHECK (ST_SRID(geom) > 0)
    )""")
    op.execute("CREATE INDEX patrol_track_geom_idx ON patrol_track USING gist (geom)")
    op.execute("CREATE INDEX patrol_track_time_idx ON patrol_track (city_id, started_at)")
    op.execute("CREATE INDEX patrol_track_user_idx ON patrol_track (user_id, started_at)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS patrol_track")
    op.execute("DROP TABLE IF EXISTS key_zone")
    op.execute("DROP TABLE IF EXISTS field_photo")
    op.execute("DROP TABLE IF EXISTS field_report")
