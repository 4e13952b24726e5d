"""The synthetic Haimen inventory for the demo: labelled, inside the city, idempotent."""

from __future__ import annotations

from sqlalchemy import text


def test_synthetic_inventory(engine, haimen):
    from layers.assets.imports import SYNTHETIC_SOURCE, generate_synthetic_inventory

    with engine.begin() as conn:
        rep = generate_synthetic_inventory(conn, haimen, n=1500, seed=7)
    t = rep["totals"]
    assert t["created"] + t["unchanged"] + t["updated"] > 1000
    with engine.connect() as c:
        n, synth, labelled, no_cell, classes = c.execute(text("""
            SELECT count(*), count(*) FILTER (WHERE synthetic), count(*) FILTER (WHERE name LIKE '【合成 synthetic】%'),
                   count(*) FILTER (WHERE cell_code IS NULL), count(DISTINCT class_code)
            FROM asset WHERE source = :s"""), {"s": SYNTHETIC_SOURCE}).one()
        streets = c.execute(text("""SELECT count(DISTINCT left(cell_code, 9)) FROM asset WHERE source = :s"""),
                            {"s": SYNTHETIC_SOURCE}).scalar_one()
    assert n == synth == labelled and no_cell == 0 and classes == 10 and streets >= 10
    with engine.begin() as conn:
        again = generate_synthetic_inventory(conn, haimen, n=1500, seed=7)
    assert again["totals"]["created"] == 0 and again["totals"]["updated"] == 0
