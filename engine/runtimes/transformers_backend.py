"""transformers backend: a hub/local model folder (config.json + weights) -> TransformersRunner.

The model class comes from transformers' own registry: `config.architectures[0]` looked
up on the `transformers` module (the card's `architecture` overrides it), then the
task's Auto classes. Never a chain of `if model_type == …`.

Safety: `trust_remote_code` is only ever True for a repo+revision the user allowed in
settings; weights come from safetensors when the folder has them, and pickles (.bin)
are scanned and then loaded by transformers through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import transformers

from engine.errors import RemoteCodeRefused, UnsafeCheckpointError, UnsupportedModelError
from engine.events import CancelToken, Progress, ProgressCallback
from engine.runtimes.base import (
    Outputs,
    Placement,
    Runner,
    finish_load,
    register_loader,
    torch_dtype,
)
from engine.runtimes.processors import load_processor
from engine.runtimes.pickle_safety import scan_pickle_checkpoint
from engine.runtimes.torch_utils import (
    free_device_memory,
    module_bytes,
    outputs_on_cpu,
    to_cpu,
    to_device,
)

if TYPE_CHECKING:
    from engine.catalog.card import ModelCard
    from engine.settings import Settings

EAGER_NOTE = "loaded with eager attention for attention maps (fused kernels return no weights)"

# Auto classes to try, per task, when config.architectures names nothing transformers has.
_AUTO_BY_TASK: dict[str, tuple[str, ...]] = {
    "detect": ("AutoModelForObjectDetection", "AutoModelForZeroShotObjectDetection"),
    "segment": (
        "AutoModelForSemanticSegmentation",
        "AutoModelForUniversalSegmentation",
        "AutoModelForInstanceSegmentation",
        "AutoModelForMaskGeneration",
    ),
    "caption": ("AutoModelForImageTextToText", "VisionEncoderDecoderModel"),
    "restore": ("AutoModelForImageToImage", "Swin2SRForImageSuperResolution"),
    "features": ("AutoModel",),
}
_AUTO_BY_VARIANT: dict[str, tuple[str, ...]] = {
    "open-vocab": ("AutoModelForZeroShotObjectDetection",),
    "semantic": ("AutoModelForSemanticSegmentation", "AutoModelForUniversalSegmentation"),
    "panoptic": ("AutoModelForUniversalSegmentation",),
    "instance": ("AutoModelForUniversalSegmentation", "AutoModelForInstanceSegmentation"),
    "promptable": ("AutoModelForMaskGeneration",),
}


class TransformersRunner(Runner):
    """A transformers PreTrainedModel on a device, in eval mode."""

    def __init__(
        self, card: ModelCard, placement: Placement, model: torch.nn.Module, processor: Any = None
    ) -> None:
        super().__init__(card, placement, processor=processor, memory_bytes=module_bytes(model))
        self._model: torch.nn.Module | None = model
        self.device = torch.device(placement.device)
        self.dtype = torch_dtype(placement.precision)

    @property
    def module(self) -> torch.nn.Module | None:
        return self._model

    def _require_model(self) -> torch.nn.Module:
        if self._model is None:
            raise RuntimeError(f"Model '{self.card.id}' was released; load it again.")
        return self._model

    def prepare_inputs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Inputs on the model's device; floating ones in its dtype (explain uses this too)."""
        return {name: to_device(value, self.device, self.dtype) for name, value in inputs.items()}

    def forward(self, inputs: Mapping[str, Any]) -> Outputs:
        model = self._require_model()
        with self.lock, torch.inference_mode():
            raw = model(**self.prepare_inputs(inputs))
        return outputs_on_cpu(raw)

    def generate(self, inputs: Mapping[str, Any], **generate_kwargs: Any) -> Any:
        """`model.generate` for captioners; the result (ids or a ModelOutput) comes back on CPU."""
        model = self._require_model()
        with self.lock, torch.inference_mode():
            raw = model.generate(**self.prepare_inputs(inputs), **generate_kwargs)
        return to_cpu(raw)

    def release(self) -> None:
        device = self.placement.device
        self._model = None
        free_device_memory(device)


