"""Classification-style processors: fixed-size resize (ViT), resize + center crop (DeiT),
shortest-edge resize + center crop (BiT, which DINOv2 checkpoints use)."""
from __future__ import annotations

from engine.runtimes.lite_processors.base import (
    BICUBIC,
    BILINEAR,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    LiteImageProcessor,
)


class ViTImageProcessor(LiteImageProcessor):
    serves = ("ViTImageProcessor",)
    defaults = {"size": {"height": 224, "width": 224}, "resample": BILINEAR,
                "image_mean": IMAGENET_STANDARD_MEAN, "image_std": IMAGENET_STANDARD_STD}


class DeiTImageProcessor(LiteImageProcessor):
    serves = ("DeiTImageProcessor",)
    defaults = {"size": {"height": 256, "width": 256}, "crop_size": {"height": 224, "width": 224},
                "do_center_crop": True, "resample": BICUBIC,
                "image_mean": IMAGENET_STANDARD_MEAN, "image_std": IMAGENET_STANDARD_STD}


class BitImageProcessor(LiteImageProcessor):
    serves = ("BitImageProcessor",)
    defaults = {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224},
                "do_center_crop": True, "resample": BICUBIC, "do_convert_rgb": True,
                "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD}
    default_to_square = False


PROCESSORS = (ViTImageProcessor, DeiTImageProcessor, BitImageProcessor)
