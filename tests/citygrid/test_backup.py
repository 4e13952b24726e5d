"""Backups and point-in-time restore of the own cluster (pgBackRest) with its photo store, end to end:
a temporary own cluster, reports with photos through the real API, a backup, more reports, an instant,
more reports, then a restore to the instant finds exactly the reports (rows and photo files) written
before it, none after."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.citygrid import owncluster
from tests.conftest import auth
from tests.field.conftest import jpeg

pytestmark = pytest.mark.skipif(shutil.which("pgbackrest") is None,
                                reason="pgBackRest is not installed (scripts/bootstrap.sh installs it)")

BASE = (121.160, 31.880)  # Haimen old town, WGS-84


@pytest.fixture
def cluster():
    c = owncluster.make("backup", 54361)
    c.cli("db", "start")
    yield c
    owncluster.remove(c)


def _report(client, headers, k: int) -> dict:
    """A report with two photos at its own spot (~300 m apart: never a duplicate of another)."""
    lon, lat = BASE[0] + 0.003 * (k % 10), BASE[1] + 0.003 * (k // 10)
    photos = [jpeg(9000 + 2 * k), jpeg(9001 + 2 * k)]
    r = client.post("/api/v1/reports", headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
                    data={"category_code": "E10101", "lon": str(lon), "lat": str(lat), "accuracy": "5",
                          "description": f"备份测试 backup test report {k}"},
                    files=[("photos", (f"p{i}.jpg", b, "application/octet-stream")) for i, b in enumerate(photos)])
    assert r.status_code == 201, r.text
    out = r.json()
    assert [p["sha256"] for p in out["photos"]] == [hashlib.sha256(b).hexdigest() for b in photos]
    return {"id": out["id"], "case_id": out["case"]["id"], "photos": photos}


def _photo_files(engine, data_dir, report_ids) -> dict[str, bytes | None]:
    """path -> bytes (None: missing) of every file (original, public copy, thumbnail) of the reports."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT sha256, public_sha256, thumb_sha256 FROM field_photo "
                                 "WHERE report_id = ANY(:r)"), {"r": list(report_ids)}).all()
    out = {}
    for row in rows:
        for kind, sha in zip(("original", "public", "thumb"), row, strict=True):
            p = data_dir / "photos" / kind / sha[:2] / sha
            out[str(p)] = p.read_bytes() if p.exists() else None
    return out


def test_restore_to_an_instant_brings_back_exactly_the_first_writes(cluster, monkeypatch):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from citygrid import settings

    t_start = time.monotonic()
    monkeypatch.setenv("CITYGRID_DATA_DIR", str(cluster.data))
    settings.paths.cache_clear()
    engine, _city, token = owncluster.prepare_database(cluster.url())
    t_ready = time.monotonic()
    h = auth(token)
    try:
        with TestClient(create_app(cluster.url())) as client:
            first = [_report(client, h, k) for k in range(3)]
            # before the backup: the original files of the first writes, as written
            before = _photo_files(engine, cluster.data, [r["id"] for r in first])
            assert len(before) == 3 * 2 * 3 and all(before.values())

            # a file that is not content-addressed (an export job's file) before the backup
            early_export = cluster.data / "exports" / "job-early" / "cases.csv"
            early_export.parent.mkdir(parents=True)
            early_export.write_text("id,state\n1,received\n")
            out = json.loads(cluster.cli("db", "backup", "--type", "full").stdout)
            assert out["type"] == "full" and out["files"] >= 18 and out["files_new"] >= 18
            listed = json.loads(cluster.cli("db", "backups").stdout)
            assert [b["label"] for b in listed] == [out["label"]] and listed[0]["files"] == out["files"]

            # after the backup, before the instant: restored from the archived WAL and the files on disk
            middle = [_report(client, h, k) for k in range(3, 5)]
            time.sleep(0.3)
            instant = dt.datetime.now(dt.UTC)
            time.sleep(0.3)
            later = [_report(client, h, k) for k in range(5, 8)]
            late_export = cluster.data / "exports" / "job-late" / "cases.csv"
            late_export.parent.mkdir(parents=True)
            late_export.write_text("id,state\n2,received\n")
            kept = first + middle
            kept_files = _photo_files(engine, cluster.data, [r["id"] for r in kept])
            later_files = _photo_files(engine, cluster.data, [r["id"] for r in later])
            assert len(later_files) == 3 * 2 * 3 and all(later_files.values())
        # A file of the first writes is lost from disk: the restore brings it back from the repository.
        lost = next(iter(before))
        Path(lost).unlink()
        engine.dispose()

        early_export.unlink()  # lost: the restore brings it back
        # Bad instants are refused with a message: not a time, in the future, before the oldest backup.
        from citygrid.backup import parse_time
        from citygrid.dbcluster import ClusterError

        with pytest.raises(ClusterError, match="is not a time"):
            parse_time("yesterday-ish")
        for bad, says in (((dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat(), "in the future"),
                          ("2020-01-01T00:00:00+08:00", "before the oldest backup")):
            r = cluster.cli("db", "restore", "--to", bad, "--force", check=False)
            assert r.returncode == 2 and says in r.stderr, r.stderr
        # A running cluster is not overwritten without --force, and nothing changes.
        refused = cluster.cli("db", "restore", "--to", instant.isoformat(), check=False)
        assert refused.returncode == 2 and "--force" in refused.stderr
        assert json.loads(cluster.cli("db", "status", check=False).stdout)["running"] is True

        t_restore = time.monotonic()
        done = json.loads(cluster.cli("db", "restore", "--to", instant.isoformat(), "--force").stdout)
        restore_seconds = time.monotonic() - t_restore
        assert done["backup"] == out["label"] and done["files_missing"] == []
        assert json.loads(cluster.cli("db", "status", check=False).stdout)["running"] is True

        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_is_in_recovery()")).scalar() is False
            reports = set(conn.execute(text("SELECT id FROM field_report")).scalars())
            cases = set(conn.execute(text("SELECT id FROM case_file")).scalars())
            photos = conn.execute(text("SELECT count(*) FROM field_photo")).scalar()
        assert reports == {r["id"] for r in kept}
        assert cases == {r["case_id"] for r in kept}
        assert photos == 2 * len(kept)
        # every file of the kept reports is back, byte for byte; none of the later ones
        assert _photo_files(engine, cluster.data, [r["id"] for r in kept]) == kept_files
        for r in kept:
            for b in r["photos"]:
                sha = hashlib.sha256(b).hexdigest()
                assert (cluster.data / "photos" / "original" / sha[:2] / sha).read_bytes() == b
        for path in later_files:
            assert not Path(path).exists(), path
        assert early_export.read_text() == "id,state\n1,received\n"
        assert not late_export.exists()  # written after the instant
        stored = {p.name for p in (cluster.data / "photos").glob("*/*/*")}
        with engine.connect() as conn:
            refs = {s for row in conn.execute(text("SELECT sha256, public_sha256, thumb_sha256 FROM field_photo"))
                    for s in row}
        assert stored == refs

        # The restored cluster serves and archives again: a new report, a new backup.
        with TestClient(create_app(cluster.url())) as client:
            again = _report(client, h, 9)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM field_report WHERE id = :i"), {"i": again["id"]}).scalar() == 1
        assert json.loads(cluster.cli("db", "backup", "--type", "incr").stdout)["type"] == "incr"
    finally:
        engine.dispose()
        settings.paths.cache_clear()
    print(f"\nbackup/restore test: {time.monotonic() - t_start:.1f} s in all (schema and city "
          f"{t_ready - t_start:.1f} s), restore {restore_seconds:.1f} s")
