"""Classification and routing of case texts.

The model: jieba words and character 1–3-grams, each weighted by TF-IDF (sublinear), optionally the
label taxonomy as extra evidence (how many of each class's 2nd/3rd-level label words the text holds),
and a linear SVM whose scores are turned into probabilities by sigmoid calibration
(``CalibratedClassifierCV``). Judged by stratified k-fold cross-validation (macro-F1, accuracy, and
the same folds for a stratified random guess: the chance level). Models are stored in ``text_model``
(migration 0021) with their metrics, one version per training, per name and city.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC
from sqlalchemy import Connection, text

from layers.core.errors import InputError, NotFound
from layers.text import segment

#: A class needs this many examples to be learnt and cross-validated (5 folds, 3 calibration folds).
MIN_PER_CLASS = 5
FOLDS = 5
#: Cross-validation of a very large training set runs on a stratified sample of this size.
CV_SAMPLE = 20_000
SEED = 0


# -- features ------------------------------------------------------------------------------------

def frame(texts) -> pd.DataFrame:
    raw = [segment.clean(t).replace(" ", "") for t in texts]
    return pd.DataFrame({"raw": raw, "words": [segment.joined(t) for t in raw]})


def _split(s: str) -> list[str]:
    return s.split()


class TaxonomyFeatures(BaseEstimator, TransformerMixin):
    """Per class of the taxonomy: log(1 + how many of its label words occur in the text)."""

    def __init__(self, terms: dict[str, list[str]] | None = None):
        self.terms = terms

    def fit(self, X, y=None):
        self.classes_ = sorted(self.terms or {})
        return self

    def transform(self, X):
        raw = list(X)
        out = np.zeros((len(raw), len(self.classes_)), dtype=np.float64)
        for j, c in enumerate(self.classes_):
            ts = self.terms[c]
            for i, s in enumerate(raw):
                out[i, j] = sum(1 for t in ts if t in s)
        return sp.csr_matrix(np.log1p(out))


def taxonomy_terms(path: Path) -> dict[str, list[str]]:
    """First-level class → the words of its second and third level labels (≥ 2 characters; words that
    belong to more than a third of the classes are dropped: they tell nothing)."""
    df = read_table(Path(path))
    cols = list(df.columns)
    if len(cols) < 2:
        raise InputError("the taxonomy file needs a first-level column and at least one lower level")
    terms: dict[str, set[str]] = {}
    for row in df.itertuples(index=False):
        top = segment.clean(row[0]).replace(" ", "")
        if not top:
            continue
        bag = terms.setdefault(top, set())
        for v in row[1:]:
            v = segment.clean(v).replace(" ", "")
            if len(v) >= 2 and v != "其他":
                bag.add(v)
                bag.update(w for w in segment.words(v) if len(w) >= 2)
    n = len(terms)
    df_count: dict[str, int] = {}
    for bag in terms.values():
        for t in bag:
            df_count[t] = df_count.get(t, 0) + 1
    return {c: sorted(t for t in bag if df_count[t] <= max(1, n // 3)) for c, bag in terms.items()}


def build_pipeline(n: int, terms: dict[str, list[str]] | None = None, calib_folds: int = 3) -> Pipeline:
    min_df = 2 if n >= 2000 else 1
    parts = [
        ("words", TfidfVectorizer(tokenizer=_split, token_pattern=None, lowercase=False, sublinear_tf=True,
                                  ngram_range=(1, 2) if n < 20_000 else (1, 1), min_df=min_df, dtype=np.float32),
         "words"),
        ("chars", TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=min_df,
                                  max_features=300_000, dtype=np.float32), "raw"),
    ]
    if terms:
        parts.append(("taxonomy", TaxonomyFeatures(terms), "raw"))
    svm = LinearSVC(C=1.0)
    calib_folds = 2 if n >= 20_000 else calib_folds  # large sets: two calibration folds (half the fits)
    return Pipeline([("features", ColumnTransformer(parts)),
                     ("clf", CalibratedClassifierCV(svm, method="sigmoid", cv=calib_folds))])


# -- training and judging ------------------------------------------------------------------------

def prepare(texts, labels) -> tuple[list[str], np.ndarray, list[str]]:
    """Drop empty texts and classes with fewer than MIN_PER_CLASS examples; say which."""
    t = [segment.clean(x) for x in texts]
    y = np.array([segment.clean(v) for v in labels], dtype=object)
    keep = np.array([bool(a) and bool(b) for a, b in zip(t, y, strict=True)])
    t = [x for x, k in zip(t, keep, strict=True) if k]
    y = y[keep]
    vals, counts = np.unique(y, return_counts=True) if len(y) else (np.array([]), np.array([]))
    rare = sorted(str(v) for v, c in zip(vals, counts, strict=True) if c < MIN_PER_CLASS)
    ok = ~np.isin(y, rare)
    t = [x for x, k in zip(t, ok, strict=True) if k]
    y = y[ok]
    if len(np.unique(y)) < 2:
        raise InputError(f"need at least 2 classes with {MIN_PER_CLASS}+ labelled texts each "
                         f"(got {len(y)} usable texts in {len(np.unique(y))} class(es))")
    return t, y.astype(str), rare


def cross_validate(X: pd.DataFrame, y: np.ndarray, terms=None, *, folds: int = FOLDS, seed: int = SEED) -> dict:
    """Stratified k-fold: macro-F1 and accuracy of the model, and of a stratified random guess (chance)."""
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    pred = np.empty(len(y), dtype=object)
    guess = np.empty(len(y), dtype=object)
    per_fold = []
    for tr, te in skf.split(X, y):
        m = build_pipeline(len(tr), terms).fit(X.iloc[tr], y[tr])
        pred[te] = m.predict(X.iloc[te])
        guess[te] = DummyClassifier(strategy="stratified", random_state=seed).fit(X.iloc[tr], y[tr]).predict(X.iloc[te])
        per_fold.append(f1_score(y[te], pred[te], average="macro"))
    labels = sorted(np.unique(y))
    f1s = f1_score(y, pred.astype(str), labels=labels, average=None)
    return {"macro_f1": round(float(np.mean(per_fold)), 4), "macro_f1_std": round(float(np.std(per_fold)), 4),
            "macro_f1_pooled": round(float(f1_score(y, pred.astype(str), average="macro")), 4),
            "accuracy": round(float(accuracy_score(y, pred.astype(str))), 4),
            "chance_macro_f1": round(float(f1_score(y, guess.astype(str), average="macro")), 4),
            "per_class_f1": {c: round(float(f), 4) for c, f in zip(labels, f1s, strict=True)},
            "folds": folds, "n": int(len(y))}


@dataclass
class TextModel:
    pipeline: Pipeline
    labels: list[str]
    taxonomy: bool
    metrics: dict = field(default_factory=dict)
    name: str = ""
    version: int | None = None

    def predict(self, texts, k: int = 3) -> list[list[tuple[str, float]]]:
        """The top ``k`` classes of each text with their probabilities."""
        P = self.proba(frame(texts))
        cls = self.pipeline.classes_
        top = np.argsort(-P, axis=1)[:, :k]
        return [[(str(cls[j]), round(float(P[i, j]), 4)) for j in row] for i, row in enumerate(top)]

    def proba(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated probabilities, as ``pipeline.predict_proba`` computes them, in one sparse product:
        the ensemble's SVMs stacked (each calibrated class: expit(-(a·d + b)), normalised per SVM,
        averaged over the SVMs). scikit-learn's own path checks its input per class and per SVM
        (~20 ms a text); this one keeps the classification of one case on intake in a few ms."""
        clf = self.pipeline.named_steps["clf"]
        if len(clf.classes_) < 3:
            return self.pipeline.predict_proba(X)
        if not hasattr(self, "_stack"):
            W = np.vstack([c.estimator.coef_ for c in clf.calibrated_classifiers_]).T.astype(np.float64)
            b = np.concatenate([c.estimator.intercept_ for c in clf.calibrated_classifiers_])
            A = np.array([cal.a_ for c in clf.calibrated_classifiers_ for cal in c.calibrators])
            B = np.array([cal.b_ for c in clf.calibrated_classifiers_ for cal in c.calibrators])
            self._stack = (W, b, A, B, len(clf.calibrated_classifiers_))
        W, b, A, B, m = self._stack
        D = np.vstack([self._scores(X, i) for i in range(len(X))]) + b if len(X) else np.zeros((0, len(b)))
        P = 1.0 / (1.0 + np.exp(A * D + B))
        K = len(clf.classes_)
        P = P.reshape(len(X), m, K)
        s = P.sum(axis=2, keepdims=True)
        P = np.where(s == 0, 1.0 / K, P / np.where(s == 0, 1, s))
        return P.mean(axis=1)

    def _parts(self) -> list:
        """The feature blocks in the ColumnTransformer's order: (column, offset, vectoriser or transformer)."""
        if not hasattr(self, "_blocks"):
            ct = self.pipeline.named_steps["features"]
            out, off = [], 0
            for _, est, col in ct.transformers_:
                if isinstance(est, str):
                    continue
                if isinstance(est, TfidfVectorizer):
                    n = len(est.vocabulary_)
                    out.append((col, off, ("tfidf", est.build_analyzer(), est.vocabulary_,
                                           np.asarray(est.idf_, dtype=np.float64), est.sublinear_tf)))
                else:
                    n = len(est.classes_)
                    out.append((col, off, ("other", est)))
                off += n
            self._blocks = out
        return self._blocks

    def _scores(self, X: pd.DataFrame, i: int) -> np.ndarray:
        """One text's SVM scores (without intercepts): TF-IDF computed as the vectorisers do (sublinear tf,
        idf, l2 norm per block), gathered rows of the stacked weights."""
        W = self._stack[0]
        d = np.zeros(W.shape[1])
        for col, off, spec in self._parts():
            doc = X[col].iat[i]
            if spec[0] == "tfidf":
                _, analyze, vocab, idf, sub = spec
                counts: dict[int, int] = {}
                for tok in analyze(doc):
                    j = vocab.get(tok)
                    if j is not None:
                        counts[j] = counts.get(j, 0) + 1
                if not counts:
                    continue
                idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
                tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
                v = (1.0 + np.log(tf) if sub else tf) * idf[idx]
                v /= np.sqrt((v * v).sum())
                d += v @ W[off + idx]
            else:
                f = np.asarray(spec[1].transform([doc]).todense()).ravel()
                d += f @ W[off:off + len(f)]
        return d

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        joblib.dump({"pipeline": self.pipeline, "labels": self.labels, "taxonomy": self.taxonomy}, buf, compress=3)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, b: bytes, **kw) -> TextModel:
        d = joblib.load(io.BytesIO(b))
        return cls(pipeline=d["pipeline"], labels=d["labels"], taxonomy=d["taxonomy"], **kw)


