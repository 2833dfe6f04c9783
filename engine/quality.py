"""How close a model variant (int8, fp16) comes to its fp32 source: one figure per task.

    figure = detection_map50(reference_boxes, variant_boxes)   # fp32 boxes = ground truth
    figure.passes   # False when the variant loses more than the task's threshold allows

The figures (`ocula models optimize --precision int8` measures them on calibration
images through the task code; engine.export_quantize) and their thresholds are defined
here, once, so the manifest, `ocula doctor`, `ocula models info` and the GUI's details
pane say the same thing:

    detect    mAP@0.5 of the variant's boxes against the fp32 boxes        >= 0.99
    segment   mIoU of the variant's labels against the fp32 labels           >= 0.99
    caption   fraction of generated tokens identical to fp32's               >= 0.99
    features  Pearson correlation of attention maps / outputs with fp32's    >= 0.99
    restore   PSNR of the variant's output against fp32's output             >= 40 dB

"Loses at most 1 %" for the unit-free figures; for PSNR, 40 dB on [0, 1] images is an
RMS difference of 10^(-40/20) = 0.01, 1 % of the full range (2.55 levels of 8 bits):
the same 1 % read as a pixel error, and well under what people see (JPEG at quality 90
sits around 38-42 dB against its source).

A base module: numpy only, nothing from the engine.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# metric -> (label, threshold, unit); every figure is "higher is better"
METRICS: dict[str, tuple[str, float, str]] = {
    "map50": ("mAP@0.5 vs fp32 boxes", 0.99, ""),
    "miou": ("mIoU vs fp32 labels", 0.99, ""),
    "token_agreement": ("caption tokens identical to fp32", 0.99, ""),
    "attention_correlation": ("attention-map correlation with fp32", 0.99, ""),
    "output_correlation": ("output correlation with fp32", 0.99, ""),
    "psnr": ("PSNR vs fp32 output", 40.0, " dB"),
}
PSNR_IDENTICAL_DB = 100.0  # what psnr() reports for identical images (no finite value exists)


@dataclass(frozen=True)
class QualityFigure:
    """One measured figure of a variant against its fp32 source."""

    metric: str  # a METRICS key
    value: float
    images: int  # how many images it was measured on
    per_image: tuple[float, ...] = field(default=())

    @property
    def threshold(self) -> float:
        return METRICS[self.metric][1]

    @property
    def passes(self) -> bool:
        return math.isfinite(self.value) and self.value >= self.threshold

    def describe(self) -> str:
        label, threshold, unit = METRICS[self.metric]
        verdict = "ok" if self.passes else f"below the {threshold:g}{unit} needed"
        return f"{label} {self.value:.4g}{unit} on {self.images} image(s) ({verdict})"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(per_image=list(self.per_image), threshold=self.threshold, passes=self.passes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualityFigure:
        return cls(metric=str(data["metric"]), value=float(data["value"]),
                   images=int(data.get("images", 0)),
                   per_image=tuple(float(v) for v in data.get("per_image", ())))


def verdict(figures: Sequence[QualityFigure]) -> tuple[bool, str]:
    """(recommended, why): recommended only when every figure passes its threshold."""
    if not figures:
        return False, "no quality figure was measured"
    failing = [f for f in figures if not f.passes]
    if failing:
        return False, "not recommended: " + "; ".join(f.describe() for f in failing)
    return True, "recommended: " + "; ".join(f.describe() for f in figures)


# -- detection: mAP@0.5, fp32 boxes as ground truth ---------------------------------------------


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes a [N, 4] and b [M, 4] (COCO's: no +1 on widths)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


@dataclass(frozen=True)
class ImageBoxes:
    """One image's boxes: xyxy [N, 4], class ids [N], scores [N] (ignored for ground truth)."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    @classmethod
    def of(cls, boxes: Any, labels: Any, scores: Any = None) -> ImageBoxes:
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        labels = np.asarray(labels, np.int64).reshape(-1)
        scores = np.ones(len(labels)) if scores is None else np.asarray(scores, np.float64)
        return cls(boxes, labels, scores.reshape(-1))


def _average_precision(reference: Sequence[ImageBoxes], variant: Sequence[ImageBoxes],
                       label: int, iou_threshold: float, max_detections: int) -> float:
    """COCO's AP for one class at one IoU threshold (101-point interpolated precision)."""
    scores: list[np.ndarray] = []
    matched: list[np.ndarray] = []
    positives = 0
    for ref, got in zip(reference, variant):
        truth = ref.boxes[ref.labels == label]
        positives += len(truth)
        keep = got.labels == label
        order = np.argsort(-got.scores[keep], kind="mergesort")[:max_detections]
        dets, det_scores = got.boxes[keep][order], got.scores[keep][order]
        ious = box_iou(dets, truth)
        taken = np.zeros(len(truth), bool)
        hits = np.zeros(len(dets), bool)
        for d in range(len(dets)):
            best, best_iou = -1, min(iou_threshold, 1 - 1e-10)
            for g in range(len(truth)):
                if not taken[g] and ious[d, g] >= best_iou:
                    best, best_iou = g, ious[d, g]
            if best >= 0:
                taken[best], hits[d] = True, True
        scores.append(det_scores)
        matched.append(hits)
    if positives == 0:
        return math.nan
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    order = np.argsort(-all_scores, kind="mergesort")
    hits = np.concatenate(matched)[order] if matched else np.zeros(0, bool)
    tp = np.cumsum(hits).astype(np.float64)
    fp = np.cumsum(~hits).astype(np.float64)
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    thresholds = np.linspace(0.0, 1.0, 101)
    index = np.searchsorted(recall, thresholds, side="left")
    sampled = np.array([precision[i] if i < len(precision) else 0.0 for i in index])
    return float(sampled.mean())


