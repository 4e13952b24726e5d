"""The 12345 WeChat official account (公众号): the message server's checks and the citizen's dialogue.

Protocol (WeChat Official Accounts message push): every request carries ``signature`` (sha1 of the
sorted token, timestamp and nonce), in safe mode also ``msg_signature`` over the encrypted body,
which is AES-256-CBC with the account's EncodingAESKey. Signing, checking and the AES are
wechatpy's (``wechatpy.crypto.WeChatCrypto``, ``wechatpy.utils.WeChatSigner``); nothing of it is
written here. On top of the signature a request is refused when its timestamp is outside the replay
window or its nonce was seen before (``wechat_seen``, shared by every process). An account with an
AES key accepts only encrypted messages: the plain-mode signature does not cover the body.

The dialogue (state per openid in ``wechat_dialogue``):

* 我要反映 (menu REPORT or the keyword) starts a draft; a location message (GCJ-02, as WeChat sends
  it, with its label) and image messages fill it (images fetched with the media-download API and
  kept in a content-addressed photo store as the reports' photos); text is the description; the
  citizen confirms by picking the class from a short numbered list, and is told the case number.
* 查询进度 lists the citizen's own cases by openid, with the state and the department's reply
  (its feedback) once closed; 满意 / 基本满意 / 不满意 rates the latest closed case not yet rated (the
  rule of ``/public`` rate).
* 便民公告 answers with the notices as a news reply.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from shapely.geometry import Point
from sqlalchemy import Connection, text

from citygrid import settings
from gis import crs as gcrs
from layers.cases import calendar as lcal
from layers.cases import citizen as lcit
from layers.cases import workflow as wf
from layers.core.city import CityInfo
from layers.core.errors import Conflict, InputError
from layers.field import reports as lreports
from layers.field.photostore import PhotoStore, Staged
from layers.field.photostore import recover_at_start as recover_store_at_start

log = logging.getLogger("citygrid.wechat")
DATA = Path(__file__).resolve().parent / "data"
MAX_BODY = 64 * 1024


@lru_cache
def dialogue_config() -> dict:
    return json.loads((DATA / "dialogue.json").read_text(encoding="utf-8"))


# -- accounts ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Account:
    city: str
    app_id: str
    secret: str = field(repr=False)
    token: str = field(repr=False)
    aes_key: str | None = field(default=None, repr=False)
    templates: dict = field(default_factory=dict)
    page_url: str | None = None

    @property
    def safe_mode(self) -> bool:
        return bool(self.aes_key)


def account(city_slug: str) -> Account | None:
    """The account of a city from ``CITYGRID_WECHAT_ACCOUNTS``, or None (no account)."""
    cfg = settings.wechat().accounts.get(city_slug)
    if not cfg or not cfg.get("app_id") or not cfg.get("token"):
        return None
    return Account(city_slug, str(cfg["app_id"]), str(cfg.get("secret") or ""), str(cfg["token"]),
                   str(cfg.get("aes_key") or "") or None, dict(cfg.get("templates") or {}), cfg.get("page_url"))


class Refused(Exception):
    """A request that is not WeChat's (signature), a replay, or a body that does not decrypt."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _signature(*parts: str) -> str:
    from wechatpy.utils import WeChatSigner

    signer = WeChatSigner()
    signer.add_data(*parts)
    return signer.signature


