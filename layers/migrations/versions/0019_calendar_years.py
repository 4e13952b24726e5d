"""Calendar years loaded at run time, and what an importer's source said of a case.

``calendar_year``: one row per year of holidays and make-up workdays (调休上班), from that year's
State Council notice (named in ``source``), loaded with ``citygrid calendar import FILE`` or
``POST /api/v1/admin/calendar/years``. Every process reads it (layers/calendar.py looks for a change
every two seconds, and at once before refusing a deadline), so a year loaded by one worker is used
by all; the files shipped in layers/workflow_data/calendar_years are the default for a year the
table does not have.

``case_file.source_data``: the importing source's own words for the case, kept as given — its
category label and raw status (``{"category": "Bulky Items", "status": "Closed"}``) and, when the
source closed it before it was received, the closure that was not believed.

Revision ID: 0019
Revises: 0006
"""

from alembic import op

revision = "0019"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE calendar_year (
        year       integer PRIMARY KEY CHECK (year BETWEEN 1970 AND 2100),
        holidays   date[] NOT NULL,
        workdays   date[] NOT NULL DEFAULT '{}',
        source     jsonb NOT NULL CHECK (coalesce(source->>'title', '') <> ''),
        loaded_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
        loaded_by  text
    )""")
    op.execute("ALTER TABLE case_file ADD COLUMN IF NOT EXISTS source_data jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE case_file DROP COLUMN IF EXISTS source_data")
    op.execute("DROP TABLE IF EXISTS calendar_year")
