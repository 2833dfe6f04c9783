"""What a new user and a script expect of the command line: inputs anywhere among the
options, lookup errors that exit 2 before any work, every output of every input findable
from the JSON, and the small things (search, sizes, a closed pipe) that must not surprise."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from engine.cli import main
from tests.fixtures.tiny_detectors import build_detr, noise_image

ROOT = Path(__file__).resolve().parents[2]
REPO = "tiny-org/detr-contract"


@pytest.fixture()
def detr(hub, tmp_path_factory):
    hub.add_repo(REPO, build_detr(tmp_path_factory.mktemp("detr")),
                 pipeline_tag="object-detection", library_name="transformers",
                 license="apache-2.0")
    return REPO


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    noise_image(80, 60, seed=1).save(folder / "a.png")
    noise_image(64, 48, seed=2).save(folder / "sub" / "b.jpg")
    return folder


@pytest.fixture()
def upscaler(tmp_path, capsys):
    """A spandrel Compact ×2 checkpoint, imported: a real restoration model in one second."""
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    checkpoint = tmp_path / "compact-x2.safetensors"
    save_file(Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).state_dict(),
              str(checkpoint))
    assert main(["models", "import", str(checkpoint), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["id"]


def test_inputs_may_come_after_or_between_the_options(detr, photos, tmp_path, capsys):
    """The README's own order (`run detect --model X photos/ --out results/`)."""
    out = tmp_path / "results"
    code = main(["run", "detect", "--model", detr, str(photos / "a.png"), "--out", str(out),
                 str(photos / "sub"), "--threshold", "0.0", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["done"] == 2 and summary["failed"] == 0
    assert (out / "a.overlay.png").is_file() and (out / "b.overlay.png").is_file()


def test_explain_takes_images_after_the_options(hub, tmp_path, capsys):
    from tests.fixtures.repos import tiny_vit_classifier

    hub.add_repo("tiny-org/vit-contract", tiny_vit_classifier(tmp_path / "vit"),
                 pipeline_tag="image-classification", library_name="transformers")
    image = tmp_path / "p.png"
    noise_image(48, 40).save(image)
    code = main(["explain", "--model", "tiny-org/vit-contract", "--out", str(tmp_path / "m"),
                 str(image), "--method", "raw", "--layer", "9", "--json"])
    # a layer the model lacks is that image's failure with a message, never a traceback
    assert code == 1
    failures = json.loads(capsys.readouterr().out)["failures"]
    assert "layer 9 out of range" in failures[0]["reason"]


def test_every_output_of_every_input_is_in_the_json(detr, photos, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", "detect", str(photos), "--model", detr, "--out", str(out),
                 "--threshold", "0.0", "--formats", "coco,yolo,overlay", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    on_disk = {p for p in out.rglob("*") if p.is_file() and not p.name.startswith("ocula-report")}
    assert {Path(f) for f in summary["files"]} == on_disk  # nothing written is left unnamed
    assert {Path(f).name for f in summary["job_files"]} == {"detections.coco.json", "classes.txt"}
    by_input = {Path(item["input"]).name: item for item in summary["items"]}
    assert set(by_input) == {"a.png", "b.jpg"}
    b = by_input["b.jpg"]
    assert b["state"] == "done" and b["error"] is None
    assert {Path(p).name for p in b["outputs"]} == {"b.overlay.png", "b.txt", "b.detections.json"}
    report = json.loads((out / "ocula-report.json").read_text())
    assert report["items"] == summary["items"] and report["files"] == summary["files"]
    # each input's own record names the files it produced, relative to the output folder
    record = json.loads((out / "sub" / "b.detections.json").read_text())
    assert record["outputs"] == {"overlay": "sub/b.overlay.png", "yolo": "sub/b.txt"}


def test_restore_record_names_its_image(upscaler, photos, tmp_path, capsys):
    out = tmp_path / "big"
    assert main(["run", "restore", str(photos / "a.png"), "--model", upscaler,
                 "--out", str(out), "--json"]) == 0
    record = json.loads((out / "a.restore.json").read_text())
    assert record["outputs"] == {"restored": "a.x2.png"}
    assert Image.open(out / record["outputs"]["restored"]).size == (160, 120)


def test_unknown_model_exits_2_before_any_work(hub, photos, tmp_path, capsys):
    out = tmp_path / "never"
    code = main(["run", "detect", str(photos), "--model", "rtdetr-r81", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    assert "Unknown model 'rtdetr-r81'" in captured.err and "rtdetr-r18" in captured.err
    assert "it/s" not in captured.err and "item" not in captured.err  # no progress bar first
    assert not out.exists()  # no output folder, no report, no queued job


def test_a_model_for_another_task_exits_2_before_any_work(detr, photos, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["run", "caption", str(photos), "--model", detr, "--out", str(out)]) == 2
    assert "not caption" in capsys.readouterr().err and not out.exists()


def test_bad_prompt_points_are_a_usage_error(detr, photos, tmp_path, capsys):
    code = main(["run", "segment", "--points", "10,20", str(photos / "a.png"),
                 "--model", detr, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "'points' takes x,y" in err and "put inputs first" in err


def test_import_offers_the_tasks_an_import_can_have(tmp_path, capsys):
    from tests.fixtures import byom_models

    onnx = byom_models.vit(tmp_path / "backbone.onnx")
    (tmp_path / "backbone.toml").write_text('output = "hidden_states"\nname = "Backbone"\n')
    assert main(["models", "import", str(onnx), "--task", "features", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == ["features"]
    with pytest.raises(SystemExit) as exc:  # explain is what a job does, not what a model is
        main(["models", "import", str(onnx), "--task", "explain"])
    assert exc.value.code == 2


def test_local_models_show_their_size(upscaler, capsys):
    assert main(["models", "list", "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["id"] == upscaler)
    assert row["download_bytes"] > 1000
    assert main(["models", "list"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(upscaler))
    assert " KB " in line and " ? " not in line


def test_search_matches_what_a_model_is_not_who_published_it(capsys):
    assert main(["models", "search", "face", "--json"]) == 0
    ids = [c["id"] for c in json.loads(capsys.readouterr().out)]
    assert "mtcnn" in ids and not any(i.startswith(("dino", "detr", "mask2former")) for i in ids)
    assert main(["models", "search", "facebook", "--json"]) == 0  # the owner, by name, still works
    assert "dino-vits16" in [c["id"] for c in json.loads(capsys.readouterr().out)]


def test_a_closed_pipe_is_not_a_traceback():
    """`ocula models list | head -1`."""
    proc = subprocess.run(f"{sys.executable} -m engine.cli models list | head -1", shell=True,
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.startswith("ID") and "Traceback" not in proc.stderr
