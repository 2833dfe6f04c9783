"""The single entry point: `explain(model, image, method=…) -> AttentionMaps`."""
from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import UnsupportedModelError, UsageError
from engine.explain.geometry import pixel_inputs
from engine.explain.maps import AttentionMaps
from engine.registry import Registry


def _model_name(model: Any) -> str:
    card = getattr(model, "card", None)
    if card is not None:
        return card.id
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", "") or type(model).__name__


def _onnx_from_runner(runner: Any) -> Any:
    from engine.explain.onnx_attention import OnnxAttentionModel

    card = getattr(runner, "card", None)
    path = None
    for attr in ("onnx_path", "model_path", "path"):
        value = getattr(runner, attr, None)
        if value and str(value).endswith(".onnx"):
            path = value
            break
    if path is None and card is not None and card.local_path and str(card.local_path).endswith(".onnx"):
        path = card.local_path
    if path is None:
        return None
    sidecar = dict(getattr(card, "sidecar", {}) or {})
    options = {k: sidecar[k] for k in ("input_name", "image_size", "patch_size", "mean", "std", "prefix_tokens")
               if k in sidecar}
    model = OnnxAttentionModel.from_path(path, name=getattr(card, "id", Path(path).name), **options)
    model.processor = getattr(runner, "processor", None)
    return model


def resolve(runner_or_model: Any, processor: Any = None) -> tuple[str, Any, Any]:
    """-> ("torch", module, processor) or ("onnx", OnnxAttentionModel, None)."""
    from engine.explain.onnx_attention import OnnxAttentionModel

    if isinstance(runner_or_model, OnnxAttentionModel):
        return "onnx", runner_or_model, None
    if isinstance(runner_or_model, (str, os.PathLike)) and str(runner_or_model).endswith(".onnx"):
        return "onnx", OnnxAttentionModel.from_path(runner_or_model), None
    if callable(getattr(runner_or_model, "named_modules", None)):  # a torch module
        if processor is None:
            raise ValueError(f"{_model_name(runner_or_model)}: pass processor=… (the model's image processor)")
        return "torch", runner_or_model, processor
    module = getattr(runner_or_model, "module", None)
    if module is not None:
        return "torch", module, processor or getattr(runner_or_model, "processor", None)
    onnx_model = _onnx_from_runner(runner_or_model)
    if onnx_model is not None:
        return "onnx", onnx_model, None
    raise UnsupportedModelError(
        f"{_model_name(runner_or_model)}: attention maps need a torch module or an ONNX file; "
        f"this runner exposes neither. Load it with engine.runtimes.load_runner(card, attention=True)."
    )


METHOD_ALIASES = {"cls-similarity": "cls_similarity", "patch-similarity": "patch_similarity",
                  "cross-attention": "cross_attention"}


def resolve_method(method: str, caps: Any, patch: tuple[float, float] | None) -> str:
    """User-facing names (the CLI's `cross`, `similarity`) to the method that fits the model.

    `cross` is per-word cross-attention for captioners and per-object decoder
    attention for DETR-style detectors; `similarity` is click-to-segment when a patch
    was clicked, else CLS-to-patch similarity.
    """
    method = METHOD_ALIASES.get(method, method)
    if method == "cross":
        method = "detr" if caps.allows("detr") and not caps.allows("cross_attention") \
            else "cross_attention"
    elif method == "similarity":
        method = "patch_similarity" if patch is not None else "cls_similarity"
    EXPLAIN_METHODS.get(method)  # an unknown name: UsageError listing the methods
    return method


# -- the methods, as data ----------------------------------------------------------------------


@dataclass
class MethodCall:
    """What a method's run function gets (one explain() call)."""

    model: Any  # torch module
    processor: Any
    image: Any  # PIL, RGB
    method: str
    options: Any  # engine.explain.self_attention.Options
    max_new_tokens: int = 20
    prompt: str | None = None
    detection_threshold: float = 0.7


MethodRun = Callable[[MethodCall], AttentionMaps]


@dataclass(frozen=True)
class ExplainMethod:
    """One attention-map method: its run function (torch models) and what it needs."""

    name: str
    run: MethodRun
    onnx: bool = False  # also runs on an ONNX graph's exposed attention Softmax outputs
    gradients: bool = False  # backpropagates a target class (torch only)
    summary: str = ""


@dataclass(frozen=True)
class ExplainFamily:
    """A model type whose maps come from its own code for several methods (DETR's encoder
    and decoder attentions), whatever the method's own run function is."""

    model_type: str
    run: MethodRun
    methods: tuple[str, ...]


def _self_attention(call: MethodCall) -> AttentionMaps:
    return _explain_torch(call.model, call.processor, call.image, call.method, call.options)


def _cross_attention(call: MethodCall) -> AttentionMaps:
    from engine.explain.captioner import caption_maps

    return caption_maps(call.model, call.processor, call.image, options=call.options,
                        max_new_tokens=call.max_new_tokens, prompt=call.prompt)


