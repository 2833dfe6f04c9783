"""Self-attention methods on captured tensors -> AttentionMaps (torch and ONNX alike)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.errors import OptionError
from engine.explain import methods as m
from engine.explain.geometry import Geometry, grid_to_image, original_to_cell
from engine.explain.maps import AttentionMaps, TokenLayout

SELF_ATTENTION_METHODS = ("raw", "rollout", "relevance", "cls_similarity", "patch_similarity", "dino",
                          "discover", "class_attention")


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
    discover_algorithm: str = "tokencut"  # discover: "tokencut" | "lost"
    discover_tau: float = 0.2  # tokencut: cosine above which two patches are linked
    lost_k: int = 100  # lost: lowest-degree patches that expand the seed
    discover_features: str = "auto"  # "keys" | "tokens" | "auto" (the lower normalized-cut value)
    discover_foreground: str = "attention"  # tokencut: side the CLS attends to | "eigenvector" (max |x|)
    suppress_artifacts: bool = False  # drop high-norm outlier tokens from rollout / similarity
    artifact_k: float = 3.0  # outlier: norm > mean + k·std of the patch-token norms
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
    layer_features: np.ndarray | None = None,
    keys: np.ndarray | None = None,
    options: Options,
) -> AttentionMaps:
    """One of SELF_ATTENTION_METHODS over captured (layers, heads, N, N) attentions.

    `features` (N, D): the final tokens; `layer_features` (layers, N, D): each block's
    output tokens; `keys` (N, D): the last block's keys (TokenCut's features)."""
    notes = options.notes
    params: dict[str, object] = {}
    mask_grid: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None
    head_maps = head_grid_maps(attentions, layout)
    artifacts = _artifacts(layout, geometry, layer_features, features, options, params)
    if options.suppress_artifacts and artifacts.size and method in ("rollout",):
        attentions = _without_tokens(attentions, artifacts)
        notes.append(f"rollout: attention to {artifacts.size} artifact token(s) removed and rows renormalised")
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
        tokens = _layer_tokens(options.layer, features, layer_features, method, notes)
        if method == "cls_similarity":
            if layout.cls_index is None:
                raise OptionError("cls_similarity needs a CLS token; this model has none (try patch_similarity)")
            grid = layout.to_grid(m.cosine_to(tokens, layout.cls_index))
        else:
            if options.patch is None:
                raise OptionError("patch_similarity needs patch=(x, y): the clicked pixel of the original image")
            query = _query_token(options, layout, geometry)
            grid = layout.to_grid(m.cosine_to(tokens, query))
            params.update(patch=options.patch, threshold=options.threshold)
        params.update(layer=-1 if options.layer is None else options.layer)
        if options.suppress_artifacts and artifacts.size:
            grid = _fill_cells(grid, layout, artifacts)
            notes.append(f"similarity: {artifacts.size} artifact token(s) set to the lowest similarity")
        if method == "patch_similarity":
            mask_grid = grid >= options.threshold
    elif method == "class_attention":
        if gradients is None:
            raise OptionError("class_attention needs attention gradients: only torch models provide them")
        layer = -1 if options.layer is None else options.layer
        grid = layout.to_grid(m.class_attention(attentions, gradients, layout, layer=layer))
        params.update(target=options.target, layer=layer)
    elif method == "discover":
        grid, mask_grid, box = _discover(layout, geometry, features, keys, attentions, options, params)
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
    if options.suppress_artifacts and artifacts.size and method == "rollout":
        grid = _fill_cells(grid, layout, artifacts)
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
        box=box,
    )


# -- artifact tokens, per-layer tokens, discovery -----------------------------------------------


def _artifacts(layout: TokenLayout, geometry: Geometry, layer_features: np.ndarray | None,
               features: np.ndarray | None, options: Options, params: dict[str, object]) -> np.ndarray:
    """Token indices of high-norm patch outliers in the last block's output tokens (reported in
    params["artifacts"] as (row, col) cells and params["artifact_points"] as original pixels)."""
    from engine.explain.discovery import artifact_tokens

    tokens = layer_features[-1] if layer_features is not None else features
    if tokens is None or tokens.shape[0] != layout.num_tokens:
        return np.zeros(0, dtype=int)
    found = artifact_tokens(tokens[layout.patch_slice], k=options.artifact_k) + layout.patch_start
    if found.size:
        cols = layout.grid[1]
        cells = [((int(t) - layout.patch_start) // cols, (int(t) - layout.patch_start) % cols) for t in found]
        to_original = geometry.input_to_original()
        ph, pw = layout.patch_size
        points = [(float(to_original[0, 0] * ((c + 0.5) * pw - 0.5) + to_original[0, 2]),
                   float(to_original[1, 1] * ((r + 0.5) * ph - 0.5) + to_original[1, 2])) for r, c in cells]
        params.update(artifacts=cells, artifact_points=points)
        options.notes.append(f"artifact tokens (patch-token norm > mean + {options.artifact_k:g}·std, last layer): "
                             f"{', '.join(f'row {r} col {c}' for r, c in cells)}")
    _register_norms(layout, tokens, params, options.notes)
    return found


def _register_norms(layout: TokenLayout, tokens: np.ndarray, params: dict[str, object], notes: list[str]) -> None:
    """With register tokens (DINOv2 with registers): their last-layer norms next to the patch
    tokens' (params["register_norms"], params["patch_norms"] = (mean, max)), and whether the
    registers are where the high-norm tokens went (all above every patch token)."""
    registers = layout.special.get("registers", ())
    if not registers:
        return
    norms = np.linalg.norm(np.asarray(tokens, dtype=np.float64), axis=-1)
    register_norms = [float(norms[t]) for t in registers]
    patch_norms = norms[layout.patch_slice]
    patch_mean, patch_max = float(patch_norms.mean()), float(patch_norms.max())
    params.update(register_norms=register_norms, patch_norms=(patch_mean, patch_max))
    absorbed = min(register_norms) > patch_max
    notes.append(f"{len(registers)} register token(s), last-layer norms "
                 f"{', '.join(f'{n:.1f}' for n in register_norms)}; patch tokens: mean {patch_mean:.1f}, "
                 f"max {patch_max:.1f}" + (": the registers hold the high-norm tokens, not the patches"
                                           if absorbed else ""))


def _without_tokens(attentions: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Attention with the columns of `tokens` zeroed and rows renormalised."""
    out = attentions.astype(np.float64).copy()
    out[..., tokens] = 0.0
    sums = out.sum(axis=-1, keepdims=True)
    sums[sums == 0] = 1.0
    return (out / sums).astype(np.float32)


