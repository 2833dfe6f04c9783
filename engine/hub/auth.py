"""Hub tokens: the one store the CLI and the desktop app share.

A token lives where huggingface_hub keeps it: the HF_TOKEN environment variable if set,
else the token file that `ocula models login`, the app's settings and `hf auth login`
all write (`token_path()`, `~/.cache/huggingface/token` by default). huggingface_hub
reads that file at each call, so a saved token applies at once, in every process.

Ocula's desktop app used to keep its own copy (the OS keyring, else a 0600 file in the
app folder); `migrate_legacy_token()` moves such a token here once.
"""
from __future__ import annotations

import os
from pathlib import Path

from engine.errors import OculaError

# Where the old desktop store kept the token (desktop/token_store.py, removed).
LEGACY_KEYRING = ("ocula", "huggingface")  # (service, account)
LEGACY_FILE = "hf_token"  # in engine.paths.app_home()


def token_path() -> Path:
    """The file the saved login lives in (huggingface_hub's HF_TOKEN_PATH)."""
    from huggingface_hub import constants

    return Path(constants.HF_TOKEN_PATH)


def stored_token() -> str | None:
    """The token requests use: HF_TOKEN if set, else the saved login (None: no token)."""
    from huggingface_hub import get_token

    return get_token()


def saved_token() -> str | None:
    """The saved login only (what `ocula models login` wrote), whatever HF_TOKEN says."""
    try:
        return token_path().read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def token_source() -> str:
    """Where the token in use comes from: "environment" (HF_TOKEN), "file" or "" (none)."""
    active = stored_token()
    if not active:
        return ""
    return "file" if active == saved_token() else "environment"


def describe_token_store() -> str:
    """One line for a settings view: where a saved token goes, and what overrides it."""
    where = str(token_path())
    if token_source() == "environment":
        return f"{where} (the HF_TOKEN environment variable is set and takes precedence)"
    return where


def whoami(token: str | None = None) -> str:
    """The hub user name of `token` (default: the token in use); OculaError if the hub
    rejects it or cannot be asked."""
    from huggingface_hub import whoami as hub_whoami
    from huggingface_hub.errors import HfHubHTTPError

    token = (token if token is not None else stored_token() or "").strip()
    if not token:
        raise OculaError("No hub token is saved. Create a read token in your hub account "
                         "settings, then log in with `ocula models login` (or Settings).")
    try:
        return hub_whoami(token)["name"]
    except (HfHubHTTPError, ValueError) as exc:
        raise OculaError(
            f"The hub rejected this token ({exc.__class__.__name__}). Check that you copied "
            f"the whole token and that it has read access."
        ) from exc
    except Exception as exc:  # noqa: BLE001 — offline mode, no connection, a proxy
        from engine.hub.model_cache import endpoint

        raise OculaError(
            f"Could not check the token with the hub at {endpoint()} "
            f"({type(exc).__name__}: {exc}). Check your connection (and that offline mode "
            f"is off), then try again."
        ) from exc


def save_token(token: str) -> str:
    """Check `token` with the hub (whoami) and store it as the active login; return the user."""
    from huggingface_hub import login

    token = token.strip()
    if not token:
        raise OculaError("The token is empty. Create a read token in your hub account settings.")
    user = whoami(token)
    login(token=token, add_to_git_credential=False)
    return user


def clear_token() -> None:
    """Forget the stored login. HF_TOKEN, if set in the environment, still applies."""
    from huggingface_hub import logout

    try:
        logout()
    except OSError:
        # Raised after the token files are deleted when HF_TOKEN is still set (or when
        # `git credential reject` cannot run): the stored login is gone either way.
        pass
    token_path().unlink(missing_ok=True)  # logout() returns early when it sees no login


# -- the old desktop store -------------------------------------------------------------------


def legacy_token_file() -> Path:
    from engine import paths

    return paths.app_home() / LEGACY_FILE


def _legacy_keyring():
    """The `keyring` module if the user has it with a working backend (never a dependency:
    the old store used it only when it happened to be installed)."""
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:
        return None
    try:
        if isinstance(keyring.get_keyring(), fail.Keyring):
            return None
    except Exception:  # noqa: BLE001 — a backend that fails to initialise
        return None
    return keyring


def migrate_legacy_token() -> bool:
    """Move a token saved by the old desktop store into the hub's store, once.

    If no login is saved yet, the old token becomes the saved login (written without
    asking the hub, so it works offline; it was already this user's token). If a login is
    saved, it wins: `ocula models login` wrote it on purpose. Either way the old copy is
    deleted, and a marker file keeps later starts from asking the keyring again.
    Returns True if a token was moved.
    """
    path = legacy_token_file()
    marker = path.with_name(LEGACY_FILE + ".migrated")
    if marker.exists():
        return False
    try:
        file_token = path.read_text(encoding="utf-8").strip()
    except OSError:
        file_token = ""
    ring, ring_token = _legacy_keyring(), ""
    if ring is not None:
        try:
            ring_token = (ring.get_password(*LEGACY_KEYRING) or "").strip()
        except Exception:  # noqa: BLE001 — a locked or broken keyring: nothing to move
            ring = None
    token = ring_token or file_token  # the old store preferred the keyring
    moved = bool(token) and saved_token() is None
    if moved:
        _write_secret(token_path(), token)
    path.unlink(missing_ok=True)
    if ring is not None and ring_token:
        try:
            ring.delete_password(*LEGACY_KEYRING)
        except Exception:  # noqa: BLE001 — already gone
            pass
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("the desktop app's token now lives in huggingface_hub's token file\n",
                          encoding="utf-8")
    except OSError:
        pass  # a read-only app folder: check again next time
    return moved


def _write_secret(path: Path, token: str) -> None:
    """Write a token file only the user can read (mode 0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