def check_request(conn: Connection, city: CityInfo, acct: Account, *, signature: str | None, timestamp: str | None,
                  nonce: str | None, now: float | None = None) -> None:
    """Signature, timestamp window and nonce of a request (the URL check or a message). The nonce
    is recorded in ``conn``'s transaction: a second request with it is refused, in any process."""
    if not signature or not timestamp or not nonce:
        raise Refused(403, "signature, timestamp and nonce are required")
    if not hmac.compare_digest(_signature(acct.token, timestamp, nonce), signature):
        raise Refused(403, "the signature does not match: not a request of this account")
    try:
        ts = int(timestamp)
    except ValueError:
        raise Refused(403, "timestamp is not a number") from None
    window = settings.wechat().replay_window_s
    now = time.time() if now is None else now
    if abs(now - ts) > window:
        raise Refused(403, f"timestamp is {int(now - ts)} s away from now (more than {window} s): a replay or a wrong clock")
    if len(nonce) > 100:
        raise Refused(403, "nonce is too long")
    if not _first_time(conn, city, "nonce", nonce, window):
        raise Refused(403, "this nonce was used before: a replay")


def _first_time(conn: Connection, city: CityInfo, kind: str, key: str, window: int) -> bool:
    seen = conn.execute(text("""INSERT INTO wechat_seen (city_id, kind, key) VALUES (:c, :k, :key)
                                ON CONFLICT DO NOTHING RETURNING 1"""), {"c": city.id, "k": kind, "key": key}).first()
    # Clean-up on write: rows older than twice the window (a nonce that old is refused by its timestamp).
    conn.execute(text("""DELETE FROM wechat_seen WHERE ctid IN (
                             SELECT ctid FROM wechat_seen WHERE at < now() - make_interval(secs => :keep)
                             ORDER BY at LIMIT 200 FOR UPDATE SKIP LOCKED)"""), {"keep": max(2 * window, 86400)})
    return seen is not None


def open_message(acct: Account, body: bytes, *, timestamp: str, nonce: str, encrypt_type: str | None,
                 msg_signature: str | None) -> str:
    """The message's XML: decrypted (safe mode) or as sent (plain mode)."""
    if len(body) > MAX_BODY:
        raise Refused(413, f"the message is larger than {MAX_BODY} bytes")
    if acct.safe_mode:
        if (encrypt_type or "").lower() != "aes":
            raise Refused(403, "this account is in safe mode: only encrypted (encrypt_type=aes) messages are accepted")
        from wechatpy.crypto import WeChatCrypto
        from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException

        if not msg_signature:
            raise Refused(403, "msg_signature is required in safe mode")
        try:
            return WeChatCrypto(acct.token, acct.aes_key, acct.app_id).decrypt_message(
                body.decode("utf-8"), msg_signature, timestamp, nonce)
        except InvalidSignatureException:
            raise Refused(403, "msg_signature does not match the encrypted message") from None
        except InvalidAppIdException:
            raise Refused(403, "the message is encrypted for another app id") from None
        except Exception as e:  # noqa: BLE001 - bad XML, bad base64, bad padding: all refused alike
            raise Refused(400, f"the message does not decrypt ({type(e).__name__})") from None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "the message is not UTF-8") from None


def seal_reply(acct: Account, xml: str, *, nonce: str, timestamp: str) -> str:
    """A reply as WeChat expects it: encrypted in safe mode."""
    if not acct.safe_mode:
        return xml
    from wechatpy.crypto import WeChatCrypto

    return WeChatCrypto(acct.token, acct.aes_key, acct.app_id).encrypt_message(xml, nonce, timestamp)


# -- the WeChat API client (access token shared through the database) ----------------------------

class DbTokenStorage:
    """wechatpy session storage in ``wechat_token``: every process uses the same access token (a
    new one from WeChat makes the old one expire after a while)."""

    def __init__(self, engine):
        self.engine = engine

    def get(self, key, default=None):
        with self.engine.connect() as conn:
            v = conn.execute(text("""SELECT value FROM wechat_token WHERE key = :k
                                     AND (expires_at IS NULL OR expires_at > now() + interval '60 seconds')"""),
                             {"k": key}).scalar()
        return default if v is None else v

    def set(self, key, value, ttl=None):
        with self.engine.begin() as conn:
            conn.execute(text("""INSERT INTO wechat_token (key, value, expires_at)
                                 VALUES (:k, :v, CASE WHEN CAST(:ttl AS integer) IS NULL THEN NULL
                                                      ELSE now() + make_interval(secs => :ttl) END)
                                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at"""),
                         {"k": key, "v": value, "ttl": ttl})

    def delete(self, key):
        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM wechat_token WHERE key = :k"), {"k": key})


