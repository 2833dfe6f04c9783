"""The single entry point: `explain(model, image, method=…) -> AttentionMaps`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.errors import UnsupportedModelError
from engine.explain.maps import METHODS, AttentionMaps


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
    from engine.errors import UsageError

    method = METHOD_ALIASES.get(method, method)
    if method == "cross":
        method = "detr" if caps.allows("detr") and not caps.allows("cross_attention") \
            else "cross_attention"
    elif method == "similarity":
        method = "patch_similarity" if patch is not None else "cls_similarity"
    if method not in METHODS:
        raise UsageError(f"unknown attention-map method '{method}'; choose one of "
                         f"{', '.join(METHODS)} (or cross, similarity).")
    return method


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
) -> AttentionMaps:
    """Explain what a model looks at in `image` (PIL). See engine/explain/__init__.py for
    the methods and their options."""
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
                      keep_mass=keep_mass, notes=[])
    if kind == "onnx":
        result = _explain_onnx(model, image, method, options)
    elif method == "cross_attention":
        from engine.explain.captioner import caption_maps

        result = caption_maps(model, processor, image, options=options, max_new_tokens=max_new_tokens,
                              prompt=prompt)
    elif method == "detr" or getattr(model.config, "model_type", "") == "detr":
        from engine.explain.detr import detr_maps

        result = detr_maps(model, processor, image, method=method, options=options,
                           threshold=detection_threshold)
    elif method == "gradcam":
        from engine.explain.gradcam import gradcam_maps

        result = gradcam_maps(model, processor, image, target=target, notes=options.notes)
    elif method == "windowed":
        from engine.explain.windowed import windowed_maps

        result = windowed_maps(model, processor, image, options=options)
    else:
        result = _explain_torch(model, processor, image, method, options)
    result.model = _model_name(runner_or_model)
    return result


def pixel_inputs(processor: Any, image: Any, notes: list[str]) -> tuple[Any, Any]:
    """(pixel_values tensor, Geometry) through the model's own processor."""
    from engine.explain.geometry import geometry_from_processor, stretch_geometry

    image_processor = getattr(processor, "image_processor", None) or processor
    pixel_values = image_processor(images=image, return_tensors="pt")["pixel_values"]
    geometry = geometry_from_processor(image_processor, image.size)
    actual = tuple(int(v) for v in pixel_values.shape[-2:])
    if geometry.input_size != actual:
        notes.append(
            f"could not replay this processor's geometry ({geometry.describe()}, but it produced "
            f"{actual[1]}×{actual[0]}): the map is stretched over the whole image and may be misaligned"
        )
        geometry = stretch_geometry(image.size, actual)
    return pixel_values, geometry


def _explain_torch(model: Any, processor: Any, image: Any, method: str, options: Any) -> AttentionMaps:
    from engine.explain.self_attention import compute
    from engine.explain.torch_capture import capture

    pixel_values, geometry = pixel_inputs(processor, image, options.notes)
    captured = capture(model, pixel_values, with_gradients=(method == "relevance"), target=options.target,
                       notes=options.notes)
    if method == "relevance":
        options.target = captured.target
    return compute(method, captured.layout, geometry, captured.attentions, features=captured.features,
                   gradients=captured.gradients, options=options)


def _explain_onnx(model: Any, image: Any, method: str, options: Any) -> AttentionMaps:
    from engine.explain.self_attention import compute

    pixel_values, geometry = model.preprocess(image, notes=options.notes)
    attentions = model.run(pixel_values)
    layout = model.layout(tuple(pixel_values.shape[-2:]), attentions.shape[-1])
    if model.prefix_tokens is None and len(layout.special.get("registers", ())) > 0:
        options.notes.append(f"{model.name}: {layout.patch_start} tokens precede the patch grid; taken as "
                             f"CLS then registers (set sidecar 'prefix_tokens' to override)")
    options.notes.append(f"ONNX: {len(model.attention_outputs)} attention Softmax outputs exposed from the graph")
    return compute(method, layout, geometry, attentions, options=options)
