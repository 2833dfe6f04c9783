"""MTCNN on ONNX Runtime (no torch) finds the faces facenet-pytorch's MTCNN finds.

The graphs are facenet-pytorch's real P/R/O-Net weights exported by
packaging/make_first_run_models.py (what the Lite bundle ships for its first run); the
cascade around them is engine.tasks.detectors.mtcnn_cascade. Oracle: facenet-pytorch's
own `MTCNN.detect` on real photos (one face; four faces; a cat and a coffee cup: none).
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("facenet_pytorch", reason="test extra: pip install --no-deps facenet-pytorch==2.6.0")
skdata = pytest.importorskip("skimage.data")

from tests.fixtures.lite import lite_env, loaded, run_lite  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mtcnn_folder(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("make_first_run_models",
                                                  ROOT / "packaging" / "make_first_run_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.export_mtcnn(tmp_path_factory.mktemp("first-run") / "mtcnn")


def photos() -> dict[str, np.ndarray]:
    astronaut = skdata.astronaut()
    group = np.concatenate([np.concatenate([astronaut] * 2, 1)] * 2, 0)[::2, ::2].copy()
    return {"astronaut": astronaut, "group": group, "chelsea": skdata.chelsea(),
            "coffee": skdata.coffee()}


def test_onnx_cascade_equals_facenet_pytorch(mtcnn_folder, tmp_path, monkeypatch):
    from facenet_pytorch import MTCNN

    from engine.catalog.local_import import import_model
    from engine.runtimes import load_runner
    from engine.tasks.detect import detect

    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    card = import_model(mtcnn_folder)
    assert card.runtime == "onnx" and card.license == "mit" and card.tasks == ("detect",)
    runner = load_runner(card, device="cpu")
    reference = MTCNN(keep_all=True, device="cpu")
    counts = {}
    for name, rgb in photos().items():
        boxes, probs = reference.detect(rgb)
        got = detect(runner, [Image.fromarray(rgb)], threshold=0.0)[0].boxes
        want = [] if boxes is None else sorted(zip(probs.tolist(), boxes.tolist()), reverse=True)
        counts[name] = len(got)
        assert len(got) == len(want), (name, got, want)
        for box, (prob, (x0, y0, x1, y1)) in zip(got, want):
            assert box.label == "face"
            assert abs(box.score - prob) < 1e-4, name
            assert max(abs(box.x0 - x0), abs(box.y0 - y0), abs(box.x1 - x1), abs(box.y1 - y1)) < 0.5
    assert counts == {"astronaut": 1, "group": 4, "chelsea": 0, "coffee": 0}


def test_lite_process_detects_the_astronauts_face(mtcnn_folder, tmp_path):
    photos_dir = tmp_path / "photos"
    photos_dir.mkdir()
    Image.fromarray(skdata.astronaut()).save(photos_dir / "astronaut.png")
    env = lite_env(tmp_path)
    imported = run_lite(["models", "import", str(mtcnn_folder), "--json"], env=env)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    model_id = json.loads(imported.stdout[: imported.stdout.rindex("LOADED ")])["id"]
    out = tmp_path / "out"
    proc = run_lite(["run", "detect", str(photos_dir), "-m", model_id, "-o", str(out),
                     "--formats", "coco"], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert loaded(proc) == []
    record = json.loads(next(out.rglob("astronaut*.json")).read_text())
    assert len(record["boxes"]) == 1 and record["boxes"][0]["label"] == "face"
    assert record["boxes"][0]["score"] > 0.999
    np.testing.assert_allclose(record["boxes"][0]["xyxy"], [181.1, 62.2, 267.7, 172.1], atol=0.5)
