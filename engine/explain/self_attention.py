"""Self-attention methods on captured tensors -> AttentionMaps (torch and ONNX alike)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.errors import OptionError
from engine.explain import methods as m
from engine.explain.geometry import Geometry, grid_to_image, original_to_cell
from engine.explain.maps import AttentionMaps, TokenLayout

SELF_ATTENTION_METHODS = ("raw", "rollout", "relevance", "cls_similarity", "patch_similarity", "dino")


@dataclass
class Options:
    layer: int | None = None
    head: int | None = None
    head_fusion: str = "mean"
    discard_ratio: float = 0.0
    start_layer: int = 0
    target: int | None = None
    patch: tuple[float, float] | None = None  # (x, y) in original-image pixels
    threshold: float = 0.5  # patch_similarity: cosine above which a patch joins the segment
    keep_mass: float = 0.6  # dino: share of the CLS attention mass kept per head
    notes: list[str] = field(default_factory=list)


def head_grid_maps(attentions: np.ndarray, layout: TokenLayout) -> np.ndarray:
    """(layers, heads, rows, cols): what each head's query (CLS, else patch mean) looks at."""
    cls = layout.cls_index
    rows = attentions[:, :, cls, :] if cls is not None else attentions[:, :, layout.patch_slice, :].mean(axis=2)
    return layout.to_grid(rows).astype(np.float32)


def _no_cls_note(layout: TokenLayout, notes: list[str]) -> None:
    if layout.cls_index is None:
        notes.append("this model has no CLS token: the map is the attention each patch receives, "
                     "averaged over all patch queries")


def _query_token(options: Options, layout: TokenLayout, geometry: Geometry) -> int | None:
    if options.patch is None:
        return None
    row, col = original_to_cell(options.patch[0], options.patch[1], layout, geometry)
    options.notes.append(f"query: the patch at row {row}, column {col} (clicked at {options.patch})")
    return layout.patch_start + row * layout.grid[1] + col


def compute(
    method: str,
    layout: TokenLayout,
    geometry: Geometry,
    attentions: np.ndarray,
    *,
    features: np.ndarray | None = None,
    gradients: np.ndarray | None = None,
    options: Options,
) -> AttentionMaps:
    """One of SELF_ATTENTION_METHODS over captured (layers, heads, N, N) attentions."""
    notes = options.notes
    params: dict[str, object] = {}
    mask_grid: np.ndarray | None = None
    head_maps = head_grid_maps(attentions, layout)
    if method == "raw":
        layer = -1 if options.layer is None else options.layer
        query = _query_token(options, layout, geometry)
        if query is None:
            _no_cls_note(layout, notes)
        row = m.raw_attention(attentions, layout, layer=layer, head=options.head,
                              head_fusion=options.head_fusion, query=query)
        grid = layout.to_grid(row)
        params.update(layer=layer, head=options.head, head_fusion=options.head_fusion)
    elif method == "rollout":
        keep = layout.special.get("cls", ())
        joint = m.rollout(attentions, head_fusion=options.head_fusion, discard_ratio=options.discard_ratio,
                          start_layer=options.start_layer, keep=keep)
        query = _query_token(options, layout, geometry)
        if query is None:
            _no_cls_note(layout, notes)
        grid = layout.to_grid(m.query_row(joint, layout, query))
        params.update(head_fusion=options.head_fusion, discard_ratio=options.discard_ratio,
                      start_layer=options.start_layer)
    elif method == "relevance":
        if gradients is None:
            raise OptionError("relevance needs attention gradients: only torch models provide them")
        joint = m.relevance(attentions, gradients, start_layer=options.start_layer)
        query = _query_token(options, layout, geometry)
        if query is None:
            _no_cls_note(layout, notes)
        row = m.query_row(joint, layout, query).copy()
        grid = layout.to_grid(row)
        params.update(target=options.target, start_layer=options.start_layer)
    elif method in ("cls_similarity", "patch_similarity"):
        if features is None:
            raise OptionError(f"{method} needs the last layer's token features: this model does not expose them")
        if method == "cls_similarity":
            if layout.cls_index is None:
                raise OptionError("cls_similarity needs a CLS token; this model has none (try patch_similarity)")
            grid = layout.to_grid(m.cosine_to(features, layout.cls_index))
        else:
            if options.patch is None:
                raise OptionError("patch_similarity needs patch=(x, y): the clicked pixel of the original image")
            query = _query_token(options, layout, geometry)
            grid = layout.to_grid(m.cosine_to(features, query))
            mask_grid = grid >= options.threshold
            params.update(patch=options.patch, threshold=options.threshold)
    elif method == "dino":
        layer = -1 if options.layer is None else options.layer
        maps, masks = m.dino_head_maps(attentions[layer], layout, keep=options.keep_mass)
        if options.head is None:
            grid = maps.mean(axis=0)
            mask_grid = masks.any(axis=0)
        else:
            grid, mask_grid = maps[options.head], masks[options.head]
        head_maps = maps[None].astype(np.float32)
        params.update(layer=layer, head=options.head, keep_mass=options.keep_mass)
    else:
        raise OptionError(f"unknown self-attention method '{method}'; choose one of {', '.join(SELF_ATTENTION_METHODS)}")

    grid = np.asarray(grid, dtype=np.float32)
    heat = grid_to_image(m.normalize01(grid), layout, geometry)
    valid = geometry.valid_mask()
    mask = None
    if mask_grid is not None:
        mask = (grid_to_image(mask_grid.astype(np.float32), layout, geometry) >= 0.5) & valid
    return AttentionMaps(
        method=method,
        heatmap=heat.astype(np.float32),
        grid_map=grid,
        image_size=geometry.original_size,
        layout=layout,
        attentions=attentions.astype(np.float32),
        head_maps=head_maps,
        mask=mask,
        valid=valid,
        notes=notes,
        params=params,
    )