def _detr(call: MethodCall) -> AttentionMaps:
    from engine.explain.detr import detr_maps

    return detr_maps(call.model, call.processor, call.image, method=call.method,
                     options=call.options, threshold=call.detection_threshold)


def _gradcam(call: MethodCall) -> AttentionMaps:
    from engine.explain.gradcam import gradcam_maps

    return gradcam_maps(call.model, call.processor, call.image, target=call.options.target,
                        notes=call.options.notes)


def _windowed(call: MethodCall) -> AttentionMaps:
    from engine.explain.windowed import windowed_maps

    return windowed_maps(call.model, call.processor, call.image, options=call.options)


EXPLAIN_METHODS: Registry[str, ExplainMethod] = Registry(
    "attention-map method", missing=UsageError, hint="Also: cross, similarity (resolved per model).")
for _method in (
    ExplainMethod("raw", _self_attention, onnx=True,
                  summary="one layer's attention, one head or heads fused"),
    ExplainMethod("rollout", _self_attention, onnx=True,
                  summary="attention rollout (Abnar & Zuidema 2020)"),
    ExplainMethod("relevance", _self_attention, gradients=True,
                  summary="gradient-weighted relevance (Chefer et al. 2021)"),
    ExplainMethod("cls_similarity", _self_attention, onnx=True,
                  summary="cosine of the CLS feature to each patch feature, last layer"),
    ExplainMethod("patch_similarity", _self_attention, onnx=True,
                  summary="cosine of the clicked patch to the others: click-to-segment"),
    ExplainMethod("dino", _self_attention, onnx=True,
                  summary="DINO-style last-layer CLS map per head, mass-thresholded"),
    ExplainMethod("cross_attention", _cross_attention,
                  summary="captioners: one cross-attention map per generated token"),
    ExplainMethod("detr", _detr,
                  summary="DETR decoder cross-attention, one map per detected object"),
    ExplainMethod("gradcam", _gradcam, gradients=True,
                  summary="Grad-CAM on the last convolutional stage (Selvaraju et al. 2017)"),
    ExplainMethod("windowed", _windowed,
                  summary="Swin-style window attention stitched onto the image"),
    ExplainMethod("discover", _self_attention, onnx=True,
                  summary="unsupervised object discovery (TokenCut normalized cut / LOST): mask + box"),
    ExplainMethod("class_attention", _self_attention, gradients=True,
                  summary="last-layer CLS attention weighted by its gradient toward the target class"),
):
    EXPLAIN_METHODS.register(_method.name, _method)

# model_type -> the family's own run function for the methods it lists
EXPLAIN_FAMILIES: Registry[str, ExplainFamily] = Registry("attention-map model family")
EXPLAIN_FAMILIES.register("detr", ExplainFamily("detr", _detr, ("raw", "rollout", "detr")))


def runner_for(model: Any, method: str) -> MethodRun:
    """The run function for `method` on a torch `model`: its family's, where its model type
    has one for this method, else the method's own."""
    model_type = getattr(getattr(model, "config", None), "model_type", "") or ""
    family = EXPLAIN_FAMILIES.find(model_type)
    if family is not None and method in family.methods:
        return family.run
    return EXPLAIN_METHODS.get(method).run


def explain(
    runner_or_model: Any,
    image: Any,
    *,
    method: str,
    layer: int | None = None,
    head: int | None = None,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
    target: int | None = None,
    patch: tuple[float, float] | None = None,
    threshold: float = 0.5,
    keep_mass: float = 0.6,
    processor: Any = None,
    max_new_tokens: int = 20,
    prompt: str | None = None,
    detection_threshold: float = 0.7,
    discover_algorithm: str = "tokencut",
    discover_tau: float = 0.2,
    lost_k: int = 100,
    discover_features: str = "auto",
    discover_foreground: str = "attention",
    suppress_artifacts: bool = False,
    artifact_k: float = 3.0,
    cache: Any = None,
) -> AttentionMaps:
    """Explain what a model looks at in `image` (PIL). See engine/explain/__init__.py for
    the methods and their options. `cache` (a `CaptureCache`) keeps the captured tensors of
    recent (model, image) pairs, so that another self-attention map of the same image (a
    second click, another layer) costs no forward pass."""
    from engine.explain.self_attention import Options
    from engine.explain.support import capabilities

    image = image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image
    kind, model, processor = resolve(runner_or_model, processor)
    caps = capabilities(model)
    method = resolve_method(method, caps, patch)
    if not caps.allows(method):
        offered = ", ".join(caps.methods) or "none"
        raise UnsupportedModelError(
            f"{_model_name(runner_or_model)}: method '{method}' is not available ({caps.reason}). "
            f"Available: {offered}."
        )
    options = Options(layer=layer, head=head, head_fusion=head_fusion, discard_ratio=discard_ratio,
                      start_layer=start_layer, target=target, patch=patch, threshold=threshold,
                      keep_mass=keep_mass, discover_algorithm=discover_algorithm, discover_tau=discover_tau,
                      lost_k=lost_k, discover_features=discover_features,
                      discover_foreground=discover_foreground, suppress_artifacts=suppress_artifacts, artifact_k=artifact_k, notes=[])
    call = MethodCall(model, processor, image, method, options, max_new_tokens=max_new_tokens,
                      prompt=prompt, detection_threshold=detection_threshold)
    if kind == "onnx":
        entry = EXPLAIN_METHODS.get(method)
        if not entry.onnx:
            raise UnsupportedModelError(f"{_model_name(runner_or_model)}: method '{method}' needs "
                                        f"a torch module; an ONNX graph gives attentions only.")
        result = _explain_onnx(model, image, method, options, cache, owner=runner_or_model)
    elif cache is not None and runner_for(model, method) is _self_attention \
            and not EXPLAIN_METHODS.get(method).gradients:
        result = _explain_torch(model, processor, image, method, options, cache, owner=runner_or_model)
    else:
        result = runner_for(model, method)(call)
    result.model = _model_name(runner_or_model)
    return result