def client(acct: Account, engine):
    """A ``wechatpy.WeChatClient`` for the account, talking to ``CITYGRID_WECHAT_API_BASE``."""
    from wechatpy import WeChatClient

    base = settings.wechat().api_base.rstrip("/") + "/"

    class Client(WeChatClient):
        API_BASE_URL = base + "cgi-bin/"

        def fetch_access_token(self):
            return self._fetch_access_token(url=base + "cgi-bin/token", params={
                "grant_type": "client_credential", "appid": self.appid, "secret": self.secret})

    return Client(acct.app_id, acct.secret, session=DbTokenStorage(engine), timeout=settings.wechat().http_timeout_s)


def fetch_media(wx, media_id: str) -> bytes:
    """The bytes of a temporary media file (an image the citizen sent): GET /cgi-bin/media/get."""
    res = wx.media.download(media_id)  # an error answer (JSON with errcode) raises WeChatClientException
    if isinstance(res, dict):
        raise InputError(f"the media download answered {res.get('errcode')}")
    return res.content


# -- photos ---------------------------------------------------------------------------------------

def photo_store() -> PhotoStore:
    """Photos sent in the chat: their own content-addressed store (the reports' store's recovery
    deletes every file ``field_photo`` does not refer to)."""
    return PhotoStore(settings.paths().data_dir / "wechat_photos")


def referenced(conn: Connection) -> dict[str, set[str]]:
    out = {}
    for kind, col in (("original", "sha256"), ("public", "public_sha256"), ("thumb", "thumb_sha256")):
        out[kind] = {r[0] for r in conn.execute(text(f"SELECT DISTINCT {col} FROM wechat_photo"))}
    return out


def recover_at_start(engine, log=None) -> dict | None:
    return recover_store_at_start(engine, "wechat_photo", photo_store(), referenced, log)


def photo_url(case_id: int, photo_id: int) -> str:
    return f"/api/v1/cases/{case_id}/wechat-photos/{photo_id}/public"


def photo_file(conn: Connection, city: CityInfo, case_id: int, photo_id: int, variant: str, user) -> tuple[bytes, str]:
    """(bytes, media type) of a chat photo of a case ``user`` may see (the rule of the case list)."""
    from layers.core.errors import NotFound

    col = {"public": "public_sha256", "thumb": "thumb_sha256"}.get(variant)
    if col is None:
        raise InputError("variant must be public or thumb (the original is kept, never served)")
    where, params = wf.visibility(conn, city, user)
    row = conn.execute(text(f"""SELECT p.{col} FROM wechat_photo p JOIN case_file c ON c.id = p.case_id
                                WHERE p.id = :p AND p.case_id = :cid AND p.city_id = :city AND {where}"""),
                       {**params, "p": photo_id, "cid": case_id, "city": city.id}).first()
    if row is None:
        raise NotFound(f"no WeChat photo {photo_id} of case {case_id}")
    try:
        return photo_store().read(variant, row[0]), "image/jpeg"
    except FileNotFoundError:
        raise NotFound(f"the {variant} file of WeChat photo {photo_id} is missing") from None


# -- the dialogue ---------------------------------------------------------------------------------

@dataclass
class Reply:
    """What the account answers: a text, or news articles (title, description, url)."""

    text: str | None = None
    articles: list[dict] | None = None


@dataclass
class Context:
    """What a message's handling needs beyond the database: the WeChat client (media download),
    the staged photo files to promote after the commit."""

    account: Account
    wx: object = None
    staged: Staged | None = None
    now: dt.datetime | None = None


