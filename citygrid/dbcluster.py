"""The project's own PostgreSQL + PostGIS cluster, used when no ``DATABASE_URL`` is set.

* finds a PostgreSQL major version on this machine for which PostGIS is installed, or installs the
  Debian package ``postgresql-N-postgis-3`` (as root; otherwise it stops with the exact command);
* PostgreSQL refuses to run as root, so as root the cluster runs as an unprivileged OS user
  (``postgres`` by default, created as ``citygrid`` when absent);
* its files live in ``var/pg`` of the checkout, or — when that OS user cannot enter the checkout —
  under ``/var/lib/citygrid/<hash>``, and the place is printed;
* it listens only on its own Unix socket (no TCP port is opened), with ``trust`` for local users.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from citygrid import settings

PG_ROOT = Path("/usr/lib/postgresql")


class ClusterError(RuntimeError):
    """Raised with a message that says what to do."""


def _is_root() -> bool:
    return os.geteuid() == 0


def installed_majors() -> list[int]:
    """PostgreSQL major versions whose server binaries are installed, newest first."""
    if not PG_ROOT.is_dir():
        return []
    majors = [int(p.name) for p in PG_ROOT.iterdir() if p.name.isdigit() and (p / "bin" / "postgres").exists()]
    return sorted(majors, reverse=True)


def has_postgis(major: int) -> bool:
    return Path(f"/usr/share/postgresql/{major}/extension/postgis.control").exists()


def _apt_candidate(package: str) -> bool:
    out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True).stdout
    m = re.search(r"Candidate:\s*(\S+)", out)
    return bool(m and m.group(1) != "(none)")


def _apt_postgis_majors() -> list[int]:
    out = subprocess.run(
        ["apt-cache", "search", "--names-only", r"^postgresql-[0-9]+-postgis-3$"], capture_output=True, text=True
    ).stdout
    return sorted({int(m) for m in re.findall(r"^postgresql-(\d+)-postgis-3 ", out, re.M)}, reverse=True)


def choose_major(install: bool = True, log=print) -> int:
    """The PostgreSQL major to run: one with PostGIS installed, else install PostGIS for one."""
    majors = installed_majors()
    for m in majors:
        if has_postgis(m):
            return m
    if shutil.which("apt-cache") is None:
        raise ClusterError("PostGIS is not installed and this is not a Debian system: install PostgreSQL "
                           "with PostGIS, or set DATABASE_URL to a server that has it.")
    if not any(_apt_candidate(f"postgresql-{m}-postgis-3") for m in majors) and not _apt_postgis_majors():
        if _is_root() and install:
            log("apt-get update (looking for PostGIS packages) …")
            subprocess.run(["apt-get", "update", "-qq"], check=False)
    # Prefer PostGIS for a server that is already installed; else the newest major the archive has.
    wanted = [m for m in majors if _apt_candidate(f"postgresql-{m}-postgis-3")]
    packages: list[str]
    if wanted:
        major = wanted[0]
        packages = [f"postgresql-{major}-postgis-3"]
    else:
        avail = _apt_postgis_majors()
        if not avail:
            raise ClusterError("No PostGIS package found in this machine's Debian archive "
                               "(apt-cache search postgis). Set DATABASE_URL to a PostGIS server.")
        major = avail[0]
        packages = [f"postgresql-{major}", f"postgresql-{major}-postgis-3"]
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if not (_is_root() and install):
        raise ClusterError("PostGIS is missing. Run, as root:\n    " + " ".join(cmd))
    log("installing " + " ".join(packages) + " …")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(cmd, env=env)
    if r.returncode != 0 or not has_postgis(major):
        raise ClusterError("could not install PostGIS; run as root:\n    " + " ".join(cmd))
    return major


@dataclass
class Cluster:
    major: int
    pgdata: Path
    socket_dir: Path
    port: int
    os_user: str | None  # None: run as the current (non-root) user

    @property
    def bindir(self) -> Path:
        return PG_ROOT / str(self.major) / "bin"

    @property
    def logfile(self) -> Path:
        return self.pgdata.parent / "postgresql.log"

    def _run(self, args: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        if self.os_user:
            args = ["runuser", "-u", self.os_user, "--", *args]
        r = subprocess.run(args, capture_output=True, text=True, **kw)
        if check and r.returncode != 0:
            raise ClusterError(f"{' '.join(args)} failed:\n{r.stdout}{r.stderr}")
        return r

    def running(self) -> bool:
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        return self._run([str(self.bindir / "pg_ctl"), "-D", str(self.pgdata), "status"], check=False).returncode == 0

    def url(self, dbname: str | None = None) -> str:
        db = settings.database()
        return (f"postgresql+psycopg://{db.user}@/{dbname or db.name}"
                f"?host={self.socket_dir}&port={self.port}")


def _can_enter(user: str, path: Path) -> bool:
    """Whether ``user`` can reach and write ``path`` (every parent must be searchable)."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    r = subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(probe)], capture_output=True)
    return r.returncode == 0


