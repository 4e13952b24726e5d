"""Users and bearer tokens. Tokens are shown once and stored only as their sha256."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, text

from layers.core.errors import Conflict, InputError
from layers.core.models import ROLES


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


def add_user(conn: Connection, name: str, role: str, *, department: str | None = None,
             area_code: str | None = None, token: str | None = None) -> tuple[User, str]:
    """Create a user; returns it with its bearer token (the only time the token is seen)."""
    name = (name or "").strip()
    if not name or len(name) > 80:
        raise InputError("a user name of 1 to 80 characters is required")
    if role not in ROLES:
        raise InputError(f"unknown role '{role}': one of {', '.join(ROLES)}")
    if role == "department" and not department:
        raise InputError("a department user needs --department")
    if area_code is not None and not (area_code.isdigit() and len(area_code) in (6, 9, 12, 14, 15)):
        raise InputError(f"area code '{area_code}' must be an admin code (6, 9 or 12 digits) or a cell code")
    if conn.execute(text("SELECT 1 FROM app_user WHERE name = :n"), {"n": name}).first():
        raise Conflict(f"a user '{name}' exists already")
    token = token or new_token()
    uid = conn.execute(text("""
        INSERT INTO app_user (name, role, department, area_code, token_hash)
        VALUES (:n, :r, :d, :a, :h) RETURNING id"""),
        dict(n=name, r=role, d=department, a=area_code, h=hash_token(token))).scalar_one()
    return User(uid, name, role, department, area_code), token


def user_for_token(conn: Connection, token: str) -> User | None:
    row = conn.execute(text("""
        SELECT id, name, role, department, area_code FROM app_user
        WHERE token_hash = :h AND active"""), {"h": hash_token(token)}).first()
    return User(*row) if row else None


def list_users(conn: Connection) -> list[User]:
    rows = conn.execute(text("SELECT id, name, role, department, area_code FROM app_user ORDER BY id"))
    return [User(*r) for r in rows]