def train(texts, labels, *, taxonomy: dict[str, list[str]] | None = None, cv: bool = True,
          folds: int = FOLDS, log=lambda *_: None) -> TextModel:
    """Fit a model on all the texts; with ``cv`` judge it first by stratified cross-validation. With a
    taxonomy whose first level covers the labels, both variants are cross-validated and the taxonomy
    kept only if it raises the macro-F1."""
    t, y, rare = prepare(texts, labels)
    X = frame(t)
    metrics: dict = {"n": len(y), "classes": {c: int(n) for c, n in zip(*np.unique(y, return_counts=True), strict=True)},
                     "left_out_classes": rare, "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    terms = None
    if taxonomy:
        covered = sorted(set(y) & set(taxonomy))
        if covered:
            terms = {c: taxonomy[c] for c in sorted(set(taxonomy))}
        else:
            log("the taxonomy's first level names none of the labels: not used")
    use_tax = False
    if cv:
        Xc, yc = X, y
        if len(y) > CV_SAMPLE:
            rng = np.random.default_rng(SEED)
            idx = np.sort(_stratified_sample(y, CV_SAMPLE, rng))
            Xc, yc = X.iloc[idx].reset_index(drop=True), y[idx]
            metrics["cv_sample"] = CV_SAMPLE
        metrics["cv"] = cross_validate(Xc, yc, None, folds=folds)
        log(f"cross-validated ({folds} folds, stratified, n={len(yc)}): macro-F1 {metrics['cv']['macro_f1']} "
            f"± {metrics['cv']['macro_f1_std']}, accuracy {metrics['cv']['accuracy']}, "
            f"chance macro-F1 {metrics['cv']['chance_macro_f1']}")
        if terms:
            metrics["cv_with_taxonomy"] = cross_validate(Xc, yc, terms, folds=folds)
            use_tax = metrics["cv_with_taxonomy"]["macro_f1"] > metrics["cv"]["macro_f1"]
            log(f"with the label taxonomy as evidence: macro-F1 {metrics['cv_with_taxonomy']['macro_f1']} "
                f"→ taxonomy {'kept' if use_tax else 'not kept'}")
    metrics["taxonomy_used"] = use_tax
    metrics["macro_f1"] = (metrics["cv_with_taxonomy"] if use_tax else metrics["cv"])["macro_f1"] if cv else None
    t0 = dt.datetime.now()
    pipe = build_pipeline(len(y), terms if use_tax else None).fit(X, y)
    metrics["fit_seconds"] = round((dt.datetime.now() - t0).total_seconds(), 2)
    return TextModel(pipeline=pipe, labels=sorted(np.unique(y)), taxonomy=use_tax, metrics=metrics)


def _stratified_sample(y: np.ndarray, n: int, rng) -> np.ndarray:
    out = []
    frac = n / len(y)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = max(MIN_PER_CLASS, int(round(len(idx) * frac)))
        out.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.concatenate(out)


# -- files ---------------------------------------------------------------------------------------

def read_table(path: Path) -> pd.DataFrame:
    """A CSV (UTF-8, UTF-8 with BOM or GB18030) or XLSX file, every column as text."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no file {path}")
    suf = path.suffix.lower()
    try:
        if suf in (".xlsx", ".xlsm"):
            return pd.read_excel(path, dtype=str)
        if suf in (".csv", ".txt", ".tsv"):
            for enc in ("utf-8-sig", "gb18030"):
                try:
                    return pd.read_csv(path, dtype=str, encoding=enc, sep="\t" if suf == ".tsv" else ",",
                                       keep_default_na=False)
                except UnicodeDecodeError:
                    continue
            raise InputError(f"{path.name}: neither UTF-8 nor GB18030")
    except (ValueError, pd.errors.ParserError) as e:
        raise InputError(f"cannot read {path.name}: {e}") from None
    raise InputError(f"{path.name}: give a .csv or .xlsx file")


def texts_of(df: pd.DataFrame, cols: list[str]) -> list[str]:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError(f"no column {', '.join(repr(c) for c in missing)}; the file has: {', '.join(map(str, df.columns))}")
    parts = [df[c].fillna("").astype(str).map(segment.clean) for c in cols]
    out = parts[0]
    for p in parts[1:]:
        out = out.str.cat(p, sep="。")
    return out.tolist()


# -- the database --------------------------------------------------------------------------------

def save(conn: Connection, model: TextModel, *, name: str, city_id: int | None = None,
         params: dict | None = None) -> int:
    """Store a new version of model ``name`` (for a city, or for none); returns the version."""
    name = (name or "").strip()
    if not name or len(name) > 80:
        raise InputError("a model needs a name of 1-80 characters")
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('text_model:' || :n))"), {"n": name})
    v = conn.execute(text("""SELECT coalesce(max(version), 0) + 1 FROM text_model
                             WHERE name = :n AND city_id IS NOT DISTINCT FROM :c"""),
                     {"n": name, "c": city_id}).scalar_one()
    metrics = dict(model.metrics, labels=model.labels, params=params or {})
    conn.execute(text("""INSERT INTO text_model (name, city_id, version, labels, metrics, model)
                         VALUES (:n, :c, :v, CAST(:l AS jsonb), CAST(:m AS jsonb), :b)"""),
                 {"n": name, "c": city_id, "v": v, "l": json.dumps(model.labels, ensure_ascii=False),
                  "m": json.dumps(metrics, ensure_ascii=False, default=str), "b": model.to_bytes()})
    model.name, model.version = name, v
    return v


_cache: dict[tuple, TextModel] = {}
_cache_lock = threading.Lock()


def load(conn: Connection, name: str, *, city_id: int | None = None, version: int | None = None,
         any_city: bool = False) -> TextModel:
    """The newest (or the given) version of model ``name``; cached per process by its row id."""
    row = conn.execute(text("""
        SELECT id, version, metrics FROM text_model WHERE name = :n
          AND (:any OR city_id IS NOT DISTINCT FROM :c) AND (CAST(:v AS int) IS NULL OR version = :v)
        ORDER BY (city_id IS NOT DISTINCT FROM :c) DESC, version DESC LIMIT 1"""),
        {"n": name, "c": city_id, "v": version, "any": any_city}).first()
    if row is None:
        raise NotFound(f"no text model '{name}'" + (f" version {version}" if version else ""))
    key = (row[0],)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    b = conn.execute(text("SELECT model FROM text_model WHERE id = :i"), {"i": row[0]}).scalar_one()
    m = TextModel.from_bytes(bytes(b), metrics=row[2], name=name, version=row[1])
    with _cache_lock:
        _cache[key] = m
    return m


def list_models(conn: Connection, city_id: int | None = None) -> list[dict]:
    rows = conn.execute(text("""
        SELECT m.name, c.slug, m.version, m.created_at, m.metrics->'macro_f1', m.metrics->'n', m.labels
        FROM text_model m LEFT JOIN city c ON c.id = m.city_id
        WHERE CAST(:c AS int) IS NULL OR m.city_id = :c OR m.city_id IS NULL
        ORDER BY m.name, m.version"""), {"c": city_id}).all()
    return [{"name": r[0], "city": r[1], "version": r[2], "created_at": r[3].isoformat(), "macro_f1": r[4],
             "n": r[5], "classes": len(r[6] or [])} for r in rows]


# -- the city's own cases ------------------------------------------------------------------------

def drop_templates(texts: list[str], labels: list[str], *, share: float = 0.01, least: int = 50
                   ) -> tuple[list[str], list[str], int]:
    """Leave out texts repeated word for word by more than ``share`` of the set (and more than ``least``):
    a form's stock text (the demo's synthetic cases all say "合成数据 synthetic demo case") tells nothing."""
    keys = [segment.clean(t).replace(" ", "") for t in texts]
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    limit = max(least, share * len(keys))
    keep = [counts[k] <= limit for k in keys]
    return ([t for t, k in zip(texts, keep, strict=True) if k], [lab for lab, k in zip(labels, keep, strict=True) if k],
            keep.count(False))


def city_training_set(conn: Connection, city_id: int, *, level: int = 2) -> tuple[list[str], list[str]]:
    """Texts (title, description) of the city's closed cases and their class code cut to ``level``
    (1: 2 characters, 2: 4, 3: 6). Merged cases (并单) count once."""
    if level not in (1, 2, 3):
        raise InputError("level must be 1, 2 or 3")
    rows = conn.execute(text("""
        SELECT concat_ws('。', nullif(title, ''), nullif(description, '')), left(category_code, :k)
        FROM case_file WHERE city_id = :c AND state = 'closed' AND merged_into IS NULL
          AND coalesce(description, title, '') <> ''"""), {"c": city_id, "k": 2 * level}).all()
    return [r[0] for r in rows], [r[1] for r in rows]
