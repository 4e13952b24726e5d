"""Notifications to citizens from the outbox: WeChat template messages and SMS.

Where the rows come from: the trigger ``case_event_notify`` (migration 0018) writes one
``notify_outbox`` row per message in the transaction of the case event — accepted, dispatched,
closed, and on closing also 'rate' (the invitation to rate) — for every enabled channel of the
city: 'wechat' when the case's contact has an openid, 'sms' when a hotline case's contact has a
phone. The contacts of cases merged into the case (并单) are told too. Because it is a trigger,
no writer can miss it: the workflow, the SQL case functions, imports. A row names the case whose
contact is told, never the openid or the phone: those are read from ``case_contact`` when sending.

How they are sent (:func:`run_once`): a round claims due rows with ``FOR UPDATE SKIP LOCKED`` —
only the oldest pending row of each recipient (contact case + channel), so a citizen hears of a
case's steps in order even with several workers — sends each, and records the outcome (sent; or
a retry after ``backoff_base_s · 2^(attempts-1)`` capped at ``backoff_max_s``; or failed after
``max_attempts`` or an error that no retry can mend) in the same transaction as the claim.

The guarantee: a row is recorded sent exactly once, and a message is sent again only when a worker
died (or its database connection broke) after the provider accepted it and before the transaction
that records it committed. Such a repeat carries the same idempotency key: the outbox row's
``client_msg_id`` (WeChat sends one message per openid + client_msg_id) and, for SMS, the same
``SessionContext``; whether an SMS provider drops the repeat is the provider's. So: at least once
to the provider, exactly once recorded, and exactly once to the citizen on WeChat.

Nothing personal is logged: rows are named by id, errors by code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import requests
from sqlalchemy import Connection, text

from citygrid import settings
from layers.cases import calendar as lcal
from layers.cases.citizen import PUBLIC_STATE
from layers.channels import wechat as lwx

log = logging.getLogger("citygrid.notify")

KINDS = ("accepted", "dispatched", "closed", "rate")
#: Days a row that is done (sent, failed, skipped) is kept for the record.
KEEP_DAYS = 90
TITLES = {"accepted": "您反映的问题已立案", "dispatched": "您反映的问题已派遣处置", "closed": "您反映的问题已办结",
          "rate": "请评价办理结果"}
#: WeChat error codes no retry mends: invalid openid, user unsubscribed / refused, bad template.
WECHAT_PERMANENT = {40003, 43004, 43101, 40037, 47003}


class Permanent(Exception):
    """A failure that no retry mends (the row is marked failed at once)."""


class Transient(Exception):
    """A failure worth retrying with backoff."""


@dataclass
class Message:
    """One outbox row, with what a sender needs (read when sending)."""

    id: int
    city_id: int
    city_slug: str
    case_id: int
    case_no: str
    kind: str
    channel: str
    state: str
    category: str | None
    department: str | None
    reply: str | None
    at: dt.datetime
    openid: str | None
    phone: str | None

    @property
    def idempotency_key(self) -> str:
        return f"cg-outbox-{self.id}"


# -- channels ---------------------------------------------------------------------------------------

def sync_channels(conn: Connection) -> dict[str, list[str]]:
    """Write ``notify_channel`` from the settings: wechat on for a city whose account has templates,
    sms on for every city when an SMS provider is configured. Returns city → channels on."""
    accounts = settings.wechat().accounts
    sms_on = bool(settings.notify().sms)
    out = {}
    for cid, slug in conn.execute(text("SELECT id, slug FROM city")).all():
        acct = lwx.account(slug)
        on = {"wechat": bool(acct and acct.secret and acct.templates and slug in accounts), "sms": sms_on}
        for ch, enabled in on.items():
            conn.execute(text("""INSERT INTO notify_channel (city_id, channel, enabled, updated_at) VALUES (:c, :ch, :e, now())
                                 ON CONFLICT (city_id, channel) DO UPDATE SET enabled = EXCLUDED.enabled, updated_at = now()
                                 WHERE notify_channel.enabled IS DISTINCT FROM EXCLUDED.enabled"""),
                         {"c": cid, "ch": ch, "e": enabled})
        out[slug] = [ch for ch, e in on.items() if e]
    return out


# -- senders ----------------------------------------------------------------------------------------

class Sender(Protocol):
    def send(self, msg: Message) -> str | None:
        """Send; return the provider's reference. Raise Permanent or Transient on failure."""