def _fill_cells(grid: np.ndarray, layout: TokenLayout, tokens: np.ndarray) -> np.ndarray:
    grid = np.asarray(grid, dtype=np.float32).copy()
    cells = np.zeros(grid.shape, dtype=bool)
    for t in tokens:
        index = int(t) - layout.patch_start
        cells[index // layout.grid[1], index % layout.grid[1]] = True
    if cells.all():
        return grid
    grid[cells] = grid[~cells].min()
    return grid


def _layer_tokens(layer: int | None, features: np.ndarray | None, layer_features: np.ndarray | None,
                  method: str, notes: list[str]) -> np.ndarray:
    if layer is None or (layer_features is not None and layer % len(layer_features) == len(layer_features) - 1
                         and features is not None):
        if features is None:
            raise OptionError(f"{method} needs the last layer's token features: this model does not expose them")
        return features
    if layer_features is None:
        raise OptionError(f"{method} at layer {layer} needs each layer's tokens: this model does not expose them")
    if not -len(layer_features) <= layer < len(layer_features):
        raise OptionError(f"layer {layer} out of range: the model has {len(layer_features)} layers")
    notes.append(f"{method}: the output tokens of layer {layer % len(layer_features)}")
    return layer_features[layer]


def _discover(layout: TokenLayout, geometry: Geometry, features: np.ndarray | None, keys: np.ndarray | None,
              attentions: np.ndarray, options: Options, params: dict[str, object]
              ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    from engine.explain.discovery import (
        DISCOVER_FEATURES,
        DISCOVER_FOREGROUNDS,
        binary_affinity,
        discover,
        normalized_cut,
    )

    if options.discover_features not in DISCOVER_FEATURES:
        raise OptionError(f"discover_features must be one of {', '.join(DISCOVER_FEATURES)}")
    if options.discover_foreground not in DISCOVER_FOREGROUNDS:
        raise OptionError(f"discover_foreground must be one of {', '.join(DISCOVER_FOREGROUNDS)}")
    offered = {name: value for name, value in (("keys", keys), ("tokens", features)) if value is not None}
    if not offered:
        raise OptionError("discover needs the last layer's keys or tokens: this model exposes neither")
    wanted = options.discover_features
    if wanted != "auto" and wanted not in offered:
        raise OptionError(f"discover: this model does not expose its last layer's {wanted}")
    if wanted == "auto":
        if len(offered) == 1:
            wanted = next(iter(offered))
        else:  # the graph that cuts better (TokenCut's own criterion, the Ncut value λ₂)
            values = {name: normalized_cut(binary_affinity(v[layout.patch_slice], options.discover_tau))[0]
                      for name, v in offered.items()}
            wanted = min(values, key=values.get)
            options.notes.append("discover: normalized-cut value " + ", ".join(
                f"{name} {value:.3f}" for name, value in values.items()) + f"; used the {wanted}")
    tokens = offered[wanted]
    options.notes.append(f"discover ({options.discover_algorithm}): the last layer's {wanted}")
    attention = None
    if options.discover_foreground == "attention" and layout.cls_index is not None:
        attention = attentions[-1, :, layout.cls_index, layout.patch_slice].mean(axis=0)
        options.notes.append("discover: the foreground is the side the last layer's CLS attends to more")
    params.update(discover_features=wanted)
    found = discover(tokens[layout.patch_slice], layout.grid, algorithm=options.discover_algorithm,
                     tau=options.discover_tau, k=options.lost_k, attention=attention)
    r0, c0, r1, c1 = found.cell_box
    ph, pw = layout.patch_size
    top, left = geometry.crop_offset
    sx = geometry.original_size[0] / geometry.resized_size[1]
    sy = geometry.original_size[1] / geometry.resized_size[0]
    w, h = geometry.original_size
    box = (float(np.clip((c0 * pw + left) * sx, 0, w)), float(np.clip((r0 * ph + top) * sy, 0, h)),
           float(np.clip((c1 * pw + left) * sx, 0, w)), float(np.clip((r1 * ph + top) * sy, 0, h)))
    params.update(discover_algorithm=options.discover_algorithm, seed=found.seed, cell_box=found.cell_box,
                  box=box)
    if options.discover_algorithm == "tokencut":
        params.update(discover_tau=options.discover_tau)
    else:
        params.update(lost_k=options.lost_k)
    return found.scores, found.foreground, box
