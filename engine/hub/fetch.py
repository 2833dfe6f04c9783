"""fetch / fetch_repo: a card's files from the hub (or the cache) to a snapshot folder.

Steps: list the repo at the revision (model_info with file metadata: sizes, blob ids,
LFS sha256) → refuse unsafe names → download missing blobs (transfer.py: resumable,
verified, cancellable) → let huggingface_hub's `snapshot_download` register them: every
blob is already present, so it only links them into `snapshots/<commit>/`, records the
ref and caches the tree listing (which offline mode uses to name missing files). A file
appears in the snapshot only once it is complete and verified, so a cancelled, failed
or killed download never looks installed.
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from engine.catalog.card import ModelCard
from engine.errors import Cancelled, CatalogError, DownloadError, IntegrityError, OculaError
from engine.events import CancelToken, ProgressCallback
from engine.hub.model_cache import cache_dir, endpoint, missing_files, repo_folder
from engine.hub.http_errors import (
    NO_SPACE_ERRNOS,
    CacheNotWritableError,
    OfflineMissingFilesError,
    is_retryable,
    translate,
)
from engine.hub.integrity import Expected, check_blob, stamp_state, write_stamp
from engine.hub.progress import DownloadTracker, quiet_tqdm_class
from engine.hub.safe_paths import check_repo_filename
from engine.hub.transfer import (
    RemoteFile,
    RepoTarget,
    download_blob,
    run_cancellable,
    with_retries,
)
from engine.settings import Settings

log = logging.getLogger(__name__)


def fetch(
    card: ModelCard,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    settings: Settings | None = None,
    token: str | None = None,
    repair: bool = True,
    on_notice: Callable[[str], None] | None = None,
) -> Path:
    """The local folder (or file) holding the card's model, downloading what is missing.

    Cached files are verified every time (size; sha256 for LFS files, git sha1 for the
    others, hashed again with `repair`, else trusted while their verified stamp matches
    their size and mtime). A damaged one is downloaded again with `repair` (`ocula models
    pull`, and `on_notice` is told), or refused without it (loading a model).

    A card whose weights ship in a Python package (`card.package`) never touches the hub:
    its folder inside the installed package, or MissingPackageError naming the pip command.
    """
    if card.package:
        from engine.catalog import packaged

        return packaged.locate(card)
    if card.local_path:
        path = Path(card.local_path).expanduser()
        if not path.exists():
            raise OculaError(
                f"Model '{card.id}' was imported from {path}, which no longer exists. "
                f"Put the file back or import the model again."
            )
        return path
    if not card.repo:
        raise CatalogError(f"Model '{card.id}' has neither a hub repo nor a local path.")
    return fetch_repo(card.repo, card.revision, list(card.files) or None, progress=progress,
                      cancel=cancel, settings=settings, token=token, repair=repair,
                      on_notice=on_notice, model_id=card.id)


def fetch_repo(
    repo: str,
    revision: str | None = None,
    allow_patterns: Iterable[str] | str | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    settings: Settings | None = None,
    token: str | None = None,
    repair: bool = True,
    on_notice: Callable[[str], None] | None = None,
    model_id: str | None = None,
) -> Path:
    """Download (or find in the cache) `repo` at `revision`; return the snapshot folder.

    `allow_patterns` are huggingface_hub allow-patterns (None = whole repo). `progress`
    may be called from a download thread.
    """
    settings = settings if settings is not None else Settings.load()
    cache = cache_dir(settings)
    revision = revision or "main"
    patterns = [allow_patterns] if isinstance(allow_patterns, str) else (
        list(allow_patterns) if allow_patterns else None)
    hub = endpoint()
    context = {"repo": repo, "revision": revision, "endpoint": hub, "cache": str(cache)}
    if cancel is not None:
        cancel.raise_if_cancelled()
    model_id = model_id or repo
    if settings.effective_offline:
        return _checked_stamps(_from_cache_offline(repo, revision, patterns, cache),
                               patterns, model_id)

    try:
        files, commit = with_retries(
            lambda: run_cancellable(lambda: _list_repo(repo, revision, hub, token), cancel),
            cancel, f"listing {repo}@{revision}",
            retry_if=lambda exc: is_retryable(exc) and not _unreachable(exc))
    except (Cancelled, OculaError):
        raise
    except Exception as exc:
        if _unreachable(exc):
            return _checked_stamps(
                _from_cache_unreachable(repo, revision, patterns, cache, hub, exc),
                patterns, model_id)
        raise translate(exc, **context, attempts=getattr(exc, "ocula_attempts", 1)) from exc

    from huggingface_hub.utils import filter_repo_objects

    selected = list(filter_repo_objects(files, allow_patterns=patterns, key=lambda f: f.path))
    storage = repo_folder(cache, repo)
    snapshot = storage / "snapshots" / commit
    for file in selected:
        check_repo_filename(repo, file.path, snapshot)
    if patterns and not selected:
        raise DownloadError(
            f"No file of '{repo}' at revision '{revision}' matches {patterns}. The catalog "
            f"entry's file list may be out of date."
        )

    repaired = _verify_cached(selected, snapshot, repair=repair, model_id=model_id)
    todo = [f for f in selected if not (snapshot / f.path).is_file()]
    tracker = DownloadTracker({f.path: f.size for f in selected}, progress, cancel, label=repo)
    for file in selected:
        if file not in todo:
            tracker.finish_file(file.path)
    if not todo:
        _record_ref(storage, revision, commit)
        return snapshot

    _ensure_writable(cache, repo)
    target = RepoTarget(repo=repo, commit=commit, endpoint=hub, cache=cache, token=token)
    for file in todo:
        if cancel is not None:
            cancel.raise_if_cancelled()
        try:
            blob = download_blob(target, file, tracker, cancel)
            write_stamp(blob, _expected(file))  # verified by download_blob just now
        except (Cancelled, OculaError):
            raise
        except Exception as exc:
            raise translate(exc, **context, filename=file.path,
                            attempts=getattr(exc, "ocula_attempts", 1)) from exc
        tracker.finish_file(file.path)

    _register(repo, commit, patterns, cache, hub, token, context)
    _record_ref(storage, revision, commit)
    missing = [f.path for f in selected if not (snapshot / f.path).is_file()]
    if missing:
        raise DownloadError(f"'{repo}' was downloaded but {', '.join(missing)} did not land in "
                            f"{snapshot}. Run the download again.")
    for name, why in repaired.items():
        message = (f"{repo}/{name}: the cached copy was damaged ({why}); downloaded it again "
                   f"(repaired).")
        log.warning("%s", message)
        if on_notice is not None:
            on_notice(message)
    return snapshot


def _expected(file: RemoteFile) -> Expected:
    return Expected.from_hub(size=file.size, lfs_sha256=file.lfs_sha256, blob_id=file.blob_id,
                             etag=None)


def _verify_cached(selected: list[RemoteFile], snapshot: Path, *, repair: bool,
                   model_id: str) -> dict[str, str]:
    """Check every cached file against the hub's listing. With `repair`, a damaged one is
    deleted (so it is downloaded again) and returned {name: why}; else it is refused."""
    repaired: dict[str, str] = {}
    for file in selected:
        link = snapshot / file.path
        if not link.is_file():
            continue
        blob = link.resolve()
        why = check_blob(blob, _expected(file), rehash=repair)
        if why is None:
            continue
        if not repair:
            raise IntegrityError(
                f"Model '{model_id}': the cached file {file.path} ({blob}) is not what was "
                f"downloaded ({why}); re-run `ocula models pull {model_id}` to repair it.")
        for path in (blob, link):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        repaired[file.path] = why
    return repaired


def _checked_stamps(snapshot: Path, patterns: list[str] | None, model_id: str) -> Path:
    """Offline: no listing to compare with, but a file changed since it was verified is
    still refused (size and mtime against its stamp)."""
    from huggingface_hub.utils import filter_repo_objects

    names = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]
    for name in filter_repo_objects(names, allow_patterns=patterns):
        blob = (snapshot / name).resolve()
        state, why = stamp_state(blob)
        if state == "changed":
            raise IntegrityError(
                f"Model '{model_id}': the cached file {name} ({blob}) changed since it was "
                f"verified ({why}); re-run `ocula models pull {model_id}` to repair it.")
    return snapshot


def cache_state(card: ModelCard, settings: Settings | None = None) -> dict[str, str]:
    """{file: "verified" | "changed" | "unverified" | "missing"} for a hub card, from the
    cache alone (no network): what `ocula doctor --model` shows."""
    from huggingface_hub.utils import filter_repo_objects

    from engine.hub.model_cache import cached_commit, cached_listing

    if not card.repo or card.local_path or card.package:
        return {}
    cache = cache_dir(settings)
    commit = cached_commit(cache, card.repo, card.revision)
    if commit is None:
        return {name: "missing" for name in card.files} or {"(all files)": "missing"}
    snapshot = repo_folder(cache, card.repo) / "snapshots" / commit
    listing = cached_listing(cache, card.repo, commit)
    if listing is None:
        listing = ([p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*")
                    if p.is_file()] if snapshot.is_dir() else [])
    states = {}
    for name in filter_repo_objects(listing, allow_patterns=list(card.files) or None):
        link = snapshot / name
        states[name] = stamp_state(link.resolve())[0] if link.is_file() else "missing"
    return states


def _list_repo(repo: str, revision: str, hub: str, token: str | None) -> tuple[list[RemoteFile], str]:
    from huggingface_hub import HfApi

    info = HfApi(endpoint=hub, token=token, library_name="ocula").model_info(
        repo, revision=revision, files_metadata=True)
    if not info.sha:
        raise DownloadError(f"The hub at {hub} did not report a commit for '{repo}' at "
                            f"'{revision}'; check HF_ENDPOINT.")
    files = [
        RemoteFile(
            path=s.rfilename,
            size=s.lfs.size if s.lfs is not None else s.size,
            blob_id=s.blob_id,
            lfs_sha256=s.lfs.sha256 if s.lfs is not None else None,
        )
        for s in info.siblings or []
    ]
    return files, info.sha


def _register(repo: str, commit: str, patterns: list[str] | None, cache: Path, hub: str,
              token: str | None, context: dict) -> None:
    """Link the verified blobs into snapshots/<commit>/ with huggingface_hub itself."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo, revision=commit, cache_dir=cache, allow_patterns=patterns,
                          endpoint=hub, token=token, tqdm_class=quiet_tqdm_class(),
                          library_name="ocula", max_workers=4)
    except Exception as exc:
        cause = exc
        from huggingface_hub.errors import LocalEntryNotFoundError

        if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is not None:
            cause = exc.__cause__  # snapshot_download wraps the real failure
        error = translate(cause, **context)
        raise error from exc


