"""One repo file into the cache's blob store: resumable, verified, cancellable.

Why not `hf_hub_download` for the bytes: in huggingface_hub 2.x it writes each download
to a process-unique temporary file and deletes it on any failure, so an interrupted
download (cancel, crash, kill, lost connection) always restarts from zero. Here the bytes
go to `blobs/<etag>.incomplete` (a stable name, guarded by the same lock file
huggingface_hub uses for that blob) through huggingface_hub's own `http_get`, which
sends the `Range` header for the part already on disk. The finished file is checked
(size + sha256 or git sha1) and renamed to `blobs/<etag>`; `hf_hub_download` then finds
the blob and only links it into the snapshot (see fetch.py).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from engine.errors import Cancelled, IntegrityError
from engine.events import CancelToken
from engine.hub.http_errors import is_retryable
from engine.hub.integrity import Expected, verify
from engine.hub.progress import DownloadTracker
from engine.hub.safe_paths import check_blob_name

log = logging.getLogger(__name__)
T = TypeVar("T")

# http_get reads the body in chunks of huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE
# (10 MiB) and reports progress once per chunk; the cancel check rides on that report.
# At 1 MB/s a 10 MiB chunk means 10 s without progress or cancel. Also, when a
# connection drops, the bytes of the unfinished chunk are lost (http_get resumes from
# the last whole chunk written). 64 KiB is about one socket read: little loss, and the
# per-chunk Python overhead stays negligible.
CHUNK_BYTES = 64 * 1024
# Waits between attempts for answers worth retrying (5xx, 429, connection errors).
# Dropped connections mid-body are already resumed by http_get itself (5 times).
RETRY_WAITS_S: tuple[float, ...] = (0.5, 1.0, 2.0)
CANCELLED_MESSAGE = "Download cancelled. The partial file is kept; the next download resumes it."


@dataclass(frozen=True)
class RemoteFile:
    """A file as the hub lists it (model_info with files_metadata)."""

    path: str
    size: int | None
    blob_id: str | None = None
    lfs_sha256: str | None = None


@dataclass(frozen=True)
class RepoTarget:
    repo: str
    commit: str
    endpoint: str
    cache: Path
    token: str | None

    @property
    def storage(self) -> Path:
        return self.cache / ("models--" + self.repo.replace("/", "--"))


def _use_small_chunks() -> None:
    from huggingface_hub import constants

    constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, CHUNK_BYTES)


def sleep_unless_cancelled(seconds: float, cancel: CancelToken | None) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if cancel is not None and cancel.cancelled:
            raise Cancelled(CANCELLED_MESSAGE)
        time.sleep(min(0.05, left))


def with_retries(fn: Callable[[], T], cancel: CancelToken | None, what: str,
                 retry_if: Callable[[BaseException], bool] = is_retryable) -> T:
    """Call `fn`, retrying hub hiccups; the last error gets `ocula_attempts` set."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Cancelled:
            raise
        except Exception as exc:
            if attempt > len(RETRY_WAITS_S) or not retry_if(exc):
                exc.ocula_attempts = attempt  # type: ignore[attr-defined]
                raise
            wait = RETRY_WAITS_S[attempt - 1]
            log.warning("%s failed (%s); retrying in %.1f s", what, exc, wait)
            sleep_unless_cancelled(wait, cancel)


def run_cancellable(fn: Callable[[], T], cancel: CancelToken | None) -> T:
    """Run `fn` on a worker thread; raise Cancelled within ~50 ms of a cancel request.

    Network reads can block for the whole read timeout when a server stalls, so the
    caller must not depend on the worker noticing the token. The worker stops at its
    next progress report (the tracker checks the token) and releases its lock then.
    """
    if cancel is None:
        return fn()
    cancel.raise_if_cancelled()
    box: dict[str, object] = {}
    finished = threading.Event()

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            box["error"] = exc
        finally:
            finished.set()

    threading.Thread(target=work, name="ocula-hub-transfer", daemon=True).start()
    while not finished.wait(0.05):
        if cancel.cancelled:
            raise Cancelled(CANCELLED_MESSAGE)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def _headers(target: RepoTarget) -> dict[str, str]:
    from huggingface_hub.utils import build_hf_headers

    return build_hf_headers(token=target.token, library_name="ocula")


