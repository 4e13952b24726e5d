"""Segmentation of Chinese text (jieba, precise mode, its bundled dictionary: no download)."""

from __future__ import annotations

import logging
import re
import threading

_lock = threading.Lock()
_ready = False
_space = re.compile(r"[\s\u3000\xa0]+")
_word = re.compile(r"[0-9A-Za-z\u4e00-\u9fff]")


def clean(s) -> str:
    """Text as one line: whitespace (tabs, newlines, full-width spaces) removed between Chinese words,
    a missing value as ''."""
    if s is None:
        return ""
    s = str(s)
    if s == "nan":
        return ""
    return _space.sub(" ", s).strip()


def _jieba():
    global _ready
    import jieba

    if not _ready:
        with _lock:
            if not _ready:
                jieba.setLogLevel(logging.WARNING)
                jieba.initialize()
                _ready = True
    return jieba


def words(s: str) -> list[str]:
    """The words of a text (punctuation and spaces dropped)."""
    jb = _jieba()
    return [w for w in jb.lcut(clean(s)) if _word.search(w)]


def joined(s: str) -> str:
    """The words of a text joined by spaces (what the word TF-IDF reads)."""
    return " ".join(words(s))


def add_words(names) -> None:
    """Teach jieba place names (gazetteer entries) so they are not cut apart."""
    jb = _jieba()
    for n in names:
        n = clean(n).replace(" ", "")
        if len(n) >= 2:
            jb.add_word(n, freq=2000)
