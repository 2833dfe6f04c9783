"""Explanation methods as small numpy functions over captured tensors.

Conventions: `attentions` is float (layers, heads, N, N), rows = queries, columns =
keys, each row a probability distribution. Token vectors are (N,) in the model's
token order; `TokenLayout.to_grid` turns them into the patch grid.
"""
from __future__ import annotations

import numpy as np

from engine.errors import OptionError
from engine.explain.maps import TokenLayout

HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(attention: np.ndarray, fusion: str = "mean", *, axis: int = -3) -> np.ndarray:
    """Fuse the head axis of (…, heads, N, N) by mean, max or min."""
    if fusion == "mean":
        return attention.mean(axis=axis)
    if fusion == "max":
        return attention.max(axis=axis)
    if fusion == "min":
        return attention.min(axis=axis)
    raise OptionError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, not '{fusion}'")


def select_heads(attention: np.ndarray, head: int | None, fusion: str) -> np.ndarray:
    """(heads, N, N) -> (N, N): one head, or all heads fused."""
    if head is None:
        return fuse_heads(attention, fusion, axis=0)
    if not -attention.shape[0] <= head < attention.shape[0]:
        raise OptionError(f"head {head} out of range: the layer has {attention.shape[0]} heads")
    return attention[head]


def query_row(matrix: np.ndarray, layout: TokenLayout, query: int | None = None) -> np.ndarray:
    """Row of `query` (default: CLS) of an (N, N) token matrix; without a CLS token,
    the attention each token receives, averaged over the patch queries."""
    if query is not None:
        return matrix[query]
    cls = layout.cls_index
    if cls is not None:
        return matrix[cls]
    return matrix[layout.patch_slice].mean(axis=0)


def raw_attention(
    attentions: np.ndarray,
    layout: TokenLayout,
    *,
    layer: int = -1,
    head: int | None = None,
    head_fusion: str = "mean",
    query: int | None = None,
) -> np.ndarray:
    """One layer's attention from `query` (default CLS) to every token: (N,)."""
    if not -attentions.shape[0] <= layer < attentions.shape[0]:
        raise OptionError(f"layer {layer} out of range: the model has {attentions.shape[0]} layers")
    return query_row(select_heads(attentions[layer], head, head_fusion), layout, query)


def discard_lowest(matrix: np.ndarray, ratio: float, keep: tuple[int, ...] = ()) -> np.ndarray:
    """Zero the `ratio` share of smallest entries of an (N, N) matrix, except rows/cols in `keep`
    (vit-explain keeps the CLS entries so the map never loses its own start)."""
    if ratio <= 0:
        return matrix
    if ratio >= 1:
        raise OptionError("discard_ratio must be in [0, 1)")
    out = matrix.copy()
    flat = out.reshape(-1)
    count = int(flat.size * ratio)
    if count == 0:
        return out
    order = np.argsort(flat, kind="stable")[:count]
    protected = np.zeros_like(out, dtype=bool)
    for k in keep:
        protected[k, k] = True
    order = order[~protected.reshape(-1)[order]]
    flat[order] = 0.0
    return out


