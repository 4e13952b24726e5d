"""Routing on intake (智能分拨): the top classes of a text with their probabilities, the department
each would go to, and automatic dispatch only at or above a configured confidence."""

from __future__ import annotations

from sqlalchemy import Connection, text

from citygrid import settings
from layers.cases import workflow as wf
from layers.cases.classes import catalog
from layers.core.city import CityInfo
from layers.core.errors import Conflict, InputError, NotFound
from layers.text import classify

MAX_TEXT = 5000


def model_for(conn: Connection, city: CityInfo) -> classify.TextModel:
    name = settings.text().model or city.slug
    try:
        return classify.load(conn, name, city_id=city.id, any_city=bool(settings.text().model))
    except NotFound:
        raise NotFound(f"城市 {city.name} 还没有文本分类模型 no text model '{name}' for this city: "
                       f"train one with `citygrid text train --city {city.slug}`") from None


def _department(conn: Connection, city: CityInfo, code: str | None) -> dict | None:
    if not code:
        return None
    r = conn.execute(text("SELECT id, code, name FROM department WHERE city_id = :c AND code = :d AND active"),
                     {"c": city.id, "d": code}).first()
    return {"id": r[0], "code": r[1], "name": r[2]} if r else None


def describe(conn: Connection, city: CityInfo, label: str) -> dict:
    """A predicted label as the catalog knows it: name, path and owner department (none for labels that
    are not catalog codes, e.g. a model trained on another taxonomy)."""
    item = catalog().get(label)
    if item is None:
        return {"code": label, "name": label, "path": [label], "in_catalog": False, "department": None}
    dep = _department(conn, city, item.get("department"))
    return {"code": label, "name": item["name"], "path": item.get("path", [item["name"]]), "in_catalog": True,
            "kind": item.get("kind"), "department": dep}


def suggest(conn: Connection, city: CityInfo, body: str, *, address: str | None = None, k: int = 3) -> dict:
    body = (body or "").strip()
    if not body:
        raise InputError("give the text of the case (title and/or description)")
    if len(body) > MAX_TEXT:
        raise InputError(f"the text is longer than {MAX_TEXT} characters")
    m = model_for(conn, city)
    top = m.predict([body], k=k)[0]
    classes = [dict(describe(conn, city, lab), probability=p) for lab, p in top]
    threshold = settings.text().auto_dispatch_confidence
    first = classes[0]
    out = {"model": {"name": m.name, "version": m.version, "macro_f1": (m.metrics or {}).get("macro_f1")},
           "classes": classes, "proposed_department": first["department"], "threshold": threshold,
           "confident": first["probability"] >= threshold}
    from layers.text import places

    out["places"] = places.find(conn, city, " ".join(x for x in (address, body) if x))[:3]
    return out


def auto_dispatch(conn: Connection, city: CityInfo, case_id: int, actor) -> dict:
    """Dispatch an accepted case to its proposed department when the text model agrees with the case's
    class at or above the configured confidence; otherwise leave it to the operator and say why."""
    row = conn.execute(text("""SELECT city_id, state, category_code, concat_ws('。', nullif(title, ''),
                                      nullif(description, '')) FROM case_file WHERE id = :i"""),
                       {"i": case_id}).first()
    if row is None or row[0] != city.id:
        raise NotFound(f"no case {case_id} in {city.slug}")
    _, state, cat, body = row
    if state != "accepted":
        raise Conflict(f"case {case_id} is {state}: only an accepted case is dispatched automatically")
    if not (body or "").strip():
        return {"dispatched": False, "reason": "案件没有文字 the case has no text"}
    m = model_for(conn, city)
    (label, p), = m.predict([body], k=1)[0][:1]
    threshold = settings.text().auto_dispatch_confidence
    agrees = cat.startswith(label) or label.startswith(cat)
    if p < threshold or not agrees:
        why = (f"置信度 {p:.2f} 低于阈值 {threshold:.2f} confidence below the threshold" if p < threshold
               else f"模型类别 {label} 与案件类别 {cat} 不一致 the model's class differs from the case's")
        return {"dispatched": False, "label": label, "probability": p, "threshold": threshold, "reason": why}
    res = wf.transition(conn, case_id, "dispatch", actor,
                        note=f"智能分拨 automatic dispatch: {label} p={p:.2f} (model {m.name} v{m.version})")
    return {"dispatched": True, "label": label, "probability": p, "threshold": threshold, **res}


def queue(conn: Connection, city: CityInfo, user, *, limit: int = 50, offset: int = 0) -> dict:
    """The needs-location queue with, per case, the places found in its text and its top 3 classes
    (classes only when the city has a model)."""
    from layers.text import places

    res = places.queue(conn, city, user, limit=limit, offset=offset,
                       min_confidence=settings.text().place_min_confidence)
    try:
        m = model_for(conn, city)
    except NotFound:
        res["model"] = None
        return res
    texts = [c["text"] for c in res["cases"]]
    tops = m.predict(texts, k=3) if texts else []
    threshold = settings.text().auto_dispatch_confidence
    for c, top in zip(res["cases"], tops, strict=True):
        c["classes"] = [dict(describe(conn, city, lab), probability=p) for lab, p in top]
        c["proposed_department"] = c["classes"][0]["department"]
        c["confident"] = c["classes"][0]["probability"] >= threshold
    res["model"] = {"name": m.name, "version": m.version}
    return res
