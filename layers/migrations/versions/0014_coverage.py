"""Patrol coverage of the current period as a table, so that the catalog can publish it as a layer.

The coverage arithmetic lives in Python (gis/patrol.py, called by layers.patrols.coverage); the
catalog's layers are SQL selects. ``zone_coverage`` holds the result of that code for each key zone
of a city and the current period, ``zone_coverage_state`` what it was computed from (period, buffer
and a stamp of the zones and tracks it read). ``layers.patrols.refresh_coverage_layer`` recomputes
both when the stamp moved; the catalog calls it before the layer is read (``Layer.refresh``).

Revision ID: 0014
Revises: 0004
"""

from alembic import op

revision = "0014"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE zone_coverage_state (
        city_id       integer PRIMARY KEY REFERENCES city(id) ON DELETE CASCADE,
        period_start  date NOT NULL,
        period_end    date NOT NULL,
        buffer_m      double precision NOT NULL,
        stamp         text NOT NULL,
        zones         integer NOT NULL,
        computed_at   timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE TABLE zone_coverage (
        city_id       integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        zone_id       integer NOT NULL REFERENCES key_zone(id) ON DELETE CASCADE,
        period_start  date NOT NULL,
        period_end    date NOT NULL,
        buffer_m      double precision NOT NULL,
        kind          varchar(8) NOT NULL,
        share         double precision NOT NULL,
        covered       double precision NOT NULL,
        total         double precision NOT NULL,
        visits        integer NOT NULL,
        tracks        integer NOT NULL,
        required      integer NOT NULL,
        per           varchar(4) NOT NULL,
        frequency_met boolean NOT NULL,
        short_periods integer NOT NULL,
        computed_at   timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (city_id, zone_id)
    )""")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS zone_coverage")
    op.execute("DROP TABLE IF EXISTS zone_coverage_state")
