"""The Lite build (no torch, no transformers, no spandrel) runs every task on ONNX.

In a process where those packages cannot be imported (tests/fixtures/lite.py), the
self-test's ONNX checks all pass — caption (encoder + merged decoder with KV cache,
`tokenizers`), detect (DETR, numpy processor and decoding), segment (SegFormer), restore
(image-to-image tiles) and explain (attention rollout from the graph's Softmax nodes) — and
none of the blocked packages is loaded. With torch installed, each ONNX self-test model
answers as the torch model it was exported from.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.lite import lite_env, loaded, run_lite, run_lite_code

ONNX_CHECKS = ("caption-onnx", "detect-onnx", "segment-onnx", "restore-onnx", "explain-onnx")


def test_lite_self_test_runs_every_task_without_torch(tmp_path):
    report = tmp_path / "report.json"
    proc = run_lite(["--self-test"], env=lite_env(tmp_path, {"OCULA_SELFTEST_REPORT": str(report)}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert loaded(proc) == []
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["build"] == "lite" and data["ok"]
    tasks = data["tasks"]
    assert [name for name, t in tasks.items() if t["ok"]] == list(ONNX_CHECKS)
    assert all(t["skipped"] for name, t in tasks.items() if name not in ONNX_CHECKS)
    assert all("onnx on CPUExecutionProvider" in tasks[n]["placement"] for n in ONNX_CHECKS)


def test_lite_cli_run_detect_writes_outputs(tmp_path):
    from engine.selftest import selftest_dir, synthetic_image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(synthetic_image()).save(photos / "a.png")
    Image.fromarray(synthetic_image()[::-1].copy()).save(photos / "b.jpg", quality=95)
    env = lite_env(tmp_path)
    imported = run_lite(["models", "import", str(selftest_dir() / "detect-onnx"), "--name", "tiny-detr",
                         "--json"], env=env)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    card_json = imported.stdout[: imported.stdout.rindex("LOADED ")]
    model_id = json.loads(card_json)["id"]
    out = tmp_path / "out"
    proc = run_lite(["run", "detect", str(photos), "-m", model_id, "-o", str(out), "--threshold", "0",
                     "--formats", "coco,overlay"], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert loaded(proc) == []
    coco = json.loads((out / "detections.coco.json").read_text(encoding="utf-8"))
    assert len(coco["images"]) == 2 and coco["annotations"]
    assert sorted(p.name for p in out.rglob("*.overlay.*"))


@pytest.mark.parametrize("task", ["caption", "detect", "segment", "explain"])
def test_onnx_selftest_models_answer_like_their_torch_sources(task, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from engine.catalog.local_import import import_model
    from engine.runtimes import load_runner
    from engine.selftest import selftest_dir, synthetic_image

    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    image = Image.fromarray(synthetic_image())
    results = {}
    for kind, folder in (("torch", task), ("onnx", f"{task}-onnx")):
        card = import_model(selftest_dir() / folder, name=f"{task}-{kind}")
        runner = load_runner(card, device="cpu", precision="fp32", attention=task == "explain")
        assert runner.placement.backend == ("onnx" if kind == "onnx" else "transformers")
        if task == "caption":
            from engine.tasks.caption import caption
            results[kind] = caption(runner, [image], max_new_tokens=12)[0].token_ids
        elif task == "detect":
            from engine.tasks.detect import detect
            results[kind] = detect(runner, [image], threshold=0.0, nms_iou=0.5)[0]
        elif task == "segment":
            from engine.tasks.segment import segment
            results[kind] = segment(runner, [image])[0].label_map
        else:
            from engine.explain import explain
            results[kind] = np.asarray(explain(runner, image, method="rollout").grid_map)
    if task == "caption":
        assert results["onnx"] == results["torch"]
    elif task == "detect":
        want, got = results["torch"].boxes, results["onnx"].boxes
        # the torch path prepares with torchvision, the ONNX path with Pillow (one 8-bit step
        # apart, test_lite_processors): same boxes and labels, coordinates within a pixel
        assert [b.label for b in got] == [b.label for b in want]
        for a, b in zip(got, want):
            assert max(abs(a.x0 - b.x0), abs(a.y0 - b.y0), abs(a.x1 - b.x1), abs(a.y1 - b.y1)) < 1.0
            assert abs(a.score - b.score) < 1e-2
    elif task == "segment":
        assert (results["onnx"] == results["torch"]).mean() > 0.99
    else:
        np.testing.assert_allclose(results["onnx"], results["torch"], atol=1e-2)
        assert np.unravel_index(results["onnx"].argmax(), results["onnx"].shape) == (1, 2)


def test_lite_import_graph_probe():
    """Importing the engine's task and ONNX modules loads none of the blocked packages."""
    proc = run_lite_code(
        "import engine.tasks.detect, engine.tasks.segment, engine.tasks.caption, engine.tasks.restore\n"
        "import engine.runtimes.onnx_backend, engine.runtimes.lite_processors, engine.explain\n"
        "import engine.jobs, engine.cli")
    assert proc.returncode == 0, proc.stderr
    assert loaded(proc) == []


def test_lite_detects_with_a_catalog_onnx_model_from_the_hub(hub, tmp_path):
    """The catalog's RT-DETR ONNX entry (a tiny stand-in at its pinned revision on the local
    hub: config.json, preprocessor_config.json, onnx/model.onnx), pulled and run by a Lite
    process: numpy processor, sigmoid top-k decoding, no torch."""
    from tests.fixtures import catalog_stand_ins

    catalog_stand_ins.publish(hub, "rtdetr-r18-onnx", tmp_path / "stand-ins")
    photos = tmp_path / "photos"
    photos.mkdir()
    from engine.selftest import synthetic_image

    Image.fromarray(synthetic_image()).save(photos / "a.png")
    env = lite_env(tmp_path, {"HF_HUB_CACHE": str(tmp_path / "hf-cache")})
    out = tmp_path / "out"
    proc = run_lite(["detect", "--model", "rtdetr-r18-onnx", str(photos), "--out", str(out),
                     "--threshold", "0"], env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert loaded(proc) == []
    record = json.loads(next(out.rglob("a*.json")).read_text())
    assert record["boxes"] and all(0.0 <= b["score"] <= 1.0 for b in record["boxes"])
