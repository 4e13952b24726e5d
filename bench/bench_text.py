"""Text benchmark (issue 15). `python bench/bench_text.py [--train-n 100000] [--group-n 40000]` (no database).

Texts: intake-like cases (≈ 120 characters) recombined from the real messages of
../shared/data/zh_messages (a message's subject and one or two sentences of another message of the same
first-level class; 7 classes), so segmentation and the vocabulary are real Chinese. Printed beside each
target:

1. classification of one case on intake (jieba, TF-IDF, calibrated SVM; the model trained on 20,000
   cases): ours per case, beside scikit-learn's own ``predict_proba`` on the same model (the anchor);
   target < 5 ms;
2. training on 100,000 cases (segmentation + fit, no cross-validation); target < 60 s;
3. grouping 40,000 cases of a year (recurring problems, half of them around 40 hot spots): ours beside
   the all-pairs cosine it avoids (timed on 4,000 cases, scaled by n²); target < 30 s.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Table  # noqa: E402


def corpus(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    from citygrid import settings
    from layers.text import classify

    p = settings.paths().shared_data / "zh_messages" / "labelled_messages.csv"
    if not p.is_file():
        sys.exit(f"bench_text: {p} is missing (the real messages, see ../shared/data/zh_messages/README.md)")
    df = classify.read_table(p)
    rng = np.random.default_rng(seed)
    by: dict[str, tuple[list[str], list[str]]] = {}
    for subj, det, lab in zip(df["留言主题"], df["留言详情"], df["一级分类"], strict=True):
        sents = [s for s in re.split(r"[。！？!?\n]", " ".join(str(det).split())) if len(s) >= 8]
        b = by.setdefault(lab, ([], []))
        b[0].append(str(subj).strip())
        b[1].extend(sents)
    labs = sorted(by)
    texts, labels = [], []
    for _ in range(n):
        lab = labs[rng.integers(len(labs))]
        subj, sents = by[lab]
        t = subj[rng.integers(len(subj))] + "。" + "。".join(sents[rng.integers(len(sents))] for _ in range(rng.integers(1, 3)))
        texts.append(t[:160])
        labels.append(lab)
    return texts, labels


def bench_classify(tab: Table) -> None:
    from layers.text import classify

    texts, labels = corpus(20_000, seed=1)
    m = classify.train(texts, labels, cv=False)
    probe, _ = corpus(300, seed=2)
    m.predict(probe[:1])
    t0, c0 = time.perf_counter(), time.process_time()
    for s in probe:
        m.predict([s], k=3)
    ours = (time.perf_counter() - t0) / len(probe)
    cpu = (time.process_time() - c0) / len(probe)
    t0 = time.perf_counter()
    for s in probe[:100]:
        m.pipeline.predict_proba(classify.frame([s]))
    anchor = (time.perf_counter() - t0) / 100
    tab.add(f"classify one case on intake (mean {np.mean([len(s) for s in probe]):.0f} chars, 7 classes)",
            f"{ours * 1000:.2f} ms (CPU {cpu * 1000:.2f} ms)", f"sklearn predict_proba: {anchor * 1000:.2f} ms ({anchor / ours:.1f}×)",
            "< 5 ms: " + ("OK" if ours < 0.005 else "MISS"))


def bench_train(tab: Table, n: int) -> None:
    from layers.text import classify

    texts, labels = corpus(n, seed=3)
    t0, c0 = time.perf_counter(), time.process_time()
    m = classify.train(texts, labels, cv=False)
    took, cpu = time.perf_counter() - t0, time.process_time() - c0
    tab.add(f"train on {n:,} cases (segmentation + fit, 7 classes)", f"{took:.1f} s (CPU {cpu:.1f} s)",
            f"of which the fit: {m.metrics['fit_seconds']:.1f} s", "< 60 s: " + ("OK" if took < 60 else "MISS"))


def bench_group(tab: Table, n: int) -> None:
    from layers.text import recurring

    texts, _ = corpus(n, seed=4)
    rng = np.random.default_rng(5)
    hot = rng.uniform(-20_000, 20_000, size=(40, 2))
    k = rng.integers(0, 40, size=n)
    near = rng.random(n) < 0.5
    x = np.where(near, hot[k, 0] + rng.normal(0, 400, n), rng.uniform(-22_000, 22_000, n))
    y = np.where(near, hot[k, 1] + rng.normal(0, 400, n), rng.uniform(-22_000, 22_000, n))
    t = rng.uniform(0, 365, n)
    t0, c0 = time.perf_counter(), time.process_time()
    groups, _ = recurring.group(texts, t, x, y, np.zeros(n, int), similarity=0.4, radius_m=500, pair_days=30)
    ours, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = 4000
    t0 = time.perf_counter()
    X = recurring.vectors(texts[:m])
    S = (X @ X.T).tocoo()
    _ = S.data >= 0.4
    brute = (time.perf_counter() - t0) * (n / m) ** 2
    tab.add(f"group {n:,} cases of a year ({len(groups)} groups)", f"{ours:.1f} s (CPU {cpu:.1f} s)",
            f"all-pairs cosine: ~{brute:.0f} s (4,000 timed, ×n²)", "< 30 s: " + ("OK" if ours < 30 else "MISS"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench_text")
    ap.add_argument("--train-n", type=int, default=100_000)
    ap.add_argument("--group-n", type=int, default=40_000)
    a = ap.parse_args(argv)
    tab = Table("text: classification, training, recurring problems")
    bench_classify(tab)
    bench_train(tab, a.train_n)
    bench_group(tab, a.group_n)
    tab.print()
    print("(wall-clock figures; CPU = this process's CPU time: the machine is shared, "
          f"load average {os.getloadavg()[0]:.1f} at the end)")


if __name__ == "__main__":
    main()
