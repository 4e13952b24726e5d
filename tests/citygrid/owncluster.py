"""A temporary own cluster for the backup and replica tests: its own var dir, data dir and port, run
through the real CLI (``python -m citygrid.cli``) — never the shared cluster of the suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT


@dataclass
class OwnCluster:
    root: Path
    port: int

    @property
    def var(self) -> Path:
        return self.root / "var"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket(self) -> Path:
        return self.var / "pg" / "run"

    def env(self, **extra: str) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CITYGRID_DB_URL",
                                                                "CITYGRID_DB_READ_URL")}
        env.update(CITYGRID_VAR_DIR=str(self.var), CITYGRID_DATA_DIR=str(self.data),
                   CITYGRID_DB_PORT=str(self.port), CITYGRID_DB_NAME="citygrid", PYTHONPATH=str(ROOT), **extra)
        return env

    def cli(self, *args: str, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "citygrid.cli", *args], cwd=ROOT, env=self.env(**extra),
                           capture_output=True, text=True, timeout=600)
        if check and r.returncode != 0:
            raise AssertionError(f"citygrid {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def url(self, dbname: str = "citygrid") -> str:
        return f"postgresql+psycopg://citygrid@/{dbname}?host={self.socket}&port={self.port}"


def make(prefix: str, port: int) -> OwnCluster:
    root = Path(tempfile.mkdtemp(prefix=f"citygrid-{prefix}-"))
    os.chmod(root, 0o755)  # the cluster's OS user (postgres, when the tests run as root) must enter it
    c = OwnCluster(root=root, port=port)
    c.data.mkdir()
    return c


def remove(c: OwnCluster) -> None:
    """Stop the temporary cluster(s) at once (immediate: its files are deleted next) and delete them."""
    from citygrid.dbcluster import PG_ROOT, installed_majors

    pg_ctl = PG_ROOT / str(installed_majors()[0]) / "bin" / "pg_ctl"
    for pgdata in (c.var / "pg" / "data", c.var / "replica" / "data"):
        if (pgdata / "postmaster.pid").exists():
            owner = pgdata.stat().st_uid
            cmd = [str(pg_ctl), "-D", str(pgdata), "-m", "immediate", "-w", "stop"]
            if os.geteuid() == 0 and owner != 0:
                import pwd

                cmd = ["runuser", "-u", pwd.getpwuid(owner).pw_name, "--", *cmd]
            subprocess.run(cmd, capture_output=True, timeout=120)
    shutil.rmtree(c.root, ignore_errors=True)


def prepare_database(url: str):
    """Schema, the Haimen demo city, made-up calendar years, an inspector: (engine, city, token)."""
    from layers.core.db import make_engine, migrate
    from layers.core.users import add_user
    from layers.demo.haimen import load_haimen
    from tests.conftest import load_made_up_years

    engine = make_engine(url, pool_size=2)
    migrate(engine)
    with engine.begin() as conn:
        city = load_haimen(conn, cell_size=500.0, log=lambda *_: None)  # 500 m cells: a quick set-up
        load_made_up_years(conn)
        _, token = add_user(conn, "backup_inspector", "inspector")
    return engine, city, token
