"""Load the pre/post-processor that ships with a model folder (transformers or ONNX exports).

AutoProcessor where the folder has tokenizer/processor files, AutoImageProcessor where it
has only an image-processor config. Captioners built as VisionEncoderDecoder (a ViT image
processor plus a separate tokenizer, no processor class) come back from AutoProcessor as a
bare tokenizer; we pair it with the image processor in transformers' own generic
two-part processor so tasks can call `processor(images=…)` and `processor.batch_decode(…)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