def _local(t: dt.datetime) -> str:
    return lcal.calendar().local(t).strftime("%Y-%m-%d %H:%M")


def summary(msg: Message) -> dict:
    """The words of a message (the same for every channel)."""
    status = PUBLIC_STATE.get(msg.state, msg.state).split(" ")[0]
    remark = {"accepted": "我们将尽快安排处置。", "dispatched": f"已交{msg.department or '责任单位'}办理。",
              "closed": f"答复：{msg.reply}" if msg.reply else "感谢您的反映。",
              "rate": "请在公众号回复“满意”“基本满意”或“不满意”。"}[msg.kind]
    return {"title": TITLES[msg.kind], "case_no": msg.case_no, "status": status, "time": _local(msg.at),
            "category": msg.category or "", "remark": remark}


class WechatTemplateSender:
    """Template messages (POST /cgi-bin/message/template/send) with the account's template of each
    kind; the data keys are the classic template's first / keyword1-3 / remark."""

    def __init__(self, engine):
        self.engine = engine
        self.clients: dict[str, object] = {}

    def send(self, msg: Message) -> str | None:
        from wechatpy.exceptions import WeChatClientException

        acct = lwx.account(msg.city_slug)
        if acct is None or not msg.openid:
            raise Permanent("no account or no openid")
        template = acct.templates.get(msg.kind)
        if not template:
            raise Permanent(f"no template for {msg.kind}")
        wx = self.clients.get(msg.city_slug) or self.clients.setdefault(msg.city_slug, lwx.client(acct, self.engine))
        s = summary(msg)
        body = {"touser": msg.openid, "template_id": template, "client_msg_id": msg.idempotency_key,
                "data": {"first": {"value": s["title"]}, "keyword1": {"value": s["case_no"]},
                         "keyword2": {"value": s["status"]}, "keyword3": {"value": s["time"]},
                         "remark": {"value": s["remark"]}}}
        if acct.page_url:
            body["url"] = acct.page_url
        try:
            res = wx.post("message/template/send", data=body)
        except WeChatClientException as e:
            if e.errcode in WECHAT_PERMANENT:
                raise Permanent(f"wechat errcode {e.errcode}") from None
            raise Transient(f"wechat errcode {e.errcode}") from None
        except requests.RequestException as e:
            raise Transient(f"wechat unreachable ({type(e).__name__})") from None
        return str(res.get("msgid")) if isinstance(res, dict) else None


class SmsProvider(Protocol):
    def send_sms(self, phone: str, template_id: str, params: list[str], session: str) -> str:
        """Send one SMS; return the provider's serial number. Raise Permanent or Transient."""