def _dialogue(conn: Connection, city: CityInfo, openid: str) -> tuple[str, dict]:
    # The draft's age on the database's clock, the one that wrote updated_at (two servers' clocks may differ).
    row = conn.execute(text("""SELECT step, draft, updated_at < now() - make_interval(mins => :m) FROM wechat_dialogue
                               WHERE city_id = :c AND openid = :o FOR UPDATE"""),
                       {"c": city.id, "o": openid, "m": settings.wechat().draft_minutes}).first()
    if row is None:
        return "idle", {}
    step, draft, expired = row
    if step != "idle" and expired:
        _drop_draft_photos(conn, city, openid)
        return "idle", {}
    return step, dict(draft or {})


def _save(conn: Connection, city: CityInfo, openid: str, step: str, draft: dict) -> None:
    conn.execute(text("""INSERT INTO wechat_dialogue (city_id, openid, step, draft, updated_at)
                         VALUES (:c, :o, :s, CAST(:d AS jsonb), now())
                         ON CONFLICT (city_id, openid) DO UPDATE SET step = EXCLUDED.step, draft = EXCLUDED.draft,
                                                                     updated_at = now()"""),
                 {"c": city.id, "o": openid, "s": step, "d": json.dumps(draft, ensure_ascii=False)})


def _drop_draft_photos(conn: Connection, city: CityInfo, openid: str) -> None:
    # The files stay until the store's recovery finds that no row refers to them.
    conn.execute(text("DELETE FROM wechat_photo WHERE city_id = :c AND openid = :o AND case_id IS NULL"),
                 {"c": city.id, "o": openid})


def _touch_user(conn: Connection, city: CityInfo, openid: str, *, subscribed: bool | None = None) -> None:
    conn.execute(text("""
        INSERT INTO wechat_user (city_id, openid, subscribed, subscribed_at, unsubscribed_at, last_seen_at)
        VALUES (:c, :o, coalesce(CAST(:s AS boolean), true), CASE WHEN CAST(:s AS boolean) IS NOT FALSE THEN now() END,
                CASE WHEN NOT CAST(:s AS boolean) THEN now() END, now())
        ON CONFLICT (city_id, openid) DO UPDATE SET last_seen_at = now(),
            subscribed = coalesce(CAST(:s AS boolean), wechat_user.subscribed),
            subscribed_at = CASE WHEN CAST(:s AS boolean) THEN now() ELSE wechat_user.subscribed_at END,
            unsubscribed_at = CASE WHEN NOT CAST(:s AS boolean) THEN now() ELSE wechat_user.unsubscribed_at END"""),
        {"c": city.id, "o": openid, "s": subscribed})


def class_choices() -> list[dict]:
    cat = wf.catalog()
    return [{"code": c, "name": cat[c]["name"]} for c in dialogue_config()["classes"] if c in cat]


def _choices_text() -> str:
    return "\n".join(f"{i}. {c['name']}" for i, c in enumerate(class_choices(), 1))


def _intent(text_in: str) -> str | None:
    t = (text_in or "").strip()
    for intent, words in dialogue_config()["keywords"].items():
        if t in words:
            return intent
    return None


WELCOME = ("您好，这里是12345政务服务便民热线。\n"
           "· 发现问题？点「我要反映」或回复“我要反映”，再发送位置和照片\n"
           "· 回复“查询进度”查看您反映过的问题\n"
           "· 回复“便民公告”查看最新公告")
RATING_WORDS = {"满意": "satisfied", "基本满意": "basic", "不满意": "unsatisfied"}


