"""Browser sessions and the lockout of failed sign-ins (migration 0020).

A session is opened by a sign-in (a password, a bearer token as a device/demo link, or OpenID
Connect) and lives in a cookie holding a random id; the database keeps only the id's sha256, the
user, a CSRF token the page must send back on every write, an absolute end (``session_hours``) and
the last request (idle end: ``session_idle_minutes``; written at most once a minute, apart from the
request's transaction, as a token's last use). A disabled user, a changed password or role ends the
user's sessions (:mod:`layers.core.users`).

Failed sign-ins are counted per user name and per client address (keyed digests with the server's
key: neither names nor addresses are stored), within a window (``login_window_minutes``): past
``login_max_failures_per_name`` / ``…_per_address`` failures, sign-ins for that name or from that
address are refused — a correct password too — until enough failures leave the window
(:class:`LockedOut`, 429 with Retry-After).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from citygrid import settings
from layers.core import users as lusers

log = logging.getLogger(__name__)
#: last_seen_at is written when at least this old.
LAST_SEEN_RESOLUTION_S = 60
VIA = ("password", "token", "oidc")
#: First key of the advisory lock of a sign-in's name (apart from the look-ups' and export jobs').
_LOCK_LOGIN = 0x6C6F67


@dataclass(frozen=True)
class Session:
    user: lusers.User
    csrf_token: str
    via: str
    expires_at: dt.datetime


def hash_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def new_id() -> str:
    return secrets.token_urlsafe(32)


def open_session(conn: Connection, user_id: int, via: str) -> tuple[str, Session]:
    """A new session for the user: ``(session id — for the cookie, never stored, session)``. Expired
    sessions are cleared away on the way (a few at a time)."""
    if via not in VIA:
        raise ValueError(f"via must be one of {VIA}")
    cfg = settings.auth()
    sid, csrf = new_id(), secrets.token_urlsafe(24)
    conn.execute(text("""DELETE FROM user_session WHERE id_hash IN (
                             SELECT id_hash FROM user_session WHERE expires_at < now() ORDER BY expires_at LIMIT 200
                             FOR UPDATE SKIP LOCKED)"""))
    row = conn.execute(text("""
        INSERT INTO user_session (id_hash, user_id, csrf_token, via, expires_at)
        SELECT :h, id, :c, :v, now() + make_interval(secs => :secs) FROM app_user WHERE id = :u AND active
        RETURNING expires_at"""), {"h": hash_id(sid), "c": csrf, "v": via, "u": user_id,
                                   "secs": cfg.session_hours * 3600}).first()
    if row is None:
        raise ValueError(f"user {user_id} is not active")
    user = conn.execute(text("SELECT id, name, role, department, area_code FROM app_user WHERE id = :u"),
                        {"u": user_id}).one()
    return sid, Session(lusers.User(*user), csrf, via, row[0])


def check(conn: Connection, session_id: str | None) -> Session | None:
    """The live session of this id (user active, not past its end nor idle too long), else None.
    Its last-seen time is brought up to date outside ``conn``'s transaction (see
    :func:`layers.core.users.check_token`)."""
    if not session_id or len(session_id) > 200:
        return None
    cfg = settings.auth()
    row = conn.execute(text("""
        SELECT u.id, u.name, u.role, u.department, u.area_code, s.csrf_token, s.via, s.expires_at,
               s.last_seen_at <= now() - make_interval(secs => :res) AS due
        FROM user_session s JOIN app_user u ON u.id = s.user_id AND u.active
        WHERE s.id_hash = :h AND s.expires_at > now() AND s.last_seen_at > now() - make_interval(secs => :idle)"""),
        {"h": hash_id(session_id), "res": LAST_SEEN_RESOLUTION_S, "idle": cfg.session_idle_minutes * 60}).first()
    if row is None:
        return None
    if row[8]:
        _record_seen(conn.engine, hash_id(session_id))
    return Session(lusers.User(*row[:5]), row[5], row[6], row[7])


def _record_seen(engine, id_hash: str) -> None:
    try:
        with lusers._use_engine(engine).begin() as c:
            c.execute(text("""
                UPDATE user_session SET last_seen_at = now()
                WHERE id_hash = (SELECT id_hash FROM user_session WHERE id_hash = :h
                                   AND last_seen_at <= now() - make_interval(secs => :res)
                                 FOR NO KEY UPDATE SKIP LOCKED)"""), {"h": id_hash, "res": LAST_SEEN_RESOLUTION_S})
    except SQLAlchemyError as e:
        log.warning("session last seen not recorded: %s", type(e).__name__)


def end(conn: Connection, session_id: str | None) -> bool:
    """Delete the session (sign-out); True if there was one."""
    if not session_id or len(session_id) > 200:
        return False
    return conn.execute(text("DELETE FROM user_session WHERE id_hash = :h"),
                        {"h": hash_id(session_id)}).rowcount > 0


def end_all(conn: Connection, user: int) -> int:
    """End every session of the user; how many there were."""
    return conn.execute(text("DELETE FROM user_session WHERE user_id = :u"), {"u": user}).rowcount


def open_sessions(conn: Connection, user: int) -> int:
    return conn.execute(text("SELECT count(*) FROM user_session WHERE user_id = :u AND expires_at > now()"),
                        {"u": user}).scalar_one()


# -- lockout ---------------------------------------------------------------------------------------
class LockedOut(Exception):
    """Sign-ins refused for ``retry_after`` seconds (→ 429 with Retry-After)."""

    def __init__(self, scope: str, retry_after: int):
        self.scope, self.retry_after = scope, retry_after
        minutes = max(1, math.ceil(retry_after / 60))
        what_zh, what_en = (("该用户名", "this user name") if scope == "name" else ("您的网络地址", "your network address"))
        super().__init__(f"登录失败次数过多，{what_zh}已暂时锁定，请约 {minutes} 分钟后再试。"
                         f"Too many failed sign-ins for {what_en}: try again in about {minutes} "
                         f"minute{'s' if minutes != 1 else ''}.")


def address_source(address: str | None) -> str:
    """What is counted for a client address (sign-in lockout, the look-ups' limits, rate limits): the
    address itself, an IPv6 address by its /64 (one subscriber holds a whole /64), an IPv4-mapped IPv6
    address as IPv4."""
    a = (address or "").strip()
    try:
        ip = ipaddress.ip_address(a)
    except ValueError:
        return a[:100] or "unknown"
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def failure_key(kind: str, value: str | None) -> str:
    """The keyed digest a failure is counted under (HMAC with the server's key: a digest of an IPv4
    address alone could be reversed by trying all of them)."""
    from citygrid.secretkey import server_key

    value = address_source(value) if kind == "address" else (value or "").strip().casefold()[:200]
    return hmac.new(server_key(), f"citygrid-login:{kind}:{value}".encode(), hashlib.sha256).hexdigest()


def _limits() -> tuple[dict[str, int], float]:
    cfg = settings.auth()
    return ({"name": cfg.login_max_failures_per_name, "address": cfg.login_max_failures_per_address},
            cfg.login_window_minutes * 60)


def check_lockout(conn: Connection, name: str | None, address: str | None) -> dict[str, str]:
    """Raise :class:`LockedOut` while the name or the address has too many failures in the window;
    else the keys to record a failure under (:func:`record_failure`). Takes a transaction-level lock
    on the name's key so that concurrent guesses of one name are counted one after the other."""
    maxes, window = _limits()
    keys = {"address": failure_key("address", address)}
    if name and name.strip():
        keys["name"] = failure_key("name", name)
    conn.execute(text("SELECT pg_advisory_xact_lock(:c, hashtext(:k))"), {"c": _LOCK_LOGIN, "k": keys.get("name", keys["address"])})
    waits = []
    for kind, key in keys.items():
        ats = conn.execute(text("""
            SELECT extract(epoch FROM at + make_interval(secs => :w) - clock_timestamp()) FROM login_failure
            WHERE kind = :kind AND key = :k AND at > clock_timestamp() - make_interval(secs => :w)
            ORDER BY at"""), {"kind": kind, "k": key, "w": window}).scalars().all()
        if len(ats) >= maxes[kind]:
            # refused until the count is below the maximum: when the (n - max + 1)-th oldest leaves
            waits.append((max(1, math.ceil(ats[len(ats) - maxes[kind]])), kind))
    if waits:
        wait, kind = max(waits)
        raise LockedOut(kind, wait)
    return keys


def record_failure(conn: Connection, keys: dict[str, str]) -> None:
    """Count a failed sign-in under each key; failures older than the window are cleared (a few)."""
    _, window = _limits()
    for kind, key in keys.items():
        conn.execute(text("INSERT INTO login_failure (kind, key) VALUES (:kind, :k)"), {"kind": kind, "k": key})
    conn.execute(text("""DELETE FROM login_failure WHERE id IN (
                             SELECT id FROM login_failure WHERE at < clock_timestamp() - make_interval(secs => :w)
                             ORDER BY at LIMIT 500 FOR UPDATE SKIP LOCKED)"""), {"w": window})


def clear_failures(conn: Connection, keys: dict[str, str]) -> None:
    """A successful sign-in clears its name's failures (not the address's: one good account must not
    reset the count of guesses at others)."""
    if "name" in keys:
        conn.execute(text("DELETE FROM login_failure WHERE kind = 'name' AND key = :k"), {"k": keys["name"]})
