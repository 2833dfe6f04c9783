"""Every shell command that README.md and docs/guide.md show, run as written.

Each ```bash block is read line by line (comments dropped) and every `ocula …` line runs
through the real CLI entry point in a folder holding the inputs the docs name (photos/,
photo.jpg, cat.jpg, clip.mp4, and the ONNX files of "Bring your own model", whose TOML
sidecars are taken from the guide itself). Catalog ids resolve through the real catalog to
tiny stand-ins served by the local hub at each entry's pinned revision. A command must
exit 0 and write what the docs say it writes; a command the docs show that this test
cannot run is a failure too, so the docs cannot drift from the CLI.

The README's two set-up commands (install + start, run the tests) are the exception:
CI itself runs the second (`.ci/run`), and the first installs the environment this
test runs in; the test checks they are exactly the two the README shows.
"""
from __future__ import annotations

import io
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.cli import main

ROOT = Path(__file__).resolve().parents[2]
SETUP_COMMANDS = (
    "python3.11 -m venv .venv && .venv/bin/pip install -e '.[cpu]' && .venv/bin/ocula",
    "bash tests/run.sh",
)
TOKEN = "hf_docs_example_token"


def shell_commands(doc: Path) -> list[tuple[int, str]]:
    """(line number, command) for every non-comment line of the doc's ```bash blocks."""
    commands, in_block = [], False
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("```"):
            in_block = stripped in ("```bash", "```sh", "```shell") if not in_block else False
            continue
        if in_block and stripped and not stripped.startswith("#"):
            commands.append((number, stripped))
    return commands


def sidecars(doc: Path) -> dict[str, str]:
    """```toml blocks whose first line is `# NAME.toml`: {NAME.toml: text}."""
    found = {}
    for block in re.findall(r"```toml\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
        first = block.splitlines()[0].strip()
        if first.startswith("# ") and first.endswith(".toml"):
            found[first[2:]] = block
    return found


# -- the folder the docs' commands run in ---------------------------------------------------


def _photos(folder: Path) -> None:
    from skimage import data

    from tests.fixtures.tiny_detectors import draw_rectangles

    folder.mkdir()
    for name in ("astronaut", "coffee"):
        image = Image.fromarray(getattr(data, name)())
        image.thumbnail((160, 160))
        image.save(folder / f"{name}.jpg", quality=92)
    # the YOLO-style example detector finds a white and a red box
    Image.fromarray(draw_rectangles((96, 72), (8, 8, 40, 30), (50, 20, 90, 60))).save(
        folder / "boxes.png")


def _onnx_models(folder: Path, guide: Path) -> None:
    """The models of "Bring your own model", with the guide's own sidecars beside them."""
    from tests.fixtures import byom_models

    for name, text in sidecars(guide).items():
        (folder / name).write_text(text, encoding="utf-8")
    byom_models.detector(folder / "my-detector.onnx")
    byom_models.segmenter(folder / "my-segmenter.onnx", classes=3)
    byom_models.bordered_upscaler(folder / "my-upscaler.onnx", border=3)
    byom_models.vit(folder / "my-vit.onnx")
    byom_models.captioner(folder / "my-captioner")


@pytest.fixture()
def docs_folder(hub, tmp_path, monkeypatch):
    from skimage import data

    from tests.fixtures import catalog_stand_ins
    from tests.fixtures.media import make_video
    from tests.fixtures.tiny_detectors import build_yolos

    from huggingface_hub import constants as hf_constants

    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "ocula-home"))  # imports stay here
    # `ocula models login` stores the token: in this test's folder, not the session's
    # HF_HOME, where every later test would find it.
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "hf-token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-tokens"))
    for card_id in catalog_stand_ins.BUILDERS:
        catalog_stand_ins.publish(hub, card_id, tmp_path / "stand-ins")
    hub.add_repo("hustvl/yolos-tiny", build_yolos(tmp_path / "yolos"),
                 pipeline_tag="object-detection", library_name="transformers",
                 license="apache-2.0")
    hub.add_token(TOKEN)
    work = tmp_path / "work"
    work.mkdir()
    _photos(work / "photos")
    Image.fromarray(data.astronaut()).resize((400, 300)).save(work / "photo.jpg")
    Image.fromarray(data.chelsea()).save(work / "cat.jpg")
    make_video(work / "clip.mp4", seconds=0.6, size=(160, 120), fps=10)
    _onnx_models(work, ROOT / "docs" / "guide.md")
    monkeypatch.chdir(work)
    yield work
    with hub.server._lock:  # the session's hub keeps tokens: this one must not open later tests
        hub.server.tokens.pop(TOKEN, None)