class TencentSms:
    """Tencent Cloud SMS ``SendSms`` (API 2021-01-11) over HTTP with the TC3-HMAC-SHA256 signature.
    Configured by ``CITYGRID_NOTIFY_SMS``: endpoint (default https://sms.tencentcloudapi.com/),
    secret_id, secret_key, sdk_app_id, sign_name, region, templates."""

    SERVICE, VERSION, ACTION = "sms", "2021-01-11", "SendSms"

    def __init__(self, cfg: dict):
        self.endpoint = cfg.get("endpoint") or "https://sms.tencentcloudapi.com/"
        self.secret_id, self.secret_key = cfg["secret_id"], cfg["secret_key"]
        self.sdk_app_id, self.sign_name = str(cfg["sdk_app_id"]), cfg["sign_name"]
        self.region = cfg.get("region", "ap-guangzhou")
        self.http = requests.Session()

    def _headers(self, payload: str, ts: int) -> dict:
        from urllib.parse import urlparse

        host = urlparse(self.endpoint).netloc
        day = dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")
        canonical = "\n".join(["POST", "/", "", f"content-type:application/json; charset=utf-8\nhost:{host}\n",
                               "content-type;host", hashlib.sha256(payload.encode()).hexdigest()])
        scope = f"{day}/{self.SERVICE}/tc3_request"
        to_sign = "\n".join(["TC3-HMAC-SHA256", str(ts), scope, hashlib.sha256(canonical.encode()).hexdigest()])

        def h(key: bytes, m: str) -> bytes:
            return hmac.new(key, m.encode(), hashlib.sha256).digest()

        k = h(h(h(("TC3" + self.secret_key).encode(), day), self.SERVICE), "tc3_request")
        sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        return {"Authorization": f"TC3-HMAC-SHA256 Credential={self.secret_id}/{scope}, "
                                 f"SignedHeaders=content-type;host, Signature={sig}",
                "Content-Type": "application/json; charset=utf-8", "Host": host, "X-TC-Action": self.ACTION,
                "X-TC-Timestamp": str(ts), "X-TC-Version": self.VERSION, "X-TC-Region": self.region}

    def send_sms(self, phone: str, template_id: str, params: list[str], session: str) -> str:
        number = phone if phone.startswith("+") else "+86" + phone
        payload = json.dumps({"PhoneNumberSet": [number], "SmsSdkAppId": self.sdk_app_id, "SignName": self.sign_name,
                              "TemplateId": template_id, "TemplateParamSet": params, "SessionContext": session},
                             ensure_ascii=False)
        try:
            r = self.http.post(self.endpoint, data=payload.encode(), headers=self._headers(payload, int(time.time())),
                               timeout=10)
            r.raise_for_status()
            res = r.json().get("Response", {})
        except (requests.RequestException, ValueError) as e:
            raise Transient(f"sms unreachable ({type(e).__name__})") from None
        if "Error" in res:
            code = res["Error"].get("Code", "")
            if code.startswith(("AuthFailure", "InvalidParameter", "FailedOperation.TemplateIncorrect")):
                raise Permanent(f"sms error {code}")
            raise Transient(f"sms error {code}")
        status = (res.get("SendStatusSet") or [{}])[0]
        if status.get("Code") != "Ok":
            code = status.get("Code", "unknown")
            if code.startswith(("InvalidParameterValue", "FailedOperation.PhoneNumberInBlacklist")):
                raise Permanent(f"sms status {code}")
            raise Transient(f"sms status {code}")
        return str(status.get("SerialNo") or res.get("RequestId") or "")


PROVIDERS = {"tencent": TencentSms}


class SmsSender:
    def __init__(self, cfg: dict, provider: SmsProvider | None = None):
        self.cfg = cfg
        self.provider = provider or PROVIDERS[cfg.get("provider", "tencent")](cfg)

    def send(self, msg: Message) -> str | None:
        template = (self.cfg.get("templates") or {}).get(msg.kind)
        if not template or not msg.phone:
            raise Permanent("no SMS template for this kind, or no phone")
        s = summary(msg)
        return self.provider.send_sms(msg.phone, str(template), [s["case_no"], s["status"]], msg.idempotency_key)


def senders(engine) -> dict[str, Sender]:
    out: dict[str, Sender] = {"wechat": WechatTemplateSender(engine)}
    sms = settings.notify().sms
    if sms:
        out["sms"] = SmsSender(sms)
    return out


# -- the worker -------------------------------------------------------------------------------------

_CLAIM = """
    SELECT o.id FROM notify_outbox o
    WHERE o.state = 'pending' AND o.next_attempt_at <= now()
      AND NOT EXISTS (SELECT 1 FROM notify_outbox p WHERE p.contact_case_id = o.contact_case_id
                      AND p.channel = o.channel AND p.state = 'pending' AND p.id < o.id)
    ORDER BY o.id LIMIT :n FOR UPDATE OF o SKIP LOCKED"""

_READ = """
    SELECT o.id, o.city_id, city.slug, o.case_id, c.case_no, o.kind, o.channel, coalesce(e.to_state, c.state) AS state,
           c.category_name, c.rating,
           d.name AS department, e.at,
           (SELECT f.note FROM case_event f WHERE f.case_id = o.case_id AND f.kind = 'feedback' AND f.note IS NOT NULL
            ORDER BY f.at DESC, f.id DESC LIMIT 1) AS reply,
           k.openid, k.phone
    FROM notify_outbox o JOIN case_file c ON c.id = o.case_id JOIN city ON city.id = o.city_id
    LEFT JOIN case_event e ON e.id = o.event_id
    LEFT JOIN department d ON d.id = coalesce(e.department_id, c.department_id)
    LEFT JOIN case_contact k ON k.case_id = o.contact_case_id
    WHERE o.id = :id"""


