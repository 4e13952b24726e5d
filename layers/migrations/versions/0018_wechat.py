"""The 12345 WeChat official account and citizen notifications.

* ``wechat_user``: the followers of a city's account (openid, subscribed or not). Which cases are a
  follower's is ``case_contact.openid`` (written by ``cg_open_case``), nothing more.
* ``wechat_dialogue``: the state of the short dialogue per openid (step, draft of a report).
* ``wechat_seen``: nonces of signed requests and ids of messages already handled, shared by every
  process (replay protection, WeChat's own retries); old rows are deleted on write.
* ``wechat_photo``: photos sent in the chat, files in a content-addressed photo store
  (``<data_dir>/wechat_photos``) as the reports' photos; ``case_id`` is set when the draft is confirmed.
* ``wechat_token``: access tokens of the accounts (one per app id for all processes).
* ``wechat_session``: citizens signed in on the H5 page by WeChat web authorisation (token hash).
* ``notify_channel``: which channels (wechat, sms) are on for a city; written from the settings by
  the notification worker. ``notify_outbox``: one row per message to send, written by a trigger on
  ``case_event`` in the transaction of the event (whatever wrote it: the workflow, the
  SQL case functions, an import), sent by ``layers.notify``. A row names the case whose contact is
  told (``contact_case_id``: the case, or a case merged into it), never a phone or an openid.

Revision ID: 0018
Revises: 0012
"""

from alembic import op

