"""Grad-CAM (Selvaraju et al. 2017) for models without attention (ConvNeXt, ResNet, …).

The target layer is the last 4-D activation with more than one spatial cell in
execution order: the output of the last convolutional stage, just before global
pooling, whatever the architecture calls it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from engine.errors import OptionError
from engine.explain import methods as m
from engine.explain.geometry import grid_to_image
from engine.explain.layout import feature_map_layout
from engine.explain.maps import AttentionMaps


def _first_tensor(output: Any) -> Any:
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "last_hidden_state") and isinstance(output.last_hidden_state, torch.Tensor):
        return output.last_hidden_state
    return None


def gradcam_maps(model: Any, processor: Any, image: Any, *, target: int | None = None,
                 notes: list[str] | None = None) -> AttentionMaps:
    import torch

    from engine.explain.geometry import pixel_inputs

    notes = [] if notes is None else notes
    pixel_values, geometry = pixel_inputs(processor, image, notes)
    param = next(model.parameters())
    pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
    seen: list[tuple[str, Any]] = []
    names = {mod: name for name, mod in model.named_modules()}

    def record(module: Any, _inputs: Any, output: Any) -> None:
        tensor = _first_tensor(output)
        if tensor is not None and tensor.dim() == 4 and tensor.shape[-1] * tensor.shape[-2] > 1 \
                and tensor.requires_grad:
            seen.append((names.get(module, "?"), tensor))

    hooks = [mod.register_forward_hook(record) for mod in model.modules() if mod is not model]
    try:
        with torch.enable_grad():
            outputs = model(pixel_values=pixel_values)
            logits = getattr(outputs, "logits", None)
            if logits is None or logits.dim() != 2:
                raise ValueError(f"{type(model).__name__}: Grad-CAM needs class logits (an image classifier)")
            if not seen:
                raise ValueError(f"{type(model).__name__}: no convolutional feature map found for Grad-CAM")
            activation = seen[-1][1]
            # containers re-emit their last child's tensor: name the innermost module
            layer_name = next(name for name, tensor in seen if tensor is activation)
            index = int(logits[0].argmax()) if target is None else int(target)
            if not 0 <= index < logits.shape[-1]:
                raise OptionError(f"target class {index} out of range: the model has {logits.shape[-1]} classes")
            (gradient,) = torch.autograd.grad(logits[0, index], activation)
    finally:
        for hook in hooks:
            hook.remove()
    weights = gradient[0].float().mean(dim=(1, 2))  # (C,)
    cam = torch.relu((weights[:, None, None] * activation[0].detach().float()).sum(0)).cpu().numpy()
    layout = feature_map_layout(cam.shape, tuple(pixel_values.shape[-2:]))
    label = (getattr(model.config, "id2label", {}) or {}).get(index, str(index))
    notes.append(f"Grad-CAM on '{layer_name}' ({cam.shape[0]}×{cam.shape[1]}) for class {index} ({label})")
    return AttentionMaps(
        method="gradcam",
        heatmap=grid_to_image(m.normalize01(cam), layout, geometry),
        grid_map=cam.astype(np.float32),
        image_size=geometry.original_size,
        layout=layout,
        valid=geometry.valid_mask(),
        notes=notes,
        params={"target": index, "layer": layer_name},
    )
