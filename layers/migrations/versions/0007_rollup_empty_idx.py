"""Rollups: a partial index on emptied rollup rows, so the triggers' clean-up after an UPDATE or
DELETE of a case touches only those rows instead of scanning the city's whole rollup.

Revision ID: 0007
Revises: 0005
"""

from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS case_rollup_emptied ON case_rollup (city_id) WHERE n <= 0")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS case_rollup_emptied")
