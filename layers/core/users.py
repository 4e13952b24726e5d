"""Users and bearer tokens. Tokens are shown once and stored only as their sha256.

A user holds one token at a time (columns of ``app_user``, migration 0017): it expires
(``token_expires_at``, every token has an end), may be revoked before (``token_revoked_at``) and is
replaced by issuing a new one (:func:`issue_token`, which also lifts a revocation). Its last use is
kept to the minute (``last_used_at``): written at most once per :data:`LAST_USED_RESOLUTION_S` per
token (not on every request), in a short transaction of its own that never waits for another's lock.
The same rules are checked inside the database by the fast intake's ``cg_file_reports`` (0017).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import weakref
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from citygrid import settings
from layers.core.errors import Conflict, InputError, NotFound
from layers.core.models import ROLES

#: Why a token does not open the door: the 401's message (zh-CN first, English beside).
REFUSED = {
    "unknown": "未知令牌 unknown or revoked token",
    "expired": "令牌已过期 token expired: ask an administrator for a new one",
    "revoked": "令牌已吊销 token revoked: ask an administrator for a new one",
}
log = logging.getLogger(__name__)
MAX_TOKEN_DAYS = 3650
#: last_used_at is written when it is at least this old (the same 60 s in cg_file_reports, 0017).
LAST_USED_RESOLUTION_S = 60


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    department: str | None
    area_code: str | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "cg_" + secrets.token_urlsafe(32)


def token_days(days: int | None) -> int:
    """The validity in days of a new token: ``days``, or the setting ``CITYGRID_AUTH_TOKEN_DAYS``."""
    if days is None:
        return settings.auth().token_days
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_TOKEN_DAYS:
        raise InputError(f"a token's validity must be 1 to {MAX_TOKEN_DAYS} days, got {days!r}")
    return days


def add_user(conn: Connection, name: str, role: str, *, department: str | None = None,
             area_code: str | None = None, token: str | None = None,
             expires_in_days: int | None = None) -> tuple[User, str]:
    """Create a user; returns it with its bearer token (the only time the token is seen), valid for
    ``expires_in_days`` (default: the setting)."""
    name = (name or "").strip()
    if not name or len(name) > 80:
        raise InputError("a user name of 1 to 80 characters is required")
    if role not in ROLES:
        raise InputError(f"unknown role '{role}': one of {', '.join(ROLES)}")
    if role == "department" and not department:
        raise InputError("a department user needs --department")
    if area_code is not None and not (area_code.isdigit() and len(area_code) in (6, 9, 12, 14, 15)):
        raise InputError(f"area code '{area_code}' must be an admin code (6, 9 or 12 digits) or a cell code")
    days = token_days(expires_in_days)
    if conn.execute(text("SELECT 1 FROM app_user WHERE name = :n"), {"n": name}).first():
        raise Conflict(f"a user '{name}' exists already")
    token = token or new_token()
    uid = conn.execute(text("""
        INSERT INTO app_user (name, role, department, area_code, token_hash, token_issued_at, token_expires_at)
        VALUES (:n, :r, :d, :a, :h, now(), now() + make_interval(days => :days)) RETURNING id"""),
        dict(n=name, r=role, d=department, a=area_code, h=hash_token(token), days=days)).scalar_one()
    return User(uid, name, role, department, area_code), token


def check_token(conn: Connection, token: str) -> tuple[User | None, str | None]:
    """``(user, None)`` for a valid token, else ``(None, why)`` with why one of :data:`REFUSED`'s keys.

    A valid token's ``last_used_at`` is brought up to date when it is older than
    :data:`LAST_USED_RESOLUTION_S` (:func:`_record_use`): not in ``conn``'s transaction, which stays
    read-only for a read (caches fill only from transactions that wrote nothing) and may be rolled back."""
    row = conn.execute(text("""
        SELECT id, name, role, department, area_code,
               CASE WHEN token_revoked_at IS NOT NULL THEN 'revoked'
                    WHEN token_expires_at <= now() THEN 'expired' END AS refused,
               last_used_at IS NULL OR last_used_at <= now() - make_interval(secs => :res) AS due
        FROM app_user WHERE token_hash = :h AND active"""),
        {"h": hash_token(token), "res": LAST_USED_RESOLUTION_S}).first()
    if row is None:
        return None, "unknown"
    if row[5] is not None:
        return None, row[5]
    if row[6]:
        _record_use(conn.engine, row[0])
    return User(*row[:5]), None


_use_engines: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_use_guard = threading.Lock()


def _use_engine(engine: Engine) -> Engine:
    """A small pool of its own beside ``engine`` for the last-use writes: never one of the requests'
    connections (a request holding one while waiting for another could starve the pool)."""
    with _use_guard:
        eng = _use_engines.get(engine)
        if eng is None:
            eng = _use_engines[engine] = create_engine(
                engine.url, pool_size=1, max_overflow=2, pool_timeout=1, pool_pre_ping=True,
                connect_args={"options": "-c statement_timeout=5000 -c lock_timeout=500 -c TimeZone=UTC"})
        return eng


def _record_use(engine: Engine, user_id: int) -> None:
    """``last_used_at = now()`` in a short transaction of its own, unless another transaction holds
    the row (another request of the same token doing the same: skipped, never waited for) or it was
    written within the resolution meanwhile. A failure is logged, never the request's."""
    try:
        with _use_engine(engine).begin() as c:
            c.execute(text("""
                UPDATE app_user SET last_used_at = now()
                WHERE id = (SELECT id FROM app_user WHERE id = :u
                              AND (last_used_at IS NULL OR last_used_at <= now() - make_interval(secs => :res))
                            FOR NO KEY UPDATE SKIP LOCKED)"""), {"u": user_id, "res": LAST_USED_RESOLUTION_S})
    except SQLAlchemyError as e:
        log.warning("last use of user %s not recorded: %s", user_id, e)