def handle(conn: Connection, city: CityInfo, ctx: Context, msg) -> Reply | None:
    """Answer one message (a wechatpy message object) of a citizen; writes in ``conn``."""
    openid = msg.source
    if not openid or len(openid) > 80:
        raise InputError("the message has no valid FromUserName")
    mtype = msg.type
    if mtype == "event":
        ev = (msg.event or "").lower()
        if ev in ("subscribe", "subscribe_scan"):
            _touch_user(conn, city, openid, subscribed=True)
            return Reply(WELCOME)
        if ev == "unsubscribe":
            _touch_user(conn, city, openid, subscribed=False)
            return None
        _touch_user(conn, city, openid)
        if ev == "click":
            intent = dialogue_config()["menu"].get(getattr(msg, "key", None) or "")
            return _run_intent(conn, city, ctx, openid, intent) if intent else None
        return None
    _touch_user(conn, city, openid)
    step, draft = _dialogue(conn, city, openid)
    if mtype == "location":
        return _location(conn, city, openid, draft, msg)
    if mtype == "image":
        return _image(conn, city, ctx, openid, draft, msg)
    if mtype != "text":
        return Reply("暂不支持此类消息。请发送文字、位置或图片。")
    content = (msg.content or "").strip()
    intent = _intent(content)
    if intent:
        return _run_intent(conn, city, ctx, openid, intent)
    if content in RATING_WORDS:
        return _rate_latest(conn, city, openid, RATING_WORDS[content])
    if step == "report":
        if content.isdigit():
            return _confirm(conn, city, ctx, openid, draft, int(content))
        draft["text"] = ((draft.get("text") or "") + "\n" + content).strip()[:2000]
        _save(conn, city, openid, "report", draft)
        return Reply("已记下您的描述。" + _next_hint(draft))
    return Reply(WELCOME)


def _run_intent(conn, city, ctx, openid, intent) -> Reply:
    if intent == "report":
        _drop_draft_photos(conn, city, openid)
        _save(conn, city, openid, "report", {})
        return Reply("请反映问题：\n1) 点「+」→「位置」发送问题所在位置\n2) 拍照发送现场照片\n3) 可用文字补充描述\n"
                     "回复“取消”退出。")
    if intent == "cancel":
        _drop_draft_photos(conn, city, openid)
        _save(conn, city, openid, "idle", {})
        return Reply("已取消本次反映。")
    if intent == "query":
        return Reply(my_cases_text(conn, city, openid))
    if intent == "notices":
        items = lcit.notices(conn, city, limit=8)
        if not items:
            return Reply("暂无便民公告。")
        page = ctx.account.page_url or "/public"
        return Reply(articles=[{"title": n["title"], "description": n["body"][:120],
                                "url": f"{page}#notice-{n['id']}"} for n in items])
    return Reply(WELCOME)


def _next_hint(draft: dict) -> str:
    if not draft.get("lon"):
        return "请发送问题所在位置（点「+」→「位置」）。"
    return "请回复编号选择问题类别，确认上报：\n" + _choices_text()


def _location(conn, city, openid, draft, msg) -> Reply:
    try:
        lat, lon = float(msg.location_x), float(msg.location_y)
    except (TypeError, ValueError):
        return Reply("位置无法识别，请重新发送。")
    bad = gcrs.validate_lonlat(np.array([lon]), np.array([lat]))
    if bad is not None:
        return Reply("位置无法识别，请重新发送。")
    x, y = gcrs.transform_xy(np.array([lon]), np.array([lat]), gcrs.GCJ02, city.working_crs)
    try:
        _, cell = wf.snap_one(conn, city, Point(float(x[0]), float(y[0])))
    except InputError:
        return Reply(f"该位置不在{city.name}范围内，请发送本区内的位置。")
    label = (msg.label or "").strip()[:300] or None
    draft.update(lon=lon, lat=lat, label=label, cell=cell)
    _save(conn, city, openid, "report", draft)
    return Reply(f"已收到位置：{label or '（无地址）'}。\n请发送现场照片（可多张）。" +
                 ("\n" + _next_hint(draft) if draft.get("photos") else ""))


