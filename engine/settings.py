"""Engine settings shared by the CLI and the GUI, stored as TOML in the app folder.

Only engine-level choices live here (cache location, offline mode, device,
remote-code allow-list). Window layout and other UI state belong to QSettings.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomli_w

from engine import paths
from engine.errors import OculaError, UsageError

# whole-number settings and their inclusive ranges (= JobOptions.pixel_limit's range)
INT_RANGES = {"pixel_limit": (1, 2**31 - 1), "runner_cache_mb": (0, 1 << 20)}
BOOL_FIELDS = ("offline", "use_onnx_fast_path")
STR_FIELDS = ("cache_dir", "device", "precision")


@dataclass
class RemoteCodeGrant:
    repo: str
    revision: str


@dataclass
class Settings:
    cache_dir: str = ""  # empty: the Hugging Face cache (HF_HUB_CACHE / HF_HOME)
    offline: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto | fp32 | fp16 | bf16
    pixel_limit: int = 178_956_970  # Pillow's default decompression-bomb limit
    runner_cache_mb: int = 4096  # loaded models kept in memory (LRU by size)
    use_onnx_fast_path: bool = True  # CPU runs use a verified `ocula models optimize` export
    allowed_remote_code: list[RemoteCodeGrant] = field(default_factory=list)

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            raise UsageError(f"Settings: {problem}")

    def problem(self) -> str | None:
        """What is wrong with these values (a negative pixel limit would reject every
        image; a string where a number belongs would fail mid-job), or None."""
        for key, (low, high) in INT_RANGES.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                return (f"'{key}' is {value!r}; expected a whole number from {low:,} to "
                        f"{high:,}")
        for key in BOOL_FIELDS:
            if not isinstance(getattr(self, key), bool):
                return f"'{key}' is {getattr(self, key)!r}; expected true or false"
        for key in STR_FIELDS:
            if not isinstance(getattr(self, key), str):
                return f"'{key}' is {getattr(self, key)!r}; expected a string"
        return None

    def requested_placement(self, device: str = "auto",
                            precision: str = "auto") -> tuple[str, str]:
        """What a run asks for: "auto" defers to the user's defaults (Settings ▸ Devices).
        The one place this is resolved; the planner (engine.devices.plan) then says what
        really runs and reports any fallback."""
        return ((self.device or "auto") if device in ("", "auto") else device,
                (self.precision or "auto") if precision in ("", "auto") else precision)

    def allows_remote_code(self, repo: str, revision: str | None) -> bool:
        return any(
            g.repo == repo and revision is not None and g.revision == revision
            for g in self.allowed_remote_code
        )

    @property
    def effective_offline(self) -> bool:
        flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
        return self.offline or flag in {"1", "true", "yes", "on"}

    # -- persistence ---------------------------------------------------------
    @classmethod
    def load(cls, path: Path | None = None) -> "Settings":
        path = path or paths.settings_file()
        if not path.exists():
            return cls()
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise OculaError(f"Settings file {path} is not valid TOML ({exc}). "
                             f"Fix or delete it to start from defaults.") from exc
        try:
            grants = [RemoteCodeGrant(**g) for g in data.pop("allowed_remote_code", [])]
        except TypeError as exc:
            raise OculaError(f"Settings file {path}: 'allowed_remote_code' entries need repo "
                             f"and revision ({exc}). Fix or delete it.") from exc
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known, allowed_remote_code=grants)
        except UsageError as exc:
            raise OculaError(f"Settings file {path}: {str(exc).removeprefix('Settings: ')}. "
                             f"Fix it (or delete it to start from defaults).") from exc

    def save(self, path: Path | None = None) -> None:
        problem = self.problem()
        if problem:  # e.g. `ocula settings set pixel_limit -1`: refused, the file is kept
            raise UsageError(f"Settings not saved: {problem}")
        path = path or paths.settings_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(tomli_w.dumps(asdict(self)), encoding="utf-8")
        os.replace(tmp, path)