revision = "0018"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE wechat_user (
        city_id          integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        openid           varchar(80) NOT NULL,
        subscribed       boolean NOT NULL DEFAULT true,
        subscribed_at    timestamptz,
        unsubscribed_at  timestamptz,
        last_seen_at     timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (city_id, openid)
    )""")
    # A follower's cases are found by the openid of their contact.
    op.execute("CREATE INDEX case_contact_openid_idx ON case_contact (openid) WHERE openid IS NOT NULL")
    op.execute("""
    CREATE TABLE wechat_dialogue (
        city_id     integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        openid      varchar(80) NOT NULL,
        step        varchar(20) NOT NULL DEFAULT 'idle',
        draft       jsonb NOT NULL DEFAULT '{}',
        updated_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (city_id, openid)
    )""")
    op.execute("""
    CREATE TABLE wechat_seen (
        city_id  integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        kind     varchar(8) NOT NULL CHECK (kind IN ('nonce', 'msg')),
        key      varchar(120) NOT NULL,
        at       timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (city_id, kind, key)
    )""")
    op.execute("CREATE INDEX wechat_seen_at_idx ON wechat_seen (at)")
    op.execute("""
    CREATE TABLE wechat_photo (
        id             bigserial PRIMARY KEY,
        city_id        integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        openid         varchar(80) NOT NULL,
        case_id        bigint REFERENCES case_file(id) ON DELETE CASCADE,
        media_id       varchar(200) NOT NULL,
        sha256         char(64) NOT NULL,
        public_sha256  char(64) NOT NULL,
        thumb_sha256   char(64) NOT NULL,
        media_type     varchar(12) NOT NULL,
        size_bytes     integer NOT NULL,
        width          integer,
        height         integer,
        exif_status    varchar(20),
        received_at    timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("CREATE INDEX wechat_photo_case_idx ON wechat_photo (case_id)")
    op.execute("CREATE INDEX wechat_photo_draft_idx ON wechat_photo (city_id, openid) WHERE case_id IS NULL")
    op.execute("""
    CREATE TABLE wechat_token (
        key         varchar(120) PRIMARY KEY,
        value       text NOT NULL,
        expires_at  timestamptz
    )""")
    op.execute("""
    CREATE TABLE wechat_session (
        token_hash  char(64) PRIMARY KEY,
        city_id     integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        openid      varchar(80) NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        expires_at  timestamptz NOT NULL
    )""")
    op.execute("""
    CREATE TABLE notify_channel (
        city_id     integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        channel     varchar(8) NOT NULL CHECK (channel IN ('wechat', 'sms')),
        enabled     boolean NOT NULL DEFAULT false,
        updated_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (city_id, channel)
    )""")
    op.execute("""
    CREATE TABLE notify_outbox (
        id               bigserial PRIMARY KEY,
        city_id          integer NOT NULL REFERENCES city(id) ON DELETE CASCADE,
        case_id          bigint NOT NULL REFERENCES case_file(id) ON DELETE CASCADE,
        contact_case_id  bigint NOT NULL REFERENCES case_file(id) ON DELETE CASCADE,
        event_id         bigint NOT NULL,
        channel          varchar(8) NOT NULL CHECK (channel IN ('wechat', 'sms')),
        kind             varchar(12) NOT NULL CHECK (kind IN ('accepted', 'dispatched', 'closed', 'rate')),
        state            varchar(8) NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed', 'skipped')),
        attempts         integer NOT NULL DEFAULT 0,
        next_attempt_at  timestamptz NOT NULL DEFAULT now(),
        last_error       text,
        provider_ref     text,
        created_at       timestamptz NOT NULL DEFAULT now(),
        sent_at          timestamptz,
        UNIQUE (event_id, contact_case_id, channel, kind)
    )""")
    op.execute("CREATE INDEX notify_outbox_due_idx ON notify_outbox (next_attempt_at, id) WHERE state = 'pending'")
    op.execute("CREATE INDEX notify_outbox_contact_idx ON notify_outbox (contact_case_id, channel, id) "
               "WHERE state = 'pending'")
    # A row trigger whose WHEN skips, without calling anything, the events that are never news: other
    # kinds (the intake's 'received', notes …) and events recorded more than a day after they happened
    # (imports of old cases). For the others the function returns at once while no channel is on.
    op.execute("""
    CREATE FUNCTION cg_notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM notify_channel WHERE enabled)
           OR coalesce(current_setting('citygrid.notify', true), '') = 'off' THEN
            RETURN NULL;
        END IF;
        INSERT INTO notify_outbox (city_id, case_id, contact_case_id, event_id, channel, kind)
        SELECT c.city_id, NEW.case_id, t.case_id, NEW.id, ch.channel, k.kind
        FROM case_file c
        CROSS JOIN LATERAL (VALUES (NEW.kind::text, 1), (CASE WHEN NEW.kind = 'closed' THEN 'rate' END, 2)) AS k(kind, n)
        CROSS JOIN LATERAL (
            SELECT NEW.case_id AS case_id UNION ALL
            SELECT m.id FROM case_file m WHERE m.merged_into = NEW.case_id) AS t
        JOIN case_contact ct ON ct.case_id = t.case_id
        JOIN case_file tc ON tc.id = t.case_id
        JOIN notify_channel ch ON ch.city_id = c.city_id AND ch.enabled
             AND ((ch.channel = 'wechat' AND ct.openid IS NOT NULL)
               OR (ch.channel = 'sms' AND ct.phone IS NOT NULL AND tc.source = 'hotline'))
        WHERE c.id = NEW.case_id AND k.kind IS NOT NULL AND (k.kind <> 'rate' OR t.case_id = NEW.case_id)
        ORDER BY t.case_id, ch.channel, k.n
        ON CONFLICT DO NOTHING;
        RETURN NULL;
    END $$""")
    op.execute("""
    CREATE TRIGGER case_event_notify AFTER INSERT ON case_event FOR EACH ROW
        WHEN (NEW.kind IN ('accepted', 'dispatched', 'closed') AND NEW.at > now() - interval '1 day')
        EXECUTE FUNCTION cg_notify_outbox()""")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS case_event_notify ON case_event")
    op.execute("DROP FUNCTION IF EXISTS cg_notify_outbox()")
    for t in ("notify_outbox", "notify_channel", "wechat_session", "wechat_token", "wechat_photo", "wechat_seen",
              "wechat_dialogue", "wechat_user"):
        op.execute(f"DROP TABLE IF EXISTS {t}")