def _image(conn, city, ctx: Context, openid, draft, msg) -> Reply:
    photos = list(draft.get("photos") or [])
    limit = int(dialogue_config()["max_photos"])
    if len(photos) >= limit:
        return Reply(f"每次最多 {limit} 张照片。" + _next_hint(draft))
    if not msg.media_id:
        return Reply("图片无法读取，请重新发送。")
    try:
        data = fetch_media(ctx.wx, msg.media_id)
        p = lreports.prepare_photo(len(photos), None, data)
    except InputError as e:
        log.info("wechat image refused: %s", str(e)[:200])
        return Reply("这张图片无法使用（格式或大小不符），请换一张。")
    except Exception as e:  # noqa: BLE001 - the WeChat API may be down: the citizen may resend
        log.warning("wechat media download failed: %s", type(e).__name__)
        return Reply("图片暂时无法获取，请稍后重新发送。")
    store = photo_store()
    store.claim(conn)
    for kind, sha, blob in (("original", p.sha256, p.data), ("public", p.public_sha256, p.public),
                            ("thumb", p.thumb_sha256, p.thumb)):
        store.stage(ctx.staged, kind, sha, blob)
    pid = conn.execute(text("""
        INSERT INTO wechat_photo (city_id, openid, media_id, sha256, public_sha256, thumb_sha256, media_type,
                                  size_bytes, width, height, exif_status)
        VALUES (:c, :o, :m, :s, :ps, :ts, :mt, :n, :w, :h, :ex) RETURNING id"""),
        {"c": city.id, "o": openid, "m": msg.media_id[:200], "s": p.sha256, "ps": p.public_sha256, "ts": p.thumb_sha256,
         "mt": p.media_type, "n": len(p.data), "w": p.width, "h": p.height, "ex": p.exif.status}).scalar_one()
    photos.append(pid)
    draft["photos"] = photos
    _save(conn, city, openid, "report", draft)
    return Reply(f"已收到照片（第 {len(photos)} 张）。" + _next_hint(draft))


def _confirm(conn, city, ctx: Context, openid, draft, n: int) -> Reply:
    choices = class_choices()
    if not draft.get("lon"):
        return Reply(_next_hint(draft))
    if not 1 <= n <= len(choices):
        return Reply(f"请回复 1 到 {len(choices)} 之间的编号：\n" + _choices_text())
    cls = choices[n - 1]
    desc = draft.get("text") or f"{cls['name']}（微信反映）"
    try:
        out = lcit.submit(conn, city, category_code=cls["code"], description=desc, lon=draft["lon"], lat=draft["lat"],
                          crs="GCJ-02", address=draft.get("label"), openid=openid, channel="微信")
    except (InputError, Conflict) as e:
        log.info("wechat report refused: %s", type(e).__name__)  # the message may hold the location
        return Reply("暂时无法受理，请稍后再试或拨打12345。")
    case_id = conn.execute(text("SELECT id FROM case_file WHERE city_id = :c AND case_no = :n"),
                           {"c": city.id, "n": out["case_no"]}).scalar_one()
    photo_ids = [int(p) for p in draft.get("photos") or []]
    if photo_ids:
        ids = conn.execute(text("""UPDATE wechat_photo SET case_id = :case WHERE id = ANY(:ids) AND city_id = :c
                                   AND openid = :o AND case_id IS NULL RETURNING id"""),
                           {"case": case_id, "ids": photo_ids, "c": city.id, "o": openid}).scalars().all()
        if ids:
            wf._event(conn, case_id, lcal.now(), "note", lcit.CITIZEN, out["state"], out["state"],
                      photos=[photo_url(case_id, i) for i in sorted(ids)], data={"photo_from": "wechat"})
    _save(conn, city, openid, "idle", {})
    merged = " 与附近已反映的同类问题合并办理。" if out["state"] == "merged" else ""
    return Reply(f"已受理，感谢您的反映！\n案卷编号：{out['case_no']}\n类别：{cls['name']}{merged}\n"
                 f"办理进度会通过本公众号通知您，也可回复“查询进度”查看。\n网页查询码：{out['query_code']}")