class CaptureCache:
    """The captured tensors of the last few (model, image) pairs: a click on another patch,
    another layer or another threshold recomputes the map from them without a forward.
    Keyed by the model object and a digest of the image's pixels; `forwards` counts misses."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.entries: OrderedDict[tuple[int, bytes], tuple[Any, Any]] = OrderedDict()
        self.forwards = 0

    @staticmethod
    def image_key(image: Any) -> bytes:
        import hashlib

        digest = hashlib.blake2b(digest_size=16)
        digest.update(repr((image.size, image.mode)).encode())
        digest.update(image.tobytes())
        return digest.digest()

    def get_or_capture(self, model: Any, image: Any, capture: Callable[[], Any]) -> Any:
        key = (id(model), self.image_key(image))
        found = self.entries.get(key)
        if found is not None and found[0]() is model:
            self.entries.move_to_end(key)
            return found[1]
        self.forwards += 1
        value = capture()
        try:
            ref: Any = weakref.ref(model)
        except TypeError:
            ref = lambda model=model: model
        self.entries[key] = (ref, value)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self.entries.clear()


@dataclass
class _Capture:
    """One forward's tensors, enough for every self-attention method but relevance."""

    geometry: Any
    layout: Any
    attentions: Any
    features: Any = None
    layer_features: Any = None
    keys: Any = None
    gradients: Any = None
    target: int | None = None
    notes: tuple[str, ...] = ()


def _explain_torch(model: Any, processor: Any, image: Any, method: str, options: Any,
                   cache: CaptureCache | None = None, owner: Any = None) -> AttentionMaps:
    from engine.explain.self_attention import compute
    from engine.explain.torch_capture import capture

    def run() -> _Capture:
        notes: list[str] = []
        pixel_values, geometry = pixel_inputs(processor, image, notes)
        captured = capture(model, pixel_values, with_gradients=EXPLAIN_METHODS.get(method).gradients,
                           target=options.target, notes=notes)
        return _Capture(geometry, captured.layout, captured.attentions, captured.features,
                        captured.layer_features, captured.keys, captured.gradients, captured.target, tuple(notes))

    found = run() if cache is None else cache.get_or_capture(owner or model, image, run)
    options.notes.extend(found.notes)
    if EXPLAIN_METHODS.get(method).gradients:
        options.target = found.target
    return compute(method, found.layout, found.geometry, found.attentions, features=found.features,
                   gradients=found.gradients, layer_features=found.layer_features, keys=found.keys,
                   options=options)


def _explain_onnx(model: Any, image: Any, method: str, options: Any,
                  cache: CaptureCache | None = None, owner: Any = None) -> AttentionMaps:
    from engine.explain.self_attention import compute

    def run() -> _Capture:
        notes: list[str] = []
        pixel_values, geometry = model.preprocess(image, notes=notes)
        out = model.run_all(pixel_values)
        layout = model.layout(tuple(pixel_values.shape[-2:]), out["attentions"].shape[-1])
        if model.prefix_tokens is None and len(layout.special.get("registers", ())) > 0:
            notes.append(f"{model.name}: {layout.patch_start} tokens precede the patch grid; taken as "
                         f"CLS then registers (set sidecar 'prefix_tokens' to override)")
        notes.append(f"ONNX: {len(model.attention_outputs)} attention Softmax outputs exposed from the graph")
        return _Capture(geometry, layout, out["attentions"], out["features"], out["layer_features"],
                        out["keys"], notes=tuple(notes))

    found = run() if cache is None else cache.get_or_capture(owner or model, image, run)
    options.notes.extend(found.notes)
    return compute(method, found.layout, found.geometry, found.attentions, features=found.features,
                   layer_features=found.layer_features, keys=found.keys, options=options)