def _ensure_os_user(name: str, log=print) -> str:
    try:
        pwd.getpwnam(name)
        return name
    except KeyError:
        pass
    fallback = "citygrid"
    try:
        pwd.getpwnam(fallback)
    except KeyError:
        log(f"creating the system user '{fallback}' to run PostgreSQL (it refuses to run as root)")
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", fallback],
                       check=True)
    return fallback


def locate(log=print, install: bool = True) -> Cluster:
    """Decide where the own cluster lives and who runs it (creates nothing but the OS user)."""
    cfg = settings.database()
    major = choose_major(install=install, log=log)
    var = settings.paths().var_dir
    pgdata = cfg.pgdata or (var / "pg" / "data")
    os_user: str | None = None
    if _is_root():
        os_user = _ensure_os_user(cfg.os_user, log=log)
        if cfg.pgdata is None and not _can_enter(os_user, var.parent):
            digest = hashlib.sha1(str(var).encode()).hexdigest()[:10]
            pgdata = Path("/var/lib/citygrid") / digest / "data"
            log(f"note: '{os_user}' cannot enter {var.parent}; the cluster's files are kept in {pgdata.parent}")
    socket_dir = pgdata.parent / "run"
    if len(str(socket_dir)) > 90:  # Unix socket paths are limited to ~107 bytes
        socket_dir = Path("/tmp") / ("citygrid-" + hashlib.sha1(str(pgdata).encode()).hexdigest()[:10])
    return Cluster(major=major, pgdata=pgdata, socket_dir=socket_dir, port=cfg.port, os_user=os_user)


def _chown(path: Path, user: str | None) -> None:
    if user:
        pw = pwd.getpwnam(user)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def init(cluster: Cluster, log=print) -> None:
    """initdb once; a cluster made by another major version is refused with a clear message."""
    version_file = cluster.pgdata / "PG_VERSION"
    if version_file.exists():
        made_by = int(version_file.read_text().strip())
        if made_by != cluster.major:
            raise ClusterError(
                f"the cluster in {cluster.pgdata} was made by PostgreSQL {made_by}, but this machine runs "
                f"{cluster.major} with PostGIS: remove it with 'citygrid db destroy' (its data is lost) "
                f"or dump and restore it.")
        return
    for d in (cluster.pgdata.parent, cluster.pgdata, cluster.socket_dir):
        d.mkdir(parents=True, exist_ok=True)
        _chown(d, cluster.os_user)
    os.chmod(cluster.pgdata, 0o700)
    log(f"initdb: PostgreSQL {cluster.major} cluster in {cluster.pgdata}")
    cfg = settings.database()
    cluster._run([str(cluster.bindir / "initdb"), "-D", str(cluster.pgdata), "-U", cfg.user, "--auth=trust",
                  "-E", "UTF8", "--locale=C.UTF-8"])
    conf = cluster.pgdata / "postgresql.conf"
    with conf.open("a") as f:
        f.write("\n# citygrid's own cluster\n"
                "listen_addresses = ''\n"
                f"port = {cluster.port}\n"
                f"unix_socket_directories = '{cluster.socket_dir}'\n"
                "shared_buffers = 256MB\n"
                "work_mem = 32MB\n"
                "maintenance_work_mem = 256MB\n"
                "max_connections = 200\n"
                # Bulk imports write GBs of WAL: checkpoints every 1 GB (the default) made the
                # backends write their own buffers and full-page images in the middle of a COPY.
                "max_wal_size = 4GB\n"
                "checkpoint_timeout = 15min\n"
                f"wal_compression = {_wal_compression(cluster)}\n"
                "jit = off\n")
    ensure_archive_mode(cluster)


