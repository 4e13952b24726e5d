"""OpenID Connect sign-in against a government SSO (optional, off unless ``CITYGRID_AUTH_OIDC_ISSUER``
and ``…_CLIENT_ID`` are set): the authorization code flow with PKCE (S256), a state and a nonce.

authlib's OAuth 2 client builds the authorization address and exchanges the code; joserfc checks the ID
token (signature by the provider's published keys, issuer, audience, nonce, expiry). What the flow must
remember between the two legs — state, nonce, code verifier, the page to return to — travels in a
short-lived HttpOnly cookie signed with the server's key (nothing stored server-side). The user is the
existing active user whose name is the configured claim (``CITYGRID_AUTH_OIDC_USER_CLAIM``); a sign-in
never creates a user.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time

from citygrid import settings

STATE_COOKIE = "cg_oidc"
STATE_SECONDS = 600
DISCOVERY_SECONDS = 3600
_cache: dict[str, tuple[float, dict]] = {}
_guard = threading.Lock()


class OidcError(Exception):
    """The sign-in failed; ``code`` says why for the sign-in page (words there, never shown raw)."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code


def enabled() -> bool:
    cfg = settings.auth()
    return bool(cfg.oidc_issuer and cfg.oidc_client_id)


def _provider() -> dict:
    """The provider's metadata and keys (discovery document, JWKS), cached for an hour."""
    import requests

    issuer = settings.auth().oidc_issuer.rstrip("/")
    with _guard:
        hit = _cache.get(issuer)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
    try:
        meta = requests.get(issuer + "/.well-known/openid-configuration", timeout=10).json()
        if meta.get("issuer", "").rstrip("/") != issuer:
            raise OidcError("provider", "the provider's discovery document names another issuer")
        jwks = requests.get(meta["jwks_uri"], timeout=10).json()
    except (requests.RequestException, ValueError, KeyError) as e:
        raise OidcError("provider", f"the provider cannot be reached or answers nonsense: {type(e).__name__}") from None
    out = {"meta": meta, "jwks": jwks}
    with _guard:
        _cache[issuer] = (time.monotonic() + DISCOVERY_SECONDS, out)
    return out


def _client(redirect_uri: str):
    from authlib.integrations.requests_client import OAuth2Session

    cfg = settings.auth()
    secret = cfg.oidc_client_secret.get_secret_value() if cfg.oidc_client_secret else None
    return OAuth2Session(cfg.oidc_client_id, secret, scope="openid profile", redirect_uri=redirect_uri,
                         code_challenge_method="S256",
                         token_endpoint_auth_method="client_secret_basic" if secret else "none")


def _sign(payload: dict) -> str:
    from citygrid.secretkey import server_key

    body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")
    mac = hmac.new(server_key(), b"citygrid-oidc:" + body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{mac}"


def _unsign(value: str | None) -> dict:
    from citygrid.secretkey import server_key

    body, _, mac = (value or "").partition(".")
    good = hmac.new(server_key(), b"citygrid-oidc:" + body.encode(), hashlib.sha256).hexdigest()
    if not body or not hmac.compare_digest(mac, good):
        raise OidcError("state", "the sign-in was not started here (or its cookie was lost)")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    if payload.get("exp", 0) < time.time():
        raise OidcError("state", "the sign-in took too long: start again")
    return payload


def start(redirect_uri: str, next_path: str) -> tuple[str, str]:
    """(the provider's authorization address to send the browser to, the state cookie's value)."""
    meta = _provider()["meta"]
    state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    url, _ = _client(redirect_uri).create_authorization_url(meta["authorization_endpoint"], state=state, nonce=nonce,
                                                            code_verifier=verifier)
    cookie = _sign({"state": state, "nonce": nonce, "verifier": verifier, "next": next_path,
                    "exp": int(time.time()) + STATE_SECONDS})
    return url, cookie


def finish(redirect_uri: str, code: str, state: str, cookie: str | None) -> tuple[str, str]:
    """Check the provider's answer and the ID token: (the user name it names, the page to return to)."""
    from joserfc import jwt
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet

    saved = _unsign(cookie)
    if not hmac.compare_digest(saved["state"], state or ""):
        raise OidcError("state", "the answer does not belong to this sign-in (state)")
    cfg = settings.auth()
    prov = _provider()
    try:
        tokens = _client(redirect_uri).fetch_token(prov["meta"]["token_endpoint"], grant_type="authorization_code",
                                                   code=code, code_verifier=saved["verifier"])
    except Exception as e:  # noqa: BLE001 - any failure of the exchange is a refused sign-in
        raise OidcError("token", f"the provider refused the code: {type(e).__name__}") from None
    id_token = tokens.get("id_token")
    if not id_token:
        raise OidcError("token", "the provider sent no ID token")
    try:
        token = jwt.decode(id_token, KeySet.import_key_set(prov["jwks"]), algorithms=["RS256", "ES256", "PS256"])
        jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": prov["meta"]["issuer"]},
            aud={"essential": True, "value": cfg.oidc_client_id},
            nonce={"essential": True, "value": saved["nonce"]},
            exp={"essential": True},
        ).validate(token.claims)
    except (JoseError, ValueError) as e:
        raise OidcError("id_token", f"the ID token is not valid: {type(e).__name__}") from None
    name = token.claims.get(cfg.oidc_user_claim)
    if not isinstance(name, str) or not name.strip():
        raise OidcError("claim", f"the ID token has no '{cfg.oidc_user_claim}'")
    return name.strip(), saved["next"]
