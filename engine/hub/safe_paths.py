"""File names from a repo listing are untrusted: they must stay inside the cache.

A hostile or broken hub (or mirror) could list `../../.bashrc`, `/etc/passwd`, `C:\\x`
or send an ETag with path separators. huggingface_hub checks file names too; we refuse
before anything touches the disk, and also check the blob names we derive from ETags.
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from engine.hub.http_errors import UnsafeFilenameError

_BLOB_NAME = re.compile(r"^[0-9A-Za-z._-]{1,128}$")


def check_repo_filename(repo: str, name: str, root: Path | None = None) -> None:
    """Raise UnsafeFilenameError unless `name` is a plain relative path inside `root`."""
    reason = _unsafe_reason(name)
    if reason is None and root is not None:
        base = os.path.abspath(root)
        target = os.path.abspath(os.path.join(base, *name.split("/")))
        if os.path.commonpath([base, target]) != base or target == base:
            reason = "it resolves outside the download folder"
    if reason is not None:
        raise UnsafeFilenameError(
            f"Refusing to download '{repo}': its file list contains the name {name!r}, which "
            f"{reason}. Nothing was written. The repository (or mirror) is broken or hostile; "
            f"report it to its owner."
        )


def _unsafe_reason(name: str) -> str | None:
    if not name or "\x00" in name:
        return "is empty or contains a NUL byte"
    if "\\" in name:
        return "contains a backslash"
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).anchor:
        return "is an absolute path"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "contains '..', '.' or an empty path segment"
    if any(PureWindowsPath(part).drive for part in parts):
        return "contains a drive letter"
    return None


def check_blob_name(repo: str, filename: str, etag: str) -> None:
    """The blob file is named after the server's ETag: it must be a bare file name."""
    if not _BLOB_NAME.match(etag) or etag in (".", ".."):
        raise UnsafeFilenameError(
            f"Refusing to download {repo}/{filename}: the server sent the ETag {etag!r}, which "
            f"cannot be used as a cache file name. The endpoint does not behave like a "
            f"Hugging Face hub; check HF_ENDPOINT."
        )
