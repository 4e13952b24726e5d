"""Import speed: the department worklist index covers only cases that have a department.

A case gets its department when it is dispatched; every case before that (and every imported
hotline case: collected, closed or void, never dispatched) has none, and no query looks for cases
by a missing department, so those rows only cost an index entry each. Queries by department
(``department_id = :d``) imply ``department_id IS NOT NULL`` and use the partial index as before.

Revision ID: 0010
Revises: 0008
"""

from alembic import op

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX IF EXISTS case_department_idx")
    op.execute("CREATE INDEX case_department_idx ON case_file (department_id, state) WHERE department_id IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS case_department_idx")
    op.execute("CREATE INDEX case_department_idx ON case_file (department_id, state)")
