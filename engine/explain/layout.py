"""Token bookkeeping from the model's config (never from "N-1 tokens make a square").

Each family puts its special tokens somewhere else: DeiT adds a distillation token
after CLS, DINOv2-with-registers puts registers between CLS and the patches, YOLOS
appends detection tokens after the patches, SigLIP has no CLS at all. The patch grid
is the model input size divided by the patch size (floored, as the patch conv does),
so non-square inputs and interpolated position embeddings come out right.
"""
from __future__ import annotations

from typing import Any

from engine.explain.maps import TokenLayout

# model_type -> tokens before the patches (name, count or config attribute)
_PREFIX: dict[str, tuple[tuple[str, int | str], ...]] = {
    "vit": (("cls", 1),),
    "vit_msn": (("cls", 1),),
    "vit_mae": (("cls", 1),),
    "dinov2": (("cls", 1),),
    "deit": (("cls", 1), ("distillation", 1)),
    "dinov2_with_registers": (("cls", 1), ("registers", "num_register_tokens")),
    "beit": (("cls", 1),),
    "data2vec-vision": (("cls", 1),),
    "clip_vision_model": (("cls", 1),),
    "blip_vision_model": (("cls", 1),),
    "git_vision_model": (("cls", 1),),
    "siglip_vision_model": (),
    "siglip2_vision_model": (),
    "yolos": (("cls", 1),),
}
# model_type -> tokens after the patches
_SUFFIX: dict[str, tuple[tuple[str, int | str], ...]] = {
    "yolos": (("detection", "num_detection_tokens"),),
}
# composite configs whose image tower is a sub-config
_VISION_SUBCONFIG = {
    "clip": "vision_config",
    "siglip": "vision_config",
    "siglip2": "vision_config",
    "blip": "vision_config",
    "git": "vision_config",
    "vision-encoder-decoder": "encoder",
}


def vision_config(config: Any) -> Any:
    """The config of the image tower (the config itself for pure vision models)."""
    sub = _VISION_SUBCONFIG.get(getattr(config, "model_type", ""))
    if sub and getattr(config, sub, None) is not None:
        return vision_config(getattr(config, sub))
    return config


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _count(config: Any, count: int | str) -> int:
    return int(getattr(config, count, 0) or 0) if isinstance(count, str) else count


def layout_from_config(config: Any, input_size: tuple[int, int], num_tokens: int | None = None) -> TokenLayout:
    """Token layout of a ViT-style encoder for a model input of `input_size` (height, width).

    `num_tokens`, when given (the captured attention's width), is checked against the
    config; a mismatch raises instead of drawing a map on the wrong pixels.
    """
    config = vision_config(config)
    model_type = getattr(config, "model_type", "")
    patch = getattr(config, "patch_size", None)
    if patch is None:
        raise ValueError(f"config of type '{model_type}' has no patch_size: not a patch-token model")
    patch_hw = _pair(patch)
    grid = (input_size[0] // patch_hw[0], input_size[1] // patch_hw[1])
    special: dict[str, tuple[int, ...]] = {}
    index = 0
    if model_type in _PREFIX:
        for name, count in _PREFIX[model_type]:
            n = _count(config, count)
            if n:
                special[name] = tuple(range(index, index + n))
                index += n
    patch_start = index
    index += grid[0] * grid[1]
    for name, count in _SUFFIX.get(model_type, ()):
        n = _count(config, count)
        if n:
            special[name] = tuple(range(index, index + n))
            index += n
    if model_type not in _PREFIX:
        # Unknown family: the grid still comes from the config; whatever precedes it is
        # taken as prefix tokens, the first of which is assumed to be CLS.
        if num_tokens is None:
            raise ValueError(f"unknown model type '{model_type}': pass the captured token count")
        extra = num_tokens - grid[0] * grid[1]
        if extra < 0:
            raise ValueError(
                f"'{model_type}': {num_tokens} tokens cannot hold a {grid[0]}×{grid[1]} patch grid "
                f"(input {input_size[0]}×{input_size[1]}, patch {patch_hw[0]}×{patch_hw[1]})"
            )
        special = {"cls": (0,)} if extra >= 1 else {}
        if extra > 1:
            special["prefix"] = tuple(range(1, extra))
        patch_start, index = extra, num_tokens
    if num_tokens is not None and num_tokens != index:
        raise ValueError(
            f"'{model_type}' config predicts {index} tokens for a {input_size[0]}×{input_size[1]} input "
            f"(grid {grid[0]}×{grid[1]}, special { {k: len(v) for k, v in special.items()} }) "
            f"but the model produced {num_tokens}"
        )
    return TokenLayout(
        num_tokens=index,
        grid=grid,
        patch_start=patch_start,
        special=special,
        patch_size=patch_hw,
        input_size=(int(input_size[0]), int(input_size[1])),
    )


def feature_map_layout(grid: tuple[int, int], input_size: tuple[int, int]) -> TokenLayout:
    """Layout of a CNN feature map (DETR encoder, Grad-CAM): no special tokens.

    The stride is the smallest power of two covering input/grid: conv stems pad, so
    a 33-pixel side at stride 32 gives 2 cells, not 1.
    """
    def stride(size: int, cells: int) -> int:
        s = 1
        while s * cells < size:
            s *= 2
        return s

    return TokenLayout(
        num_tokens=grid[0] * grid[1],
        grid=(int(grid[0]), int(grid[1])),
        patch_start=0,
        special={},
        patch_size=(stride(input_size[0], grid[0]), stride(input_size[1], grid[1])),
        input_size=(int(input_size[0]), int(input_size[1])),
    )