def file_metadata(target: RepoTarget, path: str):  # -> huggingface_hub.HfFileMetadata
    """HEAD /resolve: ETag (blob name), size and download location, as hf_hub_download does."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(target.repo, path, revision=target.commit, endpoint=target.endpoint)
    return get_hf_file_metadata(url, token=target.token, endpoint=target.endpoint,
                                retry_on_errors=False, library_name="ocula")


def partial_path(blob: Path) -> Path:
    return blob.with_name(blob.name + ".incomplete")


def download_blob(target: RepoTarget, file: RemoteFile, tracker: DownloadTracker,
                  cancel: CancelToken | None) -> Path:
    """Make sure `blobs/<etag>` holds `file`, verified; return the blob path."""
    from huggingface_hub.utils import WeakFileLock

    _use_small_chunks()
    label = f"{target.repo}/{file.path}"
    meta = with_retries(lambda: run_cancellable(lambda: file_metadata(target, file.path), cancel),
                        cancel, f"HEAD {label}")
    etag = meta.etag or ""
    check_blob_name(target.repo, file.path, etag)
    expected = Expected.from_hub(size=file.size if file.size is not None else meta.size,
                                 lfs_sha256=file.lfs_sha256, blob_id=file.blob_id, etag=etag)
    blob = target.storage / "blobs" / etag
    if blob.is_file():
        return blob
    blob.parent.mkdir(parents=True, exist_ok=True)
    lock = target.cache / ".locks" / target.storage.name / f"{etag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    headers = _headers(target)
    url = meta.location
    if urlsplit(url).netloc != urlsplit(target.endpoint).netloc:
        headers.pop("authorization", None)  # signed CDN URL: the token stays on the hub

    def transfer() -> None:
        with WeakFileLock(lock):
            if blob.is_file():  # another process finished it while we waited
                return
            _fetch_verified(url, headers, blob, expected, file.path, label, tracker, cancel)

    run_cancellable(transfer, cancel)
    return blob


def _fetch_verified(url: str, headers: dict[str, str], blob: Path, expected: Expected,
                    name: str, label: str, tracker: DownloadTracker,
                    cancel: CancelToken | None) -> None:
    partial = partial_path(blob)
    for from_scratch in (False, True):
        if from_scratch:
            partial.unlink(missing_ok=True)
        resumed_from = _partial_size(partial, expected.size)
        with_retries(lambda: _http_get_into(partial, url, headers, expected.size, name, tracker),
                     cancel, f"GET {label}", retry_if=_retry_get)
        try:
            verify(partial, expected, label=label)
        except IntegrityError as exc:
            partial.unlink(missing_ok=True)
            if resumed_from > 0 and not from_scratch:
                # The bytes kept from an earlier attempt may be the bad ones: once more from zero.
                log.warning("%s; downloading it again from the start", exc)
                continue
            raise IntegrityError(f"{exc} The file was deleted; run the download again. If "
                                 f"this repeats, the server serves a damaged file.") from None
        os.replace(partial, blob)
        return


def _retry_get(exc: BaseException) -> bool:
    """http_get already resumed dropped connections 5 times: only retry HTTP answers."""
    import httpx2

    handled_inside = (httpx2.ConnectError, httpx2.TimeoutException, httpx2.RemoteProtocolError)
    return is_retryable(exc) and not isinstance(exc, handled_inside)


def _partial_size(partial: Path, expected_size: int | None) -> int:
    try:
        size = partial.stat().st_size
    except FileNotFoundError:
        return 0
    if expected_size is not None and size > expected_size:
        partial.unlink()  # longer than the file: not ours to continue
        return 0
    return size


def _http_get_into(partial: Path, url: str, headers: dict[str, str], expected_size: int | None,
                   name: str, tracker: DownloadTracker) -> None:
    from huggingface_hub.file_download import http_get

    resume_size = _partial_size(partial, expected_size)
    tracker.set_file(name, resume_size, expected_size)
    # Append mode: http_get writes from the current position and sends Range for the rest.
    with open(partial, "ab") as f:
        http_get(url, f, resume_size=resume_size, headers=dict(headers),
                 expected_size=expected_size, displayed_filename=name,
                 tqdm_class=tracker.bar_class(name))
