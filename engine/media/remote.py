"""Inputs in object stores and other fsspec filesystems: `s3://bucket/photos/`,
`gs://…`, `az://…`, `memory://…`, `file://…`.

    for url, key, error in list_url("s3://bucket/photos/", ...):   # engine.media.inputs
        data = read_url(url)

fsspec (it comes with huggingface_hub) resolves the URL; the store's own package
(s3fs, gcsfs, adlfs…) must be installed for its protocol, and a missing one is named in
the item's error. A URL is the item's identity in the job store (resume works on it), its
key under the URL folder is its place under the output folder (so outputs are named as a
local run of the same tree would name them). Objects are read whole into memory by the
job's read-ahead thread (engine.jobs.job_loop.read_input): images are small next to what
decoding them costs, and every executor (local, Ray) reads through the same function.
"""
from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from typing import Any

from engine.errors import InputError

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
PROTOCOL_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
                     "abfs": "adlfs", "abfss": "adlfs", "http": "aiohttp", "https": "aiohttp",
                     "sftp": "paramiko", "ssh": "paramiko", "hdfs": "pyarrow"}


def is_url(text: str) -> bool:
    """`proto://…` (two letters at least, so a Windows drive `C:\\` is a path)."""
    return bool(URL.match(str(text)))


def _filesystem(url: str) -> tuple[Any, str]:
    protocol = url.split("://", 1)[0].lower()
    try:
        import fsspec
    except ImportError as exc:
        raise InputError(f"{url}: reading URLs needs fsspec (pip install fsspec).") from exc
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        package = PROTOCOL_PACKAGES.get(protocol, f"the fsspec package for {protocol}://")
        raise InputError(f"{url}: the {protocol}:// filesystem needs {package} "
                         f"(pip install {package}); {exc}") from exc
    except ValueError as exc:
        raise InputError(f"{url}: {protocol}:// is not a filesystem fsspec knows ({exc}).") from exc


def list_url(url: str, *, recursive: bool, is_media: Any, is_output: Any
             ) -> Iterator[tuple[str, str, str | None]]:
    """(URL, key under `url`, error) of each media object at `url` (one object, or every
    object under a prefix, sorted; hidden ones and Ocula's own output folders skipped); a
    problem is one entry whose error names the reason. engine.media.inputs makes the items."""
    try:
        fs, root = _filesystem(url)
        if fs.isdir(root):
            found = fs.find(root, maxdepth=None if recursive else 1, withdirs=False,
                            detail=False)
            base = root.rstrip("/")
            any_media = False
            for path in sorted(found):
                rel = posixpath.relpath(path, base)
                parts = rel.split("/")
                if any(p.startswith(".") for p in parts) or not is_media(path):
                    continue
                if any(is_output(p) for p in parts[:-1]):
                    continue
                any_media = True
                yield fs.unstrip_protocol(path), rel, None
            if not any_media:
                yield url, posixpath.basename(base) or "url", f"{url}: no image or video files there."
        elif fs.isfile(root):
            yield url, posixpath.basename(root), None
        else:
            yield (url, posixpath.basename(root.rstrip("/")) or "url",
                   f"{url}: not found (no such object or prefix).")
    except InputError as exc:
        yield url, "url", str(exc)
    except OSError as exc:  # the store refused (credentials, network): this input fails
        yield url, "url", f"{url}: cannot be listed ({exc})."


def read_url(url: str) -> bytes:
    """The object's bytes; InputError (naming the URL) when it cannot be read."""
    fs, path = _filesystem(url)
    try:
        with fs.open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError as exc:
        raise InputError(f"{url}: not found (it was listed, then removed?).") from exc
    except OSError as exc:
        raise InputError(f"{url}: cannot be read ({exc}).") from exc
