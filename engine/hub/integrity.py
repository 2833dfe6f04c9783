"""Checksums of downloaded files against what the hub reports.

LFS files (weights) are checked with sha256 (the lfs oid / X-Linked-ETag); small files
kept in git with their git blob sha1 (the blobId / ETag), so every file is verified.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import IntegrityError

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
_READ_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Expected:
    """What a file must be: size and one digest (sha256 for LFS, git sha1 otherwise)."""

    size: int | None
    sha256: str | None = None
    git_sha1: str | None = None

    @classmethod
    def from_hub(cls, *, size: int | None, lfs_sha256: str | None, blob_id: str | None,
                 etag: str | None) -> Expected:
        if lfs_sha256:
            return cls(size, sha256=lfs_sha256.lower())
        if etag and SHA256_RE.match(etag):
            return cls(size, sha256=etag)
        git_sha1 = blob_id or (etag if etag and SHA1_RE.match(etag) else None)
        return cls(size, git_sha1=git_sha1)


def file_digests(path: Path, *, sha256: bool, git_sha1: bool) -> tuple[str | None, str | None]:
    size = path.stat().st_size
    h256 = hashlib.sha256() if sha256 else None
    h1 = hashlib.sha1(b"blob %d\0" % size) if git_sha1 else None
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            if h256 is not None:
                h256.update(chunk)
            if h1 is not None:
                h1.update(chunk)
    return (h256.hexdigest() if h256 else None, h1.hexdigest() if h1 else None)


def verify(path: Path, expected: Expected, *, label: str) -> None:
    """Raise IntegrityError (naming `label`) unless `path` matches `expected`."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        raise IntegrityError(
            f"{label}: downloaded {size} bytes but the hub announced {expected.size}."
        )
    got256, got1 = file_digests(path, sha256=expected.sha256 is not None,
                                git_sha1=expected.git_sha1 is not None)
    if expected.sha256 is not None and got256 != expected.sha256:
        raise IntegrityError(
            f"{label}: sha256 {got256[:16]}… does not match the hub's {expected.sha256[:16]}…"
        )
    if expected.git_sha1 is not None and got1 != expected.git_sha1:
        raise IntegrityError(
            f"{label}: git blob sha1 {got1[:12]}… does not match the hub's {expected.git_sha1[:12]}…"
        )


# -- verified stamps: a blob hashed once is not hashed again on every load ------------------
STAMP_DIR = ".ocula-verified"  # inside models--org--name/, next to blobs/


def stamp_path(blob: Path) -> Path:
    return blob.parent.parent / STAMP_DIR / (blob.name + ".json")


def write_stamp(blob: Path, expected: Expected) -> None:
    """Record that `blob` (as it is now: size, mtime) was verified against `expected`."""
    import json
    import os

    try:
        st = blob.stat()
        path = stamp_path(blob)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                   "sha256": expected.sha256, "git_sha1": expected.git_sha1}))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only shared cache: it is verified again next time


def read_stamp(blob: Path) -> dict | None:
    import json

    try:
        data = json.loads(stamp_path(blob).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stamp_state(blob: Path) -> tuple[str, str]:
    """("verified" | "changed" | "unverified" | "missing", why) from the stamp alone: the
    cheap check on load (size and mtime, no hashing)."""
    try:
        st = blob.stat()
    except OSError:
        return "missing", "the file is missing"
    stamp = read_stamp(blob)
    if stamp is None:
        return "unverified", "not verified yet"
    if stamp.get("size") != st.st_size:
        return "changed", f"{st.st_size} bytes, was {stamp.get('size')} when verified"
    if stamp.get("mtime_ns") != st.st_mtime_ns:
        return "changed", "modified since it was verified"
    return "verified", ""


def check_blob(blob: Path, expected: Expected, *, rehash: bool) -> str | None:
    """None if `blob` is `expected` (stamping it), else why not. Without `rehash`, a blob
    whose stamp still matches its size and mtime is trusted without reading it."""
    try:
        size = blob.stat().st_size
    except OSError:
        return "the file is missing"
    if expected.size is not None and size != expected.size:
        return f"{size} bytes, the hub says {expected.size}"
    if not rehash:
        state, why = stamp_state(blob)
        stamp = read_stamp(blob) or {}
        if state == "verified" and stamp.get("sha256") == expected.sha256 \
                and stamp.get("git_sha1") == expected.git_sha1:
            return None
        if state == "changed":
            return why
    got256, got1 = file_digests(blob, sha256=expected.sha256 is not None,
                                git_sha1=expected.git_sha1 is not None)
    if expected.sha256 is not None and got256 != expected.sha256:
        return "its sha256 does not match the hub's"
    if expected.git_sha1 is not None and got1 != expected.git_sha1:
        return "its git sha1 does not match the hub's"
    write_stamp(blob, expected)
    return None
