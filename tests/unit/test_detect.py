"""detect(): our boxes equal transformers' own post-processing for the same tiny models.

Oracle: the model and processor loaded straight from the saved folder with transformers,
one image at a time, `post_process_object_detection` with the original size; boxes then
clipped to the image (what `detect` promises) and sorted by score.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.catalog.card import ModelCard, Source
from engine.errors import UnsupportedModelError, UsageError
from engine.media.image import read_image
from engine.results import Detections
from engine.tasks.detect import detect, model_info, size_batches
from tests.fixtures import tiny_detectors as td
from tests.tolerances import logit_error

MODELS = {
    # name: (builder, transformers class, threshold splitting its random scores)
    "detr": (td.build_detr, "DetrForObjectDetection", 0.38),
    "yolos": (td.build_yolos, "YolosForObjectDetection", 0.7),
    "rt_detr": (td.build_rt_detr, "RTDetrForObjectDetection", 0.9),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny-detectors")
    return {name: build(root / name) for name, (build, _, _) in MODELS.items()}


def card_for(folder, name: str = "tiny", runtime: str = "transformers", **kw) -> ModelCard:
    return ModelCard(
        id=f"tiny-{name}",
        name=name,
        tasks=("detect",),
        runtime=runtime,
        local_path=str(folder),
        source=Source.LOCAL,
        **kw,
    )


@pytest.fixture(scope="module")
def runners(folders) -> dict:
    from engine.runtimes import load_runner

    return {
        name: load_runner(card_for(f, name), device="cpu", precision="fp32")
        for name, f in folders.items()
    }


def images() -> list[Image.Image]:
    # two landscape images of one size (batched together), one portrait
    return [td.noise_image(160, 120, 1), td.noise_image(90, 130, 2), td.noise_image(160, 120, 3)]


def oracle(folder, cls_name: str, image: Image.Image, threshold: float) -> list[tuple]:
    import transformers

    model = getattr(transformers, cls_name).from_pretrained(folder).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        outputs = model(**processor(images=[image], return_tensors="pt"))
    (res,) = processor.post_process_object_detection(
        outputs, threshold=threshold, target_sizes=[(image.height, image.width)]
    )
    boxes = res["boxes"].numpy().astype(np.float64)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, image.width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, image.height)
    rows = [
        (int(l), float(s), tuple(b))
        for l, s, b in zip(res["labels"].tolist(), res["scores"].tolist(), boxes)
    ]
    return sorted(rows, key=lambda r: -r[1])


# Where detect() and the oracle run the network on differently shaped batches (detect batches
# images of one size: images()[0] and [2]), or on another runtime (ONNX), their logits are two
# fp32 evaluations that sum in different orders (tests/tolerances.py). Per tiny model: Σ K, the
# reduction lengths of every conv/linear layer the forward runs plus its attention products (a
# bound on any path from pixels to a head), and the size of the terms the class / box logits sum
# (max Σ|w·h|, measured on these fixtures; OWLv2's logit is (cos + shift)·scale, scale <= 5.3).
CHAINS = {  # name: (Σ K, class-logit scale, box-logit scale)
    "detr": (1100, 6.1, 2.2),  # 27 layers (widest: the 7×7×3 stem, 147), attention over <= 96 cells
    "yolos": (1000, 10.4, 1.8),  # the 16×16×3 patch conv (768), one layer over 35 tokens, 3+3 heads
    "rt_detr": (4000, 4.9, 2.5),  # 81 conv/linear layers: ResNet, CCFM 3×3×16 convs, decoder, heads
    "owlv2": (1200, 50.0, 7.9),  # the 16×16×3 patch conv (768), one vision + one text layer, heads
}


def fp32_bounds(name: str, image_size: tuple[int, int]) -> tuple[float, float]:
    """(score atol, box atol in px) for two fp32 evaluations of model `name`.

    |δz| <= Σ K·eps·scale (tests/tolerances.logit_error). Scores are a softmax p
    (|δp| <= 2p(1 - p)|δz| <= |δz|/2) or a sigmoid (|δz|/4). Boxes are (cx ± w/2)·W with
    cx, w sigmoids of box logits u: |δ| <= W·(1/4 + 1/8)·|δu|.
    """
    chain, class_scale, box_scale = CHAINS[name]
    score = logit_error(class_scale, chain) / 2
    return score, 3 / 8 * max(image_size) * logit_error(box_scale, chain)


def assert_matches(det: Detections, expected: list[tuple], labels: dict[int, str],
                   two_paths: str | None = None) -> None:
    """`two_paths`: the model's name where det and expected come from differently shaped
    batches; None where both ran this very image alone (the same computation, bit-identical).

    Labels and order are compared exactly. A label is an argmax and the order a sort by score,
    so either can flip where two class scores, or two kept boxes' scores, are closer than the
    two paths' difference. These fixtures' closest pairs: kept RT-DETR scores 2e-5 apart, top-two
    class scores 4e-4 (OWLv2); the paths' scores differ by ~1e-6 measured (SSE to AVX-512 kernels,
    1-4 threads). Inside the worst-case bound, so a flip is possible in principle, not seen.
    """
    if two_paths is None:
        score_atol, box_atol = 1e-6, 1e-4
    else:
        score_atol, box_atol = fp32_bounds(two_paths, det.image_size)
    assert [b.label_id for b in det.boxes] == [r[0] for r in expected]
    assert [b.label for b in det.boxes] == [labels[r[0]] for r in expected]
    np.testing.assert_allclose([b.score for b in det.boxes], [r[1] for r in expected],
                               atol=score_atol)
    np.testing.assert_allclose(
        np.array([b.xyxy for b in det.boxes]).reshape(-1, 4),
        np.array([r[2] for r in expected]).reshape(-1, 4),
        atol=box_atol,
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_boxes_equal_transformers_post_processing(name, folders, runners) -> None:
    _, cls_name, threshold = MODELS[name]
    imgs = images()
    results = detect(runners[name], imgs, threshold=threshold, max_detections=100)
    assert len(results) == len(imgs)
    total = 0
    for det, img in zip(results, imgs):
        expected = oracle(folders[name], cls_name, img, threshold)
        assert det.image_size == img.size
        assert det.labels == td.LABELS
        assert_matches(det, expected, td.LABELS, two_paths=name)
        total += len(expected)
    assert 0 < total < sum(len(d.boxes) for d in detect(runners[name], imgs, threshold=0.0))
    # batching never changes results beyond fp32 summation order (images of one size share a
    # batch, others don't)
    one_by_one = detect(runners[name], imgs, threshold=threshold, batch_size=1)
    for a, b in zip(results, one_by_one):
        assert [x.label for x in a.boxes] == [x.label for x in b.boxes]
        np.testing.assert_allclose([x.xyxy for x in a.boxes], [x.xyxy for x in b.boxes],
                                   atol=fp32_bounds(name, a.image_size)[1])


def test_class_filter_max_detections_and_nms(folders, runners) -> None:
    from torchvision.ops import batched_nms

    img = images()[0]
    everything = oracle(folders["detr"], "DetrForObjectDetection", img, 0.0)
    det = detect(runners["detr"], [img], threshold=0.0, classes=["dog"])[0]
    assert_matches(det, [r for r in everything if r[0] == 1], td.LABELS)
    top3 = detect(runners["detr"], [img], threshold=0.0, max_detections=3)[0]
    assert_matches(top3, everything[:3], td.LABELS)
    nms = detect(runners["detr"], [img], threshold=0.0, nms_iou=0.5)[0]
    keep = batched_nms(
        torch.tensor(np.array([r[2] for r in everything]), dtype=torch.float32),
        torch.tensor([r[1] for r in everything], dtype=torch.float32),
        torch.tensor([r[0] for r in everything]),
        0.5,
    ).tolist()
    assert_matches(nms, [everything[i] for i in sorted(keep)], td.LABELS)
    assert len(nms.boxes) < len(everything)


def test_exif_rotated_jpeg_gives_boxes_in_displayed_orientation(tmp_path, folders, runners) -> None:
    stored = td.noise_image(160, 96, 7)  # stored landscape, displayed portrait (orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, quality=95, exif=exif)
    loaded = read_image(path)
    assert loaded.size == (96, 160)
    det = detect(runners["detr"], [loaded], threshold=0.0)[0]
    assert det.image_size == (96, 160)
    expected = oracle(folders["detr"], "DetrForObjectDetection", loaded.rgb, 0.0)
    assert_matches(det, expected, td.LABELS)
    xy = np.array([b.xyxy for b in det.boxes])
    assert (xy[:, [0, 2]] <= 96).all() and (xy[:, [1, 3]] <= 160).all()


def test_unknown_class_and_unknown_model_type_are_clear_errors(folders, runners) -> None:
    with pytest.raises(UsageError, match="no class 'zebra'"):
        detect(runners["detr"], images()[:1], classes=["zebra"])
    assert model_info(runners["detr"]).model_type == "detr"

    class NotADetector:
        card = card_for(folders["detr"], sidecar={"model_type": "segformer"})
        module = None
        processor = None

    with pytest.raises(UnsupportedModelError, match="not a detector"):
        detect(NotADetector(), images()[:1])


def test_size_batches_group_by_size_and_cap() -> None:
    imgs = [Image.new("RGB", s) for s in [(4, 4), (5, 4), (4, 4), (4, 4), (5, 4)]]
    assert size_batches(imgs, 2) == [[0, 2], [3], [1, 4]]


def test_onnx_export_gives_same_boxes_through_the_same_task_code(
    folders, runners, tmp_path
) -> None:
    """torch.onnx export of the tiny DETR, run by OnnxRunner: same labels, boxes and scores
    within the fp32 bounds of two runtimes' kernels."""
    import shutil

    from engine.runtimes import load_runner

    folder = tmp_path / "detr-onnx"
    shutil.copytree(folders["detr"], folder)
    onnx_path = td.export_onnx(folder, "DetrForObjectDetection", height=64, width=85)
    runner = load_runner(
        card_for(onnx_path, "detr-onnx", runtime="onnx"), device="cpu", precision="fp32"
    )
    assert type(runner).__name__ == "OnnxRunner"
    # the export is under test, not the preprocessing: the ONNX runner's own numpy processor
    # (= transformers' PIL backend, tests/unit/test_lite_processors.py) resamples a step away
    # from the torchvision one the torch runner uses, enough to flip this random model's ties
    runner.processor = runners["detr"].processor
    imgs = images()  # includes a portrait size the export never saw (dynamic height/width)
    for a, b in zip(
        detect(runner, imgs, threshold=0.0), detect(runners["detr"], imgs, threshold=0.0)
    ):
        assert [x.label for x in a.boxes] == [x.label for x in b.boxes]
        assert len(a.boxes) == 12
        score_atol, box_atol = fp32_bounds("detr", a.image_size)  # ONNX Runtime vs torch kernels
        np.testing.assert_allclose([x.xyxy for x in a.boxes], [x.xyxy for x in b.boxes],
                                   atol=box_atol)
        np.testing.assert_allclose(
            [x.score for x in a.boxes], [x.score for x in b.boxes], atol=score_atol
        )


