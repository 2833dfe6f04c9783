"""User-facing errors. Each message names the file or model and the next step."""
from __future__ import annotations


class OculaError(Exception):
    """Base class for errors the CLI and GUI show as a sentence, not a traceback."""

    exit_code = 1


class UsageError(OculaError):
    """The command or its arguments are wrong (CLI exit code 2)."""

    exit_code = 2


class OptionError(UsageError, ValueError):
    """An option is out of range for this model (a layer it does not have, a head, a class):
    a usage error for the CLI, and still a ValueError for library callers."""


class CatalogError(OculaError):
    """A catalog entry or sidecar is malformed, or a model id is unknown."""


class UnknownModelError(CatalogError):
    """A model id that is in no catalog: a lookup error, so the CLI exits 2 like a usage error."""

    exit_code = 2

    def __init__(self, model_id: str, suggestions: list[str] | None = None):
        hint = ""
        if suggestions:
            hint = " Did you mean: " + ", ".join(suggestions[:5]) + "?"
        super().__init__(
            f"Unknown model '{model_id}'. See `ocula models list` or `ocula models search`.{hint}"
        )
        self.model_id = model_id


class UnsupportedModelError(OculaError):
    """The engine cannot run this model (task, library or architecture not supported)."""


class RemoteCodeRefused(OculaError):
    def __init__(self, repo: str, revision: str | None, reason: str = ""):
        rev = revision or "main"
        msg = (
            f"Model '{repo}' (revision {rev}) needs trust_remote_code: it runs Python code "
            f"shipped in the repository{(' (' + reason + ')') if reason else ''}. Ocula does not run "
            f"such code unless you allow this exact repo and revision in Settings ▸ Models "
            f"(or `ocula settings allow-remote-code {repo} {rev}`) — only if you trust its author."
        )
        super().__init__(msg)
        self.repo = repo
        self.revision = rev


class UnsafeCheckpointError(OculaError):
    """A pickle checkpoint tried to run code or load objects outside the allowed set."""


class DownloadError(OculaError):
    """A download failed after retries; the message says which file and why."""


class IntegrityError(DownloadError):
    """A downloaded file's size or sha256 differs from what the hub reported."""


class OfflineError(DownloadError):
    """Offline mode is on and files are missing from the cache."""


class Cancelled(OculaError):
    """The user cancelled a long operation."""


class InputError(OculaError):
    """One input (image, video, folder) could not be read. Batches record and skip it."""


class DeviceError(OculaError):
    """The requested device or precision is not available."""


class MissingPackageError(OculaError):
    """A model whose weights ship inside a Python package, and the package (or one of its
    weight files) is not installed. The message names the pip command that installs it."""


class NeedsFullBuildError(MissingPackageError):
    """A PyTorch model on the Lite install (no torch): the message says which ONNX entry or
    which pip command instead. A usage error: CLI exit code 2, no traceback."""

    exit_code = 2


class OutputDiskFullError(OculaError):
    """The disk holding a job's output folder is full: the job stopped, resumable once
    space is freed. The message names the folder and how much was written."""

    def __init__(self, message: str, *, folder: object = None, written_bytes: int = 0):
        super().__init__(message)
        self.folder = folder
        self.written_bytes = written_bytes
