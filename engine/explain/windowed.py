"""Windowed attention (Swin, Swin V2, Swin2SR, Donut-Swin): per-window maps stitched.

A Swin layer attends only inside ws×ws windows of its stage's token grid, which is
padded to a multiple of ws and cyclically shifted by `shift_size` on odd layers. Each
window's attention is summarised per token (attention received, averaged over the
window's queries — or the clicked token's row), then the windows are put back where
window_partition took them, un-shifted and un-padded: one map on the stage grid.
Layer sizes, window sizes and shifts are read from the layer modules during the
forward pass (Swin shrinks windows on small stages), not assumed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.explain import methods as m
from engine.explain.geometry import grid_to_image, original_to_cell
from engine.explain.layout import feature_map_layout
from engine.explain.maps import AttentionMaps

_LAYER_CLASSES = ("SwinLayer", "Swinv2Layer", "Swin2SRLayer", "DonutSwinLayer", "MaskFormerSwinLayer")


@dataclass
class WindowLayer:
    name: str
    dims: tuple[int, int]  # token grid (height, width) of the layer's stage
    window: int
    shift: int
    attention: np.ndarray  # (windows, heads, ws², ws²)


def stitch(per_window: np.ndarray, dims: tuple[int, int], window: int, shift: int) -> np.ndarray:
    """(windows, ws²) token values -> (height, width) grid: reverse partition, shift and pad."""
    height, width = dims
    hp, wp = -(-height // window) * window, -(-width // window) * window
    rows, cols = hp // window, wp // window
    if per_window.shape[0] != rows * cols:
        raise ValueError(f"{per_window.shape[0]} windows do not tile a {hp}×{wp} grid of {window}×{window}")
    tiles = per_window.reshape(rows, cols, window, window)
    shifted = tiles.transpose(0, 2, 1, 3).reshape(hp, wp)
    grid = np.roll(shifted, shift=(shift, shift), axis=(0, 1)) if shift else shifted
    return grid[:height, :width]


def _token_values(attention: np.ndarray, head: int | None, fusion: str, query: tuple[int, int] | None,
                  dims: tuple[int, int], window: int, shift: int) -> np.ndarray:
    fused = np.stack([m.select_heads(w, head, fusion) for w in attention])  # (windows, ws², ws²)
    if query is None:
        return fused.mean(axis=1)  # attention each token receives inside its window
    # which window and position does the clicked token land in after shift + partition?
    hp, wp = -(-dims[0] // window) * window, -(-dims[1] // window) * window
    r, c = (query[0] - shift) % hp, (query[1] - shift) % wp
    index = (r // window) * (wp // window) + (c // window)
    values = np.zeros(fused.shape[:2], dtype=np.float64)
    values[index] = fused[index, (r % window) * window + (c % window)]
    return values


def capture_windows(model: Any, pixel_values: Any, notes: list[str]) -> list[WindowLayer]:
    import torch

    from engine.explain.torch_capture import eager_attention

    layers = [(name, mod) for name, mod in model.named_modules() if type(mod).__name__ in _LAYER_CLASSES]
    if not layers:
        raise ValueError(f"{type(model).__name__}: no Swin-style window attention layers found")
    found: dict[str, dict[str, Any]] = {name: {} for name, _ in layers}
    hooks = []
    for name, layer in layers:
        def pre(_mod: Any, args: Any, kwargs: Any, name: str = name) -> None:
            dims = kwargs.get("input_dimensions", args[1] if len(args) > 1 else None)
            found[name]["dims"] = (int(dims[0]), int(dims[1]))

        def post(_mod: Any, _inputs: Any, output: Any, name: str = name) -> None:
            tensors = [o for o in (output if isinstance(output, (tuple, list)) else (output,))
                       if isinstance(o, torch.Tensor) and o.dim() == 4]
            if tensors:
                found[name]["attention"] = tensors[-1][:, :, :, :].detach().float().cpu().numpy()

        hooks.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(layer.attention.register_forward_hook(post))
    try:
        with eager_attention(model, notes), torch.no_grad():
            model(pixel_values=pixel_values, output_attentions=True)
    finally:
        for hook in hooks:
            hook.remove()
    captured = []
    for name, layer in layers:
        record = found[name]
        if "attention" not in record or "dims" not in record:
            continue
        window = int(layer.window_size)
        captured.append(WindowLayer(name, record["dims"], window, int(layer.shift_size), record["attention"]))
    if not captured:
        raise RuntimeError(f"{type(model).__name__}: window attention weights were not returned")
    return captured


def windowed_maps(model: Any, processor: Any, image: Any, *, options: Any) -> AttentionMaps:
    from engine.explain.geometry import pixel_inputs

    notes = options.notes
    pixel_values, geometry = pixel_inputs(processor, image, notes)
    param = next(model.parameters())
    pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
    layers = capture_windows(model, pixel_values, notes)
    index = -1 if options.layer is None else options.layer
    if not -len(layers) <= index < len(layers):
        raise ValueError(f"layer {index} out of range: the model has {len(layers)} window-attention layers")
    chosen = layers[index]
    layout = feature_map_layout(chosen.dims, tuple(pixel_values.shape[-2:]))
    query = None
    if options.patch is not None:
        query = original_to_cell(options.patch[0], options.patch[1], layout, geometry)
    values = _token_values(chosen.attention, options.head, options.head_fusion, query, chosen.dims,
                           chosen.window, chosen.shift)
    grid = stitch(values, chosen.dims, chosen.window, chosen.shift).astype(np.float32)
    heads = chosen.attention.shape[1]
    head_maps = np.stack([
        stitch(_token_values(chosen.attention, h, "mean", query, chosen.dims, chosen.window, chosen.shift),
               chosen.dims, chosen.window, chosen.shift) for h in range(heads)
    ])[None].astype(np.float32)
    notes.append(f"layer '{chosen.name}': {chosen.dims[0]}×{chosen.dims[1]} tokens in "
                 f"{chosen.window}×{chosen.window} windows, shift {chosen.shift}; "
                 + ("the clicked token's window only" if query else "attention each token receives in its window"))
    return AttentionMaps(
        method="windowed",
        heatmap=grid_to_image(m.normalize01(grid), layout, geometry),
        grid_map=grid,
        image_size=geometry.original_size,
        layout=layout,
        head_maps=head_maps,
        valid=geometry.valid_mask(),
        notes=notes,
        params={"layer": index, "layer_name": chosen.name, "head": options.head, "head_fusion": options.head_fusion,
                    "window": chosen.window, "shift": chosen.shift, "layers": len(layers)},
    )
