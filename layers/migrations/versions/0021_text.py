"""Chinese text (issue 15): trained text models and the recurring-problem groups (热点问题).

``text_model``: one row per trained version of a model (name, optionally a city), its class labels,
its training metrics (cross-validated macro-F1 …) and the fitted scikit-learn pipeline (joblib bytes).

``text_recurring_group``: the groups of cases found by ``layers.text.recurring`` (same problem, same
place, same period) with their heat index, kept so that a group can be reported on (专报) later.

Revision ID: 0021
Revises: 0019
"""

from alembic import op

revision = "0021"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE text_model (
        id          bigserial PRIMARY KEY,
        name        varchar(80) NOT NULL CHECK (name <> ''),
        city_id     integer REFERENCES city(id) ON DELETE CASCADE,
        version     integer NOT NULL CHECK (version >= 1),
        created_at  timestamptz NOT NULL DEFAULT now(),
        labels      jsonb NOT NULL,
        metrics     jsonb NOT NULL,
        model       bytea NOT NULL
    )""")
    op.execute("CREATE UNIQUE INDEX text_model_version ON text_model (name, coalesce(city_id, 0), version)")
    op.execute("""
    CREATE TABLE text_recurring_group (
        id            bigserial PRIMARY KEY,
        city_id       integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        computed_at   timestamptz NOT NULL DEFAULT now(),
        window_start  date NOT NULL,
        window_end    date NOT NULL,
        signature     varchar(40) NOT NULL,
        category_code varchar(40),
        area_code     varchar(12),
        first_at      timestamptz NOT NULL,
        last_at       timestamptz NOT NULL,
        n_cases       integer NOT NULL,
        heat          double precision NOT NULL,
        details       jsonb NOT NULL,
        case_ids      bigint[] NOT NULL,
        UNIQUE (city_id, window_start, window_end, signature)
    )""")
    op.execute("CREATE INDEX text_recurring_heat ON text_recurring_group (city_id, computed_at DESC, heat DESC)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS text_recurring_group")
    op.execute("DROP TABLE IF EXISTS text_model")
