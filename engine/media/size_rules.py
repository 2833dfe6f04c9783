"""transformers' image-processor size rules, as plain functions (no transformers).

Shared by the numpy image processors (engine.runtimes.lite_processors), which resize with
them, and the explain geometry replay (engine.explain.geometry), which maps attention
grids back onto the original image with them: one copy of the arithmetic for both.
"""
from __future__ import annotations


def shortest_edge_size(height: int, width: int, shortest: int,
                       longest: int | None = None) -> tuple[int, int]:
    """transformers' get_resize_output_image_size (default_to_square=False) / torchvision."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest, int(shortest * long / short)
    if longest is not None and new_long > longest:
        new_short, new_long = int(longest * new_short / new_long), longest
    return (new_long, new_short) if width <= height else (new_short, new_long)


def aspect_size(height: int, width: int, size: int, max_size: int | None) -> tuple[int, int]:
    """transformers' get_size_with_aspect_ratio (DETR, YOLOS: shortest_edge + longest_edge)."""
    raw_size = None
    if max_size is not None:
        lo, hi = float(min(height, width)), float(max(height, width))
        if hi / lo * size > max_size:
            raw_size = max_size * lo / hi
            size = round(raw_size)
    if (height <= width and height == size) or (width <= height and width == size):
        return height, width
    if width < height:
        oh = int(raw_size * height / width) if raw_size is not None else int(size * height / width)
        return oh, size
    ow = int(raw_size * width / height) if raw_size is not None else int(size * width / height)
    return size, ow
