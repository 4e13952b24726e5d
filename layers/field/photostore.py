"""Content-addressed photo store under the data directory, with crash-safe staging.

Layout (``<data_dir>/photos``)::

    original/ab/<sha256>   the uploaded bytes, private (never served publicly)
    public/ab/<sha256>     the public copy: auto-rotated, ≤ 2048 px, no EXIF (gis.photos.public_copy)
    thumb/ab/<sha256>      a small thumbnail
    tmp/<kind>.<sha256>.<host>p<pid>-<random>   files staged by a request whose transaction has not committed yet

The rule that keeps files and rows together: a request *stages* its files (written and fsynced under
``tmp/``), commits its transaction, then *promotes* them (an atomic rename into place). A crash
before the commit leaves staged files no row refers to; a crash between commit and rename leaves
staged files a committed row does refer to. :func:`recover` (run when the server starts) promotes the
second kind and deletes the first, and deletes any stored file no row refers to: no orphan survives,
no acknowledged photo is lost.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, text

KINDS = ("original", "public", "thumb")
#: kind -> column of field_photo that refers to a file of that kind
COLUMNS = {"original": "sha256", "public": "public_sha256", "thumb": "thumb_sha256"}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class Staged:
    """Files written under tmp/ for one request, waiting for its commit."""

    store: PhotoStore
    files: list[tuple[Path, Path]] = field(default_factory=list)  # (tmp, final)

    def promote(self) -> None:
        """Move every staged file into place (after the commit)."""
        dirs = set()
        for tmp, final in self.files:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)  # same content when it exists already: content-addressed
            dirs.add(final.parent)
        for d in dirs:
            _fsync_dir(d)
        self.files.clear()

    def discard(self) -> None:
        """Delete the staged files (the transaction was rolled back or the request was a retry)."""
        for tmp, _ in self.files:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        self.files.clear()


class PhotoStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.tmp = self.root / "tmp"

    @classmethod
    def default(cls) -> PhotoStore:
        from citygrid import settings

        return cls(settings.paths().data_dir / "photos")

    def path(self, kind: str, sha: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown photo kind {kind!r}")
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError("not a sha256 hex digest")
        return self.root / kind / sha[:2] / sha

    def stage(self, staged: Staged, kind: str, sha: str, data: bytes) -> None:
        """Write ``data`` to a temporary file (fsynced) to be promoted to ``kind/sha`` after commit."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        final = self.path(kind, sha)
        tmp = self.tmp / f"{kind}.{sha}.{_HOST}p{os.getpid()}-{secrets.token_hex(6)}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        staged.files.append((tmp, final))

    def new_stage(self) -> Staged:
        return Staged(self)

    # A store belongs to one database: its recovery deletes files that database does not refer to,
    # so it must never run against another one (a test database, say, against the demo's photos).
    @property
    def owner_file(self) -> Path:
        return self.root / ".database"

    def owner(self) -> str | None:
        try:
            return self.owner_file.read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def claim(self, conn: Connection) -> None:
        """Mark the store as this database's (first write), or refuse a store of another database."""
        me = database_identity(conn)
        mine = self.owner()
        if mine is None:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / f".database.{secrets.token_hex(4)}"
            tmp.write_text(me, encoding="utf-8")
            os.replace(tmp, self.owner_file)
        elif mine != me:
            from layers.core.errors import Conflict

            raise Conflict(f"the photo store {self.root} belongs to database '{mine}', not '{me}': "
                           "set CITYGRID_DATA_DIR to this database's data directory")

    def read(self, kind: str, sha: str) -> bytes:
        return self.path(kind, sha).read_bytes()

    def stored_files(self) -> list[tuple[str, str, Path]]:
        out = []
        for kind in KINDS:
            base = self.root / kind
            if not base.is_dir():
                continue
            for p in base.glob("*/*"):
                if p.is_file():
                    out.append((kind, p.name, p))
        return out

    def staged_files(self) -> list[Path]:
        return [p for p in self.tmp.glob("*") if p.is_file()] if self.tmp.is_dir() else []