def _read_config(folder: Path, card: ModelCard) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise UnsupportedModelError(
            f"Model '{card.id}': {folder} has no config.json, so it is not a transformers model "
            f"folder. Check the card's runtime (spandrel for .pth/.safetensors checkpoints, onnx "
            f"for .onnx files) or re-download the model."
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(
            f"Model '{card.id}': {path} is not valid JSON ({exc}); re-download the model."
        ) from exc


def _remote_code_allowed(
    card: ModelCard, raw_config: dict[str, Any], settings: Settings | None
) -> bool:
    """False when the model needs no remote code; True when it needs it AND the user allowed it."""
    needs = card.trust_remote_code or "auto_map" in raw_config
    if not needs:
        return False
    repo = card.repo or card.local_path or card.id
    if settings is not None and settings.allows_remote_code(repo, card.revision):
        return True
    reason = (
        "its config.json maps classes to code in the repository (auto_map)"
        if "auto_map" in raw_config
        else "its catalog card says so"
    )
    raise RemoteCodeRefused(repo, card.revision, reason)


def _model_class(
    card: ModelCard, config: Any, raw_config: dict[str, Any], remote_code: bool
) -> Any:
    names = [card.architecture] if card.architecture else list(config.architectures or [])
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is not None and hasattr(cls, "from_pretrained"):
            return cls
    candidates = list(_AUTO_BY_VARIANT.get(card.variant or "", ()))
    for task in card.tasks:
        candidates.extend(_AUTO_BY_TASK.get(task, ()))
    candidates.append("AutoModel")
    if remote_code:
        auto_map = raw_config.get("auto_map", {})
        for name in candidates:
            if name in auto_map:
                return getattr(transformers, name)
    for name in candidates:
        cls = getattr(transformers, name, None)
        mapping = getattr(cls, "_model_mapping", None)
        if mapping is not None and type(config) in mapping:
            return cls
        if (
            cls is not None
            and mapping is None
            and getattr(cls, "config_class", None) is type(config)
        ):
            return cls  # a concrete class such as VisionEncoderDecoderModel
    raise UnsupportedModelError(
        f"Model '{card.id}': transformers {transformers.__version__} has no class for "
        f"architecture {names or '(none listed)'} (model_type '{raw_config.get('model_type')}') "
        f"for task(s) {', '.join(card.tasks)}. Upgrade transformers or pick another model."
    )


def _weights_kwargs(folder: Path) -> dict[str, Any]:
    if any(folder.glob("*.safetensors")):
        return {"use_safetensors": True}
    for path in sorted(folder.glob("*.bin")):
        scan_pickle_checkpoint(path)  # refuse before transformers even opens it
    return {"use_safetensors": False}


@register_loader("transformers")
def load_transformers(
    card: ModelCard,
    snapshot: Path,
    placement: Placement,
    *,
    attention: bool = False,
    settings: Settings | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    **_: Any,
) -> TransformersRunner:
    folder = Path(snapshot)
    folder = folder.parent if folder.is_file() else folder
    raw_config = _read_config(folder, card)
    remote_code = _remote_code_allowed(card, raw_config, settings)
    if cancel is not None:
        cancel.raise_if_cancelled()
    if progress is not None:
        progress(
            Progress(
                stage="load",
                done=0,
                total=1,
                item=card.id,
                message=f"loading {card.name} ({placement.describe()})",
            )
        )
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=remote_code)
    cls = _model_class(card, config, raw_config, remote_code)
    kwargs: dict[str, Any] = dict(
        _weights_kwargs(folder),
        dtype=torch_dtype(placement.precision),
        trust_remote_code=remote_code,
    )
    if attention:
        kwargs["attn_implementation"] = "eager"
    try:
        model = cls.from_pretrained(folder, **kwargs)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"Model '{card.id}': a checkpoint in {folder} was refused by torch's weights-only "
            f"loader ({exc}). Use the model's .safetensors weights instead."
        ) from exc
    model = model.to(placement.device).eval()
    try:
        processor = load_processor(folder, trust_remote_code=remote_code)
    except (OSError, ValueError, ImportError, KeyError) as exc:
        raise UnsupportedModelError(
            f"Model '{card.id}': the processor/tokenizer files in {folder} could not be loaded "
            f"({exc}). Re-download the model; if the message names a missing package, install "
            f"it."
        ) from exc
    runner = TransformersRunner(card, placement, model, processor)
    if attention:
        runner.notes.append(EAGER_NOTE)
    if remote_code:
        runner.notes.append(
            f"runs Python code from the repository {card.repo or folder} "
            f"(allowed in settings for revision {card.revision})"
        )
    return finish_load(runner, item=card.id, progress=progress, cancel=cancel)
