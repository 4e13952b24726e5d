"""The monthly bulletin PDF renders: its pages checked as images (pypdfium2)."""

from __future__ import annotations

import numpy as np

from tests.conftest import auth


def test_bulletin_pdf_pages_as_images(client, bcity, tokens):
    import pypdfium2 as pdfium

    r = client.get("/api/v1/bulletins/2026-10.pdf", params={"city": "btest"}, headers=auth(tokens["supervisor"]))
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"] == "application/pdf" and r.content.startswith(b"%PDF")
    pdf = pdfium.PdfDocument(r.content)
    assert 2 <= len(pdf) <= 12
    text = "".join(pdf[i].get_textpage().get_text_range() for i in range(len(pdf)))
    for words in ("月度简报", "按期结案率", "街道考核排名", "热力图", "舆情预警"):
        assert words in text, words  # CJK text is real text in the PDF, not tofu
    colored_pages = 0
    for i in range(len(pdf)):
        img = np.asarray(pdf[i].render(scale=1).to_pil().convert("RGB")).astype(int)
        ink = (img.sum(axis=2) < 600).mean()
        assert ink > 0.005, f"page {i + 1} is blank"
        # the maps: many saturated warm (heat) / red-blue (hot spots) pixels
        sat = img.max(axis=2) - img.min(axis=2)
        colored_pages += (sat > 80).mean() > 0.01
    assert colored_pages >= 1
    # page 1 starts with the dark-red title rule
    first = np.asarray(pdf[0].render(scale=1).to_pil().convert("RGB")).astype(int)
    red = (first[..., 0] > 110) & (first[..., 1] < 40) & (first[..., 2] < 40)
    assert red[: first.shape[0] // 5].sum() > 200


def test_bulletin_command_rejects_a_bad_month(capsys):
    from layers.analytics.bulletin import main_bulletin

    assert main_bulletin(["2026-13"]) == 2
    assert "YYYY-MM" in capsys.readouterr().out
