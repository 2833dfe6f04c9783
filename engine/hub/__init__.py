"""Downloads on huggingface_hub: progress, cancel, resume, verify, cache, offline, tokens.

Importing this package is cheap: huggingface_hub is imported inside the functions.
"""
from engine.hub.auth import (
    clear_token,
    migrate_legacy_token,
    save_token,
    saved_token,
    stored_token,
    token_path,
    whoami,
)
from engine.hub.model_cache import (
    InstalledRepo,
    InstalledRevision,
    cache_dir,
    delete,
    disk_usage,
    endpoint,
    installed_repos,
    is_installed,
)
from engine.hub.http_errors import (
    CacheNotWritableError,
    DiskFullError,
    GatedRepoAccessError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    OfflineMissingFilesError,
    UnsafeFilenameError,
)
from engine.hub.fetch import cache_state, fetch, fetch_repo

__all__ = [
    "CacheNotWritableError",
    "DiskFullError",
    "GatedRepoAccessError",
    "HubRepoNotFoundError",
    "HubRevisionNotFoundError",
    "InstalledRepo",
    "InstalledRevision",
    "OfflineMissingFilesError",
    "UnsafeFilenameError",
    "cache_dir",
    "clear_token",
    "delete",
    "disk_usage",
    "endpoint",
    "cache_state",
    "fetch",
    "fetch_repo",
    "installed_repos",
    "is_installed",
    "migrate_legacy_token",
    "save_token",
    "saved_token",
    "stored_token",
    "token_path",
    "whoami",
]
