"""Image processors in numpy + Pillow for ONNX models: no torch, no transformers.

    processor = load_image_processor(folder)     # None: the folder's class is not one of ours
    inputs = processor(images=[pil, ...])        # {"pixel_values": float32 NCHW, ...}
    boxes = processor.post_process_object_detection(outputs, threshold=0.5, target_sizes=[(h, w)])

Each class re-implements a transformers image processor (its PIL backend, which resizes the
8-bit image with Pillow) from the same `preprocessor_config.json`, with the same attribute
names and values, so the explain geometry replay (`engine.explain.geometry`) reads it as it
reads transformers' own; tests/unit/test_lite_processors.py compares both on real photos.
The classes are a registry keyed by transformers' class name (`image_processor_type`, with
or without its `Fast`/`Pil` suffix): each module lists its classes in `PROCESSORS`, each
class the names it `serves`; a new family is a class, not a branch.
"""
from __future__ import annotations

import json
from pathlib import Path

from engine.registry import Registry
from engine.runtimes.lite_processors.base import LiteImageProcessor


def _load_builtin() -> None:
    from engine.runtimes.lite_processors import classify, detection, segmentation

    for module in (classify, detection, segmentation):
        for cls in module.PROCESSORS:
            register(cls)


PROCESSOR_CLASSES: Registry[str, type[LiteImageProcessor]] = Registry(
    "lite image processor", populate=_load_builtin)
CONFIG_FILES = ("preprocessor_config.json", "image_processor_config.json")


def register(cls: type[LiteImageProcessor], *, replace: bool = False) -> type[LiteImageProcessor]:
    """Serve the transformers class names in `cls.serves` with `cls` (a plug-in's too)."""
    for name in cls.serves:
        PROCESSOR_CLASSES.register(name, cls, replace=replace, stacklevel=2)
    return cls


def class_name(config: dict) -> str | None:
    """transformers' class name without its backend suffix (`DetrImageProcessorFast` -> `DetrImageProcessor`)."""
    name = config.get("image_processor_type") or config.get("feature_extractor_type")
    if not name:
        return None
    for suffix in ("Fast", "Pil"):
        name = name.removesuffix(suffix)
    return name.replace("FeatureExtractor", "ImageProcessor")


# processor_config.json classes that are only "an image processor + a tokenizer" (transformers
# 5 saves the image processor's config inside them); others (BLIP, OWL, Florence…) do more
PAIR_PROCESSORS = ("VisionTextDualEncoderProcessor",)


def read_config(folder: Path) -> dict | None:
    """The image processor's config: preprocessor_config.json, or the `image_processor`
    part of a pair processor's processor_config.json."""
    for name in CONFIG_FILES:
        path = Path(folder) / name
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    pair = pair_processor_config(folder)
    return pair.get("image_processor") if pair else None


def pair_processor_config(folder: Path) -> dict | None:
    """processor_config.json when it is a plain image + tokenizer pair, else None."""
    path = Path(folder) / "processor_config.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("processor_class") in PAIR_PROCESSORS and isinstance(data.get("image_processor"), dict):
        return data
    return None


def load_image_processor(folder: Path) -> LiteImageProcessor | None:
    """The numpy image processor for the model in `folder`, or None when the folder has no
    image-processor config or names a class Ocula has not re-implemented."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    config = read_config(folder)
    if config is None:
        return None
    cls = PROCESSOR_CLASSES.find(class_name(config) or "")
    return None if cls is None else cls(config)


def supported_classes() -> list[str]:
    return sorted(PROCESSOR_CLASSES.load())

