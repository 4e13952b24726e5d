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
             expires_in_days: int | None = None, password: str | None = None) -> tuple[User, str]:
    """Create a user; returns it with its bearer token (the only time the token is seen), valid for
    ``expires_in_days`` (default: the setting), and its password (argon2 hash) if one is given."""
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
    if password is not None:
        check_password_rules(password)
    if conn.execute(text("SELECT 1 FROM app_user WHERE name = :n"), {"n": name}).first():
        raise Conflict(f"a user '{name}' exists already")
    token = token or new_token()
    uid = conn.execute(text("""
        INSERT INTO app_user (name, role, department, area_code, token_hash, token_issued_at, token_expires_at)
        VALUES (:n, :r, :d, :a, :h, now(), now() + make_interval(days => :days)) RETURNING id"""),
        dict(n=name, r=role, d=department, a=area_code, h=hash_token(token), days=days)).scalar_one()
    if password is not None:
        conn.execute(text("UPDATE app_user SET password_hash = :h, password_changed_at = now() WHERE id = :u"),
                     {"h": hasher().hash(password), "u": uid})
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
           token_revoked_at, last_used_at, password_hash IS NOT NULL AS has_password, password_changed_at,
           disabled_at,
           CASE WHEN token_revoked_at IS NOT NULL THEN 'revoked' WHEN token_expires_at <= now() THEN 'expired'
                ELSE 'valid' END AS token_state
    FROM app_user"""


def accounts(conn: Connection) -> list[dict]:
    """Every user with its token's dates and state, whether it has a password and when it was set
    (never the token, the password or their hashes)."""
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



# -- passwords (migration 0020) ----------------------------------------------------------------------
#: Longest password accepted (argon2 hashes any length, but a megabyte password costs time for nothing).
MAX_PASSWORD_CHARS = 256

_hasher = None
_dummy_hash: str | None = None
_hasher_guard = threading.Lock()


def hasher():
    """The password hasher (pwdlib's recommended: argon2id with its default cost)."""
    global _hasher
    if _hasher is None:
        from pwdlib import PasswordHash

        _hasher = PasswordHash.recommended()
    return _hasher


def _dummy() -> str:
    """A hash of a random password, verified when there is no user (or no password) so that an
    unknown name costs the same time as a wrong password: no user names learnt from the clock."""
    global _dummy_hash
    with _hasher_guard:
        if _dummy_hash is None:
            _dummy_hash = hasher().hash(secrets.token_urlsafe(24))
        return _dummy_hash


def check_password_rules(password: str) -> str:
    """``password`` if it may be set; InputError saying why not (never repeating it)."""
    if not isinstance(password, str):
        raise InputError("密码必须是文本 the password must be text")
    least = settings.auth().password_min_length
    if len(password) < least:
        raise InputError(f"密码至少 {least} 个字符 the password needs at least {least} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise InputError(f"密码最多 {MAX_PASSWORD_CHARS} 个字符 the password may have at most {MAX_PASSWORD_CHARS} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise InputError("密码不能含控制字符 the password may not contain control characters (a line break?)")
    if not password.strip():
        raise InputError("密码不能全是空格 the password may not be only spaces")
    return password


def set_password(conn: Connection, user: int | str, password: str) -> dict:
    """Set (or replace) the user's password; every open session of the user ends."""
    check_password_rules(password)
    uid = _user_id(conn, user)
    conn.execute(text("UPDATE app_user SET password_hash = :h, password_changed_at = now() WHERE id = :u"),
                 {"h": hasher().hash(password), "u": uid})
    conn.execute(text("DELETE FROM user_session WHERE user_id = :u"), {"u": uid})
    return account(conn, uid)


def verify_password(conn: Connection, name: str, password: str) -> User | None:
    """The active user of that name if the password is theirs, else None — in the same time whether the
    name is unknown, has no password or the password is wrong (a dummy hash is verified instead). An
    outdated hash (cost raised since) is replaced."""
    name = (name or "").strip()
    row = None
    if name and len(name) <= 80:
        row = conn.execute(text("""SELECT id, name, role, department, area_code, password_hash FROM app_user
                                   WHERE name = :n AND active"""), {"n": name}).first()
    stored = row[5] if row is not None and row[5] else None
    password = password if isinstance(password, str) and len(password) <= MAX_PASSWORD_CHARS else ""
    try:
        ok, updated = hasher().verify_and_update(password, stored or _dummy())
    except Exception:  # noqa: BLE001 - an unreadable stored hash opens nothing
        log.warning("user %s has an unreadable password hash", row[0] if row else "?")
        ok, updated = False, None
    if not ok or stored is None:
        return None
    if updated:
        conn.execute(text("UPDATE app_user SET password_hash = :h WHERE id = :u"), {"h": updated, "u": row[0]})
    return User(*row[:5])


def active_user(conn: Connection, name: str) -> User | None:
    """The active user of that name (an outside sign-in, e.g. OpenID Connect, names a user), else None."""
    row = conn.execute(text("SELECT id, name, role, department, area_code FROM app_user WHERE name = :n AND active"),
                       {"n": (name or "").strip()}).first()
    return User(*row) if row else None


def set_active(conn: Connection, user: int | str, active: bool) -> dict:
    """Disable a user (its token, password and sessions stop working; its sessions are deleted) or
    enable it again."""
    uid = _user_id(conn, user)
    conn.execute(text("""UPDATE app_user SET active = :a,
                             disabled_at = CASE WHEN :a THEN NULL ELSE coalesce(disabled_at, now()) END
                         WHERE id = :u"""), {"a": active, "u": uid})
    if not active:
        conn.execute(text("DELETE FROM user_session WHERE user_id = :u"), {"u": uid})
    return account(conn, uid)


def update_user(conn: Connection, user: int | str, *, role: str | None = None, department: str | None = None,
                area_code: str | None = None, clear: frozenset[str] = frozenset()) -> dict:
    """Change a user's role, department or area (``clear``: fields set to none)."""
    uid = _user_id(conn, user)
    cur = account(conn, uid)
    role = role if role is not None else cur["role"]
    if role not in ROLES:
        raise InputError(f"unknown role '{role}': one of {', '.join(ROLES)}")
    dep = None if "department" in clear else (department if department is not None else cur["department"])
    area = None if "area_code" in clear else (area_code if area_code is not None else cur["area_code"])
    if role == "department" and not dep:
        raise InputError("处置部门用户需要部门 a department user needs a department")
    if area is not None and not (area.isdigit() and len(area) in (6, 9, 12, 14, 15)):
        raise InputError(f"area code '{area}' must be an admin code (6, 9 or 12 digits) or a cell code")
    conn.execute(text("UPDATE app_user SET role = :r, department = :d, area_code = :a WHERE id = :u"),
                 {"r": role, "d": dep, "a": area, "u": uid})
    if role != cur["role"]:  # a session opened under the old role ends
        conn.execute(text("DELETE FROM user_session WHERE user_id = :u"), {"u": uid})
    return account(conn, uid)
