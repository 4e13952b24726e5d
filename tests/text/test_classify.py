"""Classification: cross-validation on the real labelled messages above chance, the model's round trip
through the database, the CLI's train and classify on a small CSV."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from layers.text import classify
from tests.text.conftest import zh_file

# Three made-up kinds of complaint, each said in several ways (a small labelled file of known truth).
PHRASES = {
    "路灯": ["路灯不亮", "路灯坏了晚上很黑", "这一段路灯一直不亮", "路灯杆倾斜", "小区门口路灯闪烁"],
    "噪声": ["夜间施工噪声很大", "工地晚上施工太吵", "广场舞声音扰民", "商铺音响噪声扰民", "半夜装修噪音"],
    "垃圾": ["垃圾桶满了没人清运", "路边堆放大量垃圾", "建筑垃圾乱倒", "垃圾发臭无人处理", "生活垃圾暴露"],
}
PLACES = ["人民路", "解放路", "长江路", "北京路", "秀山路", "中南小区", "东洲公园"]


def small_corpus(n_per_class: int = 12, seed: int = 1) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for lab, ph in PHRASES.items():
        for _ in range(n_per_class):
            texts.append(f"{rng.choice(PLACES)}附近{rng.choice(ph)}，请尽快处理。")
            labels.append(lab)
    return texts, labels


def test_cv_on_the_labelled_messages_beats_chance():
    df = classify.read_table(zh_file("labelled_messages.csv"))
    texts = classify.texts_of(df, ["留言主题", "留言详情"])
    y = df["一级分类"].astype(str).to_numpy()
    assert len(texts) == 246 and len(set(y)) == 7
    t, yy, rare = classify.prepare(texts, y)
    cv = classify.cross_validate(classify.frame(t), yy, folds=5)
    # Chance, computed here: a guess by the class shares has expected macro-F1 = 1/K; always the
    # largest class scores (2p/(1+p))/K. The model must clear the larger one by a wide margin.
    shares = pd.Series(yy).value_counts(normalize=True)
    k = len(shares)
    chance = max(1 / k, 2 * shares.iloc[0] / (1 + shares.iloc[0]) / k)
    assert cv["macro_f1"] > 3 * chance, (cv, chance)
    assert cv["chance_macro_f1"] < 2 * chance  # the stratified guess on the same folds is near chance
    assert cv["n"] == 246 and set(cv["per_class_f1"]) == set(y)


def test_model_round_trip_through_the_database(engine):
    texts, labels = small_corpus()
    m = classify.train(texts, labels, cv=False)
    probe = ["解放路的路灯晚上不亮", "工地半夜施工吵得睡不着", "小区门口垃圾没人清运"]
    before = m.predict(probe, k=3)
    assert [b[0][0] for b in before] == ["路灯", "噪声", "垃圾"]
    with engine.begin() as conn:
        v1 = classify.save(conn, m, name="test-roundtrip", params={"test": True})
        v2 = classify.save(conn, m, name="test-roundtrip")
    assert v2 == v1 + 1
    classify._cache.clear()
    with engine.connect() as conn:
        back = classify.load(conn, "test-roundtrip")
        old = classify.load(conn, "test-roundtrip", version=v1)
        row = conn.execute(text("""SELECT labels, metrics->'params', octet_length(model) FROM text_model
                                   WHERE name = 'test-roundtrip' AND version = :v"""), {"v": v1}).one()
    assert back.version == v2 and old.version == v1
    assert back.predict(probe, k=3) == before
    assert row[0] == ["噪声", "垃圾", "路灯"] and row[1] == {"test": True} and row[2] > 1000
    # the fast path gives scikit-learn's own calibrated probabilities
    X = classify.frame(probe)
    assert np.allclose(back.proba(X), back.pipeline.predict_proba(X), atol=1e-6)


def test_a_class_too_small_is_left_out_and_one_class_is_refused():
    texts, labels = small_corpus()
    m = classify.train(texts + ["井盖丢了"] * 2, labels + ["井盖"] * 2, cv=False)
    assert m.metrics["left_out_classes"] == ["井盖"] and "井盖" not in m.labels
    from layers.core.errors import InputError

    with pytest.raises(InputError, match="at least 2 classes"):
        classify.train(texts[:12], labels[:12], cv=False)


def test_cli_train_and_classify_a_small_csv(cli, engine, tmp_path, capsys):
    texts, labels = small_corpus(10)
    src = tmp_path / "train.csv"
    with src.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["编号", "主题", "内容", "类别"])
        for i, (t, lab) in enumerate(zip(texts, labels, strict=True)):
            w.writerow([i, t[:6], t, lab])
    assert cli(["text", "train", str(src), "--text", "主题,内容", "--label", "类别", "--name", "test-cli",
                "--folds", "3"]) == 0
    out = capsys.readouterr().out
    assert "macro-F1" in out and "model 'test-cli' version" in out
    with engine.connect() as conn:
        f1 = conn.execute(text("""SELECT (metrics->>'macro_f1')::float FROM text_model WHERE name = 'test-cli'
                                  ORDER BY version DESC LIMIT 1""")).scalar_one()
    assert f"macro-F1 {f1}" in out and f1 > 0.6
    new = tmp_path / "new.csv"
    pd.DataFrame({"主题": ["路灯", "噪声", "垃圾"], "内容": ["秀山路路灯坏了晚上很黑", "隔壁工地夜间施工噪声很大",
                                                           "路边垃圾发臭无人处理"]}).to_csv(new, index=False)
    res = tmp_path / "out.csv"
    assert cli(["text", "classify", str(new), "--model", "test-cli", "--text", "主题,内容", "--out", str(res)]) == 0
    got = pd.read_csv(res, encoding="utf-8-sig")
    assert list(got.columns) == ["主题", "内容", "label", "probability"]
    assert got["label"].tolist() == ["路灯", "噪声", "垃圾"]
    assert ((got["probability"] > 1 / 3) & (got["probability"] <= 1)).all()
    # bad input: a missing column, a missing model → exit 2 with the reason, nothing written
    assert cli(["text", "classify", str(new), "--model", "test-cli", "--text", "正文", "--out", str(res)]) == 2
    assert "no column '正文'" in capsys.readouterr().err
    assert cli(["text", "classify", str(new), "--model", "no-such", "--text", "内容", "--out", str(tmp_path / "x.csv")]) == 2
    assert not (tmp_path / "x.csv").exists()


def test_template_texts_are_not_learnt():
    texts, labels = small_corpus()
    t2, l2, dropped = classify.drop_templates(texts + ["合成数据 synthetic demo case"] * 60, labels + ["路灯"] * 60)
    assert dropped == 60 and t2 == texts and l2 == labels


def test_cli_train_on_the_citys_closed_cases(cli, engine, haimen, capsys):
    import datetime as dt

    from layers.demo.synthetic import CaseBatch, bulk_insert_cases
    from tests.text.conftest import SAYINGS

    rng = np.random.default_rng(11)
    texts, codes = [], []
    for code, ph in SAYINGS.items():
        leaf = {"0110": "011001", "H101": "H10101", "E101": "E10101"}[code]
        for _ in range(20):
            texts.append(f"{rng.choice(PLACES)}{rng.choice(ph)}")
            codes.append(leaf)
    n = len(texts)
    at = dt.datetime(2018, 5, 1, 9, tzinfo=dt.UTC)  # in the past: off the newest-first lists
    with engine.begin() as conn:
        bulk_insert_cases(conn, haimen, CaseBatch(
            case_no=[f"T2018C{i:04d}" for i in range(n)], received_at=[at] * n, category_code=codes,
            channel=["电话"] * n, source=["hotline"] * n, description=texts, state=["closed"] * n,
            closed_at=[at] * n))
    assert cli(["text", "train", "--city", "haimen", "--name", "test-city-cases", "--folds", "3"]) == 0
    out = capsys.readouterr().out
    assert "cross-validated (3 folds" in out
    with engine.connect() as conn:
        row = conn.execute(text("""SELECT m.labels, c.slug, (m.metrics->'params'->>'level')::int FROM text_model m
                                   JOIN city c ON c.id = m.city_id WHERE m.name = 'test-city-cases'""")).one()
    assert {"0110", "H101", "E101"} <= set(row[0]) and row[1] == "haimen" and row[2] == 2
