"""Fixtures of the WeChat tests: a local fake of the WeChat API, the account's settings pointed at it,
and a citizen who talks to the message server with messages signed and encrypted by wechatpy."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field

import pytest
import xmltodict
from sqlalchemy import text

from tests.channels.fakewx import FakeWeChat

APP_ID, SECRET, TOKEN = "wx0123456789abcdef", "test-secret-not-real", "citygrid-test-token"
AES_KEY = base64.b64encode(hashlib.sha256(b"citygrid wechat test").digest()).decode()[:43]
TEMPLATES = {"accepted": "TPL_ACCEPTED", "dispatched": "TPL_DISPATCHED", "closed": "TPL_CLOSED", "rate": "TPL_RATE"}


@pytest.fixture
def fakewx(monkeypatch, engine, haimen):
    """The fake WeChat API running, the Haimen account configured (safe mode) against it, and the
    notification channels on for the test (off again after it)."""
    with FakeWeChat(APP_ID, SECRET) as fake:
        monkeypatch.setenv("CITYGRID_WECHAT_ACCOUNTS", json.dumps({"haimen": {
            "app_id": APP_ID, "secret": SECRET, "token": TOKEN, "aes_key": AES_KEY, "templates": TEMPLATES,
            "page_url": "https://12345.example.cn/public"}}))
        monkeypatch.setenv("CITYGRID_WECHAT_API_BASE", fake.url)
        monkeypatch.setenv("CITYGRID_WECHAT_OAUTH_BASE", fake.url + "connect/")
        monkeypatch.setenv("CITYGRID_NOTIFY_SMS", json.dumps({
            "provider": "tencent", "endpoint": fake.url + "sms", "secret_id": "AKIDtest", "secret_key": "sk-test",
            "sdk_app_id": "1400000000", "sign_name": "海门12345", "templates": {"accepted": "101", "dispatched": "102",
                                                                             "closed": "103", "rate": "104"}}))
        monkeypatch.setenv("CITYGRID_NOTIFY_BACKOFF_BASE_S", "60")
        from layers.channels import notify

        with engine.begin() as conn:
            conn.execute(text("DELETE FROM wechat_token"))
            notify.sync_channels(conn)
        yield fake
        with engine.begin() as conn:
            conn.execute(text("UPDATE notify_channel SET enabled = false"))
            conn.execute(text("DELETE FROM wechat_token"))


def signed_query(token: str, timestamp: str, nonce: str) -> dict:
    from wechatpy.utils import WeChatSigner

    s = WeChatSigner()
    s.add_data(token, timestamp, nonce)
    return {"signature": s.signature, "timestamp": timestamp, "nonce": nonce}


@dataclass
class Transcript:
    """The conversation as the citizen sees it, rendered as text."""

    lines: list[str] = field(default_factory=list)
    shown: int = 0  # template messages of the fake put in the transcript so far

    def citizen(self, what: str):
        self.lines.append(f"市民 ▶ {what}")

    def account(self, what: str):
        body = what.replace("\n", "\n          ")
        self.lines.append(f"公众号 ◀ {body}")

    def template(self, what: str):
        self.lines.append(f"【模板消息】 {what}")

    def note(self, what: str):
        self.lines.append(f"   （{what}）")

    def render(self) -> str:
        return "\n".join(self.lines) + "\n"


class Citizen:
    """A WeChat user talking to the account through the message server (safe mode)."""

    def __init__(self, client, openid: str | None = None, transcript: Transcript | None = None):
        from wechatpy.crypto import WeChatCrypto

        self.client = client
        self.openid = openid or f"o{uuid.uuid4().hex[:27]}"
        self.crypto = WeChatCrypto(TOKEN, AES_KEY, APP_ID)
        self.t = transcript or Transcript()
        self.msg_id = int(time.time() * 1000) % 10**12

    def xml(self, mtype: str, inner: str, msg_id: bool = True) -> str:
        self.msg_id += 1
        return (f"<xml><ToUserName><![CDATA[gh_12345haimen]]></ToUserName><FromUserName><![CDATA[{self.openid}]]>"
                f"</FromUserName><CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[{mtype}]]></MsgType>"
                f"{inner}" + (f"<MsgId>{self.msg_id}</MsgId>" if msg_id else "") + "</xml>")

    def post(self, xml: str, *, timestamp: str | None = None, nonce: str | None = None, query: dict | None = None,
             body: str | None = None):
        """Post a message encrypted and signed as WeChat does; the raw response."""
        timestamp = timestamp or str(int(time.time()))
        nonce = nonce or uuid.uuid4().hex[:10]
        enc = body if body is not None else self.crypto.encrypt_message(xml, nonce, timestamp)
        d = xmltodict.parse(enc)["xml"]
        q = {**signed_query(TOKEN, timestamp, nonce), "openid": self.openid, "encrypt_type": "aes",
             "msg_signature": d.get("MsgSignature", "")}
        q.update(query or {})
        return self.client.post("/wechat/haimen", params=q, content=enc.encode(),
                                headers={"Content-Type": "text/xml"})

    def open_reply(self, r) -> dict | None:
        assert r.status_code == 200, r.text
        if r.text == "success":
            return None
        d = xmltodict.parse(r.text)["xml"]
        plain = self.crypto.decrypt_message(r.text, d["MsgSignature"], d["TimeStamp"], d["Nonce"])
        return xmltodict.parse(plain)["xml"]

    def say(self, shown: str, mtype: str, inner: str, msg_id: bool = True) -> dict | None:
        self.t.citizen(shown)
        reply = self.open_reply(self.post(self.xml(mtype, inner, msg_id)))
        if reply is None:
            self.t.note("无回复")
        elif reply["MsgType"] == "text":
            assert reply["ToUserName"] == self.openid
            self.t.account(reply["Content"])
        elif reply["MsgType"] == "news":
            items = reply["Articles"]["item"]
            items = items if isinstance(items, list) else [items]
            self.t.account("[图文] " + " | ".join(i["Title"] for i in items))
        return reply

    def text(self, content: str) -> dict | None:
        return self.say(content, "text", f"<Content><![CDATA[{content}]]></Content>")

    def event(self, event: str, key: str | None = None, shown: str | None = None) -> dict | None:
        inner = f"<Event><![CDATA[{event}]]></Event>" + (f"<EventKey><![CDATA[{key}]]></EventKey>" if key else "")
        return self.say(shown or f"[{event}{' ' + key if key else ''}]", "event", inner, msg_id=False)

    def location(self, lat: float, lon: float, label: str) -> dict | None:
        return self.say(f"[位置] {label} ({lon}, {lat} GCJ-02)", "location",
                        f"<Location_X>{lat}</Location_X><Location_Y>{lon}</Location_Y><Scale>16</Scale>"
                        f"<Label><![CDATA[{label}]]></Label>")

    def image(self, media_id: str) -> dict | None:
        return self.say(f"[图片 {media_id}]", "image",
                        f"<PicUrl><![CDATA[http://mmbiz.example/{media_id}]]></PicUrl><MediaId><![CDATA[{media_id}]]></MediaId>")
