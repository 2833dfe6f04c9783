"""One Runner protocol over the backends (transformers, spandrel, onnxruntime, facenet-pytorch).

A Runner is a loaded model on a device. Tasks call `runner.forward(inputs)` with a
mapping of named arrays (transformers' input names: `pixel_values`, `input_ids`…)
and get back an `Outputs` mapping with attribute access (`outputs.logits`), whose
values are torch tensors. transformers' own post-processing functions read those
attributes, so the same task code serves a torch model and its ONNX export: tasks
never branch on the backend.

Loading (snapshot on disk -> Runner) lives in the backend modules, registered with
`register_loader`; `engine.runtimes.load_runner` picks one by `card.runtime`.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Mapping

from engine.devices import Placement  # what devices.plan() decides; re-exported here
from engine.registry import Registry

if TYPE_CHECKING:  # heavy imports only for type checkers
    import torch

    from engine.catalog.card import ModelCard


class Outputs(dict):
    """Named model outputs with attribute access, like transformers' ModelOutput."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def to_tuple(self) -> tuple:  # some transformers helpers call this
        return tuple(self.values())


class Runner:
    """Base class of every loaded model. Subclasses implement `forward`."""

    def __init__(self, card: "ModelCard", placement: Placement, *, processor: Any = None,
                 memory_bytes: int = 0) -> None:
        self.card = card
        self.placement = placement
        self.processor = processor  # transformers processor / image processor, or None
        self.memory_bytes = memory_bytes
        # Things the user should know about how this model was loaded (e.g. eager attention
        # for maps, a precision fallback). Shown next to the placement; never silent.
        self.notes: list[str] = []
        self.lock = threading.Lock()  # one forward at a time per loaded model

    # -- the protocol ------------------------------------------------------------
    def forward(self, inputs: Mapping[str, Any]) -> Outputs:
        raise NotImplementedError

    def forward_arrays(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """`forward` with numpy arrays out (fp32 where the model computes in half), for
        tasks whose post-processing is numpy. The ONNX runner does it without torch."""
        out: dict[str, Any] = {}
        for name, value in self.forward(inputs).items():
            if hasattr(value, "detach"):  # a torch tensor, without importing torch here
                value = value.detach()
                if value.is_floating_point():
                    value = value.float()
                value = value.cpu().numpy()
            out[name] = value
        return out

    def graph_metadata(self) -> dict[str, str] | None:
        """The model file's own metadata (an ONNX graph's metadata_props, "input_hw"),
        read once per load; None where the backend has no such thing."""
        return None

    def release(self) -> None:
        """Free the model's memory. The runner must not be used afterwards."""

    # -- optional capabilities ---------------------------------------------------------
    @property
    def module(self) -> "torch.nn.Module | None":
        """The torch module, where there is one (explain, export and fp16 need it)."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.card.id}: {self.placement.describe()}>"


def finish_load(runner: Runner, *, item: str, progress: Any = None, cancel: Any = None) -> Runner:
    """What every backend does once a model is loaded: note a fallback where the user will
    see it, honour a cancel that came in during the load, report the load as done."""
    from engine.events import Progress

    if runner.placement.fallback:
        runner.notes.append(f"fallback: {runner.placement.fallback}")
    if cancel is not None:
        cancel.raise_if_cancelled()
    if progress is not None:
        progress(Progress(stage="load", done=1, total=1, item=item,
                          message=f"loaded {runner.card.name} ({runner.placement.describe()})"))
    return runner


def torch_dtype(precision: str) -> "torch.dtype":
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def to_outputs(raw: Any) -> Outputs:
    """Turn a transformers ModelOutput, dict or tuple into Outputs."""
    if isinstance(raw, Outputs):
        return raw
    if isinstance(raw, Mapping):
        return Outputs({k: v for k, v in raw.items() if v is not None})
    if isinstance(raw, (tuple, list)):
        return Outputs({f"output_{i}": v for i, v in enumerate(raw)})
    return Outputs({"output_0": raw})


Loader = Callable[..., Runner]


def _unsupported(message: str) -> Exception:
    from engine.errors import UnsupportedModelError

    return UnsupportedModelError(message)


# runtime -> `fn(card, snapshot_path, placement, **options) -> Runner`. engine.runtimes
# promises the built-in runtimes (register_lazy: the backend module is imported on first use).
LOADERS: Registry[str, Loader] = Registry("runtime loader", missing=_unsupported)


def register_loader(runtime: str, *, replace: bool = False) -> Callable[[Loader], Loader]:
    """Register `fn(card, snapshot_path, placement, **options) -> Runner` for a runtime.
    A runtime registered twice is an error (DuplicateRegistrationError), unless `replace`."""

    def deco(fn: Loader) -> Loader:
        return LOADERS.register(runtime, fn, replace=replace, stacklevel=2)

    return deco


def loader_for(runtime: str) -> Loader:
    """The loader for `runtime`, importing its backend module on first use."""
    return LOADERS.get(runtime)