#: The marker of the WAL archiving block in postgresql.conf (see :func:`ensure_archive_mode`).
ARCHIVE_MARK = "# citygrid: WAL archiving"


def ensure_archive_mode(cluster: Cluster) -> bool:
    """``archive_mode = on`` in the cluster's configuration (while it is stopped: the setting needs a
    start). The archive command stays a no-op (``true``: WAL is recycled as before) until the first
    ``citygrid db backup`` points it at pgBackRest (ALTER SYSTEM + reload, no restart), so that a
    cluster without backups neither keeps WAL nor pays for archiving it. Clusters made by an older
    version get the block at their next start. Returns whether the configuration was changed."""
    conf = cluster.pgdata / "postgresql.conf"
    if not conf.exists() or ARCHIVE_MARK in conf.read_text(errors="replace"):
        return False
    with conf.open("a") as f:
        f.write(f"\n{ARCHIVE_MARK} (citygrid db backup sets archive_command to pgBackRest's archive-push)\n"
                "archive_mode = on\n"
                "archive_command = 'true'\n")  # wal_level replica, max_wal_senders 10: the defaults
    return True


def _wal_compression(cluster) -> str:
    """lz4 where the server was built with it (Debian's are): pglz, the fallback, cost the intake
    ~5 % of its database time compressing full-page images."""
    try:
        out = subprocess.run([str(cluster.bindir / "pg_config"), "--configure"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    return "lz4" if "--with-lz4" in out else "on"


def start(log=print, install: bool = True) -> Cluster:
    cluster = locate(log=log, install=install)
    init(cluster, log=log)
    cluster.socket_dir.mkdir(parents=True, exist_ok=True)
    _chown(cluster.socket_dir, cluster.os_user)
    if not cluster.running():
        ensure_archive_mode(cluster)
        cluster.logfile.touch(exist_ok=True)
        _chown(cluster.logfile, cluster.os_user)
        r = cluster._run([str(cluster.bindir / "pg_ctl"), "-D", str(cluster.pgdata), "-l", str(cluster.logfile),
                          "-w", "-t", "60", "start"], check=False)
        if r.returncode != 0:
            tail = cluster.logfile.read_text(errors="replace")[-2000:] if cluster.logfile.exists() else ""
            raise ClusterError(f"PostgreSQL did not start:\n{r.stdout}{r.stderr}\n{tail}")
    ensure_database(cluster, settings.database().name)
    return cluster


def ensure_database(cluster: Cluster, name: str) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            conn = psycopg.connect(host=str(cluster.socket_dir), port=cluster.port,
                                   user=settings.database().user, dbname="postgres", autocommit=True)
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    with conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def stop(log=print) -> None:
    cluster = locate(log=log, install=False)
    if cluster.running():
        cluster._run([str(cluster.bindir / "pg_ctl"), "-D", str(cluster.pgdata), "-m", "fast", "-w", "stop"])
        log("stopped")
    else:
        log("not running")


def destroy(log=print) -> None:
    cluster = locate(log=log, install=False)
    if cluster.running():
        stop(log=log)
    # The cluster's own folder (data, socket, log) when it is one of ours; else only its data.
    target = cluster.pgdata.parent if cluster.pgdata.parent.parent == Path("/var/lib/citygrid") else cluster.pgdata
    shutil.rmtree(target, ignore_errors=True)
    log(f"removed {target}")


def status() -> dict:
    cluster = locate(log=lambda *_: None, install=False)
    return {
        "postgresql": cluster.major,
        "pgdata": str(cluster.pgdata),
        "socket": str(cluster.socket_dir),
        "port": cluster.port,
        "os_user": cluster.os_user or getpass.getuser(),
        "running": cluster.running(),
        "url": cluster.url(),
    }


def database_url(start_if_needed: bool = True, log=print) -> str:
    """The SQLAlchemy URL: ``DATABASE_URL`` when set, else the own cluster's (started if needed)."""
    external = settings.database().url
    if external:
        return normalise_url(external)
    cluster = start(log=log) if start_if_needed else locate(log=log, install=False)
    return cluster.url()


def normalise_url(url: str) -> str:
    """Accept libpq-style ``postgresql://`` URLs; SQLAlchemy needs the psycopg driver named."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url
