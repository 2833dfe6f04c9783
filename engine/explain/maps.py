"""Result types of engine.explain: token layout and attention maps (numpy only).

Arrays in *token space* keep the model's own token order; `TokenLayout` says which
token is what (CLS, distillation, registers, detection tokens, patch grid) so that no
caller ever guesses a grid from "N-1 tokens make a square".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.vocabulary import EXPLAIN_METHODS

METHODS = EXPLAIN_METHODS  # defined once, in engine.vocabulary


@dataclass(frozen=True)
class TokenLayout:
    """Which token index is which, for one forward pass at one input size."""

    num_tokens: int
    grid: tuple[int, int]  # (rows, cols) of patch tokens
    patch_start: int  # index of the first patch token; patches are row-major
    special: dict[str, tuple[int, ...]] = field(default_factory=dict)  # "cls", "distillation", "registers", "detection"
    patch_size: tuple[int, int] = (16, 16)  # model-input pixels per grid cell (height, width)
    input_size: tuple[int, int] = (224, 224)  # (height, width) of the model input

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def patch_slice(self) -> slice:
        return slice(self.patch_start, self.patch_start + self.num_patches)

    @property
    def cls_index(self) -> int | None:
        cls = self.special.get("cls")
        return cls[0] if cls else None

    @property
    def grid_extent(self) -> tuple[int, int]:
        """Model-input pixels covered by the grid (patch convs drop a remainder)."""
        return (self.grid[0] * self.patch_size[0], self.grid[1] * self.patch_size[1])

    def to_grid(self, token_values: np.ndarray) -> np.ndarray:
        """(..., num_tokens) values -> (..., rows, cols) over the patch tokens."""
        values = np.asarray(token_values)
        if values.shape[-1] != self.num_tokens:
            raise ValueError(
                f"expected {self.num_tokens} tokens (layout {self.describe()}), got {values.shape[-1]}"
            )
        patches = values[..., self.patch_slice]
        return patches.reshape(*values.shape[:-1], *self.grid)

    def describe(self) -> str:
        parts = [f"{name}×{len(idx)}" for name, idx in self.special.items()]
        parts.append(f"patches {self.grid[0]}×{self.grid[1]} of {self.patch_size[0]}×{self.patch_size[1]} px")
        return f"{self.num_tokens} tokens: " + ", ".join(parts)


@dataclass
class TokenMap:
    """One map per generated token (captioners) or per detected object (DETR)."""

    label: str  # token text, or "label score" for an object
    grid_map: np.ndarray  # (rows, cols) over the encoder's patch grid
    heatmap: np.ndarray  # float32 (H, W) at original image resolution, in [0, 1]
    token_id: int | None = None
    index: int = 0  # position in the caption / query index in the decoder
    box: tuple[float, float, float, float] | None = None  # xyxy, original pixels (detectors)
    score: float | None = None


@dataclass
class AttentionMaps:
    """What `engine.explain.explain` returns: maps in token space and on the image."""

    method: str
    heatmap: np.ndarray  # float32 (H, W) at ORIGINAL image resolution, in [0, 1]
    grid_map: np.ndarray  # float32 (rows, cols): the same map on the patch grid, unnormalised
    image_size: tuple[int, int]  # (width, height) of the original image
    layout: TokenLayout | None = None
    attentions: np.ndarray | None = None  # float32 (layers, heads, N, N): captured probabilities
    head_maps: np.ndarray | None = None  # float32 (layers, heads, rows, cols): contact-sheet tiles
    mask: np.ndarray | None = None  # bool (H, W): thresholded segment (dino, patch_similarity)
    valid: np.ndarray | None = None  # bool (H, W): pixels the model actually saw (crop/pad)
    per_token: list[TokenMap] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # everything changed or assumed, said aloud
    params: dict[str, Any] = field(default_factory=dict)  # layer, head, fusion, target…
    model: str = ""
    box: tuple[float, float, float, float] | None = None  # xyxy, original pixels: the discovered object

    @property
    def layers(self) -> int:
        return 0 if self.attentions is None else int(self.attentions.shape[0])

    @property
    def heads(self) -> int:
        return 0 if self.attentions is None else int(self.attentions.shape[1])
