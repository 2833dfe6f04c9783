"""The Hugging Face access token: in the OS keyring when `keyring` is importable,
otherwise in a file only the user can read (mode 0600) in Ocula's app folder.

`apply_token()` puts a stored token in HF_TOKEN for this process, which
huggingface_hub reads at each call, so gated downloads work without a login step.
"""
from __future__ import annotations

import os
from pathlib import Path

SERVICE = "ocula"
ACCOUNT = "huggingface"


def _keyring():
    try:
        import keyring  # optional dependency
        from keyring.backends import fail

        if isinstance(keyring.get_keyring(), fail.Keyring):
            return None  # no usable OS backend: fall back to the file
        return keyring
    except Exception:  # ImportError, or a backend that fails to initialise
        return None


def token_file() -> Path:
    from engine import paths

    return paths.app_home() / "hf_token"


def backend_name() -> str:
    return "OS keyring" if _keyring() is not None else f"file {token_file()} (mode 0600)"


def save_token(token: str) -> str:
    """Store (or, with an empty token, forget) the token; returns where it went."""
    token = token.strip()
    ring = _keyring()
    if ring is not None:
        if token:
            ring.set_password(SERVICE, ACCOUNT, token)
        else:
            try:
                ring.delete_password(SERVICE, ACCOUNT)
            except Exception:  # nothing stored
                pass
        where = "OS keyring"
    else:
        path = token_file()
        if token:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(token)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        elif path.exists():
            path.unlink()
        where = str(path)
    if token:
        os.environ["HF_TOKEN"] = token
    else:
        os.environ.pop("HF_TOKEN", None)
    return where


def load_token() -> str:
    ring = _keyring()
    if ring is not None:
        try:
            return ring.get_password(SERVICE, ACCOUNT) or ""
        except Exception:
            return ""
    path = token_file()
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def apply_token() -> bool:
    """Export a stored token to HF_TOKEN unless the environment already sets one."""
    if os.environ.get("HF_TOKEN"):
        return True
    token = load_token()
    if token:
        os.environ["HF_TOKEN"] = token
    return bool(token)
