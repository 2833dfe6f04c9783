"""Object-store inputs through fsspec URLs (issue 17): a job over `memory://` objects (the
in-memory filesystem fsspec ships; s3://, gs://… go through the same calls) writes what the
same job over the same files in a local folder writes; the URL is each item's identity
(records, resume); a broken object is reported and skipped; an unknown protocol is named.
The model is the self-test's tiny DETR exported to ONNX (resources/selftest/detect-onnx).
"""
from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

fsspec = pytest.importorskip("fsspec")

from engine.catalog.local_import import import_model  # noqa: E402
from engine.jobs import JobSpec, run_job  # noqa: E402
from engine.jobs.job_loop import resume_job  # noqa: E402
from engine.jobs.store import JobStore  # noqa: E402
from engine.media.inputs import expand_inputs  # noqa: E402
from engine.selftest import selftest_dir, synthetic_image  # noqa: E402

FORMATS = ["coco", "csv", "overlay"]


@pytest.fixture
def tree(tmp_path):
    """The same five photos as local files and as memory:// objects, in a nested tree."""
    fs = fsspec.filesystem("memory")
    root = f"/ocula-test-{tmp_path.name}"
    local = tmp_path / "photos"
    rgb = synthetic_image()
    for i, rel in enumerate(("a.png", "b.jpg", "sub/c.png", "sub/deeper/d.jpg", "e.png")):
        img = Image.fromarray(np.roll(rgb, 13 * i, axis=1))
        buf = io.BytesIO()
        img.save(buf, format="PNG" if rel.endswith(".png") else "JPEG", quality=92)
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(buf.getvalue())
        fs.pipe(f"{root}/{rel}", buf.getvalue())
    yield f"memory://{root}", local, fs, root
    fs.rm(root, recursive=True)


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    return import_model(selftest_dir() / "detect-onnx", name="tiny-detr").id


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith((".", "ocula-report"))}


def _without_inputs(name: str, data: bytes) -> object:
    """Outputs that name the input (a path or a URL) compared without that field."""
    if name.endswith(".json"):
        value = json.loads(data)
        if isinstance(value, dict):
            value.pop("input", None)
        return value
    return data


def test_memory_url_job_equals_the_local_folder_job(tree, model, tmp_path):
    url, local, _, _ = tree
    items = list(expand_inputs([url]))
    assert [i.rel for i in items] == ["a.png", "b.jpg", "e.png", "sub/c.png", "sub/deeper/d.jpg"]
    assert all(i.kind == "image" and i.path.startswith("memory://") for i in items)
    runs = {}
    for name, source in (("url", url), ("local", str(local))):
        out = tmp_path / f"out-{name}"
        summary = run_job(JobSpec("detect", model, [source], str(out),
                                  options={"threshold": 0.0, "formats": FORMATS}, device="cpu"))
        assert summary.done == 5 and summary.failed == 0, summary.message
        runs[name] = _outputs(out)
    assert runs["url"].keys() == runs["local"].keys()
    for name in runs["url"]:
        assert _without_inputs(name, runs["url"][name]) == _without_inputs(name, runs["local"][name]), name
    record = json.loads(next(v for k, v in runs["url"].items()
                             if k.startswith("sub/c.") and k.endswith(".json")))
    assert record["input"].startswith("memory://") and record["input"].endswith("/sub/c.png")


def test_a_broken_object_is_reported_and_skipped(tree, model, tmp_path):
    url, _, fs, root = tree
    fs.pipe(f"{root}/broken.png", b"this is not a PNG")
    out = tmp_path / "out"
    summary = run_job(JobSpec("detect", model, [url], str(out), options={"threshold": 0.5},
                              device="cpu"))
    assert summary.done == 5 and summary.failed == 1
    assert summary.failures[0].path.endswith("/broken.png")
    assert "not an image Ocula can read" in summary.failures[0].reason
    report = json.loads((out / "ocula-report.json").read_text())
    assert report["counts"] == {"total": 6, "done": 5, "failed": 1}


def test_resume_processes_only_the_rest(tree, model, tmp_path):
    url, _, _, _ = tree
    store = JobStore(tmp_path / "jobs.sqlite")
    seen, stop = [], threading.Event()

    class StopAfterTwo:
        def raise_if_cancelled(self):
            if stop.is_set():
                from engine.events import Cancelled
                raise Cancelled()

        @property
        def cancelled(self):
            return stop.is_set()

    def on_event(event):
        if event.kind == "item_done":
            seen.append(event)
            if len(seen) >= 2:
                stop.set()

    spec = JobSpec("detect", model, [url], str(tmp_path / "out"), options={"batch_size": 1},
                   device="cpu")
    first = run_job(spec, store=store, on_event=on_event, cancel=StopAfterTwo())
    assert first.cancelled and 2 <= first.done < 5
    done_before = first.done
    again: list = []
    second = resume_job(first.job_id, store=store, on_event=lambda e: again.append(e)
                        if e.kind == "item_done" else None)
    assert second.done == 5 and second.failed == 0
    assert len(again) == 5 - done_before  # nothing done twice


def test_unknown_protocol_and_missing_prefix_are_input_errors():
    items = list(expand_inputs(["s3://ocula-no-bucket/photos/", "memory://nothing/here"]))
    assert [i.kind for i in items] == ["error", "error"]
    assert "s3fs" in items[0].error and "not found" in items[1].error