def database_identity(conn: Connection) -> str:
    return conn.execute(text("SELECT current_database()")).scalar_one()


def referenced(conn: Connection) -> dict[str, set[str]]:
    """kind -> the sha256 digests rows refer to."""
    out: dict[str, set[str]] = {}
    for kind, col in COLUMNS.items():
        out[kind] = {r[0] for r in conn.execute(text(f"SELECT DISTINCT {col} FROM field_photo"))}
    return out


#: At start-up, files younger than this are left alone: with several worker processes (or hosts) one
#: may start while another has an upload in flight, whose staged file has no committed row yet. A staged
#: file whose writer was a process of this host that is gone (killed, crashed) is settled at once.
STARTUP_GRACE_S = 600.0

#: Who stages a file: this host and process (in the staged file's name), so that recovery can tell an
#: upload in flight in another live worker from the leftovers of a process that died.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _writer_gone(name: str) -> bool:
    """True when the staged file ``name`` was written by a process of this host that no longer runs."""
    owner = name.rsplit(".", 1)[-1].split("-", 1)[0]
    host, sep, pid = owner.partition("p")
    if not sep or host != _HOST or not pid.isdigit():
        return False  # older names, or another host: only its age can tell
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def recover(conn: Connection, store: PhotoStore, refs: dict[str, set[str]] | None = None,
            min_age_s: float = 0.0) -> dict[str, int]:
    """Bring the files in line with the committed rows (run at start, before serving uploads).
    Files modified less than ``min_age_s`` seconds ago are not touched (another process's upload).

    Staged files a committed row refers to are promoted; other staged files and stored files no row
    refers to are deleted. Returns counts: promoted, deleted_staged, deleted_orphans. A store that belongs
    to another database (or to none: nothing was ever written) is left alone (``skipped``). ``refs``
    (kind -> digests) are the rows of the store's table: by default the reports' (``field_photo``).
    """
    if store.owner() != database_identity(conn):
        return {"skipped": 1}
    refs = referenced(conn) if refs is None else refs
    counts = {"promoted": 0, "deleted_staged": 0, "deleted_orphans": 0}
    import time

    young = time.time() - min_age_s

    def settled(p: Path) -> bool:
        try:
            return min_age_s <= 0 or p.stat().st_mtime < young
        except FileNotFoundError:
            return False

    for tmp in store.staged_files():
        if not (settled(tmp) or _writer_gone(tmp.name)):
            continue
        parts = tmp.name.split(".")
        kind, sha = (parts[0], parts[1]) if len(parts) == 3 else (None, None)
        if kind in KINDS and sha in refs[kind]:
            final = store.path(kind, sha)
            if final.exists():
                tmp.unlink()
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
                counts["promoted"] += 1
            continue
        tmp.unlink(missing_ok=True)
        counts["deleted_staged"] += 1
    for kind, sha, path in store.stored_files():
        if sha not in refs[kind] and settled(path):
            path.unlink(missing_ok=True)
            counts["deleted_orphans"] += 1
    return counts


def recover_at_start(engine, table: str, store: PhotoStore, refs=None, log=None) -> dict | None:
    """:func:`recover` for a store whose table exists, in a transaction of its own; ``refs(conn)``
    gives the digests its table refers to (default: the reports'). Never raises: a server whose
    database is down still starts, and says why nothing was recovered."""
    try:
        with engine.begin() as conn:
            if not conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar_one():
                return None
            counts = recover(conn, store, refs(conn) if refs else None, min_age_s=STARTUP_GRACE_S)
    except Exception as e:  # noqa: BLE001 - a server without its database still starts
        if log:
            log.warning("%s: photo recovery skipped: %s", table, e)
        return None
    if log:
        log.info("%s: photo store recovered: %s", table, counts)
    return counts