def rollout(
    attentions: np.ndarray,
    *,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
    keep: tuple[int, ...] = (),
) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020): (N, N) joint attention.

    Each layer: fuse heads, optionally discard the weakest weights, add the identity
    for the residual path, renormalise rows, and multiply onto the layers below:
    R = Â_L · … · Â_start.
    """
    layers, _, n, _ = attentions.shape
    if not 0 <= start_layer < layers:
        raise OptionError(f"start_layer {start_layer} out of range: the model has {layers} layers")
    result = np.eye(n, dtype=np.float64)
    eye = np.eye(n, dtype=np.float64)
    for index in range(start_layer, layers):
        fused = fuse_heads(attentions[index].astype(np.float64), head_fusion, axis=0)
        fused = discard_lowest(fused, discard_ratio, keep)
        a = (fused + eye) / 2.0
        a = a / a.sum(axis=-1, keepdims=True)
        result = a @ result
    return result


def relevance(attentions: np.ndarray, gradients: np.ndarray, *, start_layer: int = 0) -> np.ndarray:
    """Chefer et al. 2021 ("Generic attention-model explainability"), self-attention rule:
    R = I; for each layer Ā = E_h[(∇A ⊙ A)⁺]; R += Ā · R. Returns (N, N)."""
    if attentions.shape != gradients.shape:
        raise OptionError(f"attention {attentions.shape} and gradient {gradients.shape} shapes differ")
    layers, _, n, _ = attentions.shape
    r = np.eye(n, dtype=np.float64)
    for index in range(start_layer, layers):
        cam = (gradients[index].astype(np.float64) * attentions[index].astype(np.float64))
        cam = np.clip(cam, 0.0, None).mean(axis=0)
        r = r + cam @ r
    return r


def cosine_to(features: np.ndarray, index: int) -> np.ndarray:
    """Cosine similarity of every token feature (N, D) with token `index`: (N,)."""
    f = features.astype(np.float64)
    norms = np.linalg.norm(f, axis=-1)
    norms[norms == 0] = 1.0
    return (f @ f[index]) / (norms * norms[index])


def keep_mass_mask(values: np.ndarray, keep: float) -> np.ndarray:
    """bool mask of the largest entries that together hold `keep` of the total mass
    (DINO's visualize_attention threshold)."""
    if not 0 < keep <= 1:
        raise OptionError("the kept attention share must be in (0, 1]")
    flat = values.reshape(-1).astype(np.float64)
    total = flat.sum()
    if total <= 0:
        return np.zeros(values.shape, dtype=bool)
    order = np.argsort(flat)  # ascending, as DINO
    cumulative = np.cumsum(flat[order]) / total
    kept = np.zeros(flat.shape, dtype=bool)
    kept[order] = cumulative > (1 - keep)
    return kept.reshape(values.shape)


def dino_head_maps(
    last_layer: np.ndarray, layout: TokenLayout, *, keep: float = 0.6
) -> tuple[np.ndarray, np.ndarray]:
    """Per-head CLS→patch attention of the last layer and its mass-thresholded masks.

    `last_layer` is (heads, N, N); returns (maps, masks), each (heads, rows, cols).
    """
    cls = layout.cls_index
    if cls is None:
        raise OptionError("DINO maps need a CLS token; this model has none (try 'raw' or 'rollout')")
    maps = layout.to_grid(last_layer[:, cls, :])
    masks = np.stack([keep_mass_mask(m, keep) for m in maps])
    return maps, masks


def normalize01(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] (constant maps become 0), float32."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(np.min(values)), float(np.max(values))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 1e-12:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - lo) / (hi - lo)).astype(np.float32)


def class_attention(attentions: np.ndarray, gradients: np.ndarray, layout: TokenLayout, *,
                    layer: int = -1) -> np.ndarray:
    """Class-specific CLS attention: E_h[(∂y_c/∂A ⊙ A)⁺] of one layer, the CLS row: (N,).
    The attention the CLS pays to each token, kept where raising it raises the target score
    (Chefer et al.'s per-layer weighting, without the rollout over layers)."""
    if attentions.shape != gradients.shape:
        raise OptionError(f"attention {attentions.shape} and gradient {gradients.shape} shapes differ")
    if not -attentions.shape[0] <= layer < attentions.shape[0]:
        raise OptionError(f"layer {layer} out of range: the model has {attentions.shape[0]} layers")
    cls = layout.cls_index
    if cls is None:
        raise OptionError("class_attention needs a CLS token; this model has none (try relevance)")
    cam = np.clip(gradients[layer].astype(np.float64) * attentions[layer].astype(np.float64), 0.0, None)
    return cam.mean(axis=0)[cls]
