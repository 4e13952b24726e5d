"""Bulk loads: the case tables' own triggers fire in every session, also a bulk loader's; rate-limit
counters shared by every worker process.

A bulk import (``layers.cases.hotline.import_cases``) run by a superuser writes with
``session_replication_role = replica`` — the technique of ``pg_restore --disable-triggers`` — which
turns off the per-row foreign-key triggers (five SPI look-ups per imported case: a third of the
write's cost) and checks the same foreign keys afterwards in one statement per key, taking the same
``FOR KEY SHARE`` locks on the referenced rows. Replica mode also skips every trigger that is only
enabled in origin mode; the rollup statement triggers (0005/0009), the notification outbox trigger
(0018) and the append-only guard of ``case_event`` (0003) must not be skipped, so they are made
``ENABLE ALWAYS`` here. The importer refuses the bulk path when any other user trigger on the case
tables is enabled in origin mode only (a trigger added later is never skipped silently).

No logical replication subscriber of these tables exists (the standby of ``citygrid db replica`` is a
physical one, which fires no trigger); one would have to turn these triggers back to ENABLE.

``rate_limit_event`` / ``rate_limit_counter`` (UNLOGGED: counters need not survive a crash, and
write no WAL): the ``limits`` library's storage of ``api.limits.DatabaseStorage``, so that N worker
processes (``citygrid run --workers N``) count one client once, not N times.

``case_merged_idx``: the cases merged into a case (并单), partial (a merged case is rare, an imported
one never is): a case's detail and the outbox trigger (``m.merged_into = NEW.case_id`` for every
accepted/dispatched/closed event) looked them up by a scan of every case — 220 ms at 1 M cases.

Revision ID: 0022
Revises: 0019
"""

from alembic import op

revision = "0022"
down_revision = "0019"
branch_labels = None
depends_on = ("0009", "0018")  # the rollup triggers (0005, 0009) and the outbox trigger (0018)

ALWAYS = (("case_file", "case_rollup_ins"), ("case_file", "case_rollup_upd"), ("case_file", "case_rollup_del"),
          ("case_event", "case_event_notify"), ("case_event", "case_event_no_update"))


def upgrade() -> None:
    for table, trigger in ALWAYS:
        op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {trigger}")
    op.execute("CREATE INDEX IF NOT EXISTS case_merged_idx ON case_file (merged_into) WHERE merged_into IS NOT NULL")
    op.execute("""CREATE UNLOGGED TABLE rate_limit_event (
        key  text NOT NULL,
        at   double precision NOT NULL   -- UNIX seconds
    )""")
    op.execute("CREATE INDEX rate_limit_event_key ON rate_limit_event (key, at DESC)")
    op.execute("""CREATE UNLOGGED TABLE rate_limit_counter (
        key         text PRIMARY KEY,
        n           integer NOT NULL,
        expires_at  double precision NOT NULL
    )""")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS rate_limit_event, rate_limit_counter")
    op.execute("DROP INDEX IF EXISTS case_merged_idx")
    for table, trigger in ALWAYS:
        op.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")
