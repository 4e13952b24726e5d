"""Every endpoint declares who may call it; the whole role × endpoint matrix is walked."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute

from api.deps import Allow
from api.validation import flatten_routes
from layers.core.models import ROLES
from tests.conftest import auth


def _gate(route: APIRoute) -> Allow:
    gates = [d.call for d in route.dependant.dependencies if isinstance(d.call, Allow)]
    assert len(gates) == 1, f"{route.path} declares {len(gates)} role gates"
    return gates[0]


def _api_routes(app):
    return [r for r in flatten_routes(app.routes) if isinstance(r, APIRoute) and r.path.startswith("/api/")]


def _url(path: str) -> str:
    return re.sub(r"\{code\}", "320614001001001", re.sub(r"\{slug\}", "haimen", path))


def test_every_api_route_declares_roles(app):
    routes = _api_routes(app)
    assert len(routes) >= 8
    for r in routes:
        _gate(r)


@pytest.mark.parametrize("who", [None, "bogus", *ROLES])
def test_role_matrix(app, client, tokens, who):
    headers = {} if who is None else auth("cg_not_a_token" if who == "bogus" else tokens[who])
    for route in _api_routes(app):
        gate = _gate(route)
        for method in route.methods:
            r = client.request(method, _url(route.path), headers=headers, params={"bbox": "0,0,1,1"})
            where = f"{method} {route.path} as {who}"
            if gate.public:
                assert r.status_code not in (401, 403), where
            elif who in (None, "bogus"):
                assert r.status_code == 401, where
                assert r.headers.get("www-authenticate") == "Bearer", where
            elif who in gate.roles:
                assert r.status_code not in (401, 403), f"{where}: {r.status_code} {r.text[:200]}"
            else:
                assert r.status_code == 403, where
                assert who in r.json()["detail"], where


def test_admin_only_and_staff_routes(app):
    gates = {(m, r.path): _gate(r) for r in _api_routes(app) for m in r.methods}
    assert gates[("GET", "/api/v1/health")].public
    assert gates[("POST", "/api/v1/admin/users")].roles == {"admin"}
    assert gates[("POST", "/api/v1/snap")].roles == set(ROLES)


def test_bad_authorization_headers(client):
    for h in ("Basic abc", "Bearer", "Bearer    ", "token"):
        r = client.get("/api/v1/me", headers={"Authorization": h})
        assert r.status_code == 401, h


def test_me(client, tokens):
    r = client.get("/api/v1/me", headers=auth(tokens["department"]))
    assert r.json()["role"] == "department" and r.json()["department"] == "测试部门"


def test_writes_are_committed_before_the_response(live_server, tokens):
    """A client that reads right after a write sees it: the transaction commits before the answer
    is sent (over real HTTP, where the client has the answer before the server's clean-up runs)."""
    import httpx

    admin = auth(tokens["admin"])
    with httpx.Client(base_url=live_server, headers=admin, timeout=30) as http:
        for i in range(30):
            name = f"rw_check_{i}"
            assert http.post("/api/v1/admin/users", json={"name": name, "role": "planner"}).status_code == 201
            names = {u["name"] for u in http.get("/api/v1/admin/users").json()}
            assert name in names, f"write {i} not visible right after its response"


def test_public_gate_takes_no_database_connection(app):
    """PUBLIC asks for nothing (no connection): a public route's own checks that come before its
    connection (a rate limit, a signed address) refuse a request at no database cost."""
    from fastapi.dependencies.utils import get_dependant

    from api.deps import PUBLIC, get_conn

    assert get_dependant(path="/", call=PUBLIC).dependencies == []
    # the signed photo address is checked before the route's connection is taken
    route = next(r for r in _api_routes(app) if r.path == "/api/v1/public/case-photos/{case_id}/{source}/{ref}/{variant}")
    calls = [d.call for d in route.dependant.dependencies]
    signed = next(i for i, c in enumerate(calls) if getattr(c, "__name__", "") == "_signed_address")
    assert signed < calls.index(get_conn)
