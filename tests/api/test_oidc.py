"""Optional OpenID Connect sign-in (issue 13) against a stand-in provider on 127.0.0.1: discovery, the
authorization code flow with PKCE, an RS256 ID token checked by its published key, issuer, audience
and nonce. Off by default; a sign-in opens a session for an existing user only."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from sqlalchemy import text

CLIENT_ID, CLIENT_SECRET = "citygrid-test", "stand-in-secret"


class Provider:
    """A minimal OpenID provider: signs in whoever ``user`` names (as a government SSO would after its
    own login page), checks the client's secret, the redirect address and the PKCE verifier."""

    def __init__(self):
        from joserfc.jwk import RSAKey

        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig"})
        self.codes: dict[str, dict] = {}
        self.user = None
        self.tamper: dict = {}  # claims to override in the next ID token (a wrong nonce, audience …)
        self.exchanges = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _json(self, body, status=200):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                url = urlsplit(self.path)
                if url.path == "/.well-known/openid-configuration":
                    self._json({"issuer": provider.issuer, "authorization_endpoint": provider.issuer + "/authorize",
                                "token_endpoint": provider.issuer + "/token", "jwks_uri": provider.issuer + "/jwks",
                                "response_types_supported": ["code"], "id_token_signing_alg_values_supported": ["RS256"]})
                elif url.path == "/jwks":
                    self._json({"keys": [provider.key.as_dict(private=False)]})
                elif url.path == "/authorize":
                    q = {k: v[0] for k, v in parse_qs(url.query).items()}
                    assert q["client_id"] == CLIENT_ID and q["response_type"] == "code"
                    assert q["code_challenge_method"] == "S256" and "openid" in q["scope"]
                    code = uuid.uuid4().hex
                    provider.codes[code] = q
                    self.send_response(302)
                    self.send_header("Location", q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]}))
                    self.end_headers()
                else:
                    self._json({"error": "not_found"}, 404)

            def do_POST(self):
                from joserfc import jwt

                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                form = {k: v[0] for k, v in parse_qs(body).items()}
                basic = base64.b64decode(self.headers.get("Authorization", "Basic ").split(" ", 1)[1] or b"").decode()
                provider.exchanges += 1
                q = provider.codes.pop(form.get("code"), None)
                challenge = base64.urlsafe_b64encode(hashlib.sha256(form.get("code_verifier", "").encode()).digest())
                if (basic != f"{CLIENT_ID}:{CLIENT_SECRET}" or q is None or form.get("redirect_uri") != q["redirect_uri"]
                        or challenge.decode().rstrip("=") != q["code_challenge"]):
                    self._json({"error": "invalid_grant"}, 400)
                    return
                now = int(time.time())
                claims = {"iss": provider.issuer, "aud": CLIENT_ID, "sub": "sso-" + provider.user,
                          "preferred_username": provider.user, "nonce": q["nonce"], "iat": now, "exp": now + 300,
                          **provider.tamper}
                idt = jwt.encode({"alg": "RS256", "kid": "k1"}, claims, provider.key)
                self._json({"access_token": uuid.uuid4().hex, "token_type": "Bearer", "expires_in": 300, "id_token": idt})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def provider(monkeypatch):
    from api import oidc
    from citygrid import settings

    p = Provider()
    for k, v in {"OIDC_ISSUER": p.issuer, "OIDC_CLIENT_ID": CLIENT_ID, "OIDC_CLIENT_SECRET": CLIENT_SECRET}.items():
        monkeypatch.setenv("CITYGRID_AUTH_" + k, v)
    settings.auth.cache_clear()
    oidc._cache.clear()
    yield p
    monkeypatch.undo()
    settings.auth.cache_clear()
    oidc._cache.clear()
    p.close()


@pytest.fixture
def sso_user(engine):
    from layers.core import users as lusers

    with engine.begin() as c:
        user, _ = lusers.add_user(c, f"sso_{uuid.uuid4().hex[:6]}", "supervisor")  # no password: SSO only
    yield user
    with engine.begin() as c:
        c.execute(text("DELETE FROM login_failure"))


def test_off_by_default(client):
    assert client.get("/api/v1/auth/oidc").json() == {"enabled": False, "label": None}
    assert client.get("/api/v1/auth/oidc/start", follow_redirects=False).status_code == 404


@pytest.mark.browser
def test_sso_sign_in_through_the_login_page(browser, live_server, provider, sso_user):
    provider.user = sso_user.name
    page = browser.new_page(locale="zh-CN")
    page.goto(live_server + "/login?next=/supervisor")
    page.wait_for_selector("#oidc", state="visible")
    assert "统一身份认证" in page.inner_text("#oidc")
    page.click("#oidc")
    page.wait_for_url(lambda u: "/login" not in u and u.endswith("/supervisor"), timeout=15_000)
    page.wait_for_function("document.getElementById('who').textContent.length > 0", timeout=15_000)
    assert sso_user.name in page.inner_text("#who")
    me = page.evaluate("fetch('/api/v1/auth/me').then(r => r.json())")
    assert me["user"]["name"] == sso_user.name and me["signed_in_with"] == "oidc"
    assert provider.exchanges == 1
    page.close()


def _start(c, live_server):
    r = c.get(live_server + "/api/v1/auth/oidc/start", params={"next": "/operator"})
    assert r.status_code == 302 and r.headers["location"].startswith(live_server.rsplit(":", 1)[0])
    auth = c.get(r.headers["location"])  # the provider signs the user in and sends the browser back
    assert auth.status_code == 302
    return auth.headers["location"]


def test_sso_refusals(live_server, provider, sso_user, engine):
    # an SSO account with no user here: back to /login with the reason, no session
    provider.user = "nobody_" + uuid.uuid4().hex[:6]
    with httpx.Client() as c:
        back = c.get(_start(c, live_server))
        assert back.status_code == 302 and back.headers["location"] == "/login?sso_error=unknown_user"
        assert "cg_session" not in c.cookies
    # an ID token for another client, or with another nonce: refused
    provider.user = sso_user.name
    for tamper in ({"aud": "someone-else"}, {"nonce": "replayed"}, {"iss": "http://evil.example"},
                   {"exp": int(time.time()) - 60}):
        provider.tamper = tamper
        with httpx.Client() as c:
            back = c.get(_start(c, live_server))
            assert back.headers["location"] == "/login?sso_error=id_token", tamper
            assert "cg_session" not in c.cookies
    provider.tamper = {}
    # the provider's answer without the state cookie of this browser (another browser's, or forged)
    with httpx.Client() as c:
        callback = _start(c, live_server)
    with httpx.Client() as other:
        back = other.get(callback)
        assert back.headers["location"] == "/login?sso_error=state" and "cg_session" not in other.cookies
    # and the right one: a session for the user, back to the page asked for
    with httpx.Client() as c:
        back = c.get(_start(c, live_server))
        assert back.status_code == 302 and back.headers["location"] == "/operator"
        assert "cg_session" in c.cookies
        assert c.get(live_server + "/api/v1/auth/me").json()["user"]["name"] == sso_user.name
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM user_session s WHERE s.user_id = :u AND via = 'oidc'"),
                         {"u": sso_user.id}).scalar_one() == 1
