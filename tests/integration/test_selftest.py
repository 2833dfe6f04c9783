"""`ocula --self-test` in-process: the bundled tiny models through every task, offline.

The frozen build runs the same function (packaging/build_linux.sh); here it runs from
the source tree, which is what CI can afford.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from engine import selftest
from engine.selftest import CHECKS, Check, CheckFailed, run_self_test

TASKS = {"caption", "detect", "segment", "restore", "explain"}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, hub_server):
    """One complete self-test for the module (it loads six models: ~10-40 s)."""
    report_path = tmp_path_factory.mktemp("selftest") / "report.json"
    hub_server.reset()
    home_before = os.environ.get("OCULA_HOME")
    code = run_self_test(report_path, device="cpu", quiet=True)
    return {
        "code": code,
        "report": json.loads(report_path.read_text(encoding="utf-8")),
        "hub_requests": hub_server.count(),
        "home_before": home_before,
    }


@pytest.mark.slow
def test_every_task_passes_and_the_report_says_so(full_run):
    report = full_run["report"]
    failed = {name: t["error"] for name, t in report["tasks"].items() if not t["ok"]}
    assert full_run["code"] == 0, f"self-test failed: {failed or report['error']}"
    assert report["ok"] is True and report["failed"] == 0
    assert report["passed"] == len(CHECKS)
    assert {t["task"] for t in report["tasks"].values()} == TASKS
    for name, entry in report["tasks"].items():
        assert entry["ok"], name
        assert entry["seconds"] > 0
        # what really ran it: the runner's own placement, not the request
        assert entry["device"] in ("cpu", "CPUExecutionProvider"), (name, entry)
        assert entry["placement"].startswith(entry["runtime"]), (name, entry)
        assert entry["outputs"], f"{name} wrote no output files"
    assert report["tasks"]["restore"]["runtime"] == "spandrel"
    assert report["tasks"]["restore-onnx"]["runtime"] == "onnx"
    assert report["versions"]["ocula"] and report["versions"]["torch"]
    assert report["frozen"] is False


@pytest.mark.slow
def test_self_test_is_offline_and_leaves_the_user_data_alone(full_run):
    # HF_ENDPOINT points at the local hub server for the whole test session: any hub
    # call (metadata, download, even a HEAD) would show up in its log.
    assert full_run["hub_requests"] == 0
    assert os.environ.get("OCULA_HOME") == full_run["home_before"]
    assert "HF_HUB_OFFLINE" not in os.environ  # restored (conftest removes it)
    from engine.catalog.local_import import list_imports

    assert not [c for c in list_imports() if c.id.startswith("local:selftest")]


@pytest.mark.slow
def test_known_answers_are_checked(full_run):
    tasks = full_run["report"]["tasks"]
    assert "max diff 0" in tasks["restore"]["detail"]
    assert "max diff 0" in tasks["restore-onnx"]["detail"]
    assert f"peak {selftest.BRIGHT_CELL}" in tasks["explain"]["detail"]


def test_a_wrong_result_fails_the_self_test(tmp_path, capsys):
    """A check whose expectation is not met makes the exit code 1 and is named."""
    onnx_check = next(c for c in CHECKS if c.name == "restore-onnx")

    def expects_3x(result, rgb: np.ndarray) -> str:
        if result.scale != 3:
            raise CheckFailed(f"scale is {result.scale}, this check wants 3")
        return "unreachable"

    wrong = Check("restore-3x", "restore", onnx_check.model_path, {}, expects_3x)
    report_path = tmp_path / "report.json"
    code = run_self_test(report_path, checks=(onnx_check, wrong), device="cpu")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert code == 1
    assert report["ok"] is False and report["passed"] == 1 and report["failed"] == 1
    assert report["tasks"]["restore-onnx"]["ok"] is True
    assert report["tasks"]["restore-3x"]["error"] == "CheckFailed: scale is 2, this check wants 3"
    out = capsys.readouterr().out
    assert "restore-3x" in out and "FAILED" in out and "1 passed, 1 failed" in out


def test_a_missing_model_is_reported_with_its_path(tmp_path):
    missing = Check("ghost", "detect", "no-such-model", {}, lambda r, rgb: "")
    code = run_self_test(tmp_path / "r.json", checks=(missing,), device="cpu", quiet=True)
    entry = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["tasks"]["ghost"]
    assert code == 1 and entry["ok"] is False
    assert "no-such-model" in entry["error"] and "no such file" in entry["error"]


def test_report_path_from_the_environment(tmp_path, monkeypatch):
    onnx_check = next(c for c in CHECKS if c.name == "restore-onnx")
    target = tmp_path / "deep" / "env-report.json"
    monkeypatch.setenv("OCULA_SELFTEST_REPORT", str(target))
    assert run_self_test(checks=(onnx_check,), device="cpu", quiet=True) == 0
    assert json.loads(target.read_text(encoding="utf-8"))["tasks"]["restore-onnx"]["ok"]


def test_resources_are_found_in_a_bundle_layout(tmp_path, monkeypatch):
    """Frozen: resources/ sits under sys._MEIPASS, and that one wins."""
    (tmp_path / "resources" / "selftest").mkdir(parents=True)
    monkeypatch.setattr(selftest.sys, "_MEIPASS", str(tmp_path), raising=False)
    assert selftest.selftest_dir() == tmp_path / "resources" / "selftest"


def test_synthetic_image_puts_the_bright_square_on_its_patch():
    rgb = selftest.synthetic_image()
    assert rgb.shape == (selftest.IMAGE_SIZE[1], selftest.IMAGE_SIZE[0], 3)
    row, col = selftest.BRIGHT_CELL
    cw, ch = selftest.CELL_PX
    means = rgb.reshape(rgb.shape[0] // ch, ch, rgb.shape[1] // cw, cw, 3).mean(axis=(1, 3, 4))
    assert np.unravel_index(int(np.argmax(means)), means.shape) == (row, col)
    assert means[row, col] == 255 and np.sort(means.ravel())[-2] < 200


def test_cli_flag_runs_it(tmp_path, monkeypatch):
    """`ocula --self-test` goes through engine.cli to the same function."""
    from engine.cli import main

    onnx_check = next(c for c in CHECKS if c.name == "restore-onnx")
    monkeypatch.setattr(selftest, "CHECKS", (onnx_check,))
    monkeypatch.setenv("OCULA_SELFTEST_REPORT", str(tmp_path / "cli.json"))
    assert main(["--self-test"]) == 0
    assert json.loads(Path(tmp_path / "cli.json").read_text(encoding="utf-8"))["passed"] == 1


def test_offline_mode_ends_with_the_self_test(monkeypatch):
    """The self-test runs offline; huggingface_hub, when first imported inside it, read
    HF_HUB_OFFLINE=1 at import: afterwards the process must be online again (a later
    `ocula models pull` in the same process once failed with "not in the model cache")."""
    import sys

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub_modules = {k: v for k, v in sys.modules.items() if k.startswith("huggingface_hub")}
    for name in hub_modules:  # as in a fresh process: the library is imported during the run
        monkeypatch.delitem(sys.modules, name)
    with selftest._isolated(Path(os.environ["OCULA_HOME"]) / "selftest-offline"):
        from huggingface_hub import constants

        assert constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in os.environ
