"""engine.quality: each figure against an independent reference (pycocotools, scikit-image,
numpy), and the 1 % rule that decides "recommended"."""
from __future__ import annotations

import math

import numpy as np
import pytest

from engine import quality


def _random_detections(rng: np.random.Generator, images: int, classes: int):
    """fp32-like ground truth, and a variant whose boxes are jittered, partly missing,
    partly relabelled, with spurious extras: every branch of the matching is exercised."""
    truth, variant = [], []
    for _ in range(images):
        n = int(rng.integers(0, 7))
        xy = rng.uniform(0, 200, (n, 2))
        wh = rng.uniform(8, 80, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, classes, n)
        truth.append(quality.ImageBoxes.of(boxes, labels))
        keep = rng.random(n) > 0.2
        jitter = rng.normal(0, 6, (n, 4))
        got = (boxes + jitter)[keep]
        got_labels = np.where(rng.random(n) < 0.1, (labels + 1) % classes, labels)[keep]
        extra = int(rng.integers(0, 3))
        exy = rng.uniform(0, 200, (extra, 2))
        got = np.concatenate([got, np.concatenate([exy, exy + 30], 1)])
        got_labels = np.concatenate([got_labels, rng.integers(0, classes, extra)])
        scores = rng.uniform(0.05, 1.0, len(got_labels))
        variant.append(quality.ImageBoxes.of(got, got_labels, scores))
    return truth, variant


def _pycocotools_map50(truth, variant) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    categories = sorted({int(c) for t in truth for c in t.labels} |
                        {int(c) for v in variant for c in v.labels})
    for image_id, (t, v) in enumerate(zip(truth, variant), start=1):
        images.append({"id": image_id, "width": 400, "height": 400})
        for box, label in zip(t.boxes, t.labels):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(label), "bbox": [box[0], box[1], w, h],
                                "area": w * h, "iscrowd": 0})
        for box, label, score in zip(v.boxes, v.labels, v.scores):
            results.append({"image_id": image_id, "category_id": int(label), "score": score,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": c} for c in categories]}
    gt.createIndex()
    dt = gt.loadRes(results)
    evaluation = COCOeval(gt, dt, "bbox")
    evaluation.params.areaRng = [[0, 1e10]]
    evaluation.params.areaRngLbl = ["all"]
    evaluation.params.maxDets = [100]
    evaluation.params.iouThrs = np.array([0.5])
    evaluation.evaluate()
    evaluation.accumulate()
    precision = evaluation.eval["precision"][0, :, :, 0, 0]  # [recall, class]
    valid = precision[:, (precision > -1).all(0)]
    return float(valid.mean())


@pytest.mark.parametrize("seed", range(5))
def test_map50_matches_pycocotools(seed, capsys):
    truth, variant = _random_detections(np.random.default_rng(seed), images=6, classes=3)
    if not any(len(t.labels) for t in truth):
        pytest.skip("no ground truth drawn")
    expected = _pycocotools_map50(truth, variant)
    capsys.readouterr()  # pycocotools prints progress
    assert quality.mean_average_precision(truth, variant) == pytest.approx(expected, abs=1e-12)


def test_map50_of_identical_boxes_is_one_and_of_missing_boxes_lower():
    truth, _ = _random_detections(np.random.default_rng(7), images=5, classes=2)
    same = [quality.ImageBoxes.of(t.boxes, t.labels, np.linspace(1, 0.5, len(t.labels)))
            for t in truth]
    assert quality.detection_map50(truth, same).value == 1.0
    half = [quality.ImageBoxes.of(t.boxes[::2], t.labels[::2]) for t in truth]
    figure = quality.detection_map50(truth, half)
    assert figure.value < 0.99 and not figure.passes
    empty = [quality.ImageBoxes.of(np.zeros((0, 4)), []) for _ in truth]
    assert quality.mean_average_precision(empty, empty) == 1.0
    assert quality.mean_average_precision(empty, truth) == 0.0


def test_miou_matches_a_confusion_matrix():
    rng = np.random.default_rng(3)
    ref = [rng.integers(-1, 4, (20, 30)) for _ in range(3)]
    got = [np.where(rng.random(r.shape) < 0.15, rng.integers(0, 4, r.shape), r) for r in ref]
    classes = 4
    confusion = np.zeros((classes, classes), np.int64)
    for r, g in zip(ref, got):
        valid = r >= 0
        g = np.where(g < 0, 0, g)  # -1 predicted inside a labelled pixel never happens here
        np.add.at(confusion, (r[valid], g[valid]), 1)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    expected = float(np.mean(inter[union > 0] / union[union > 0]))
    assert quality.mean_iou(ref, got) == pytest.approx(expected, abs=1e-12)
    assert quality.mean_iou(ref, ref) == 1.0


def test_psnr_matches_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    assert quality.psnr([a], [b]) == pytest.approx(peak_signal_noise_ratio(a, b), abs=1e-9)
    c = rng.integers(0, 65536, (8, 8, 3), dtype=np.uint16)
    d = np.clip(c.astype(int) + 300, 0, 65535).astype(np.uint16)
    assert quality.psnr([c], [d]) == pytest.approx(
        peak_signal_noise_ratio(c, d, data_range=65535), abs=1e-9)
    assert quality.psnr([a], [a]) == quality.PSNR_IDENTICAL_DB


def test_psnr_threshold_is_one_percent_rms():
    """40 dB on [0, 1] pixels is an RMS error of 0.01: the 1 % rule read as pixels."""
    base = np.full((10, 10), 0.5)
    assert quality.psnr([base], [base + 0.01]) == pytest.approx(40.0)
    assert quality.QualityFigure("psnr", quality.psnr([base], [base + 0.0099]), 1).passes
    assert not quality.QualityFigure("psnr", quality.psnr([base], [base + 0.0101]), 1).passes


def test_pearson_and_token_agreement():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert quality.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert quality.pearson(np.ones(4), np.ones(4)) == 1.0
    assert quality.token_agreement([[1, 2, 3, 4]], [[1, 2, 9, 4]]) == 0.75
    assert quality.token_agreement([[1, 2, 3]], [[1, 2, 3, 5, 6]]) == 0.6  # length counts
    assert quality.token_agreement([[]], [[]]) == 1.0


def test_verdict_refuses_with_the_figure():
    good = quality.QualityFigure("miou", 0.995, 4)
    bad = quality.QualityFigure("map50", 0.9871, 4)
    assert quality.verdict([good]) == (True, "recommended: " + good.describe())
    recommended, why = quality.verdict([good, bad])
    assert not recommended and "mAP@0.5" in why and "0.9871" in why and "0.99" in why
    assert quality.verdict([]) == (False, "no quality figure was measured")
    assert not quality.QualityFigure("psnr", math.nan, 1).passes
    assert quality.QualityFigure.from_dict(bad.to_dict()) == bad