# -- what each documented command must leave behind -------------------------------------------


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def check_outputs(argv: list[str], work: Path) -> list[str]:
    """Problems with the files a `run` / `explain` command documents (empty = fine)."""
    out = _option(argv, "--out")
    if argv[:1] not in (["run"], ["explain"]) or out is None:
        return []
    folder, problems = work / out, []

    def need(pattern: str) -> None:
        if not list(folder.rglob(pattern)):
            problems.append(f"no {pattern} in {out}")

    if argv[0] == "explain":
        need("*.rollout.png" if "rollout" in argv else "*.png")
        need("*.npy")
        return problems
    need("ocula-report.json")
    task = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else None
    formats = (_option(argv, "--formats") or "").split(",")
    if any(a.endswith(".mp4") for a in argv):  # a video: an overlay video + per-frame JSONL
        need("*.mp4")
        need("*.jsonl")
    elif task == "detect":
        need("*.overlay.png")
        if "coco" in formats or not formats[0]:
            need("detections.coco.json")
        if "yolo" in formats:
            need("classes.txt")
    elif task == "caption":
        need("*.txt")
        need("captions.jsonl")
    elif task == "segment":
        need("*.cutout.png" if "birefnet" in " ".join(argv) else "*.labels.png")
    elif task == "restore":
        ext = _option(argv, "--output-format") or "png"
        need(f"*.x2.{ext}")
    if not (folder / "ocula-report.json").is_file():
        return problems
    report = json.loads((folder / "ocula-report.json").read_text())
    if report["counts"]["failed"]:
        problems.append(f"failures in {out}: {report['failures']}")
    if _option(argv, "--save-recipe") and not (work / _option(argv, "--save-recipe")).is_file():
        problems.append("the recipe was not saved")
    return problems


def run_documented(doc: Path, work: Path, monkeypatch, capsys) -> list[str]:
    failures = []
    for number, command in shell_commands(doc):
        if command in SETUP_COMMANDS:
            continue
        argv = shlex.split(command, comments=True)
        where = f"{doc.name}:{number}: {command}"
        if argv[0] != "ocula":
            failures.append(f"{where}\n  not an ocula command; this test cannot run it")
            continue
        monkeypatch.setattr(sys, "stdin", io.StringIO(TOKEN + "\n"))  # `models login`
        code = main(argv[1:])
        captured = capsys.readouterr()
        if code != 0:
            failures.append(f"{where}\n  exit {code}: {captured.err.strip()[-600:]}")
            continue
        failures += [f"{where}\n  {p}" for p in check_outputs(argv[1:], work)]
    return failures


@pytest.mark.slow
@pytest.mark.parametrize("doc", ["README.md", "docs/guide.md"])
def test_every_documented_command_runs(doc, docs_folder, monkeypatch, capsys):
    failures = run_documented(ROOT / doc, docs_folder, monkeypatch, capsys)
    assert not failures, "\n".join(failures)


def test_readme_has_exactly_the_two_setup_commands():
    commands = [c for _, c in shell_commands(ROOT / "README.md") if not c.startswith("ocula ")]
    assert commands == list(SETUP_COMMANDS)
    assert "bash tests/run.sh" in (ROOT / ".ci" / "run").read_text()


def test_guide_has_a_tested_sidecar_per_task():
    tasks = {}
    import tomllib

    for name, text in sidecars(ROOT / "docs" / "guide.md").items():
        tasks[tomllib.loads(text)["task"]] = name
    assert {"detect", "segment", "restore", "features"} <= set(tasks)
    assert "border" in (ROOT / "docs" / "guide.md").read_text()


def test_the_docs_runner_catches_a_broken_command(docs_folder, tmp_path, monkeypatch, capsys):
    """The runner fails on a command that errors, on one it cannot run, and on missing
    outputs: it is not a test that always passes."""
    doc = tmp_path / "bad.md"
    doc.write_text("```bash\nocula run detect photos/ --model no-such-model --out x/\n"
                   "cp a b\nocula models list\n```\n")
    failures = run_documented(doc, docs_folder, monkeypatch, capsys)
    assert len(failures) == 2
    assert "exit 2" in failures[0] and "not an ocula command" in failures[1]
    assert check_outputs(["run", "caption", "photos/", "--out", "nothing/"], docs_folder)
