"""Quality of departments' replies (答复质量): relevance, completeness and timeliness, each 0–1.

- **Relevance** — cosine similarity of the complaint and the reply (TF-IDF of character bigrams fitted
  on the batch scored together, so boilerplate common to all replies weighs little), mapped to 0–1
  between the 10th and 90th percentile of the calibration set (``data/reply_calibration.json``,
  computed from messages_with_replies.csv: 2,816 real replies; ``citygrid text replies FILE --calibrate``).
- **Completeness** — does the reply say what was done (action cues: 经调查、现场、核实、协调、整改 …),
  the result (已解决、已完成、已修复、已拆除 …) and when (a date or time phrase: 2019年5月9日、近日、
  下一步、预计 …)? One third each; a reply shorter than ``SHORT`` characters scores half.
- **Timeliness** — working days from the message to the reply: 1 up to ``reply_timely_days``, 0 from
  ``reply_late_days``, linear between. Working days come from the working-time calendar when it holds
  the years; otherwise Monday–Friday (the year's holidays not configured: stated per reply).

The score is the mean of the three; a reply below ``CITYGRID_TEXT_REPLY_WEAK_SCORE`` is flagged, with
the parts below 1/3 named as reasons.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sqlalchemy import Connection, text

from citygrid import settings
from layers.core import publication
from layers.core.city import CityInfo
from layers.core.errors import InputError
from layers.text import segment

DATA = Path(__file__).resolve().parent / "data"
SHORT = 30
ACTION = re.compile(r"经?调查|核实|核查|现场|实地|走访|组织|协调|督促|责令|约谈|执法|查处|处理|整改|维修|修复|清理|清运|"
                    r"安排|联系|对接|召开|会同|排查|检查|巡查|回访|沟通|答复如下|落实")
RESULT = re.compile(r"已(?:经)?(?:解决|完成|修复|整改|清理|清除|拆除|恢复|办结|处理完毕|落实|安装|更换|到位|纳入|开通|退还|发放)|"
                    r"问题(?:已|得到)解决|整改到位|恢复正常|处理完毕|现已|目前已|已于|结果")
TIME = re.compile(r"\d{4}\s*年|\d{1,2}\s*月\s*\d{1,2}\s*日|\d{1,2}\s*月(?:底|初|中旬|份)|近日|日前|目前|下一步|预计|"
                  r"计划于|年底前|月底前|工作日内|\d+\s*天内|尽快|立即")


@lru_cache
def calibration() -> dict:
    p = DATA / "reply_calibration.json"
    if p.is_file():
        return json.loads(p.read_text(encoding="utf-8"))
    return {"relevance_raw": {"q10": 0.05, "q90": 0.45}, "source": "default (no calibration file)"}


def raw_relevance(messages: list[str], replies: list[str]) -> np.ndarray:
    m = [segment.clean(s).replace(" ", "") or "∅" for s in messages]
    r = [segment.clean(s).replace(" ", "") or "∅" for s in replies]
    vec = TfidfVectorizer(analyzer="char", ngram_range=(2, 2), sublinear_tf=True, dtype=np.float32)
    X = vec.fit_transform(m + r)
    A, B = X[:len(m)], X[len(m):]
    return np.asarray(A.multiply(B).sum(axis=1)).ravel().astype(float)


def completeness(reply: str) -> tuple[float, dict]:
    s = segment.clean(reply)
    parts = {"action": bool(ACTION.search(s)), "result": bool(RESULT.search(s)), "time": bool(TIME.search(s))}
    score = sum(parts.values()) / 3
    if len(s.replace(" ", "")) < SHORT:
        score *= 0.5
    return score, parts


def working_days(a: dt.datetime, b: dt.datetime) -> tuple[float, str]:
    """Working days from a to b: the calendar's when it holds the years, else Monday–Friday."""
    from layers.cases import calendar as lcal

    try:
        cal = lcal.calendar()
        if cal.complete_between(a, b):
            return cal.working_seconds_between(a, b) / (cal.hours_per_day * 3600), "calendar"
    except Exception:  # a year outside the calendar's range: weekdays below
        pass
    tz = dt.timezone(dt.timedelta(hours=8))
    la, lb = a.astimezone(tz), b.astimezone(tz)
    days = float(np.busday_count(la.date(), lb.date()))
    frac = (lb - dt.datetime.combine(lb.date(), dt.time(0), tz)).total_seconds() / 86400 - \
        (la - dt.datetime.combine(la.date(), dt.time(0), tz)).total_seconds() / 86400
    return max(days + frac, 0.0), "weekdays"


def timeliness(wdays: float | None) -> float:
    cfg = settings.text()
    if wdays is None or not np.isfinite(wdays):
        return np.nan
    if wdays <= cfg.reply_timely_days:
        return 1.0
    if wdays >= cfg.reply_late_days:
        return 0.0
    return float((cfg.reply_late_days - wdays) / (cfg.reply_late_days - cfg.reply_timely_days))


