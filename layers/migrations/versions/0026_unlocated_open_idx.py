"""The needs-location queue reads the open cases without a location, not the city's history.

The queue (``layers.cases.workflow.list_cases(needs_location=True)``: ``c.location IS NULL AND c.state
IN (<open states>)``, newest first) used ``case_received_idx``/``case_state_idx`` and filtered every
case of the city: its cost grew with the history (docs/SCALING.md §3: 7 ms at 100 k cases, 62 ms at
1 M for 108 queued). A partial index on exactly the queue's predicate holds only the queued cases (about
1 % of the new ones, and only while they are open): the page and its count read the queue alone.

The predicate is written word for word as the query writes it (``workflow.UNLOCATED_OPEN``), so that the
planner proves it even in a generic plan; ``tests/cases/test_list_total.py`` checks that the two agree
and that the plan uses the index. Plain ``CREATE INDEX IF NOT EXISTS`` (not CONCURRENTLY): it also runs
on a partitioned ``case_file`` (an index on the parent makes one per partition).

Revision ID: 0026
Revises: 0024
"""

from alembic import op

revision = "0026"
down_revision = "0024"
branch_labels = None
depends_on = None

#: layers.cases.vocab.OPEN_STATES at this revision, sorted (the query writes them in this order).
OPEN_STATES = ("accepted", "collected", "deferred", "dispatched", "feedback", "processing", "suspended", "verifying")
PREDICATE = "location IS NULL AND state IN (" + ", ".join(f"'{s}'" for s in OPEN_STATES) + ")"


def upgrade() -> None:
    op.execute(f"CREATE INDEX IF NOT EXISTS case_unlocated_open_idx ON case_file (city_id, received_at, id) "
               f"WHERE {PREDICATE}")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS case_unlocated_open_idx")
