"""Sign-in: passwords, sessions, failed sign-ins (issue 13).

``app_user`` gets an argon2 password hash (pwdlib; NULL: the user signs in with a token only), the
time it was last set, and ``disabled_at`` (a disabled user also has ``active = false``: its token,
its sessions and its password stop working alike).

``user_session``: a browser's session. The cookie holds a random session id; only its sha256 is
stored (a copy of the database opens no session). Each has a CSRF token (sent back by the page in
``X-CSRF-Token`` on every write), an absolute end and a last-seen time (idle end, written at most
once a minute). ``via`` says how it was opened (password, token, oidc).

``login_failure``: failed sign-ins, one row each, keyed by a digest of the user name or of the client
address (``kind``); counted within a window for the lockout, deleted when they leave it.

Revision ID: 0020
Revises: 0019
"""

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    ALTER TABLE app_user
        ADD COLUMN IF NOT EXISTS password_hash text,
        ADD COLUMN IF NOT EXISTS password_changed_at timestamptz,
        ADD COLUMN IF NOT EXISTS disabled_at timestamptz""")
    op.execute("""
    CREATE TABLE user_session (
        id_hash      char(64) PRIMARY KEY,
        user_id      integer NOT NULL REFERENCES app_user(id) ON DELETE CASCADE,
        csrf_token   text NOT NULL,
        via          text NOT NULL CHECK (via IN ('password', 'token', 'oidc')),
        created_at   timestamptz NOT NULL DEFAULT now(),
        expires_at   timestamptz NOT NULL,
        last_seen_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("CREATE INDEX user_session_user_idx ON user_session (user_id)")
    op.execute("CREATE INDEX user_session_expires_idx ON user_session (expires_at)")
    op.execute("""
    CREATE TABLE login_failure (
        id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        kind  text NOT NULL CHECK (kind IN ('name', 'address')),
        key   char(64) NOT NULL,
        at    timestamptz NOT NULL DEFAULT clock_timestamp()
    )""")
    op.execute("CREATE INDEX login_failure_key_idx ON login_failure (kind, key, at)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS login_failure")
    op.execute("DROP TABLE IF EXISTS user_session")
    op.execute("""ALTER TABLE app_user DROP COLUMN IF EXISTS disabled_at, DROP COLUMN IF EXISTS password_changed_at,
                  DROP COLUMN IF EXISTS password_hash""")
