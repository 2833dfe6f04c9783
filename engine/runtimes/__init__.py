"""Load a model card into a Runner, whatever its backend.

    runner = load_runner(card, device="auto", precision="auto")
    outputs = runner.forward({"pixel_values": pixel_values})

Backends register their loader with `register_loader(runtime)` (see base.py);
`BACKEND_MODULES` below promises each built-in runtime to its module, which
`loader_for(card.runtime)` imports on first use, so importing `engine.runtimes` stays
free of torch, transformers and onnxruntime. A runtime registered twice is an error.
"""

from __future__ import annotations

from engine.runtimes.base import LOADERS, Outputs, Placement, Runner, loader_for, register_loader
from engine.runtimes.runner_cache import RunnerCache
from engine.runtimes.loading import load_runner, resolve_snapshot

__all__ = [
    "BACKEND_MODULES",
    "LOADERS",
    "Outputs",
    "Placement",
    "Runner",
    "RunnerCache",
    "load_runner",
    "loader_for",
    "register_loader",
    "resolve_snapshot",
]

# runtime -> module whose import registers its loader (a registry, not an if/elif chain).
# Promised to LOADERS here; `loader_for(runtime)` imports the module on first use.
BACKEND_MODULES: dict[str, str] = {
    "transformers": "engine.runtimes.transformers_backend",
    "onnx": "engine.runtimes.onnx_backend",
    "spandrel": "engine.runtimes.spandrel_backend",
    "facenet-pytorch": "engine.runtimes.facenet_backend",
}
for _runtime, _module in BACKEND_MODULES.items():
    LOADERS.register_lazy(_runtime, _module)
