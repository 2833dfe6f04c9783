"""Load the pre/post-processor that ships with a model folder (transformers or ONNX exports).

ONNX exports go through `load_onnx_processor`: numpy processors where Ocula has them
(the Lite build has no transformers), transformers' own otherwise.

AutoProcessor where the folder has tokenizer/processor files, AutoImageProcessor where it
has only an image-processor config. Captioners built as VisionEncoderDecoder (a ViT image
processor plus a separate tokenizer, no processor class) come back from AutoProcessor as a
bare tokenizer; we pair it with the image processor in transformers' own generic
two-part processor so tasks can call `processor(images=…)` and `processor.batch_decode(…)`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from engine.errors import UnsupportedModelError

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
_PROCESSOR_FILES = ("processor_config.json",)
_IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "image_processor_config.json")


def _has_any(folder: Path, names: tuple[str, ...]) -> bool:
    return any((folder / name).is_file() for name in names)


def _declares_processor_class(folder: Path) -> bool:
    for name in _IMAGE_PROCESSOR_FILES + ("tokenizer_config.json",):
        path = folder / name
        if path.is_file():
            try:
                if json.loads(path.read_text(encoding="utf-8")).get("processor_class"):
                    return True
            except (OSError, ValueError):
                continue
    return False


def load_processor(folder: Path, *, trust_remote_code: bool = False) -> Any | None:
    """The processor for the model in `folder`, or None when the folder ships none."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    has_tokenizer = _has_any(folder, _TOKENIZER_FILES)
    has_image = _has_any(folder, _IMAGE_PROCESSOR_FILES)
    if not (has_tokenizer or has_image or _has_any(folder, _PROCESSOR_FILES)):
        return None
    import transformers

    if has_tokenizer or _has_any(folder, _PROCESSOR_FILES) or _declares_processor_class(folder):
        processor = transformers.AutoProcessor.from_pretrained(
            folder, trust_remote_code=trust_remote_code
        )
        if (
            has_image
            and getattr(processor, "image_processor", None) is None
            and not isinstance(processor, transformers.image_processing_base.ImageProcessingMixin)
        ):
            # A bare tokenizer came back (VisionEncoderDecoder): pair it with the images side.
            image_processor = transformers.AutoImageProcessor.from_pretrained(
                folder, trust_remote_code=trust_remote_code
            )
            return transformers.VisionTextDualEncoderProcessor(
                image_processor=image_processor, tokenizer=processor
            )
        return processor
    return transformers.AutoImageProcessor.from_pretrained(
        folder, trust_remote_code=trust_remote_code
    )


def load_onnx_processor(folder: Path) -> Any | None:
    """The processor for an ONNX export: Ocula's numpy re-implementation when it has one
    (engine.runtimes.lite_processors + lite_tokenizer: no torch, no transformers, faster),
    else transformers' own when it is installed, else None (no processor files) or an
    UnsupportedModelError saying that this model's processor needs the full build."""
    from engine.runtimes.lite_processors import (
        load_image_processor,
        pair_processor_config,
        read_config,
    )
    from engine.runtimes.lite_tokenizer import LitePairProcessor, load_tokenizer

    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    # processor_config.json: a multi-part processor; only plain image + tokenizer pairs are ours
    if not _has_any(folder, _PROCESSOR_FILES) or pair_processor_config(folder) is not None:
        image = load_image_processor(folder)
        has_tokenizer = _has_any(folder, _TOKENIZER_FILES)
        tokenizer = None
        if has_tokenizer:
            try:
                tokenizer = load_tokenizer(folder)
            except UnsupportedModelError:  # no tokenizer.json: transformers may read the rest
                tokenizer = None
        if image is not None and not has_tokenizer:
            return image
        if image is not None and tokenizer is not None:
            return LitePairProcessor(image, tokenizer)
        if image is None and tokenizer is not None and read_config(folder) is None:
            return tokenizer
    if not (_has_any(folder, _TOKENIZER_FILES + _PROCESSOR_FILES + _IMAGE_PROCESSOR_FILES)):
        return None
    if importlib.util.find_spec("transformers") is not None:
        return load_processor(folder)
    config = read_config(folder) or {}
    kind = config.get("image_processor_type") or "its processor"
    raise UnsupportedModelError(
        f"The Lite build cannot prepare inputs for the model in {folder} ({kind}); the full "
        f"build can (pip install 'ocula[torch]').")
