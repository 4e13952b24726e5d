"""The rollup change log becomes append-only: each statement that changes cases adds (city, day,
version) rows instead of updating the one row of its city and day. That row was held locked until
commit, so every case intake of a city and day waited for every other one still open.

Revision ID: 0009
Revises: 0007
"""

from alembic import op

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None

UPSERT = "ON CONFLICT (city_id, day) DO UPDATE SET version = EXCLUDED.version"


def upgrade() -> None:
    op.execute("ALTER TABLE case_rollup_change DROP CONSTRAINT IF EXISTS case_rollup_change_pkey")
    op.execute("CREATE INDEX IF NOT EXISTS case_rollup_change_day_idx ON case_rollup_change (city_id, day)")
    # The three rollup triggers' functions, rewritten in place without the upsert.
    op.execute(f"""
    DO $$
    DECLARE f text; src text;
    BEGIN
        FOREACH f IN ARRAY ARRAY['case_rollup_ins', 'case_rollup_upd', 'case_rollup_del'] LOOP
            src := pg_get_functiondef(f::regproc);
            IF position('{UPSERT}' IN src) = 0 THEN
                RAISE EXCEPTION 'function % does not have the expected upsert', f;
            END IF;
            EXECUTE replace(src, '{UPSERT}', '');
        END LOOP;
    END $$""")


def downgrade() -> None:
    raise NotImplementedError("the append-only change log is not turned back into one row per day")
