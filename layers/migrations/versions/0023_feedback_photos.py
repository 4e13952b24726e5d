"""Department photos of 处置反馈: the before (处置前) and after (处置后) photos a department uploads with
its feedback, files in their own content-addressed store (``<data_dir>/feedback_photos``, staged →
committed → promoted as the reports' photos; the start-up recovery of each store deletes the files its
own table does not name, so stores are never shared).

Revision ID: 0023
Revises: 0019
"""

from alembic import op

revision = "0023"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE case_feedback_photo (
        id             bigserial PRIMARY KEY,
        case_id        bigint NOT NULL REFERENCES case_file(id) ON DELETE CASCADE,
        event_id       bigint NOT NULL,
        step           varchar(6) NOT NULL CHECK (step IN ('before', 'after')),
        seq            smallint NOT NULL CHECK (seq >= 0),
        sha256         char(64) NOT NULL,
        public_sha256  char(64) NOT NULL,
        thumb_sha256   char(64) NOT NULL,
        media_type     varchar(12) NOT NULL,
        size_bytes     integer NOT NULL,
        width          integer,
        height         integer,
        exif_status    varchar(20),
        user_id        bigint,
        uploaded_at    timestamptz NOT NULL DEFAULT now(),
        UNIQUE (event_id, step, seq)
    )""")
    op.execute("CREATE INDEX case_feedback_photo_case_idx ON case_feedback_photo (case_id)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS case_feedback_photo")
