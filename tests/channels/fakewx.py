"""A local stand-in for the WeChat API (and a Tencent-style SMS API) on 127.0.0.1, speaking the
documented endpoints the service calls:

* ``GET /cgi-bin/token`` (client_credential) → access_token, expires_in
* ``GET /cgi-bin/media/get`` (temporary media) → the bytes, or ``{"errcode": 40007}``
* ``POST /cgi-bin/message/template/send`` → ``{"errcode": 0, "msgid": n}``; as WeChat does, one
  message per openid + ``client_msg_id`` (a repeat is answered ok and not delivered again)
* ``POST /cgi-bin/menu/create`` → ok (the menu recorded)
* ``GET /connect/oauth2/authorize`` (snsapi_base: silent) → a redirect back with a code
* ``GET /sns/oauth2/access_token`` (authorization_code) → access_token, openid, scope
* ``POST /sms`` (Tencent Cloud ``SendSms`` shape, TC3-HMAC-SHA256 header) → SendStatusSet

Every call is recorded; ``fail_template`` holds error codes to answer the next template sends with.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class FakeWeChat:
    def __init__(self, app_id: str, secret: str):
        self.app_id, self.secret = app_id, secret
        self.tokens: list[str] = []
        self.media: dict[str, tuple[bytes, str]] = {}
        self.codes: dict[str, str] = {}  # oauth code -> openid
        self.browser_openid: str | None = None  # who is "in WeChat" for the authorize page
        self.template_calls: list[dict] = []  # every POST, repeats included
        self.oauth_calls = 0  # code → openid exchanges asked for
        self.delivered: list[dict] = []  # what the citizens see (one per openid + client_msg_id)
        self.fail_template: list[int] = []
        self.sms_calls: list[dict] = []
        self.menus: list[dict] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _token_ok(self, q) -> bool:
        return bool(self.tokens) and q.get("access_token") == self.tokens[-1]

    def _handler(self):
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _json(self, obj, status=200):
                body = json.dumps(obj, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                u = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(u.query).items()}
                with fake.lock:
                    if u.path == "/cgi-bin/token":
                        if q.get("appid") != fake.app_id or q.get("secret") != fake.secret:
                            return self._json({"errcode": 40013, "errmsg": "invalid appid"})
                        fake.tokens.append(f"ACCESS_TOKEN_{len(fake.tokens) + 1}")
                        return self._json({"access_token": fake.tokens[-1], "expires_in": 7200})
                    if u.path == "/cgi-bin/media/get":
                        if not fake._token_ok(q):
                            return self._json({"errcode": 40001, "errmsg": "invalid credential"})
                        if q.get("media_id") not in fake.media:
                            return self._json({"errcode": 40007, "errmsg": "invalid media_id"})
                        data, ctype = fake.media[q["media_id"]]
                        self.send_response(200)
                        self.send_header("Content-Type", ctype)
                        self.send_header("Content-Disposition", f'attachment; filename="{q["media_id"]}.jpg"')
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                        return None
                    if u.path == "/connect/oauth2/authorize":
                        # snsapi_base is silent: WeChat redirects back at once with a code.
                        if q.get("appid") != fake.app_id or q.get("scope") != "snsapi_base" or not fake.browser_openid:
                            return self._json({"errcode": 10003, "errmsg": "redirect_uri or appid refused"}, 400)
                        code = f"CODE_{len(fake.codes) + 1}_{fake.browser_openid[-6:]}"
                        fake.codes[code] = fake.browser_openid
                        back = q["redirect_uri"]
                        back += ("&" if "?" in back else "?") + f"code={code}&state={q.get('state', '')}"
                        self.send_response(302)
                        self.send_header("Location", back)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return None
                    if u.path == "/sns/oauth2/access_token":
                        fake.oauth_calls += 1
                        if (q.get("appid") != fake.app_id or q.get("secret") != fake.secret
                                or q.get("grant_type") != "authorization_code"):
                            return self._json({"errcode": 40013, "errmsg": "invalid appid"})
                        openid = fake.codes.pop(q.get("code", ""), None)  # a code is good once
                        if openid is None:
                            return self._json({"errcode": 40029, "errmsg": "invalid code"})
                        return self._json({"access_token": "SNS_TOKEN", "expires_in": 7200, "refresh_token": "R",
                                           "openid": openid, "scope": "snsapi_base"})
                return self._json({"errcode": 404, "errmsg": "not found"}, 404)

            def do_POST(self):
                u = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(u.query).items()}
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with fake.lock:
                    if u.path == "/cgi-bin/message/template/send":
                        if not fake._token_ok(q):
                            return self._json({"errcode": 40001, "errmsg": "invalid credential"})
                        msg = json.loads(body)
                        fake.template_calls.append(msg)
                        if fake.fail_template:
                            code = fake.fail_template.pop(0)
                            return self._json({"errcode": code, "errmsg": "system busy"})
                        key = (msg["touser"], msg.get("client_msg_id"))
                        seen = [d for d in fake.delivered if (d["touser"], d.get("client_msg_id")) == key]
                        if seen and key[1]:
                            return self._json({"errcode": 0, "errmsg": "ok", "msgid": seen[0]["msgid"]})
                        msg["msgid"] = 1000 + len(fake.delivered)
                        fake.delivered.append(msg)
                        return self._json({"errcode": 0, "errmsg": "ok", "msgid": msg["msgid"]})
                    if u.path == "/cgi-bin/menu/create":
                        if not fake._token_ok(q):
                            return self._json({"errcode": 40001, "errmsg": "invalid credential"})
                        fake.menus.append(json.loads(body))
                        return self._json({"errcode": 0, "errmsg": "ok"})
                    if u.path == "/sms":
                        ok = (self.headers.get("X-TC-Action") == "SendSms"
                              and (self.headers.get("Authorization") or "").startswith("TC3-HMAC-SHA256 Credential="))
                        if not ok:
                            return self._json({"Response": {"Error": {"Code": "AuthFailure.SignatureFailure"}}})
                        msg = json.loads(body)
                        fake.sms_calls.append(msg)
                        return self._json({"Response": {"SendStatusSet": [{"Code": "Ok", "SerialNo": f"S{len(fake.sms_calls)}"}],
                                                        "RequestId": "req"}})
                return self._json({"errcode": 404, "errmsg": "not found"}, 404)

        return H
