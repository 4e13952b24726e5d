"""The read replica of the own cluster: a streaming hot standby made with ``pg_basebackup -R``.

``citygrid db replica start`` copies the running primary into ``<var_dir>/replica/data`` (its own data
directory, socket ``<var_dir>/replica/run`` and port ``CITYGRID_DB_REPLICA_PORT``), starts it as a hot
standby streaming from the primary's Unix socket, and prints the URL to give ``CITYGRID_DB_READ_URL``.
``stop`` stops it and removes its files: a standby is disposable, and one made again after a restore
(a new timeline) follows the restored primary. ``status`` says whether it runs and how far it lags.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from citygrid import dbcluster, settings
from citygrid.dbcluster import Cluster, ClusterError


def _base(primary: Cluster) -> Path:
    var = settings.paths().var_dir
    try:
        primary.pgdata.relative_to(var)
        return var / "replica"
    except ValueError:
        return primary.pgdata.parent / "replica"


def locate(log=print) -> tuple[Cluster, Cluster]:
    """(primary, replica) of the own cluster."""
    primary = dbcluster.locate(log=log, install=False)
    base = _base(primary)
    socket_dir = base / "run"
    if len(str(socket_dir)) > 90:
        socket_dir = Path(str(primary.socket_dir) + "-replica")
    replica = Cluster(major=primary.major, pgdata=base / "data", socket_dir=socket_dir,
                      port=settings.replica().replica_port, os_user=primary.os_user)
    return primary, replica


def _connect(cluster: Cluster, dbname: str = "postgres"):
    import psycopg

    return psycopg.connect(host=str(cluster.socket_dir), port=cluster.port, user=settings.database().user,
                           dbname=dbname, autocommit=True, connect_timeout=5)


def start(log=print) -> dict:
    """Make (if needed) and start the standby; returns :func:`status`."""
    primary = dbcluster.start(log=log)
    _, replica = locate(log=log)
    if replica.running():
        return status()
    if not (replica.pgdata / "standby.signal").exists():
        shutil.rmtree(replica.pgdata, ignore_errors=True)
        for d in (replica.pgdata.parent, replica.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
            dbcluster._chown(d, replica.os_user)
        log(f"pg_basebackup: copying the primary into {replica.pgdata}")
        replica._run([str(replica.bindir / "pg_basebackup"), "-h", str(primary.socket_dir), "-p", str(primary.port),
                      "-U", settings.database().user, "-D", str(replica.pgdata), "-R", "-X", "stream",
                      "-c", "fast", "--no-sync"])
        with (replica.pgdata / "postgresql.conf").open("a") as f:
            f.write("\n# citygrid: the read replica (citygrid db replica start)\n"
                    f"port = {replica.port}\n"
                    f"unix_socket_directories = '{replica.socket_dir}'\n"
                    "hot_standby = on\n"
                    # long reads on the standby are not cancelled by the replay of vacuum on the primary
                    "hot_standby_feedback = on\n"
                    "max_standby_streaming_delay = 30s\n")
        # the copy of the primary's archive settings must not push WAL into the primary's repository
        auto = replica.pgdata / "postgresql.auto.conf"
        lines = [ln for ln in auto.read_text().splitlines() if not ln.startswith(("archive_command", "archive_mode"))]
        auto.write_text("\n".join(lines) + "\narchive_mode = 'off'\n")
        dbcluster._chown(auto, replica.os_user)
    replica.socket_dir.mkdir(parents=True, exist_ok=True)
    dbcluster._chown(replica.socket_dir, replica.os_user)
    replica.logfile.touch(exist_ok=True)
    dbcluster._chown(replica.logfile, replica.os_user)
    r = replica._run([str(replica.bindir / "pg_ctl"), "-D", str(replica.pgdata), "-l", str(replica.logfile),
                      "-w", "-t", "120", "start"], check=False)
    if r.returncode != 0:
        tail = replica.logfile.read_text(errors="replace")[-2000:]
        raise ClusterError(f"the replica did not start:\n{r.stdout}{r.stderr}\n{tail}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # streaming: the primary sees its WAL receiver
        st = status()
        if st["streaming"]:
            return st
        time.sleep(0.2)
    raise ClusterError(f"the replica started but does not stream from the primary: see {replica.logfile}")


def stop(log=print) -> None:
    """Stop the standby and remove its files."""
    _, replica = locate(log=log)
    if replica.running():
        replica._run([str(replica.bindir / "pg_ctl"), "-D", str(replica.pgdata), "-m", "fast", "-w", "stop"])
        log("replica stopped")
    shutil.rmtree(replica.pgdata.parent, ignore_errors=True)


def status() -> dict:
    primary, replica = locate(log=lambda *_: None)
    running = replica.running()
    out = {"running": running, "pgdata": str(replica.pgdata), "socket": str(replica.socket_dir),
           "port": replica.port, "url": replica.url(), "streaming": False, "replay_lsn": None,
           "replay_lag_bytes": None, "replay_paused": None}
    if not running:
        return out
    try:
        with _connect(replica) as conn:
            lsn, paused = conn.execute("SELECT pg_last_wal_replay_lsn()::text, pg_is_wal_replay_paused()").fetchone()
        out.update(replay_lsn=lsn, replay_paused=paused)
        with _connect(primary) as conn:
            row = conn.execute("""SELECT state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)
                                  FROM pg_stat_replication ORDER BY backend_start DESC LIMIT 1""").fetchone()
        if row:
            out.update(streaming=row[0] == "streaming", replay_lag_bytes=int(row[1] or 0))
    except Exception as e:  # noqa: BLE001 - status answers even while a server is starting or stopping
        out["error"] = str(e).strip()[:200]
    return out
