"""Attention maps: see what a model looks at.

Public API (heavy imports happen only when these are called):

    explain(runner_or_model, image, *, method, layer=None, head=None, head_fusion="mean",
            discard_ratio=0.0, start_layer=0, target=None, patch=None, threshold=0.5,
            keep_mass=0.6, processor=None, max_new_tokens=20, prompt=None,
            detection_threshold=0.7, discover_algorithm="tokencut", discover_tau=0.2, lost_k=100,
            discover_features="auto", discover_foreground="attention", suppress_artifacts=False,
            artifact_k=3.0, cache=None) -> AttentionMaps
    save_maps(maps, image, out_dir, stem, *, opacity=0.5, colormap="jet") -> list[Path]
    capabilities(model_or_config_or_card) -> ExplainCapabilities
    overlay(image, heatmap, *, opacity=0.5, colormap="jet", valid=None, mask=None) -> RGB uint8
    contact_sheet(head_maps, *, tile=96, colormap="jet") -> RGB uint8
    OnnxAttentionModel.from_path(path, ...) / expose_attention(onnx_model)

`runner_or_model`: an engine Runner (its `.module` and `.processor` are used), a
transformers `torch.nn.Module` with `processor=`, an `OnnxAttentionModel`, or a path
to an .onnx file. Methods: see `METHODS` in engine.explain.maps.
"""
from __future__ import annotations

from typing import Any

from engine.explain.maps import METHODS, AttentionMaps, TokenLayout, TokenMap

__all__ = [
    "METHODS",
    "AttentionMaps",
    "ExplainCapabilities",
    "OnnxAttentionModel",
    "TokenLayout",
    "TokenMap",
    "capabilities",
    "contact_sheet",
    "explain",
    "expose_attention",
    "overlay",
    "save_maps",
]

_LAZY = {
    "explain": ("engine.explain.api", "explain"),
    "save_maps": ("engine.explain.render", "save_maps"),
    "overlay": ("engine.explain.render", "overlay"),
    "contact_sheet": ("engine.explain.render", "contact_sheet"),
    "capabilities": ("engine.explain.support", "capabilities"),
    "ExplainCapabilities": ("engine.explain.support", "ExplainCapabilities"),
    "OnnxAttentionModel": ("engine.explain.onnx_attention", "OnnxAttentionModel"),
    "expose_attention": ("engine.explain.onnx_attention", "expose_attention"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'engine.explain' has no attribute '{name}'")
