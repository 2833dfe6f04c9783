"""Local ONNX semantic segmenters described by a sidecar (`output = "semantic_logits"`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from engine.media.label_upsample import upsampled_argmax
from engine.results import Segmentation
from engine.tasks.segment import SegmenterFamily, SegmentOptions, nth_output, to_numpy
from engine.tasks.segmenters import semantic

if TYPE_CHECKING:
    from engine.runtimes.base import Runner


def run(
    runner: Runner, images: list[Image.Image], opts: SegmentOptions
) -> list[Segmentation]:
    """An ONNX graph its sidecar describes (`output = "semantic_logits"`: [1, C, h, w]).

    With a preprocessor_config.json this is the semantic family (transformers' own pre- and
    post-processing); without one the sidecar says how to feed it (resize to `input_size`
    when fixed, `range`, `mean`/`std`, layout), and the logits are upsampled bilinearly to
    the image and argmaxed: what `post_process_semantic_segmentation` does.
    """
    if runner.processor is not None:
        return semantic.run(runner, images, opts)
    sidecar = getattr(runner.card, "sidecar", {}) or {}
    labels = sidecar.get("labels")
    id2label = dict(enumerate(labels)) if isinstance(labels, list) else {}
    results = []
    for img in images:  # one at a time: exports are often fixed at batch 1
        outputs = runner.forward_arrays({sidecar.get("input_name") or "pixel_values":
                                         sidecar_pixels(img, sidecar)})
        logits = to_numpy(nth_output(runner, outputs, 0)).astype(np.float32)[0]  # [C, h, w]
        label_map = upsampled_argmax(logits, (img.height, img.width)).astype(np.int32)
        results.append(Segmentation(kind="semantic", image_size=img.size, label_map=label_map,
                                    labels=id2label or {i: str(i) for i in range(len(logits))}))
    return results


def sidecar_pixels(img: Image.Image, sidecar: dict[str, Any]) -> np.ndarray:
    """One image as the sidecar's graph wants it: [1, 3, H, W] (or NHWC) float32."""
    size = sidecar.get("input_size")
    if size:
        img = img.resize((int(size[0]), int(size[1])), Image.BILINEAR)
    top = float(sidecar.get("range", [0.0, 1.0])[1])
    arr = np.asarray(img.convert("RGB"), np.float32) * (top / 255.0)
    mean = np.asarray(sidecar.get("mean", [0.0]), np.float32)
    std = np.asarray(sidecar.get("std", [1.0]), np.float32)
    arr = (arr - mean) / std
    layout = str(sidecar.get("input_layout", "NCHW")).upper()
    return (arr[None] if layout == "NHWC" else arr.transpose(2, 0, 1)[None]).astype(np.float32)


FAMILY = SegmenterFamily(
    "semantic_logits",
    run,
    sidecar_families=("semantic_logits",),
    modes=("semantic",),
    summary="ONNX [1, C, h, w] logits: sidecar pre-processing, bilinear upsampling, argmax",
)
