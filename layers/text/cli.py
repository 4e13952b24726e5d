"""``citygrid text …``: the commands (the parser lives in citygrid/cli.py; this runs them)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

from layers.core.errors import InputError
from layers.text import classify


def _cols(s: str | None, what: str) -> list[str]:
    cols = [c.strip() for c in (s or "").split(",") if c.strip()]
    if not cols:
        raise InputError(f"give {what}")
    return cols


def train(a, engine_factory) -> int:
    from layers.core import city as lcity

    tax = classify.taxonomy_terms(Path(a.taxonomy)) if a.taxonomy else None
    engine = engine_factory()
    city = None
    if a.city:
        with engine.connect() as conn:
            city = lcity.get_city(conn, a.city)
    if a.file:
        df = classify.read_table(Path(a.file))
        texts = classify.texts_of(df, _cols(a.text, "--text COL[,COL]"))
        label = (a.label or "").strip()
        if not label:
            raise InputError("give --label COL")
        if label not in df.columns:
            raise InputError(f"no column '{label}'; the file has: {', '.join(map(str, df.columns))}")
        labels = df[label].tolist()
        name = a.name or (city.slug if city else None)
        if not name:
            raise InputError("give --name NAME for the model")
        params = {"file": Path(a.file).name, "text": a.text, "label": label, "taxonomy": bool(tax)}
    else:
        if city is None:
            raise InputError("give a FILE (with --text and --label) or --city SLUG")
        with engine.connect() as conn:
            texts, labels = classify.city_training_set(conn, city.id, level=a.level)
        n_all = len(texts)
        texts, labels, dropped = classify.drop_templates(texts, labels)
        if dropped:
            print(f"{dropped} of {n_all} closed cases left out: their text is a template repeated word for word")
        if not texts:
            raise InputError(f"city {city.slug} has no closed cases with a text of their own to learn from "
                             f"({n_all} closed cases, {dropped} with a template text)")
        name = a.name or city.slug
        params = {"city_cases": True, "level": a.level, "taxonomy": bool(tax)}
    print(f"training '{name}' on {len(texts)} texts …", flush=True)
    if a.folds < 2 or a.folds > 20:
        raise InputError("--folds must be 2..20")
    model = classify.train(texts, labels, taxonomy=tax, cv=not a.no_cv, folds=a.folds, log=print)
    if model.metrics.get("left_out_classes"):
        print(f"classes with fewer than {classify.MIN_PER_CLASS} texts left out: "
              f"{', '.join(model.metrics['left_out_classes'][:20])}")
    with engine.begin() as conn:
        v = classify.save(conn, model, name=name, city_id=city.id if city else None, params=params)
    mf = model.metrics.get("macro_f1")
    print(f"model '{name}' version {v} stored: {len(model.labels)} classes, {model.metrics['n']} texts"
          + (f", cross-validated macro-F1 {mf}" if mf is not None else ""))
    return 0


def classify_file(a, engine_factory) -> int:
    df = classify.read_table(Path(a.file))
    texts = classify.texts_of(df, _cols(a.text, "--text COL[,COL]"))
    with engine_factory().connect() as conn:
        model = classify.load(conn, a.model, version=a.version, any_city=True)
    top = model.predict(texts, k=1) if texts else []
    out = df.copy()
    out["label"] = [t[0][0] for t in top]
    out["probability"] = [t[0][1] for t in top]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(a.out, index=False, encoding="utf-8-sig")
    print(f"{len(out)} rows classified with '{model.name}' v{model.version} → {a.out}")
    return 0


def models(a, engine_factory) -> int:
    with engine_factory().connect() as conn:
        rows = classify.list_models(conn)
    for r in rows:
        print(f"{r['name']:<24} {r['city'] or '-':<10} v{r['version']:<4} {r['created_at'][:19]} "
              f"n={r['n']} classes={r['classes']} macro-F1={r['macro_f1']}")
    if not rows:
        print("no text models yet: citygrid text train …")
    return 0


def recurring(a, engine_factory) -> int:
    from layers.core import city as lcity
    from layers.text import recurring as rec

    until = dt.date.fromisoformat(a.until) if a.until else None
    with engine_factory().begin() as conn:
        city = lcity.get_city(conn, a.city)
        res = rec.run(conn, city, until=until, days=a.days)
    print(f"{res['cases']} cases {res['window_start']} – {res['window_end']}: {len(res['groups'])} recurring groups "
          f"({res['seconds']} s; {res['template_cases']} cases with a template text left out)")
    for g in res["groups"][:a.top]:
        print(f"  heat {g['heat']:6.2f}  {g['n_cases']:3d} cases  {g['days']:4.1f} days  {g['category_name'] or ''}  "
              f"{g['representative'][:40]}")
    return 0


def replies(a, engine_factory) -> int:
    from layers.text import replies as rep

    df = classify.read_table(Path(a.file))
    if a.calibrate:
        doc = rep.calibrate(df, message=_cols(a.message, "--message"), reply=a.reply, source=Path(a.file).name)
        print(f"calibrated on {doc['n']} replies: raw relevance p10 {doc['relevance_raw']['q10']}, "
              f"median {doc['relevance_raw']['q50']}, p90 {doc['relevance_raw']['q90']}")
    res = rep.score_frame(df, message=_cols(a.message, "--message"), reply=a.reply, message_time=a.message_time,
                          reply_time=a.reply_time)
    s = res["scores"]
    print(f"{len(s)} replies; weak (score < {res['threshold']}): {int(s['weak'].sum())}")
    for col in ("relevance", "completeness", "timeliness", "score"):
        q = np.nanpercentile(s[col].to_numpy(float), [10, 25, 50, 75, 90])
        print(f"  {col:<12} mean {np.nanmean(s[col]):.3f}  p10 {q[0]:.3f} p25 {q[1]:.3f} median {q[2]:.3f} "
              f"p75 {q[3]:.3f} p90 {q[4]:.3f}")
    print("  score histogram (0–1 by 0.1):", json.dumps(res["histogram"]))
    if a.out:
        s.to_csv(a.out, index=False)
        print(f"scores → {a.out}")
    return 0


def run(a, engine_factory) -> int:
    return {"train": train, "classify": classify_file, "models": models, "recurring": recurring,
            "replies": replies}[a.action](a, engine_factory)
