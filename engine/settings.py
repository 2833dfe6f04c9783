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
from engine.errors import OculaError


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
        grants = [RemoteCodeGrant(**g) for g in data.pop("allowed_remote_code", [])]
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known, allowed_remote_code=grants)

    def save(self, path: Path | None = None) -> None:
        path = path or paths.settings_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(tomli_w.dumps(asdict(self)), encoding="utf-8")
        os.replace(tmp, path)
