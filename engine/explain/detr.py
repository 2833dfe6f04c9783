"""DETR: encoder self-attention over the CNN feature map, decoder cross-attention per object.

DETR's tokens are the cells of the backbone's last feature map (stride 32, or 16 for
DC5 models), read from the input projection's output shape rather than guessed. Each
detected object is one decoder query; its cross-attention over the feature map is
the "where did it look" map (the DETR paper's Fig. 6).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from engine.explain import methods as m
from engine.explain.geometry import grid_to_image
from engine.explain.layout import feature_map_layout
from engine.explain.maps import AttentionMaps, TokenMap


def _detr_core(model: Any) -> Any:
    return getattr(model, "model", model)


def detr_maps(model: Any, processor: Any, image: Any, *, method: str, options: Any,
              threshold: float = 0.7) -> AttentionMaps:
    import torch

    from engine.explain.geometry import pixel_inputs
    from engine.explain.self_attention import compute
    from engine.explain.torch_capture import eager_attention

    notes = options.notes
    pixel_values, geometry = pixel_inputs(processor, image, notes)
    param = next(model.parameters())
    pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
    shapes: list[tuple[int, int]] = []
    hook = _detr_core(model).input_projection.register_forward_hook(
        lambda _mod, _inp, out: shapes.append(tuple(out.shape[-2:]))
    )
    try:
        with eager_attention(model, notes), torch.no_grad():
            outputs = model(pixel_values=pixel_values, output_attentions=True, return_dict=True)
    finally:
        hook.remove()
    layout = feature_map_layout(shapes[-1], tuple(pixel_values.shape[-2:]))
    encoder = np.stack([a[0].float().cpu().numpy() for a in outputs.encoder_attentions])
    if method in ("raw", "rollout"):
        result = compute(method, layout, geometry, encoder, options=options)
        return result
    cross = np.stack([a[0].float().cpu().numpy() for a in outputs.cross_attentions])  # (L, H, Q, hw)
    logits = getattr(outputs, "logits", None)
    if logits is None:
        raise ValueError("per-object maps need a DETR detection head (DetrForObjectDetection)")
    probs = logits[0].float().softmax(-1)[:, :-1]  # last class = "no object"
    scores, labels = probs.max(-1)
    keep = [int(i) for i in torch.nonzero(scores > threshold).flatten().tolist()]
    width, height = geometry.original_size
    boxes = outputs.pred_boxes[0].float().cpu().numpy()
    layer = -1 if options.layer is None else options.layer
    fused = m.select_heads(cross[layer], options.head, options.head_fusion)  # (Q, hw)
    id2label = getattr(model.config, "id2label", {}) or {}
    per_token: list[TokenMap] = []
    for query in keep:
        cx, cy, bw, bh = boxes[query]
        box = (float((cx - bw / 2) * width), float((cy - bh / 2) * height),
               float((cx + bw / 2) * width), float((cy + bh / 2) * height))
        label = id2label.get(int(labels[query]), str(int(labels[query])))
        grid = layout.to_grid(fused[query]).astype(np.float32)
        per_token.append(TokenMap(label=f"{label} {float(scores[query]):.2f}", grid_map=grid,
                                  heatmap=grid_to_image(m.normalize01(grid), layout, geometry),
                                  token_id=int(labels[query]), index=query, box=box,
                                  score=float(scores[query])))
    if not per_token:
        notes.append(f"no object scored above {threshold}: no per-object maps")
    combined = (np.max([t.grid_map for t in per_token], axis=0) if per_token
                else np.zeros(layout.grid, np.float32))
    head_maps = layout.to_grid(cross[:, :, keep, :].mean(axis=2)) if keep else None
    return AttentionMaps(
        method="detr",
        heatmap=grid_to_image(m.normalize01(combined), layout, geometry),
        grid_map=combined.astype(np.float32),
        image_size=geometry.original_size,
        layout=layout,
        attentions=cross.astype(np.float32),
        head_maps=None if head_maps is None else head_maps.astype(np.float32),
        valid=geometry.valid_mask(),
        per_token=per_token,
        notes=notes,
        params={"layer": layer, "head": options.head, "head_fusion": options.head_fusion, "threshold": threshold,
                    "attentions": "cross: (decoder layers, heads, queries, feature-map cells)"},
    )