def test_owlv2_open_vocabulary_equals_transformers(tmp_path) -> None:
    import transformers

    from engine.runtimes import load_runner

    folder = td.build_owlv2(tmp_path / "owlv2")
    runner = load_runner(
        card_for(folder, "owlv2", variant="open-vocab"), device="cpu", precision="fp32"
    )
    queries = ["cat", "red car"]
    with pytest.raises(UsageError, match="open-vocabulary"):
        detect(runner, images()[:1])
    model = transformers.Owlv2ForObjectDetection.from_pretrained(folder).eval()
    processor = transformers.AutoProcessor.from_pretrained(folder)
    imgs = images()
    results = detect(runner, imgs, threshold=0.6, classes=queries)
    total = 0
    for det, img in zip(results, imgs):
        with torch.no_grad():
            out = model(**processor(text=[queries], images=[img], return_tensors="pt"))
        (res,) = processor.post_process_grounded_object_detection(
            out, threshold=0.6, target_sizes=[(img.height, img.width)], text_labels=[queries]
        )
        boxes = res["boxes"].numpy().astype(np.float64)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, img.width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, img.height)
        expected = sorted(
            zip(res["labels"].tolist(), res["scores"].tolist(), boxes), key=lambda r: -r[1]
        )
        assert_matches(det, expected, dict(enumerate(queries)), two_paths="owlv2")
        assert [b.label for b in det.boxes] == [
            res["text_labels"][res["labels"].tolist().index(b.label_id)] for b in det.boxes
        ]
        total += len(expected)
    assert total > 0


