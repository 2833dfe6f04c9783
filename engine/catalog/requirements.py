"""What each runtime needs installed, checked without importing anything.

    missing_packages(card)     # [] when the card can run here; else the import names absent
    needs_full_build(card)     # True on the Lite build (no torch) for a PyTorch model
    full_build_message(card)   # the sentence the CLI, the loader and the GUI show

The Lite build (the base install) has onnxruntime but not torch, transformers or spandrel;
`pip install 'ocula[torch]'` adds them. `importlib.util.find_spec` answers from the import
system's finders: cheap, no module is run, and a PyInstaller bundle answers it the same.
"""
from __future__ import annotations

import importlib.util
from typing import Any

from engine.errors import MissingPackageError, NeedsFullBuildError

# runtime -> the top-level modules it imports
RUNTIME_NEEDS: dict[str, tuple[str, ...]] = {
    "transformers": ("torch", "transformers"),
    "spandrel": ("torch", "spandrel"),
    "facenet-pytorch": ("torch",),  # the package itself: engine.catalog.packaged checks it
    "onnx": ("onnxruntime",),
}
# ONNX exports whose pre/post-processing is still transformers' (a sidecar `output`): SAM's
# prompt encoding and mask post-processing have no numpy port yet
OUTPUT_NEEDS: dict[str, tuple[str, ...]] = {"sam": ("torch", "transformers")}
TORCH_PACKAGES = ("torch", "transformers", "spandrel")
FULL_BUILD_PIP = "pip install 'ocula[torch]'"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_packages(card: Any) -> list[str]:
    """The modules `card`'s runtime needs that are not installed ([] when it can run)."""
    needs = RUNTIME_NEEDS.get(str(getattr(card, "runtime", "")), ())
    output = (getattr(card, "sidecar", None) or {}).get("output")
    needs = tuple(dict.fromkeys(needs + OUTPUT_NEEDS.get(str(output), ())))
    return [m for m in needs if not _installed(m)]


def needs_full_build(card: Any) -> bool:
    return any(m in TORCH_PACKAGES for m in missing_packages(card))


def full_build_message(card: Any) -> str:
    missing = missing_packages(card)
    if any(m in TORCH_PACKAGES for m in missing) and card.runtime == "onnx":
        return (f"{getattr(card, 'name', card)} is an ONNX export whose input and output "
                f"processing still come from transformers (and torch), which this Lite "
                f"install does not include: it needs the full build ({FULL_BUILD_PIP}; "
                f"missing {', '.join(missing)}).")
    if any(m in TORCH_PACKAGES for m in missing):
        return (f"{getattr(card, 'name', card)} runs on PyTorch ({card.runtime}), which this "
                f"Lite install does not include: it needs the full build ({FULL_BUILD_PIP}; "
                f"missing {', '.join(missing)}). Its ONNX version, where the catalog has one, "
                f"runs here.")
    return (f"{getattr(card, 'name', card)} needs {', '.join(missing)}, which is not installed "
            f"(pip install 'ocula[cpu]' for onnxruntime).")


def require_runnable(card: Any) -> None:
    """Raise (before anything is downloaded) when `card` cannot run on this install."""
    if not missing_packages(card):
        return
    error = NeedsFullBuildError if needs_full_build(card) else MissingPackageError
    raise error(full_build_message(card))