def backoff_s(attempts: int) -> float:
    cfg = settings.notify()
    return min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** max(0, attempts - 1))


def run_once(engine, sends: dict[str, Sender], *, limit: int | None = None, after_send=None) -> dict[str, int]:
    """Rounds of claim → send → record until nothing is due; counts of sent, retry, failed, skipped.

    ``after_send(row_id)`` is called between a send and the record of its outcome (the tests use
    it to die there)."""
    counts = {"sent": 0, "retry": 0, "failed": 0, "skipped": 0}
    limit = limit or settings.notify().batch
    max_attempts = settings.notify().max_attempts
    while True:
        with engine.begin() as conn:
            ids = conn.execute(text(_CLAIM), {"n": limit}).scalars().all()
            if not ids:
                # Clean-up: rows done for more than KEEP_DAYS, a few at a time.
                conn.execute(text("""DELETE FROM notify_outbox WHERE id IN (
                                         SELECT id FROM notify_outbox WHERE state <> 'pending'
                                         AND created_at < now() - make_interval(days => :d)
                                         ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED)"""), {"d": KEEP_DAYS})
                return counts
            for oid in ids:
                r = conn.execute(text(_READ), {"id": oid}).mappings().one()
                msg = Message(r["id"], r["city_id"], r["slug"], r["case_id"], r["case_no"], r["kind"], r["channel"],
                              r["state"], r["category_name"], r["department"], r["reply"], r["at"] or lcal.now(),
                              r["openid"], r["phone"])
                sender = sends.get(msg.channel)
                outcome, ref, err = "sent", None, None
                if sender is None:
                    outcome, err = "skipped", f"channel {msg.channel} is not configured"
                elif msg.kind == "rate" and r["rating"] is not None:
                    outcome, err = "skipped", "rated already"
                else:
                    try:
                        ref = sender.send(msg)
                    except Permanent as e:
                        outcome, err = "failed", str(e)
                    except Transient as e:
                        outcome, err = "retry", str(e)
                    except Exception as e:  # noqa: BLE001 - an unexpected error is retried, never fatal
                        outcome, err = "retry", f"{type(e).__name__}"
                if after_send:
                    after_send(oid)
                if outcome == "retry":
                    attempts = conn.execute(text("SELECT attempts + 1 FROM notify_outbox WHERE id = :i"),
                                            {"i": oid}).scalar_one()
                    if attempts >= max_attempts:
                        outcome = "failed"
                if outcome == "retry":
                    conn.execute(text("""UPDATE notify_outbox SET attempts = attempts + 1, last_error = :e,
                                         next_attempt_at = now() + make_interval(secs => :w) WHERE id = :i"""),
                                 {"i": oid, "e": err[:300], "w": backoff_s(attempts)})
                else:
                    conn.execute(text("""UPDATE notify_outbox SET state = :s, attempts = attempts + 1, last_error = :e,
                                         provider_ref = :ref, sent_at = CASE WHEN :sent THEN now() END
                                         WHERE id = :i"""),
                                 {"i": oid, "s": outcome, "sent": outcome == "sent", "e": err and err[:300], "ref": ref})
                if outcome != "sent":
                    log.info("outbox %s (%s %s): %s — %s", oid, msg.channel, msg.kind, outcome, err)
                counts[outcome] += 1


def run_forever(engine, *, stop=None, poll_s: float | None = None) -> None:
    """The worker loop of ``citygrid notify run``: sync the channels, then rounds every ``poll_s``."""
    with engine.begin() as conn:
        on = sync_channels(conn)
    log.info("notify: channels on: %s", {k: v for k, v in on.items() if v})
    sends = senders(engine)
    poll = poll_s or settings.notify().poll_s
    while stop is None or not stop.is_set():
        try:
            counts = run_once(engine, sends)
            if any(counts.values()):
                log.info("notify: %s", counts)
        except Exception as e:  # noqa: BLE001 - the database may be away for a while: try again later
            log.warning("notify round failed: %s", type(e).__name__)
        if stop is not None:
            stop.wait(poll)
        else:
            time.sleep(poll)