def mean_average_precision(reference: Sequence[ImageBoxes], variant: Sequence[ImageBoxes], *,
                           iou_threshold: float = 0.5, max_detections: int = 100) -> float:
    """mAP of `variant`'s scored boxes against `reference`'s boxes (ground truth), as
    pycocotools computes AP@0.5 (area "all"): classes without reference boxes are left
    out. No reference box on any image: 1.0 if the variant finds none either, else 0.0."""
    if len(reference) != len(variant):
        raise ValueError("reference and variant must cover the same images")
    classes = sorted({int(c) for ref in reference for c in ref.labels})
    if not classes:
        return 1.0 if all(len(v.labels) == 0 for v in variant) else 0.0
    aps = [_average_precision(reference, variant, c, iou_threshold, max_detections)
           for c in classes]
    return float(np.mean(aps))


def detection_map50(reference: Sequence[ImageBoxes],
                    variant: Sequence[ImageBoxes]) -> QualityFigure:
    per_image = tuple(mean_average_precision([r], [v]) for r, v in zip(reference, variant))
    return QualityFigure("map50", mean_average_precision(reference, variant), len(reference),
                         per_image)


# -- segmentation: mIoU against the fp32 label maps -----------------------------------------------


def mean_iou(reference: Sequence[np.ndarray], variant: Sequence[np.ndarray], *,
             ignore: int = -1) -> float:
    """Dataset-level mIoU: per class, intersections and unions summed over every image;
    pixels the reference leaves unlabelled (`ignore`) do not count."""
    inter: dict[int, int] = {}
    union: dict[int, int] = {}
    for ref, got in zip(reference, variant):
        ref, got = np.asarray(ref), np.asarray(got)
        if ref.shape != got.shape:
            raise ValueError(f"label maps differ in shape: {ref.shape} vs {got.shape}")
        valid = ref != ignore
        for c in np.union1d(np.unique(ref[valid]), np.unique(got[valid])):
            a, b = (ref == c) & valid, (got == c) & valid
            inter[int(c)] = inter.get(int(c), 0) + int(np.count_nonzero(a & b))
            union[int(c)] = union.get(int(c), 0) + int(np.count_nonzero(a | b))
    ious = [inter[c] / union[c] for c in union if union[c] > 0]
    return float(np.mean(ious)) if ious else 1.0


def segmentation_miou(reference: Sequence[np.ndarray],
                      variant: Sequence[np.ndarray]) -> QualityFigure:
    per_image = tuple(mean_iou([r], [v]) for r, v in zip(reference, variant))
    return QualityFigure("miou", mean_iou(reference, variant), len(reference), per_image)


# -- restoration: PSNR against the fp32 output ------------------------------------------------------


def psnr(reference: Sequence[np.ndarray], variant: Sequence[np.ndarray]) -> float:
    """PSNR in dB over all images together, pixels in [0, 1] (integers are scaled by their
    type's maximum); identical images give PSNR_IDENTICAL_DB."""
    squared, count = 0.0, 0
    for ref, got in zip(reference, variant):
        a, b = _unit(ref), _unit(got)
        if a.shape != b.shape:
            raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
        squared += float(np.square(a - b).sum())
        count += a.size
    mse = squared / max(count, 1)
    return PSNR_IDENTICAL_DB if mse == 0 else min(PSNR_IDENTICAL_DB, 10 * math.log10(1 / mse))


def _unit(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float64) / np.iinfo(image.dtype).max
    return image.astype(np.float64)


def restoration_psnr(reference: Sequence[np.ndarray],
                     variant: Sequence[np.ndarray]) -> QualityFigure:
    per_image = tuple(psnr([r], [v]) for r, v in zip(reference, variant))
    return QualityFigure("psnr", psnr(reference, variant), len(reference), per_image)


# -- captions: identical tokens ---------------------------------------------------------------------


def token_agreement(reference: Sequence[Sequence[int]], variant: Sequence[Sequence[int]]) -> float:
    """Generated tokens equal at the same position, over the longer caption's length,
    summed over all captions (two empty captions agree)."""
    same = total = 0
    for ref, got in zip(reference, variant):
        same += sum(1 for a, b in zip(ref, got) if a == b)
        total += max(len(ref), len(got))
    return 1.0 if total == 0 else same / total


def caption_agreement(reference: Sequence[Sequence[int]],
                      variant: Sequence[Sequence[int]]) -> QualityFigure:
    per_image = tuple(token_agreement([r], [v]) for r, v in zip(reference, variant))
    return QualityFigure("token_agreement", token_agreement(reference, variant), len(reference),
                         per_image)


# -- attention maps and outputs: Pearson correlation -----------------------------------------------


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays (flattened); two equal constant arrays give 1.0."""
    x = np.asarray(a, np.float64).ravel()
    y = np.asarray(b, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"arrays differ in size: {x.size} vs {y.size}")
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    if denominator == 0:
        return 1.0 if np.array_equal(np.asarray(a).ravel(), np.asarray(b).ravel()) else 0.0
    return float(x @ y) / denominator


def correlation(metric: str, reference: Sequence[np.ndarray],
                variant: Sequence[np.ndarray]) -> QualityFigure:
    """The mean per-image Pearson correlation (metric: attention_ or output_correlation)."""
    per_image = tuple(pearson(r, v) for r, v in zip(reference, variant))
    return QualityFigure(metric, float(np.mean(per_image)) if per_image else math.nan,
                         len(per_image), per_image)