def test_grounding_dino_phrases_and_boxes_equal_transformers(tmp_path) -> None:
    import transformers

    from engine.runtimes import load_runner

    folder = td.build_grounding_dino(tmp_path / "gdino")
    runner = load_runner(card_for(folder, "gdino"), device="cpu", precision="fp32")
    queries = ["cat", "red car"]
    model = transformers.GroundingDinoForObjectDetection.from_pretrained(folder).eval()
    processor = transformers.AutoProcessor.from_pretrained(folder)
    imgs = images()[:2]
    results = detect(runner, imgs, threshold=0.8, classes=queries)
    total = 0
    for det, img in zip(results, imgs):
        inputs = processor(images=[img], text=[queries], return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs)
        (res,) = processor.post_process_grounded_object_detection(
            out,
            input_ids=inputs["input_ids"],
            threshold=0.8,
            text_threshold=0.8,
            target_sizes=[(img.height, img.width)],
        )
        boxes = res["boxes"].numpy().astype(np.float64)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, img.width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, img.height)
        order = np.argsort(-res["scores"].numpy(), kind="stable")
        assert [b.label for b in det.boxes] == [res["text_labels"][i] for i in order]
        # the two images differ in size, so detect() runs each alone, as here: one computation,
        # bit-identical, and tight tolerances hold on any CPU
        np.testing.assert_allclose(
            [b.score for b in det.boxes], res["scores"].numpy()[order], atol=1e-6
        )
        np.testing.assert_allclose(
            np.array([b.xyxy for b in det.boxes]).reshape(-1, 4), boxes[order], atol=1e-4
        )
        for b in det.boxes:  # phrases equal to a query get its id; others none
            assert b.label_id == (queries.index(b.label) if b.label in queries else -1)
        total += len(det.boxes)
    assert total > 0