def score(messages: list[str], replies: list[str], asked: list, answered: list) -> pd.DataFrame:
    """Scores of each (message, reply) pair; times may be None (timeliness then not counted)."""
    cal = calibration()["relevance_raw"]
    raw = raw_relevance(messages, replies)
    rel = np.clip((raw - cal["q10"]) / max(cal["q90"] - cal["q10"], 1e-6), 0, 1)
    comp, cues, wd, basis = [], [], [], []
    for r, a, b in zip(replies, asked, answered, strict=True):
        c, parts = completeness(r)
        comp.append(c)
        cues.append(parts)
        if a is not None and b is not None and not pd.isna(a) and not pd.isna(b):
            w, how = working_days(a, b)
        else:
            w, how = np.nan, None
        wd.append(w)
        basis.append(how)
    tim = np.array([timeliness(w) for w in wd])
    parts = np.column_stack([rel, comp, tim])
    total = np.nanmean(parts, axis=1)
    weak_at = settings.text().reply_weak_score
    reasons = []
    for i in range(len(replies)):
        why = []
        if rel[i] < 1 / 3:
            why.append("答非所问 not about the complaint")
        if comp[i] < 1 / 3:
            why.append("未说明措施/结果/时间 says little of what was done, the result or when")
        if np.isfinite(tim[i]) and tim[i] < 1 / 3:
            why.append(f"答复迟缓 late ({wd[i]:.0f} working days)")
        reasons.append(why)
    return pd.DataFrame({"relevance_raw": raw.round(4), "relevance": rel.round(3), "completeness": np.round(comp, 3),
                         "action": [c["action"] for c in cues], "result": [c["result"] for c in cues],
                         "time": [c["time"] for c in cues], "working_days": np.round(wd, 2), "days_basis": basis,
                         "timeliness": np.round(tim, 3), "score": np.round(total, 3), "weak": total < weak_at,
                         "reasons": ["；".join(r) for r in reasons]})


def _parse_times(values) -> list:
    out = []
    tz = dt.timezone(dt.timedelta(hours=8))
    for v in values:
        t = pd.to_datetime(v, errors="coerce", format="mixed")
        out.append(None if pd.isna(t) else (t.to_pydatetime().replace(tzinfo=tz) if t.tzinfo is None
                                            else t.to_pydatetime()))
    return out


def score_frame(df: pd.DataFrame, *, message: list[str], reply: str, message_time: str | None,
                reply_time: str | None) -> dict:
    """Scores of a table of messages and replies (e.g. messages_with_replies.csv)."""
    from layers.text.classify import texts_of

    msgs = texts_of(df, message)
    reps = texts_of(df, [reply])
    asked = _parse_times(df[message_time]) if message_time and message_time in df.columns else [None] * len(df)
    answered = _parse_times(df[reply_time]) if reply_time and reply_time in df.columns else [None] * len(df)
    s = score(msgs, reps, asked, answered)
    s.insert(0, "row", np.arange(1, len(df) + 1))
    hist = np.histogram(s["score"].to_numpy(float), bins=10, range=(0, 1))[0].tolist()
    return {"scores": s, "threshold": settings.text().reply_weak_score, "histogram": hist}


def calibrate(df: pd.DataFrame, *, message: list[str], reply: str, source: str) -> dict:
    """The relevance anchors (10th, 90th percentile of the raw cosine) of a calibration table."""
    from layers.text.classify import texts_of

    raw = raw_relevance(texts_of(df, message), texts_of(df, [reply]))
    q10, q50, q90 = np.percentile(raw, [10, 50, 90])
    doc = {"relevance_raw": {"q10": round(float(q10), 4), "q50": round(float(q50), 4), "q90": round(float(q90), 4)},
           "n": int(len(raw)), "source": source, "computed": dt.date.today().isoformat()}
    (DATA / "reply_calibration.json").write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    calibration.cache_clear()
    return doc


def department_replies(conn: Connection, city: CityInfo, *, since: dt.date | None = None,
                       until: dt.date | None = None, weak_only: bool = True, limit: int = 100) -> dict:
    """Each department feedback (case_event 'feedback' with its note) of the period scored against its
    case's text; texts scrubbed of the callers' personal data."""
    if not 1 <= limit <= 1000:
        raise InputError("limit must be 1..1000")
    rows = conn.execute(text("""
        SELECT e.id, f.id, f.case_no, concat_ws('。', nullif(f.title, ''), nullif(f.description, '')), e.note,
               f.received_at, e.at, d.name, f.category_name
        FROM case_event e JOIN case_file f ON f.id = e.case_id LEFT JOIN department d ON d.id = e.department_id
        WHERE f.city_id = :c AND e.kind = 'feedback' AND coalesce(e.note, '') <> ''
          AND (CAST(:s AS date) IS NULL OR e.at >= CAST(:s AS date))
          AND (CAST(:u AS date) IS NULL OR e.at < CAST(:u AS date) + 1)
        ORDER BY e.at DESC LIMIT 5000"""), {"c": city.id, "s": since, "u": until}).all()
    if not rows:
        return {"scored": 0, "weak": 0, "threshold": settings.text().reply_weak_score, "replies": []}
    s = score([r[3] or "" for r in rows], [r[4] for r in rows], [r[5] for r in rows], [r[6] for r in rows])
    known = publication.contacts(conn, [r[1] for r in rows])
    out = []
    for r, (_, sc) in zip(rows, s.iterrows(), strict=True):
        if weak_only and not sc["weak"]:
            continue
        k = known.get(r[1], [])
        out.append({"event_id": r[0], "case_id": r[1], "case_no": r[2], "department": r[7], "category_name": r[8],
                    "replied_at": r[6].isoformat(), "score": float(sc["score"]), "relevance": float(sc["relevance"]),
                    "completeness": float(sc["completeness"]),
                    "timeliness": None if pd.isna(sc["timeliness"]) else float(sc["timeliness"]),
                    "working_days": None if pd.isna(sc["working_days"]) else float(sc["working_days"]),
                    "weak": bool(sc["weak"]), "reasons": sc["reasons"],
                    "complaint": (publication.scrub(r[3], k) or "")[:200], "reply": (publication.scrub(r[4], k) or "")[:300]})
        if len(out) >= limit:
            break
    return {"scored": len(rows), "weak": int(s["weak"].sum()), "threshold": settings.text().reply_weak_score,
            "replies": out}