# -- the citizen's own cases -------------------------------------------------------------------------

def my_cases(conn: Connection, city: CityInfo, openid: str, limit: int = 20) -> list[dict]:
    """The cases of an openid (``case_contact.openid``), newest first, as the citizen may see them:
    state, class, dates, rating, and the department's reply (its feedback) once closed. A case
    merged into another shows the other's state and reply."""
    rows = conn.execute(text("""
        SELECT c.id, c.case_no, c.category_name, c.received_at, c.address,
               coalesce(o.state, c.state) AS state, coalesce(o.closed_at, c.closed_at) AS closed_at,
               c.rating, c.state AS own_state, coalesce(o.id, c.id) AS handled_id
        FROM case_contact k JOIN case_file c ON c.id = k.case_id
        LEFT JOIN case_file o ON o.id = c.merged_into
        WHERE k.openid = :o AND c.city_id = :c
        ORDER BY c.received_at DESC, c.id DESC LIMIT :l"""), {"o": openid, "c": city.id, "l": limit}).mappings().all()
    out = []
    for r in rows:
        reply = None
        if r["state"] == "closed":
            reply = conn.execute(text("""SELECT note FROM case_event WHERE case_id = :c AND kind = 'feedback'
                                         AND note IS NOT NULL ORDER BY at DESC, id DESC LIMIT 1"""),
                                 {"c": r["handled_id"]}).scalar()
        out.append({"case_no": r["case_no"], "category": r["category_name"], "address": r["address"],
                    "received_at": wf._iso(r["received_at"]), "closed_at": wf._iso(r["closed_at"]),
                    "state": r["state"], "status": lcit.PUBLIC_STATE.get(r["state"], r["state"]),
                    "merged": r["own_state"] == "merged", "reply": reply,
                    "rating": lcit.RATINGS.get(r["rating"]) if r["rating"] else None,
                    "can_rate": r["own_state"] == "closed" and r["rating"] is None})
    return out


def my_cases_text(conn: Connection, city: CityInfo, openid: str) -> str:
    cases = my_cases(conn, city, openid, limit=int(dialogue_config()["max_cases_listed"]))
    if not cases:
        return "您还没有通过本公众号反映过问题。点「我要反映」开始。"
    cal = lcal.calendar()
    lines = ["您反映的问题："]
    for i, c in enumerate(cases, 1):
        at = cal.local(dt.datetime.fromisoformat(c["received_at"])).strftime("%m-%d %H:%M")
        lines.append(f"{i}. {c['case_no']}\n   {c['category']} · {at}\n   状态：{c['status'].split(' ')[0]}"
                     + ("（已并入同类问题办理）" if c["merged"] else ""))
        if c["reply"]:
            lines.append(f"   答复：{c['reply']}")
        if c["rating"]:
            lines.append(f"   您的评价：{c['rating']}")
        elif c["can_rate"]:
            lines.append("   请评价：回复“满意”“基本满意”或“不满意”")
    return "\n".join(lines)


def _rate_latest(conn, city, openid, rating: str) -> Reply:
    row = conn.execute(text("""
        SELECT c.id FROM case_contact k JOIN case_file c ON c.id = k.case_id
        WHERE k.openid = :o AND c.city_id = :c AND c.state = 'closed' AND c.rating IS NULL
        ORDER BY c.closed_at DESC, c.id DESC LIMIT 1"""), {"o": openid, "c": city.id}).first()
    if row is None:
        return Reply("您没有待评价的问题（问题办结后才能评价）。")
    out = rate(conn, city, row[0], rating)
    return Reply(f"感谢您的评价！案卷 {out['case_no']}：{out['rating']}。")


