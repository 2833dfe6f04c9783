"""MTCNN as a first-class catalog model: its weights ship inside the facenet-pytorch wheel,
so `ocula models`/`run`/`doctor` treat the installed package as the model's files, and
the facenet-pytorch runtime backend loads it like any other backend (placement, cache,
announced fallbacks)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "facenet_pytorch", reason="test extra: pip install --no-deps facenet-pytorch==2.6.0 requests"
)
skimage_data = pytest.importorskip("skimage.data")

from engine.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FACE = (181, 62, 268, 172)  # the astronaut's face (see tests/unit/test_detect_mtcnn.py)
WEIGHT_BYTES = 28_570 + 403_147 + 1_559_269  # pnet.pt + rnet.pt + onet.pt in the 2.6.0 wheel
INSTALL = "pip install --no-deps facenet-pytorch==2.6.0 requests"


def _json(capsys) -> object:
    return json.loads(capsys.readouterr().out)


def _card():
    from engine.catalog.catalog import load_catalog

    return load_catalog().get("mtcnn")


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("faces") / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(path)
    return path


@pytest.mark.slow
def test_ocula_run_detect_with_mtcnn_finds_the_face(astronaut, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    # inputs right after the task word (the parser does not yet take them after options)
    rc = main(["run", "detect", str(astronaut), "--model", "mtcnn", "--out", str(out), "--json"])
    summary = _json(capsys)
    assert rc == 0, summary
    assert summary["done"] == 1 and summary["failed"] == 0
    record = json.loads((out / "astronaut.detections.json").read_text())
    (face,) = record["boxes"]
    assert face["label"] == "face" and face["score"] > 0.99
    np.testing.assert_allclose(face["xyxy"], FACE, atol=2.0)
    coco = json.loads((out / "detections.coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["face"]


def test_models_info_and_list_show_it_installed_with_size_and_params(capsys) -> None:
    assert main(["models", "info", "mtcnn", "--json"]) == 0
    info = _json(capsys)
    assert info["installed"] is True and info["source"] == "package"
    assert info["package"] == "facenet-pytorch" and info["install"] == INSTALL
    assert info["download_bytes"] == WEIGHT_BYTES == info["disk_bytes"]
    assert info["params"] == 495_850 and info["license"] == "mit"
    assert info["tasks"] == ["detect"] and info["runtime"] == "facenet-pytorch"
    assert info["repo"] is None and info["revision"] is None

    assert main(["models", "list", "--task", "detect", "--json"]) == 0
    rows = {row["id"]: row for row in _json(capsys)}
    assert rows["mtcnn"]["installed"] is True
    assert main(["models", "list", "--installed", "--json"]) == 0
    assert "mtcnn" in {row["id"] for row in _json(capsys)}
    assert main(["models", "list", "--task", "detect"]) == 0
    line = next(li for li in capsys.readouterr().out.splitlines() if li.startswith("mtcnn "))
    assert "2.0 MB" in line and "0.5 M" in line and line.rstrip().endswith("yes")


def test_pull_uses_the_package_and_never_the_hub(hub, monkeypatch, capsys) -> None:
    import facenet_pytorch

    data = Path(facenet_pytorch.__file__).parent / "data"
    assert main(["models", "pull", "mtcnn", "--json"]) == 0
    assert Path(_json(capsys)["path"]) == data
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models", "pull", "mtcnn", "--json"]) == 0
    assert Path(_json(capsys)["path"]) == data
    assert hub.count() == 0  # the local hub saw no request at all


def test_without_the_package_pull_says_how_to_install_and_it_is_not_installed(
        hub, monkeypatch, capsys) -> None:
    from engine.catalog import packaged

    monkeypatch.setattr(packaged, "_import_root", lambda module: None)  # "not installed"
    assert main(["models", "pull", "mtcnn"]) == 1
    err = capsys.readouterr().err
    assert "ships inside the facenet-pytorch package" in err and "not installed" in err
    assert INSTALL in err
    assert hub.count() == 0
    assert main(["models", "list", "--task", "detect", "--json"]) == 0
    assert {r["id"]: r["installed"] for r in _json(capsys)}["mtcnn"] is False


def test_rm_refuses_politely_and_leaves_the_package_alone(capsys) -> None:
    import facenet_pytorch

    assert main(["models", "rm", "mtcnn"]) == 2
    err = capsys.readouterr().err
    assert "ship inside the facenet-pytorch package, so there is nothing to delete" in err
    assert "pip uninstall facenet-pytorch" in err
    assert (Path(facenet_pytorch.__file__).parent / "data" / "onet.pt").is_file()


def test_doctor_names_the_facenet_backend_and_cpu(capsys) -> None:
    assert main(["doctor", "--model", "mtcnn", "--device", "cpu", "--json"]) == 0
    placement = _json(capsys)["model"]["placement"]
    assert placement == {"backend": "facenet-pytorch", "device": "cpu", "precision": "fp32",
                         "provider": None, "fallback": None}
    assert main(["doctor", "--model", "mtcnn", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "mtcnn (MTCNN face detector (facenet-pytorch)): facenet-pytorch backend" in text
    assert "runs on: cpu in fp32" in text
    assert "weights: ship with the facenet-pytorch 2.6.0 package" in text


def test_doctor_plans_mtcnn_without_importing_torch() -> None:
    code = ("import sys; from engine.cli import main; "
            "rc = main(['doctor', '--model', 'mtcnn', '--json']); "
            "assert rc == 0; "
            "print('LOADED', sorted(m for m in ('torch', 'facenet_pytorch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OCULA_PROBE_TORCH": "0"}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "LOADED []"
    payload = json.loads(done.stdout[:done.stdout.rindex("LOADED")])
    assert payload["model"]["placement"]["backend"] == "facenet-pytorch"


def test_load_runner_places_caches_and_runs_it(astronaut) -> None:
    from PIL import Image

    from engine.runtimes import Placement, RunnerCache, load_runner
    from engine.tasks.detect import detect

    card = _card()
    runner = load_runner(card, device="cpu", precision="auto")
    assert runner.placement == Placement(backend="facenet-pytorch", device="cpu", precision="fp32")
    assert runner.memory_bytes == 495_850 * 4
    out = runner.forward({"image": Image.open(astronaut).convert("RGB")})
    assert isinstance(out.boxes, np.ndarray) and out.boxes.shape == (1, 4)
    assert isinstance(out.scores, np.ndarray) and out.scores.shape == (1,)
    (det,) = detect(runner, [Image.open(astronaut)], threshold=0.9)
    np.testing.assert_allclose(det.boxes[0].xyxy, FACE, atol=2.0)

    cache = RunnerCache(budget_mb=64)
    first = cache.get_or_load(card, device="cpu")
    assert cache.get_or_load(card, device="cpu") is first and len(cache) == 1
    assert cache.release("mtcnn") == 1


def test_cuda_without_a_gpu_and_fp16_fall_back_to_cpu_fp32_announced(monkeypatch) -> None:
    from engine import devices
    from engine.runtimes import load_runner

    no_gpu = devices.DeviceReport(cpu_name="cpu", cpu_cores=2, cpu_cores_available=2,
                                  versions={"torch": "2.x"}, torch_cuda_build=None)
    monkeypatch.setattr(devices, "discover", lambda refresh=False: no_gpu)
    runner = load_runner(_card(), device="cuda", precision="fp16")
    assert runner.placement.device == "cpu" and runner.placement.precision == "fp32"
    assert runner.placement.backend == "facenet-pytorch"
    assert "cuda requested but no CUDA device found" in runner.placement.fallback
    assert "does not support fp16" in runner.placement.fallback
    assert any(note.startswith("fallback: ") for note in runner.notes)
    assert str(next(runner.detector.parameters()).device) == "cpu"


@pytest.mark.gpu
def test_auto_runs_on_cuda_and_matches_cpu(astronaut) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")
    from PIL import Image

    from engine.runtimes import load_runner
    from engine.tasks.detect import detect

    image = Image.open(astronaut).convert("RGB")
    gpu = load_runner(_card())
    assert gpu.placement.device == "cuda:0" and gpu.placement.precision == "fp32"
    assert gpu.placement.fallback is None
    assert next(gpu.detector.parameters()).device.type == "cuda"
    cpu = load_runner(_card(), device="cpu")
    (on_gpu,), (on_cpu,) = detect(gpu, [image]), detect(cpu, [image])
    assert len(on_gpu.boxes) == len(on_cpu.boxes) == 1
    np.testing.assert_allclose(on_gpu.boxes[0].xyxy, on_cpu.boxes[0].xyxy, atol=1.0)
    assert on_gpu.boxes[0].score == pytest.approx(on_cpu.boxes[0].score, abs=1e-3)
