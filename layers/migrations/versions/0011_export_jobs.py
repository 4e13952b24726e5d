"""Background export jobs kept in the database (they were held in one process's memory and lost on a
restart): what was asked, progress, the outcome and the file's name; the file itself lies under
``CITYGRID_DATA_DIR/exports/<id>/``. A running job's worker holds an advisory lock on it, so a job whose
worker is gone (a restart) can be told from one still being written, by any process.

Revision ID: 0011
Revises: 0002
"""

from alembic import op

revision = "0011"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No foreign keys: a job (and its file) outlives nothing it names; it is removed when it expires.
    op.execute("""
    CREATE TABLE export_job (
        id           varchar(40) PRIMARY KEY,
        owner_id     integer,
        city_id      integer NOT NULL,
        layers       text[] NOT NULL,
        format       varchar(12) NOT NULL,
        crs          varchar(40) NOT NULL,
        request      jsonb NOT NULL DEFAULT '{}'::jsonb,
        status       varchar(10) NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'failed')),
        rows         bigint NOT NULL DEFAULT 0,
        total        bigint NOT NULL,
        filename     text,
        media        text NOT NULL,
        bytes        bigint,
        error        text,
        created_at   timestamptz NOT NULL DEFAULT now(),
        updated_at   timestamptz NOT NULL DEFAULT now(),
        finished_at  timestamptz,
        CHECK ((status = 'running') = (finished_at IS NULL)),
        CHECK (status <> 'done' OR filename IS NOT NULL)
    )""")
    op.execute("CREATE INDEX export_job_running_idx ON export_job (id) WHERE status = 'running'")
    op.execute("CREATE INDEX export_job_finished_idx ON export_job (finished_at) WHERE status <> 'running'")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS export_job")