def user_for_token(conn: Connection, token: str) -> User | None:
    """The user of a valid token (not expired, not revoked, the user active), else None."""
    return check_token(conn, token)[0]


def list_users(conn: Connection) -> list[User]:
    rows = conn.execute(text("SELECT id, name, role, department, area_code FROM app_user ORDER BY id"))
    return [User(*r) for r in rows]


_ACCOUNT = """
    SELECT id, name, role, department, area_code, active, created_at, token_issued_at, token_expires_at,
           token_revoked_at, last_used_at,
           CASE WHEN token_revoked_at IS NOT NULL THEN 'revoked' WHEN token_expires_at <= now() THEN 'expired'
                ELSE 'valid' END AS token_state
    FROM app_user"""


def accounts(conn: Connection) -> list[dict]:
    """Every user with its token's dates and state (never the token or its hash)."""
    return [dict(r) for r in conn.execute(text(_ACCOUNT + " ORDER BY id")).mappings()]


def _user_id(conn: Connection, user: int | str) -> int:
    """A user's id from its id or its name; NotFound when there is none."""
    if isinstance(user, int):
        uid = conn.execute(text("SELECT id FROM app_user WHERE id = :u"), {"u": user}).scalar()
    else:
        uid = conn.execute(text("SELECT id FROM app_user WHERE name = :u"), {"u": (user or "").strip()}).scalar()
    if uid is None:
        raise NotFound(f"no user {user!r}")
    return uid


def account(conn: Connection, user: int | str) -> dict:
    uid = _user_id(conn, user)
    return dict(conn.execute(text(_ACCOUNT + " WHERE id = :u"), {"u": uid}).mappings().one())


def revoke(conn: Connection, user: int | str) -> dict:
    """Revoke the user's token now (a revoked token stays revoked: the first time is kept)."""
    uid = _user_id(conn, user)
    conn.execute(text("UPDATE app_user SET token_revoked_at = coalesce(token_revoked_at, now()) WHERE id = :u"),
                 {"u": uid})
    return account(conn, uid)


def issue_token(conn: Connection, user: int | str, *, expires_in_days: int | None = None) -> tuple[dict, str]:
    """A new token for the user, replacing the old one (which no longer opens anything, whatever its
    state) and lifting a revocation; returns the account and the token (the only time it is seen)."""
    days = token_days(expires_in_days)
    uid = _user_id(conn, user)
    token = new_token()
    conn.execute(text("""
        UPDATE app_user SET token_hash = :h, token_issued_at = now(),
               token_expires_at = now() + make_interval(days => :days), token_revoked_at = NULL, last_used_at = NULL
        WHERE id = :u"""), {"h": hash_token(token), "days": days, "u": uid})
    return account(conn, uid), token

