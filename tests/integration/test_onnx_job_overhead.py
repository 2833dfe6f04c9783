"""No overhead around real ONNX models (issue 13 item 1).

An ONNX detect job never imports torch, transformers or onnx (onnxruntime only), the
graph's metadata is read once per load (not per batch), and outputs stay numpy from the
session to the NMS. The models are built with torch here; the job runs in a fresh process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.fixtures import byom_models  # noqa: E402
from tests.fixtures import tiny_detectors as td  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "onnx", "torchvision")

SIDECAR = """task = "detect"
name = "My detector"
output = "yolov8"
input_size = [64, 64]
range = [0, 1]
labels = ["white box", "red box"]
"""

# What `ocula` runs, plus a report of the heavy modules loaded once the job is done.
PROBE = """
import json, sys
from desktop.launcher import main
code = main(sys.argv[1:])
print("LOADED " + json.dumps({m: m in sys.modules for m in %r + ("onnxruntime",)}))
sys.exit(code or 0)
""" % (HEAVY,)


def _env(home: Path) -> dict[str, str]:
    return dict(os.environ, OCULA_HOME=str(home / "ocula"), HF_HOME=str(home / "hf"),
                XDG_CONFIG_HOME=str(home / "config"))


def _ocula(args: list[str], env: dict[str, str]) -> tuple[str, dict[str, bool]]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("LOADED "))
    return proc.stdout, json.loads(line.split(" ", 1)[1])


def test_onnx_detect_job_imports_neither_torch_nor_onnx(tmp_path: Path) -> None:
    model = byom_models.detector(tmp_path / "model" / "my-detector.onnx")
    model.with_suffix(".toml").write_text(SIDECAR, encoding="utf-8")
    photos = tmp_path / "photos"
    photos.mkdir()
    td.noise_image(96, 64, seed=0).save(photos / "noise.png")
    from PIL import Image

    Image.fromarray(td.draw_rectangles((96, 64), (8, 8, 40, 40), (50, 10, 90, 60))).save(
        photos / "boxes.png")
    env = _env(tmp_path)
    subprocess.run([sys.executable, "-c", "import sys; from desktop.launcher import main; "
                    "sys.exit(main(sys.argv[1:]))", "models", "import", str(model)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    out = tmp_path / "out"
    _, loaded = _ocula(["detect", str(photos), "--model", "local:my-detector", "--out",
                        str(out), "--batch-size", "1"], env)
    assert loaded == {**dict.fromkeys(HEAVY, False), "onnxruntime": True}
    boxes = json.loads((out / "boxes.detections.json").read_text(encoding="utf-8"))["boxes"]
    assert sorted(b["label"] for b in boxes) == ["red box", "white box"]


def test_semantic_logits_onnx_segment_job_imports_no_torch(tmp_path: Path) -> None:
    model = byom_models.segmenter(tmp_path / "model" / "my-segmenter.onnx")
    model.with_suffix(".toml").write_text(
        'task = "segment"\nname = "My segmenter"\noutput = "semantic_logits"\n'
        'mean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n'
        'labels = ["background", "thing", "stuff"]\n', encoding="utf-8")
    photos = tmp_path / "photos"
    photos.mkdir()
    td.noise_image(64, 48, seed=1).save(photos / "a.png")
    env = _env(tmp_path)
    subprocess.run([sys.executable, "-c", "import sys; from desktop.launcher import main; "
                    "sys.exit(main(sys.argv[1:]))", "models", "import", str(model)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    _, loaded = _ocula(["segment", str(photos), "--model", "local:my-segmenter", "--out",
                        str(tmp_path / "out")], env)
    assert loaded == {**dict.fromkeys(HEAVY, False), "onnxruntime": True}


def _yolo_runner(path: Path):
    from engine.catalog.card import ModelCard, Source
    from engine.runtimes import load_runner

    card = ModelCard(id="box-finder", name="box finder", tasks=("detect",), runtime="onnx",
                     local_path=str(path), source=Source.LOCAL, sidecar={"family": "yolo"})
    return load_runner(card, device="cpu", precision="fp32")


def test_graph_metadata_is_read_once_per_load(tmp_path: Path, monkeypatch) -> None:
    import onnx

    from engine.tasks.detect import detect
    from engine.tasks.detectors import yolo

    path = td.build_box_finder_onnx(tmp_path / "m.onnx", input_size=(96, 64), layout="v8",
                                    names={0: "a", 1: "b"})
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "imgsz", "[64, 96]"  # Ultralytics: [height, width]
    onnx.save(model, str(path))
    runner = _yolo_runner(path)
    # the session's metadata is what onnx itself reads from the file
    assert runner.graph_metadata() == yolo.onnx_metadata(path)
    monkeypatch.setattr(yolo, "onnx_metadata", lambda *_a, **_k: pytest.fail("parsed the graph"))
    session = runner.sessions["model"]
    reads = []

    class Counting:  # count what the runner asks its session for
        def __getattr__(self, name):
            if name in ("get_modelmeta", "get_inputs", "get_outputs"):
                reads.append(name)
            return getattr(session, name)

    runner.sessions["model"] = Counting()
    images = [td.noise_image(96, 64, seed=i) for i in range(6)]
    results = detect(runner, images, threshold=0.5, batch_size=2)
    assert len(results) == 6 and results[0].labels == {0: "a", 1: "b"}
    assert sorted(reads) == ["get_inputs", "get_modelmeta", "get_outputs"]  # once each, 3 batches
    assert yolo.yolo_spec(runner).input_size == (96, 64)


def test_forward_arrays_are_numpy_and_match_torch_outputs(tmp_path: Path) -> None:
    path = td.build_box_finder_onnx(tmp_path / "m.onnx", input_size=(64, 64), layout="v8")
    runner = _yolo_runner(path)
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 64, 64)).astype(np.float32)
    arrays = runner.forward_arrays({"images": x})
    tensors = runner.forward({"images": x})
    assert arrays.keys() == tensors.keys()
    for name, value in arrays.items():
        assert isinstance(value, np.ndarray) and value.dtype == np.float32
        np.testing.assert_array_equal(value, tensors[name].numpy())


def test_batched_nms_numpy_equals_torchvision_on_random_boxes() -> None:
    from torchvision.ops import batched_nms

    from engine.tasks import nms

    for seed in range(5):
        rng = np.random.default_rng(seed)
        n = 500
        xy = rng.uniform(0, 600, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(2, 120, (n, 2))], axis=1).astype(np.float32)
        scores = rng.uniform(0, 1, n).astype(np.float32)
        classes = rng.integers(0, 10, n)
        theirs = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                             torch.from_numpy(classes), 0.45).numpy()
        assert nms.batched_nms_numpy(boxes, scores, classes, 0.45).tolist() == theirs.tolist()
