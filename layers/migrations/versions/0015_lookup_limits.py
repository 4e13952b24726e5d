"""Limits on wrong query codes of the public channel (status look-up and rating): the failed attempts,
kept in the database so that every worker counts the same ones.

A row is one wrong attempt: when, the city, the case number as typed (an unknown number is counted
like a known one, so the limiter says nothing about which numbers exist), a keyed hash of the client
address and the endpoint. The query code tried is never stored. The address is hashed with a random
secret made here (``lookup_secret``): a plain hash of an IPv4 address is undone by trying all 2^32.

Revision ID: 0015
Revises: 0006
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No foreign key to city: rows live an hour or two and are deleted as new ones are written.
    op.execute("""
    CREATE TABLE lookup_failure (
        id        bigserial PRIMARY KEY,
        at        timestamptz NOT NULL,
        city_id   integer NOT NULL,
        case_key  varchar(40) NOT NULL,
        addr_key  bytea NOT NULL CHECK (length(addr_key) = 16),
        endpoint  varchar(8) NOT NULL CHECK (endpoint IN ('status', 'rate'))
    )""")
    op.execute("CREATE INDEX lookup_failure_case_idx ON lookup_failure (city_id, case_key, at)")
    op.execute("CREATE INDEX lookup_failure_addr_idx ON lookup_failure (addr_key, at)")
    op.execute("CREATE INDEX lookup_failure_at_idx ON lookup_failure (at)")
    op.execute("""
    CREATE TABLE lookup_secret (
        only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
        secret    bytea NOT NULL CHECK (length(secret) >= 32)
    )""")
    op.get_bind().execute(sa.text("INSERT INTO lookup_secret (secret) VALUES (:s)"), {"s": secrets.token_bytes(32)})


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS lookup_failure")
    op.execute("DROP TABLE IF EXISTS lookup_secret")
