"""Open311 ``media_url``: the address of a photo of the problem that an Open311 client sends with a
request, stored with its case (a table of its own: writing it does not touch ``case_file``, whose
update trigger feeds the rollups).

Revision ID: 0016
Revises: 0012
"""

from alembic import op

revision = "0016"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE case_media (
        case_id    bigint PRIMARY KEY REFERENCES case_file(id) ON DELETE CASCADE,
        media_url  text NOT NULL CHECK (length(media_url) <= 2000 AND media_url ~ '^https?://')
    )""")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS case_media")
