"""The start-up recovery of the photo store, case by case: a crash between commit and rename (staged
files a committed row refers to are promoted), a crash before commit (staged files deleted), and
stored files no row refers to (deleted)."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from sqlalchemy import text

from layers.core.errors import Conflict
from layers.field.photostore import PhotoStore, recover
from tests.field.conftest import jpeg


def test_recover_promotes_committed_and_deletes_the_rest(engine, haimen, make_inspector, tmp_path):
    user, _ = make_inspector()
    store = PhotoStore(tmp_path / "photos")
    with engine.connect() as conn:
        assert recover(conn, store) == {"skipped": 1}  # never written: not this database's store
        store.claim(conn)
    kept = [jpeg(7001 + i) for i in range(3)]
    sha = [hashlib.sha256(b).hexdigest() for b in kept]
    # A committed report whose files are still staged (the process died after COMMIT, before rename).
    with engine.begin() as conn:
        rid = conn.execute(text("""
            INSERT INTO field_report (city_id, user_id, idempotency_key, request_hash, category_code,
                accuracy_gate_m, location_source, location)
            VALUES (:c, :u, :k, :h, 'E10101', 30, 'device', ST_SetSRID(ST_MakePoint(0, 0), :s)) RETURNING id"""),
            {"c": haimen.id, "u": user.id, "k": uuid.uuid4().hex, "h": "0" * 64, "s": haimen.srid}).scalar_one()
        conn.execute(text("""INSERT INTO field_photo (report_id, seq, sha256, public_sha256, thumb_sha256, media_type,
                                                     size_bytes, exif_status)
                             VALUES (:r, 0, :a, :b, :c, 'jpeg', 1, 'no_position')"""),
                     {"r": rid, "a": sha[0], "b": sha[1], "c": sha[2]})
    committed = store.new_stage()
    for kind, s, b in zip(("original", "public", "thumb"), sha, kept, strict=True):
        store.stage(committed, kind, s, b)
    # A request that died before its commit: staged files no row refers to.
    lost = jpeg(7100)
    lost_sha = hashlib.sha256(lost).hexdigest()
    store.stage(store.new_stage(), "original", lost_sha, lost)
    # A stored file no row refers to (e.g. its report was deleted).
    orphan = store.path("public", "f" * 64)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"orphan")
    # A stored file a row refers to stays.
    with engine.connect() as conn:
        counts = recover(conn, store)
    assert counts == {"promoted": 3, "deleted_staged": 1, "deleted_orphans": 1}
    for kind, s, b in zip(("original", "public", "thumb"), sha, kept, strict=True):
        assert store.path(kind, s).read_bytes() == b
    assert not store.staged_files() and not orphan.exists()
    assert not store.path("original", lost_sha).exists()
    # Idempotent: a second run changes nothing.
    with engine.connect() as conn:
        assert recover(conn, store) == {"promoted": 0, "deleted_staged": 0, "deleted_orphans": 0}
    # A store of another database is never touched (e.g. a test session against the demo's photos).
    store.owner_file.write_text("some_other_database")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"orphan")
    with engine.connect() as conn:
        assert recover(conn, store) == {"skipped": 1}
        with pytest.raises(Conflict):
            store.claim(conn)
    assert orphan.exists()


def test_start_up_grace_spares_live_workers_not_dead_ones(engine, haimen, tmp_path):
    """At start-up (min_age_s = the grace), a young staged file of another live process of this host is
    an upload in flight and stays; one whose writer is gone (killed) is a leftover and goes at once."""
    import subprocess
    import sys

    from layers.field import photostore

    store = PhotoStore(tmp_path / "photos")
    with engine.connect() as conn:
        store.claim(conn)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        store.tmp.mkdir(parents=True, exist_ok=True)
        host = photostore._HOST
        young_live = store.tmp / f"original.{'a' * 64}.{host}p{live.pid}-000000000001"
        young_dead = store.tmp / f"original.{'b' * 64}.{host}p{dead.pid}-000000000002"
        other_host = store.tmp / f"original.{'c' * 64}.ffffffffp{dead.pid}-000000000003"
        for p in (young_live, young_dead, other_host):
            p.write_bytes(b"staged")
        with engine.connect() as conn:
            counts = recover(conn, store, min_age_s=photostore.STARTUP_GRACE_S)
        assert counts["deleted_staged"] == 1
        assert young_live.exists() and other_host.exists() and not young_dead.exists()
    finally:
        live.kill()
        live.wait()
