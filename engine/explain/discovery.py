"""Unsupervised object discovery from a ViT's patch features (numpy only).

* TokenCut (Wang et al. 2022, "Self-supervised transformers for unsupervised object
  discovery using normalized cut"): a graph over the patches whose edges are the cosine
  similarities of their last-layer key features, binarised at `tau` (1 above, `eps`
  below); the second-smallest generalised eigenvector of (D - W) x = λ D x bipartitions
  it at its mean; the side holding the eigenvector's largest |value| is the foreground,
  and its connected component holding that patch is the object (its box).
* LOST (Siméoni et al. 2021, "Localizing objects with self-supervised transformers and
  no labels"): the seed is the patch with the fewest positive correlations (the object
  is smaller than the background), expanded by the `k` lowest-degree patches that
  correlate positively with it; the patches positively correlated with that set,
  connected to the seed, are the object.

Both take (patches, D) features in row-major grid order and return a `Discovery`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import OptionError
from engine.media import morphology

DISCOVER_ALGORITHMS = ("tokencut", "lost")
DISCOVER_FEATURES = ("auto", "keys", "tokens")  # auto: the graph with the lower normalized-cut value
DISCOVER_FOREGROUNDS = ("attention", "eigenvector")


@dataclass
class Discovery:
    foreground: np.ndarray  # bool (rows, cols): the object's patches (one connected component)
    partition: np.ndarray  # bool (rows, cols): the whole foreground side before the component
    scores: np.ndarray  # float (rows, cols): the eigenvector (TokenCut) / -degree (LOST)
    seed: tuple[int, int]  # (row, col) of the seed patch
    cell_box: tuple[int, int, int, int]  # (row0, col0, row1, col1), exclusive ends, in grid cells


def _unit(features: np.ndarray) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(f, axis=-1, keepdims=True)
    norms[norms == 0] = 1.0
    return f / norms


def binary_affinity(features: np.ndarray, tau: float = 0.2, eps: float = 1e-5) -> np.ndarray:
    """TokenCut's graph: W_ij = 1 where cos(f_i, f_j) > tau, else eps. (P, P) float64."""
    f = _unit(features)
    similarity = f @ f.T
    return np.where(similarity > tau, 1.0, eps)


def normalized_cut(affinity: np.ndarray) -> tuple[float, np.ndarray]:
    """The second-smallest generalised eigenpair of (D - W) x = λ D x, via the symmetric
    normalised Laplacian I - D^-1/2 W D^-1/2 (x = D^-1/2 y). x is scaled to unit D-norm."""
    w = np.asarray(affinity, dtype=np.float64)
    d = w.sum(axis=1)
    if np.any(d <= 0):
        raise OptionError("normalized cut: a patch has no affinity to any other (eps must be > 0)")
    inv_sqrt = 1.0 / np.sqrt(d)
    laplacian = np.eye(len(d)) - inv_sqrt[:, None] * w * inv_sqrt[None, :]
    values, vectors = np.linalg.eigh((laplacian + laplacian.T) / 2)
    x = vectors[:, 1] * inv_sqrt
    x = x / np.sqrt((x * x * d).sum())
    return float(values[1]), x


def _component(mask: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """The 4-connected component of `mask` holding `seed` (as TokenCut's detect_box, which
    takes it from connectedComponents(connectivity=4)); all False when the seed is not in the
    mask."""
    mask = np.asarray(mask, dtype=bool)
    seeds = np.zeros(mask.shape, dtype=bool)
    seeds[seed] = True
    return morphology.flood_fill(mask, seeds)


def _cell_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)


def tokencut(features: np.ndarray, grid: tuple[int, int], *, tau: float = 0.2,
             eps: float = 1e-5, attention: np.ndarray | None = None) -> Discovery:
    """TokenCut on (rows*cols, D) patch features. The foreground is the side holding the
    eigenvector's largest |value| (the paper), or, given `attention` (P,) (the CLS attention
    to each patch), the side the CLS attends to more on average."""
    _, x = normalized_cut(binary_affinity(features, tau, eps))
    partition = x > x.mean()
    if attention is not None and partition.any() and (~partition).any():
        attention = np.asarray(attention, dtype=np.float64).reshape(-1)
        if attention[partition].mean() < attention[~partition].mean():
            x, partition = -x, ~partition
        seed_index = int(np.argmax(np.where(partition, np.abs(x), -1.0)))
    else:
        seed_index = int(np.argmax(np.abs(x)))
        if not partition[seed_index]:  # the seed's side is the foreground
            x, partition = -x, ~partition
    partition = partition.reshape(grid)
    seed = (seed_index // grid[1], seed_index % grid[1])
    foreground = _component(partition, seed)
    return Discovery(foreground, partition, x.reshape(grid), seed, _cell_box(foreground))


def lost(features: np.ndarray, grid: tuple[int, int], *, k: int = 100) -> Discovery:
    """LOST on (rows*cols, D) patch features (dot-product correlations, as the paper)."""
    f = np.asarray(features, dtype=np.float64)
    correlation = f @ f.T
    positive = correlation > 0
    degree = positive.sum(axis=1)
    seed_index = int(np.argmin(degree))
    k = max(1, min(int(k), len(degree)))
    lowest = np.argsort(degree, kind="stable")[:k]
    expansion = lowest[positive[seed_index, lowest]]
    if seed_index not in expansion:
        expansion = np.append(expansion, seed_index)
    partition = (correlation[expansion].sum(axis=0) > 0).reshape(grid)
    seed = (seed_index // grid[1], seed_index % grid[1])
    partition[seed] = True
    foreground = _component(partition, seed)
    return Discovery(foreground, partition, -degree.reshape(grid).astype(np.float64), seed,
                     _cell_box(foreground))


def discover(features: np.ndarray, grid: tuple[int, int], *, algorithm: str = "tokencut",
             tau: float = 0.2, eps: float = 1e-5, k: int = 100, attention: np.ndarray | None = None) -> Discovery:
    if algorithm == "tokencut":
        return tokencut(features, grid, tau=tau, eps=eps, attention=attention)
    if algorithm == "lost":
        return lost(features, grid, k=k)
    raise OptionError(f"discover_algorithm must be one of {', '.join(DISCOVER_ALGORITHMS)}, not '{algorithm}'")


# -- artifact tokens ---------------------------------------------------------------------------


def artifact_tokens(features: np.ndarray, *, k: float = 3.0, relative: float | None = None) -> np.ndarray:
    """Indices (into `features`, (P, D) patch tokens) of high-norm outliers (Darcet et al. 2024,
    "Vision transformers need registers"): norm > mean + k·std of the patch-token norms, or,
    with `relative`, norm > relative × the median norm."""
    norms = np.linalg.norm(np.asarray(features, dtype=np.float64), axis=-1)
    if relative is not None:
        limit = float(relative) * float(np.median(norms))
    else:
        limit = float(norms.mean() + k * norms.std())
    return np.nonzero(norms > limit)[0]