def rate(conn: Connection, city: CityInfo, case_id: int, rating: str, comment: str | None = None) -> dict:
    """Rate a citizen's own case (found by openid, so no query code): the rule of ``/public`` rate."""
    row = conn.execute(text("""
        SELECT id, case_no, state, received_at, closed_at, category_code, category_name, rating, query_code_hash,
               close_deadline_at, merged_into
        FROM case_file WHERE id = :i AND city_id = :c"""), {"i": case_id, "c": city.id}).mappings().first()
    if row is None:
        raise InputError(f"no case {case_id}")
    return lcit.rate_row(conn, dict(row), rating, comment)


# -- the account's custom menu -------------------------------------------------------------------------

def menu(acct: Account, public_base: str | None) -> dict:
    """The custom menu whose CLICK keys the dialogue knows, and 我的诉求 opening the H5 page through
    the sign-in (``public_base``: the service's public address)."""
    keys = {v: k for k, v in dialogue_config()["menu"].items()}
    buttons = [{"type": "click", "name": "我要反映", "key": keys["report"]},
               {"type": "click", "name": "查询进度", "key": keys["query"]}]
    sub = [{"type": "click", "name": "便民公告", "key": keys["notices"]}]
    if public_base:
        sub.append({"type": "view", "name": "我的诉求",
                    "url": public_base.rstrip("/") + f"/wechat/{acct.city}/oauth/start?next=/public"})
    buttons.append({"name": "便民服务", "sub_button": sub})
    return {"button": buttons}


def create_menu(acct: Account, engine) -> dict:
    """Create the account's menu (POST /cgi-bin/menu/create)."""
    body = menu(acct, settings.wechat().public_base)
    client(acct, engine).post("menu/create", data=body)
    return body


# -- the H5 page's sign-in (web authorisation, snsapi_base) --------------------------------------------

def oauth(acct: Account, redirect_uri: str, state: str = ""):
    from wechatpy.oauth import WeChatOAuth

    o = WeChatOAuth(acct.app_id, acct.secret, redirect_uri, scope="snsapi_base", state=state)
    o.API_BASE_URL = settings.wechat().api_base.rstrip("/") + "/"
    o.OAUTH_BASE_URL = settings.wechat().oauth_base.rstrip("/") + "/"
    return o


def openid_for_code(acct: Account, code: str, redirect_uri: str) -> str:
    """Exchange an authorisation code for the openid (sns/oauth2/access_token): a call to WeChat,
    made before any database connection is taken."""
    from wechatpy.exceptions import WeChatOAuthException

    if not code or len(code) > 200:
        raise InputError("the authorisation code is missing")
    try:
        res = oauth(acct, redirect_uri).fetch_access_token(code)
    except WeChatOAuthException as e:
        raise InputError(f"WeChat refused the authorisation code ({e.errcode})") from None
    openid = str(res.get("openid") or "")
    if not openid or len(openid) > 80:
        raise InputError("WeChat answered no openid")
    return openid


def open_session(conn: Connection, city: CityInfo, openid: str) -> str:
    """A session of the H5 page for ``openid``; returns its token (kept by the browser as a cookie;
    only its hash is stored). Expired sessions are removed on the way."""
    token = secrets.token_urlsafe(32)
    conn.execute(text("""INSERT INTO wechat_session (token_hash, city_id, openid, expires_at)
                         VALUES (:h, :c, :o, now() + make_interval(days => :d))"""),
                 {"h": hashlib.sha256(token.encode()).hexdigest(), "c": city.id, "o": openid,
                  "d": settings.wechat().session_days})
    conn.execute(text("DELETE FROM wechat_session WHERE expires_at < now()"))
    return token


def session_openid(conn: Connection, city: CityInfo, token: str | None) -> str | None:
    if not token or len(token) > 100:
        return None
    return conn.execute(text("""SELECT openid FROM wechat_session WHERE token_hash = :h AND city_id = :c
                                AND expires_at > now()"""),
                        {"h": hashlib.sha256(token.encode()).hexdigest(), "c": city.id}).scalar()
