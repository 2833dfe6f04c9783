"""Alpha mattes from ONNX exports such as BiRefNet (sidecar family "matting", or a card
whose variant is "matting")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from engine.errors import UsageError
from engine.media import resize
from engine.results import Segmentation
from engine.tasks.segment import SegmenterFamily, SegmentOptions, nth_output, to_numpy

if TYPE_CHECKING:
    from engine.runtimes.base import Runner


@dataclass(frozen=True)
class MattingSpec:
    """Sidecar of a matting export: input size (width, height), normalisation, I/O names."""

    input_size: tuple[int, int] = (1024, 1024)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    input_name: str | None = None
    output_name: str | None = None
    output_index: int = -1  # BiRefNet lists coarse-to-fine outputs: the last is the finest
    activation: str = "sigmoid"  # sigmoid | none (the graph already outputs 0..1)

    @classmethod
    def from_sidecar(cls, sidecar: dict[str, Any]) -> MattingSpec:
        size = sidecar.get("input_size", sidecar.get("size", 1024))
        input_size = (
            (int(size), int(size))
            if isinstance(size, (int, float))
            else (int(size[0]), int(size[1]))
        )
        activation = str(sidecar.get("activation", "sigmoid")).lower()
        if activation not in ("sigmoid", "none"):
            raise UsageError(
                f"Matting sidecar: activation must be sigmoid or none, got {activation!r}."
            )
        return cls(
            input_size=input_size,
            mean=tuple(float(v) for v in sidecar.get("mean", cls.mean)),  # type: ignore[arg-type]
            std=tuple(float(v) for v in sidecar.get("std", cls.std)),  # type: ignore[arg-type]
            input_name=sidecar.get("input_name"),
            output_name=sidecar.get("output_name"),
            output_index=int(sidecar.get("output_index", -1)),
            activation=activation,
        )


def matting_input(images: list[Image.Image], spec: MattingSpec) -> np.ndarray:
    """Resize (bilinear) to the network size, scale to 0..1, normalise, NCHW float32."""
    mean = np.asarray(spec.mean, np.float32).reshape(1, 1, 3)
    std = np.asarray(spec.std, np.float32).reshape(1, 1, 3)
    batch = []
    for img in images:
        resized = img.resize(spec.input_size, Image.BILINEAR)
        arr = (np.asarray(resized, np.float32) / 255.0 - mean) / std
        batch.append(arr.transpose(2, 0, 1))
    return np.stack(batch).astype(np.float32)


def matte_to_original(raw: np.ndarray, size: tuple[int, int], activation: str) -> np.ndarray:
    """(h, w) network matte -> (H, W) float32 in [0, 1] at the original size (bilinear,
    half-pixel: OpenCV's INTER_LINEAR, as the matting models' reference code resizes)."""
    values = raw.astype(np.float32)
    if activation == "sigmoid":
        values = 1.0 / (1.0 + np.exp(-values))
    resized = resize.linear(values, size)
    return np.clip(resized, 0.0, 1.0).astype(np.float32)


def run(
    runner: Runner, images: list[Image.Image], opts: SegmentOptions
) -> list[Segmentation]:
    spec = MattingSpec.from_sidecar(getattr(runner.card, "sidecar", {}) or {})
    results = []
    # one image per call: matting exports are usually fixed at batch 1
    for img in images:
        outputs = runner.forward({spec.input_name or "pixel_values": matting_input([img], spec)})
        raw = (
            outputs[spec.output_name]
            if spec.output_name
            else nth_output(runner, outputs, spec.output_index)
        )
        raw = to_numpy(raw).astype(np.float32)
        matte = raw.reshape(raw.shape[-2:]) if raw.ndim > 2 else raw  # [1,1,h,w] -> [h,w]
        alpha = matte_to_original(matte, img.size, spec.activation)
        results.append(
            Segmentation(kind="matting", image_size=img.size, alpha=alpha, labels={0: "foreground"})
        )
    return results


FAMILY = SegmenterFamily(
    "matting",
    run,
    sidecar_families=("matting",),
    card_variants=("matting",),
    modes=("matting",),
    summary="alpha mattes: resize, normalise, one ONNX call per image, sigmoid, resize back",
)
