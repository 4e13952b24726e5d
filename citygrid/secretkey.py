"""The server's secret key: ``CITYGRID_SECRET_KEY``, or a key generated on first use in
``<var_dir>/secret_key`` (mode 0600).

It keys the HMAC of the citizens' query codes (layers.cases.workflow.keyed_query_code). It never goes into
the database: a copy of the database must not be enough to try the 10^6 query codes of a case.
Losing it (or changing it) makes every query code issued so far unverifiable: keep the file with the
service's data, or set the variable from a secret store.
"""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path

from citygrid import settings

MIN_LENGTH = 32


class SecretKeyError(RuntimeError):
    pass


def key_file() -> Path:
    return settings.paths().var_dir / "secret_key"


@lru_cache
def server_key() -> bytes:
    """The key as bytes (cached per process)."""
    given = settings.auth().secret_key
    if given is not None:
        key = given.get_secret_value().strip()
        if len(key) < MIN_LENGTH:
            raise SecretKeyError(f"CITYGRID_SECRET_KEY must have at least {MIN_LENGTH} characters")
        return key.encode()
    path = key_file()
    if not path.exists():
        _create(path)
    key = path.read_text(encoding="ascii").strip()
    if len(key) < MIN_LENGTH:
        raise SecretKeyError(f"{path} holds no key of at least {MIN_LENGTH} characters: restore it from a backup")
    return key.encode()


def _create(path: Path) -> None:
    """Write a new key atomically: written whole to a temporary file, then linked to its name, which
    fails if another process made the key first (that key is then used)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_urlsafe(48) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
