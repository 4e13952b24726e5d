"""Case numbers from a sequence: taking a number no longer locks a counter row until commit, which
serialised every intake of a city and day (reports, calls, citizen requests) behind each other.

Revision ID: 0008
Revises: 0006
"""

from alembic import op

revision = "0008"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SEQUENCE IF NOT EXISTS case_no_seq")
    # Start past every number already given, so no new number repeats an old one of the same day.
    op.execute("""SELECT setval('case_no_seq', GREATEST(1, (SELECT COALESCE(max(n), 0) FROM case_no_counter)), true)""")


def downgrade() -> None:
    op.execute("DROP SEQUENCE IF EXISTS case_no_seq")