def _record_ref(storage: Path, revision: str, commit: str) -> None:
    """refs/<branch> -> commit, so offline mode finds the snapshot by branch name."""
    if revision == commit:
        return
    ref = storage / "refs" / revision
    try:
        if ref.is_file() and ref.read_text() == commit:
            return
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f"{ref.name}.{os.getpid()}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, ref)
    except OSError as exc:  # a read-only shared cache still serves its snapshots
        log.warning("could not record ref %s -> %s: %s", ref, commit, exc)


def _ensure_writable(cache: Path, repo: str) -> None:
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ocula-write-check-", dir=cache)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if exc.errno in NO_SPACE_ERRNOS:
            raise translate(exc, repo=repo, revision="", endpoint="", cache=str(cache)) from exc
        raise CacheNotWritableError(
            f"The model cache {cache} is not writable ({exc.strerror or exc}), so '{repo}' "
            f"cannot be downloaded. Fix its permissions or choose another cache folder "
            f"(Settings ▸ Storage, `ocula settings set cache_dir …` or HF_HUB_CACHE)."
        ) from exc


def _unreachable(exc: BaseException) -> bool:
    import httpx2
    from huggingface_hub.utils import OfflineModeIsEnabled

    return isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout, OfflineModeIsEnabled))


def _from_cache_offline(repo: str, revision: str, patterns: list[str] | None, cache: Path) -> Path:
    snapshot, missing = missing_files(cache, repo, revision, patterns)
    if snapshot is not None and snapshot.is_dir() and not missing:
        return snapshot
    cause = _hf_local_error(repo, revision, patterns, cache)
    raise OfflineMissingFilesError(
        f"Offline mode is on and '{repo}' (revision {revision}) is not complete in the cache "
        f"{cache}. Missing: {', '.join(missing)}. Turn offline mode off (Settings, or unset "
        f"HF_HUB_OFFLINE) to download them.",
        missing,
    ) from cause


def _from_cache_unreachable(repo: str, revision: str, patterns: list[str] | None, cache: Path,
                            hub: str, exc: BaseException) -> Path:
    snapshot, missing = missing_files(cache, repo, revision, patterns)
    if snapshot is not None and snapshot.is_dir() and not missing:
        log.warning("hub %s unreachable (%s); using the cached snapshot of %s", hub, exc, repo)
        return snapshot
    raise DownloadError(
        f"Cannot reach the hub at {hub} ({exc.__class__.__name__}) and '{repo}' (revision "
        f"{revision}) is not complete in the cache. Missing: {', '.join(missing)}. Check your "
        f"connection or HF_ENDPOINT."
    ) from exc


def _hf_local_error(repo: str, revision: str, patterns: list[str] | None,
                    cache: Path) -> BaseException | None:
    """huggingface_hub's own verdict on the cache (kept as __cause__ of our error)."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo, revision=revision, cache_dir=cache, allow_patterns=patterns,
                          local_files_only=True, tqdm_class=quiet_tqdm_class())
    except Exception as exc:  # noqa: BLE001 - whatever it raises is the verdict we keep
        return exc
    return None
