"""On-site verification (核查) with photos: what an inspector found when checking a department's work.

A verification (``case_verification``) is one on-site check of a case in state 'verifying': the result
(ok → verify_ok, fail → verify_fail 返工), the note or reason, the workflow event it made
(``event_id``), where the inspector stood (as sent, and in the working CRS), how far that is from the
case (``distance_m``), flags, and the first answer (``response``) for a retry with the same
``Idempotency-Key`` (unique per user). Its photos (``case_verification_photo``) refer to files of the
content-addressed photo store by sha256 (original, public copy, thumbnail).

Revision ID: 0013
Revises: 0004
"""

from alembic import op

revision = "0013"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE case_verification (
        id               bigserial PRIMARY KEY,
        city_id          integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        case_id          bigint NOT NULL REFERENCES case_file(id) ON DELETE CASCADE,
        user_id          integer NOT NULL REFERENCES app_user(id) ON DELETE RESTRICT,
        idempotency_key  varchar(100) NOT NULL,
        request_hash     char(64) NOT NULL,
        result           varchar(4) NOT NULL CHECK (result IN ('ok', 'fail')),
        note             text,
        event_id         bigint REFERENCES case_event(id) ON DELETE SET NULL,
        verified_at      timestamptz NOT NULL DEFAULT now(),
        -- the inspector's position as sent (lon/lat in input_crs) and in the working CRS
        input_lon        double precision,
        input_lat        double precision,
        input_crs        varchar(40),
        accuracy_m       double precision,
        device_location  geometry(Point),
        distance_m       double precision,           -- from the case's location
        flags            text[] NOT NULL DEFAULT '{}',
        response         jsonb,
        UNIQUE (user_id, idempotency_key),
        CONSTRAINT case_verification_srid CHECK (device_location IS NULL OR ST_SRID(device_location) > 0)
    )""")
    op.execute("CREATE INDEX case_verification_case_idx ON case_verification (case_id, verified_at)")
    op.execute("CREATE INDEX case_verification_city_idx ON case_verification (city_id, verified_at)")
    op.execute("""
    CREATE TABLE case_verification_photo (
        verification_id  bigint NOT NULL REFERENCES case_verification(id) ON DELETE CASCADE,
        seq              smallint NOT NULL,
        sha256           char(64) NOT NULL,          -- the private original
        public_sha256    char(64) NOT NULL,          -- auto-rotated, ≤ 2048 px, no metadata
        thumb_sha256     char(64) NOT NULL,
        media_type       varchar(12) NOT NULL,
        size_bytes       integer NOT NULL,
        width            integer,
        height           integer,
        exif_status      varchar(20) NOT NULL,
        exif_lon         double precision,
        exif_lat         double precision,
        exif_time        text,
        exif_distance_m  double precision,           -- EXIF position to the case's location
        flags            text[] NOT NULL DEFAULT '{}',
        PRIMARY KEY (verification_id, seq)
    )""")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS case_verification_photo")
    op.execute("DROP TABLE IF EXISTS case_verification")
