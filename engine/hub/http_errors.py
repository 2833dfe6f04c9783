"""Hub failures as sentences for users, with huggingface_hub's exception as `__cause__`.

Each class subclasses an engine error (so the CLI/GUI treat it like one) and names the
repo, revision or file and the next step.
"""
from __future__ import annotations

import errno

from engine.errors import Cancelled, DownloadError, OculaError, OfflineError


class HubRepoNotFoundError(DownloadError):
    """The repo does not exist on the endpoint, or it is private."""


class HubRevisionNotFoundError(DownloadError):
    """The repo exists but the pinned branch, tag or commit does not."""


class GatedRepoAccessError(DownloadError):
    """The repo is gated and no token, or a token without access, was sent."""


class UnsafeFilenameError(DownloadError):
    """The repo lists a file name that would be written outside the cache folder."""


class CacheNotWritableError(DownloadError):
    """The cache folder (or a folder inside it) cannot be written."""


class DiskFullError(DownloadError):
    """The disk holding the cache ran out of space."""


class OfflineMissingFilesError(OfflineError):
    """Offline mode is on and these files of the repo are not in the cache."""

    def __init__(self, message: str, missing: list[str]):
        super().__init__(message)
        self.missing = missing


_RETRY_STATUS = (408, 429, 500, 502, 503, 504)
NO_SPACE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
READ_ONLY_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def is_retryable(exc: BaseException) -> bool:
    """Server hiccups (5xx, 429, 408) and transport errors are worth another attempt."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        return http_status(exc) in _RETRY_STATUS
    return isinstance(exc, httpx2.TransportError) and not isinstance(exc, httpx2.ProxyError)


def translate(
    exc: BaseException,
    *,
    repo: str,
    revision: str,
    endpoint: str,
    cache: str,
    filename: str | None = None,
    attempts: int = 1,
) -> OculaError:
    """Turn an exception raised while talking to the hub into an engine error.

    The caller raises the result `from exc`, so huggingface_hub's own type stays
    reachable as `__cause__`.
    """
    if isinstance(exc, OculaError):
        return exc
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import OfflineModeIsEnabled

    what = f"{repo}/{filename}" if filename else f"'{repo}'"
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    if isinstance(exc, GatedRepoError):  # subclass of RepositoryNotFoundError: test first
        if http_status(exc) == 403:
            return GatedRepoAccessError(
                f"Model '{repo}' is gated and the token sent has no access to it yet: accept "
                f"its terms on the hub ({endpoint}/{repo}) with the account of that token, "
                f"then retry (log in with `ocula models login` or set HF_TOKEN)."
            )
        return GatedRepoAccessError(
            f"Model '{repo}' is gated: accept its terms on the hub ({endpoint}/{repo}) and "
            f"log in with `ocula models login` or set HF_TOKEN."
        )
    if isinstance(exc, RepositoryNotFoundError):
        return HubRepoNotFoundError(
            f"Model repo '{repo}' was not found on {endpoint} (or it is private). Check the "
            f"id (`ocula models search`), or log in with `ocula models login` if it is private."
        )
    if isinstance(exc, RevisionNotFoundError):
        return HubRevisionNotFoundError(
            f"Revision '{revision}' of '{repo}' was not found on {endpoint}. Check the branch, "
            f"tag or commit, or remove the pin to use 'main'."
        )
    if isinstance(exc, RemoteEntryNotFoundError):
        return DownloadError(
            f"File {what} does not exist at revision '{revision}' on {endpoint}. "
            f"The catalog entry's file list may be out of date."
        )
    if isinstance(exc, (OfflineModeIsEnabled, LocalEntryNotFoundError)):
        return OfflineError(
            f"{what} is not in the cache ({cache}) and the hub cannot be used "
            f"(offline mode). Turn offline mode off (unset HF_HUB_OFFLINE) to download it."
        )
    if isinstance(exc, HfHubHTTPError):
        status = http_status(exc)
        return DownloadError(
            f"The hub at {endpoint} answered HTTP {status} for {what}{tries}. "
            f"Try again later, or check HF_ENDPOINT if you use a mirror."
        )
    if isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout)):
        return DownloadError(
            f"Cannot reach the hub at {endpoint} for {what}{tries} ({exc}). Check your "
            f"connection or HF_ENDPOINT, or turn on offline mode to use cached models."
        )
    if isinstance(exc, httpx2.TransportError):
        return DownloadError(
            f"The connection dropped while downloading {what}{tries} ({type(exc).__name__}: "
            f"{exc}). The partial file is kept: run the download again to resume it."
        )
    if isinstance(exc, OSError):
        if exc.errno in NO_SPACE_ERRNOS:
            return DiskFullError(
                f"Not enough disk space in {cache} to download {what}. Free some space, or "
                f"move the model cache to a larger disk (Settings ▸ Storage, "
                f"`ocula settings set cache_dir …` or HF_HUB_CACHE), then retry."
            )
        if exc.errno in READ_ONLY_ERRNOS or isinstance(exc, PermissionError):
            return CacheNotWritableError(
                f"The model cache {cache} is not writable ({exc.strerror or exc}), so {what} "
                f"cannot be downloaded. Fix its permissions or choose another cache folder "
                f"(Settings ▸ Storage, `ocula settings set cache_dir …` or HF_HUB_CACHE)."
            )
        if exc.errno is None and "Consistency check failed" in str(exc):
            return DownloadError(
                f"The download of {what} ended early{tries} (the server sent fewer bytes than "
                f"announced). The partial file is kept: run the download again to resume it."
            )
        return DownloadError(f"Downloading {what} failed: {exc}.")
    return DownloadError(f"Downloading {what} failed: {type(exc).__name__}: {exc}.")


__all__ = [
    "CacheNotWritableError",
    "Cancelled",
    "DiskFullError",
    "GatedRepoAccessError",
    "HubRepoNotFoundError",
    "HubRevisionNotFoundError",
    "OfflineMissingFilesError",
    "UnsafeFilenameError",
    "is_retryable",
    "translate",
]
