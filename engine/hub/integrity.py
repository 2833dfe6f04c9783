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
