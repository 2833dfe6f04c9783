"""Hub tokens, kept where huggingface_hub keeps them (HF_TOKEN, else its token file)."""
from __future__ import annotations

from engine.errors import OculaError


def stored_token() -> str | None:
    """HF_TOKEN if set, else the token saved by `ocula models login` / `hf auth login`."""
    from huggingface_hub import get_token

    return get_token()


def save_token(token: str) -> str:
    """Check `token` with the hub (whoami) and store it as the active login; return the user."""
    from huggingface_hub import login, whoami
    from huggingface_hub.errors import HfHubHTTPError

    token = token.strip()
    if not token:
        raise OculaError("The token is empty. Create a read token in your hub account settings.")
    try:
        user = whoami(token)["name"]
        login(token=token, add_to_git_credential=False)
    except (HfHubHTTPError, ValueError) as exc:
        raise OculaError(
            f"The hub rejected this token ({exc.__class__.__name__}). Check that you copied "
            f"the whole token and that it has read access."
        ) from exc
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
