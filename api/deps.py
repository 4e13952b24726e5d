"""Dependencies shared by the routers: a connection per request, the city, and role checks.

Every endpoint declares who may call it with ``Depends(Allow(...))`` (or ``PUBLIC``); the role
matrix test reads these declarations from the routes.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Depends, Header, HTTPException, Query, Request
from sqlalchemy import Connection

from citygrid import settings
from layers import city as lcity
from layers import users as lusers
from layers.models import ROLES


def get_conn(request: Request) -> Iterator[Connection]:
    """One transaction per request: committed when the endpoint returns, rolled back on any error.

    Always declare it as ``Depends(get_conn, scope="function")``: the commit then happens before the
    response is sent, so nothing is acknowledged that is not stored, and a client that reads right
    after a write sees it (FastAPI's default scope would commit after the response).
    """
    with request.app.state.engine.begin() as conn:
        yield conn


def get_city(conn: Connection = Depends(get_conn, scope="function"),
             city: str | None = Query(None, description="城市 City slug (default: the configured city)",
                                      max_length=40)) -> lcity.CityInfo:
    return lcity.get_city(conn, city or settings.api().default_city)


class Allow:
    """Role gate: 401 without a valid bearer token, 403 when the user's role is not listed."""

    def __init__(self, *roles: str, public: bool = False):
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles {unknown}")
        self.roles = frozenset(roles)
        self.public = public

    def __repr__(self) -> str:
        return "PUBLIC" if self.public else f"Allow({', '.join(sorted(self.roles))})"

    def __call__(self, conn: Connection = Depends(get_conn, scope="function"),
                 authorization: str | None = Header(None, include_in_schema=False)) -> lusers.User | None:
        if self.public:
            return None
        if not authorization:
            raise HTTPException(401, "未登录 authentication required: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "the Authorization header must be 'Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        user = lusers.user_for_token(conn, token.strip())
        if user is None:
            raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
        if user.role not in self.roles:
            raise HTTPException(403, f"无权限 role '{user.role}' may not do this; allowed: "
                                     f"{', '.join(sorted(self.roles))}")
        return user


PUBLIC = Allow(public=True)
STAFF = Allow(*ROLES)
ADMIN = Allow("admin")
