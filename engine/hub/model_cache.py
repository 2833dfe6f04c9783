"""Where downloads live and what is installed: the Hugging Face cache layout.

The cache is huggingface_hub's own (models--org--name/{blobs,snapshots,refs}), so a model
fetched by Ocula is also found by transformers and the `hf` CLI, and the other way round.
Every call resolves the folder afresh (settings, then HF_HUB_CACHE / HF_HOME), so moving
the cache takes effect without a restart.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from engine.catalog.card import ModelCard
from engine.settings import Settings

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def cache_dir(settings: Settings | None = None) -> Path:
    """The model cache (engine.paths.model_cache_dir, with the settings' cache folder)."""
    from engine.paths import model_cache_dir

    return model_cache_dir(settings.cache_dir if settings is not None else None)


def endpoint() -> str:
    """The hub endpoint (HF_ENDPOINT, read at call time, so mirrors apply immediately)."""
    env = os.environ.get("HF_ENDPOINT", "").strip()
    if env:
        return env.rstrip("/")
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def repo_folder(cache: Path, repo: str) -> Path:
    """models--org--name, as huggingface_hub names it."""
    return cache / ("models--" + repo.replace("/", "--"))


def cached_commit(cache: Path, repo: str, revision: str | None) -> str | None:
    """The commit a revision points to in the cache (a sha is its own commit)."""
    revision = revision or "main"
    if COMMIT_RE.match(revision):
        return revision
    ref = repo_folder(cache, repo) / "refs" / revision
    try:
        commit = ref.read_text().strip()
    except OSError:
        return None
    return commit if COMMIT_RE.match(commit) else None


def cached_listing(cache: Path, repo: str, commit: str) -> list[str] | None:
    """File names of the repo at `commit`, from huggingface_hub's cached tree listing."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        return [f.path for f in get_cached_repo_tree(repo, revision=commit, cache_dir=cache)]
    except (CachedRepoTreeNotFoundError, OSError, ValueError):
        return None


def missing_files(
    cache: Path, repo: str, revision: str | None, patterns: list[str] | None
) -> tuple[Path | None, list[str]]:
    """(snapshot folder, files the cache lacks) for `repo`@`revision` filtered by `patterns`.

    With no cached listing (a repo cached by something that kept none), each pattern
    must match at least one file; unmatched patterns are reported as missing.
    """
    from huggingface_hub.utils import filter_repo_objects

    commit = cached_commit(cache, repo, revision)
    if commit is None:
        return None, list(patterns) if patterns else ["(all files)"]
    snapshot = repo_folder(cache, repo) / "snapshots" / commit
    listing = cached_listing(cache, repo, commit)
    if listing is not None:
        wanted = list(filter_repo_objects(listing, allow_patterns=patterns))
        missing = [name for name in wanted if not (snapshot / name).is_file()]
        return snapshot, missing
    present = _files_under(snapshot)
    if not present:
        return snapshot, list(patterns) if patterns else ["(all files)"]
    missing = [p for p in patterns or () if not list(filter_repo_objects(present, allow_patterns=[p]))]
    return snapshot, missing


def _files_under(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]


def _card_patterns(card: ModelCard) -> list[str] | None:
    return list(card.files) or None


def is_installed(card: ModelCard, settings: Settings | None = None) -> bool:
    """All of the card's files are in the cache (or its local path exists, or, for weights
    that ship in a Python package, the package is importable and holds every file)."""
    if card.package:
        from engine.catalog import packaged

        return packaged.is_installed(card)
    if card.local_path:
        return Path(card.local_path).exists()
    if not card.repo:
        return False
    snapshot, missing = missing_files(cache_dir(settings), card.repo, card.revision,
                                      _card_patterns(card))
    return snapshot is not None and snapshot.is_dir() and not missing


def disk_usage(card: ModelCard, settings: Settings | None = None) -> int:
    """Bytes of the card's installed files (blobs shared by several files count once)."""
    if card.package:
        from engine.catalog import packaged

        return packaged.disk_usage(card)
    from huggingface_hub.utils import filter_repo_objects

    if card.local_path:
        path = Path(card.local_path)
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0
    if not card.repo:
        return 0
    cache = cache_dir(settings)
    commit = cached_commit(cache, card.repo, card.revision)
    if commit is None:
        return 0
    snapshot = repo_folder(cache, card.repo) / "snapshots" / commit
    names = list(filter_repo_objects(_files_under(snapshot), allow_patterns=_card_patterns(card)))
    blobs = {(snapshot / name).resolve() for name in names}
    return sum(b.stat().st_size for b in blobs if b.is_file())


def _folder_bytes(folder: Path) -> int:
    if not folder.exists():
        return 0
    total = 0
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def delete(card: ModelCard, settings: Settings | None = None) -> int:
    """Delete the card's revision from the cache; return the bytes freed.

    Uses huggingface_hub's cache manager, which keeps blobs other revisions still use.
    When no revision of the repo is left, the whole repo folder goes, partial downloads
    included. Imported local models are not touched (they are the user's files). Models whose
    weights ship in a Python package are refused (UsageError): pip owns those files.
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    if card.package:
        from engine.errors import UsageError

        raise UsageError(
            f"Model '{card.id}' is not in the model cache: its weights ship inside the "
            f"{card.package} package, so there is nothing to delete. To remove it, uninstall "
            f"the package (pip uninstall {card.package})."
        )

    if card.local_path or not card.repo:
        return 0
    cache = cache_dir(settings)
    folder = repo_folder(cache, card.repo)
    commit = cached_commit(cache, card.repo, card.revision)
    if commit is None or not folder.exists():
        return 0
    before = _folder_bytes(folder)
    try:
        info = scan_cache_dir(cache)
    except CacheNotFound:
        return 0
    known = {rev.commit_hash for repo in info.repos for rev in repo.revisions}
    if commit in known:
        info.delete_revisions(commit).execute()
    # huggingface_hub keeps the commit's cached tree listing; it describes nothing now.
    (folder / "trees" / f"{commit}.json").unlink(missing_ok=True)
    snapshots = folder / "snapshots"
    if folder.exists() and (not snapshots.exists() or not any(snapshots.iterdir())):
        shutil.rmtree(folder, ignore_errors=True)
    return before - _folder_bytes(folder)


@dataclass
class InstalledRevision:
    commit: str
    refs: list[str]
    size: int
    files: list[str]


@dataclass
class InstalledRepo:
    repo: str
    size: int
    revisions: list[InstalledRevision] = field(default_factory=list)
    path: Path | None = None


def installed_repos(settings: Settings | None = None) -> list[InstalledRepo]:
    """Model repos in the cache, largest first (from huggingface_hub's cache scan)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir(settings))
    except CacheNotFound:
        return []
    repos = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        revisions = [
            InstalledRevision(
                commit=rev.commit_hash,
                refs=sorted(rev.refs),
                size=rev.size_on_disk,
                files=sorted(f.file_path.relative_to(rev.snapshot_path).as_posix()
                             for f in rev.files),
            )
            for rev in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True)
        ]
        repos.append(InstalledRepo(repo=repo.repo_id, size=repo.size_on_disk,
                                   revisions=revisions, path=repo.repo_path))
    return sorted(repos, key=lambda r: r.size, reverse=True)
