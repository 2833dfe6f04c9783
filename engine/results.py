"""Typed results shared by exporters, the CLI and the GUI.

All coordinates are in ORIGINAL image pixels (after EXIF orientation), whatever
resize, crop, padding or letterbox the model needed. Arrays are numpy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Caption:
    text: str
    token_ids: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # decoded text of each generated token
    image_size: tuple[int, int] = (0, 0)  # (width, height)
    prompt: str = ""


@dataclass
class Box:
    x0: float
    y0: float
    x1: float
    y1: float
    label: str
    score: float
    label_id: int = -1
    track_id: int | None = None

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)


@dataclass
class Detections:
    boxes: list[Box]
    image_size: tuple[int, int]  # (width, height)
    labels: dict[int, str] = field(default_factory=dict)  # the model's full label map


@dataclass
class SegmentInstance:
    mask: np.ndarray  # bool (H, W)
    label: str
    label_id: int
    score: float = 1.0
    segment_id: int = 0


@dataclass
class Segmentation:
    kind: str  # semantic | panoptic | instance | promptable | matting
    image_size: tuple[int, int]  # (width, height)
    label_map: np.ndarray | None = None  # int32 (H, W); -1 = unlabelled
    instances: list[SegmentInstance] = field(default_factory=list)
    alpha: np.ndarray | None = None  # float32 (H, W) in [0, 1] for matting
    labels: dict[int, str] = field(default_factory=dict)


@dataclass
class RestoredImage:
    image: np.ndarray  # (H, W, C) uint8 or uint16, RGB or RGBA
    scale: int
    source_size: tuple[int, int]  # (width, height) of the input
    tile_size: int | None = None  # None: whole image in one pass
    info: dict[str, Any] = field(default_factory=dict)
