"""One department list: the duplicates the old demo loader made are merged into the configured ones.

The synthetic year used to create its own departments beside the configured ones
(``layers/cases/data/departments.json`` and the ``street-<code>`` street offices): ``ST<code>`` for
each street (a second office of every town), ``HW`` 环卫处 (= ``sanitation``), ``SZ`` 市政工程管理处
(= ``roads``), ``CG`` 城管执法局 (= ``urban_mgmt``). Where the configured one exists in the same city,
the cases and users of the duplicate move to it and the duplicate is made inactive (its id stays for
the events that name it: the event log is append-only). Where it does not, nothing changes.

Revision ID: 0024
Revises: 0019
"""

from alembic import op

revision = "0024"
down_revision = "0019"
branch_labels = None
depends_on = None

PAIRS = "('HW', 'sanitation'), ('SZ', 'roads'), ('CG', 'urban_mgmt')"

#: The merge, statement by statement (also run by tests/demo/test_demo_data.py on made-up duplicates).
MERGE = [
    f"""CREATE TEMP TABLE dep_merge ON COMMIT DROP AS
    SELECT dup.id AS dup_id, dup.code AS dup_code, keep.id AS keep_id, keep.code AS keep_code
    FROM department dup
    JOIN department keep ON keep.city_id = dup.city_id AND keep.active AND keep.id <> dup.id
     AND (keep.code = (SELECT p.k FROM (VALUES {PAIRS}) AS p(d, k) WHERE p.d = dup.code)
          OR (dup.code ~ '^ST[0-9]{{9}}$' AND dup.kind = 'street' AND keep.code = 'street-' || substr(dup.code, 3)))
    WHERE dup.active""",
    "UPDATE case_file c SET department_id = m.keep_id FROM dep_merge m WHERE c.department_id = m.dup_id",
    """UPDATE app_user u SET department = m.keep_code FROM dep_merge m, department d
       WHERE d.id = m.dup_id AND u.department IN (m.dup_code, d.name)""",
    "UPDATE department d SET active = false FROM dep_merge m WHERE d.id = m.dup_id",
    "DROP TABLE dep_merge",
]


def upgrade() -> None:
    for sql in MERGE:
        op.execute(sql)


def downgrade() -> None:
    pass  # the merge is not undone (the duplicates stay inactive)
