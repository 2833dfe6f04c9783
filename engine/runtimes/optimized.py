"""The verified ONNX exports made by `ocula models optimize`: where they live, and a
Runner over one.

`engine.export_onnx` writes them (it runs torch models and the tasks to verify an
export); `engine.runtimes.load_runner` only needs to find and open one for the CPU fast
path, so that part lives here, in the runtimes layer, and the runtimes never import the
exporter (which imports the tasks, which import the runtimes).
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from engine import paths

if TYPE_CHECKING:
    from engine.catalog.card import ModelCard
    from engine.runtimes.base import Runner

MANIFEST = "optimized.json"


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", part).strip("._") or "model"


def optimized_dir(card: ModelCard) -> Path:
    return paths.app_home() / "optimized" / _safe(card.id) / _safe(card.revision or "local")


def find_optimized(card: ModelCard) -> Path | None:
    """The verified export of `card` (file or folder, as `optimize` returned it), or None."""
    folder = optimized_dir(card)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    target = folder / data.get("path", "model.onnx")
    return target if target.exists() else None


def onnx_runner_for_export(card: ModelCard, path: Path) -> Runner:
    """An OnnxRunner over an `optimize` result (file or folder), on the CPU in fp32."""
    from engine.runtimes.base import Placement
    from engine.runtimes.onnx_backend import load_onnx

    onnx_card = dataclasses.replace(card, runtime="onnx", local_path=str(path), sidecar={})
    return load_onnx(onnx_card, path, Placement("onnx", "cpu", "fp32",
                                                provider="CPUExecutionProvider"))
