"""spandrel backend: a restoration checkpoint (.safetensors / .pth / .pt / .ckpt) -> SpandrelRunner.

spandrel detects the architecture from the state dict and returns a typed descriptor
(scale, size requirements, half/bfloat16 support, tiling advice); the runner exposes
those so restore tasks ask instead of guessing. Pickle checkpoints are scanned and
loaded with `torch.load(weights_only=True)` (engine.runtimes.pickle_safety) — never through
TorchScript or a full unpickler.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import spandrel
import torch

from engine.errors import UnsupportedModelError
from engine.events import CancelToken, Progress, ProgressCallback
from engine.runtimes.base import (
    Outputs,
    Placement,
    Runner,
    finish_load,
    register_loader,
    torch_dtype,
)
from engine.runtimes.pickle_safety import safe_torch_load
from engine.runtimes.torch_utils import free_device_memory, module_bytes, to_cpu, to_device

if TYPE_CHECKING:
    from engine.catalog.card import ModelCard

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")  # preference order


class SpandrelRunner(Runner):
    """A spandrel ModelDescriptor on a device. forward: pixel_values [0,1] -> reconstruction."""

    def __init__(self, card: ModelCard, placement: Placement, descriptor: Any) -> None:
        super().__init__(card, placement, memory_bytes=module_bytes(descriptor.model))
        self.descriptor = descriptor
        self.device = torch.device(placement.device)
        self.dtype = torch_dtype(placement.precision)

    # -- what the descriptor knows -----------------------------------------------------
    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)

    @property
    def size_requirements(self) -> spandrel.SizeRequirements:
        """`multiple_of`, `minimum`, `square` (spandrel pads to them inside forward)."""
        return self.descriptor.size_requirements

    @property
    def supports_half(self) -> bool:
        return bool(self.descriptor.supports_half)

    @property
    def supports_bfloat16(self) -> bool:
        return bool(self.descriptor.supports_bfloat16)

    @property
    def tiling(self) -> spandrel.ModelTiling:
        return self.descriptor.tiling

    @property
    def input_channels(self) -> int:
        return int(self.descriptor.input_channels)

    @property
    def output_channels(self) -> int:
        return int(self.descriptor.output_channels)

    @property
    def architecture(self) -> str:
        return str(self.descriptor.architecture.name)

    @property
    def purpose(self) -> str:
        return str(self.descriptor.purpose)

    @property
    def module(self) -> torch.nn.Module | None:
        return self.descriptor.model if self.descriptor is not None else None

    # -- running ---------------------------------------------------------------------------
    def forward(self, inputs: Mapping[str, Any]) -> Outputs:
        """`pixel_values` NCHW float in [0,1] (and `mask` N1HW for inpainting models)."""
        if self.descriptor is None:
            raise RuntimeError(f"Model '{self.card.id}' was released; load it again.")
        image = to_device(inputs["pixel_values"], self.device, self.dtype)
        with self.lock, torch.inference_mode():
            if isinstance(self.descriptor, spandrel.MaskedImageModelDescriptor):
                if "mask" not in inputs:
                    raise UnsupportedModelError(
                        f"Model '{self.card.id}' ({self.architecture}) "
                        f"inpaints: it needs a 'mask' input."
                    )
                mask = to_device(inputs["mask"], self.device, self.dtype)
                result = self.descriptor(image, mask)
            else:
                result = self.descriptor(image)
        return Outputs(reconstruction=to_cpu(result))

    def release(self) -> None:
        self.descriptor = None
        free_device_memory(self.placement.device)


def find_checkpoint(card: ModelCard, snapshot: Path) -> tuple[Path, list[str]]:
    """The checkpoint file in `snapshot` (a file or folder), plus notes if there was a choice."""
    if snapshot.is_file():
        return snapshot, []
    candidates = sorted(p for p in snapshot.rglob("*") if p.suffix.lower() in CHECKPOINT_SUFFIXES)
    if not candidates:
        raise UnsupportedModelError(
            f"Model '{card.id}': no checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) in {snapshot}. "
            f"Download the model again or import the checkpoint file itself."
        )
    candidates.sort(key=lambda p: CHECKPOINT_SUFFIXES.index(p.suffix.lower()))
    chosen = candidates[0]
    notes = []
    if len(candidates) > 1:
        others = ", ".join(p.name for p in candidates[1:])
        notes.append(
            f"loaded {chosen.name}; the folder also holds {others} (import a single file "
            f"to choose another)"
        )
    return chosen, notes


def load_descriptor(path: Path) -> Any:
    """spandrel's descriptor for the checkpoint at `path`, on the CPU in fp32."""
    loader = spandrel.ModelLoader(device="cpu")
    try:
        if path.suffix.lower() == ".safetensors":
            return loader.load_from_file(path)
        state = spandrel.canonicalize_state_dict(safe_torch_load(path))
        return loader.load_from_state_dict(state)
    except spandrel.UnsupportedModelError as exc:
        raise UnsupportedModelError(
            f"spandrel {spandrel.__version__} does not recognise the architecture of {path.name}: "
            f"it is not one of the restoration models it supports, or the file is not a "
            f"state dict. Check the file, or convert it to ONNX and import that."
        ) from exc


def _choose_dtype(descriptor: Any, placement: Placement) -> Placement:
    """Keep the planned precision if the architecture supports it; otherwise fp32, said aloud."""
    precision = placement.precision
    supported = {
        "fp32": True,
        "fp16": descriptor.supports_half,
        "bf16": descriptor.supports_bfloat16,
    }[precision]
    if supported:
        return placement
    why = f"{descriptor.architecture.name} does not support {precision} (spandrel); running fp32"
    fallbacks = [f for f in (placement.fallback, why) if f]
    return dataclasses.replace(placement, precision="fp32", fallback="; ".join(fallbacks) or None)


@register_loader("spandrel")
def load_spandrel(
    card: ModelCard,
    snapshot: Path,
    placement: Placement,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    **_: Any,
) -> SpandrelRunner:
    path, notes = find_checkpoint(card, Path(snapshot))
    if cancel is not None:
        cancel.raise_if_cancelled()
    if progress is not None:
        progress(
            Progress(stage="load", done=0, total=1, item=path.name, message=f"loading {card.name}")
        )
    descriptor = load_descriptor(path)
    placement = _choose_dtype(descriptor, placement)
    descriptor.to(torch.device(placement.device))
    descriptor.to(torch_dtype(placement.precision))
    descriptor.eval()
    runner = SpandrelRunner(card, placement, descriptor)
    runner.notes.extend(notes)
    return finish_load(runner, item=path.name, progress=progress, cancel=cancel)
