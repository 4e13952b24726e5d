"""Uploaded files, saved to a folder with their type, size and emptiness checked (4xx on failure)."""

from __future__ import annotations

from pathlib import Path

from fastapi import HTTPException, UploadFile

from citygrid import settings
from layers.field import reports as lreports


def save_upload(upload: UploadFile, dest: Path, allowed: set[str]) -> Path:
    """Write ``upload`` into folder ``dest`` under its own base name; 415 for a suffix not in
    ``allowed``, 413 above CITYGRID_API_MAX_UPLOAD_BYTES (counted while streaming), 422 when empty."""
    name = Path(upload.filename or "upload").name
    suffix = Path(name).suffix.lower()
    if suffix not in allowed:
        raise HTTPException(415, f"unsupported file type '{suffix or name}': use {', '.join(sorted(allowed))}")
    path = dest / name
    limit = settings.api().max_upload_bytes
    size = 0
    with path.open("wb") as out:
        while chunk := upload.file.read(1 << 20):
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"upload larger than {limit} bytes")
            out.write(chunk)
    if size == 0:
        raise HTTPException(422, f"the uploaded file '{name}' is empty")
    return path


def read_photo_upload(i: int, f: UploadFile, cap: int) -> bytes:
    """The bytes of photo ``i`` of a multipart upload; 413 above ``cap`` bytes (read at most cap + 1)."""
    data = f.file.read(cap + 1)
    if len(data) > cap:
        raise HTTPException(413, f"{lreports.photo_label(i, f.filename)} is larger than {cap:,} bytes")
    return data
