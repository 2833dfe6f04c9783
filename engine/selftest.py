"""`ocula --self-test`: run the bundled tiny models through every task, offline.

    code = run_self_test()                      # prints a summary, returns 0 when all passed
    code = run_self_test("report.json")         # also writes the JSON report there

The tiny models live in `resources/selftest/` (made by packaging/make_selftest_models.py),
found next to the source tree or inside a PyInstaller bundle (`sys._MEIPASS`). Each is
imported as a local model and run as a real job (catalog -> runtime -> task handler ->
job store -> output files) on a synthetic image made here, so a frozen build that lost a
module, a data file or a native library fails here instead of on a user's first run.

The run is isolated: HF_HUB_OFFLINE=1 (no network), and OCULA_HOME points at a temporary
folder, so the user's imported models, job history and settings are neither read nor
changed. Two models have a known answer (restore = exact nearest-neighbour 2x upscale;
explain = attention peaks on the bright patch), so those checks test results, not only
that something ran. The report path is the argument, else $OCULA_SELFTEST_REPORT, else a
new file in the temp folder; $OCULA_SELFTEST_DEVICE picks the device (default "auto", so
a CUDA build tests its GPU path).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from engine import __version__

SELFTEST_DIR = "selftest"
IMAGE_SIZE = (128, 96)  # (width, height) of the synthetic image
# The explain ViT sees a 4x4 grid of 8-px patches after resizing to 32x32, so each grid
# cell is 32x24 px of the original; the white square fills cell (row 1, col 2).
BRIGHT_CELL = (1, 2)
CELL_PX = (32, 24)


class CheckFailed(Exception):
    """A task ran but its result is wrong; the message says what was expected."""


@dataclass
class Check:
    """One task run on one bundled model, and how to verify its result."""

    name: str
    task: str
    model_path: str  # relative to resources/selftest
    options: dict[str, Any]
    verify: Callable[[Any, np.ndarray], str]  # (result, input rgb) -> detail; raises CheckFailed
    needs: tuple[str, ...] = ()  # import names the check's runtime needs (absent: Lite, skipped)

    def missing(self) -> list[str]:
        """The modules this check needs that are not installed (found without importing)."""
        import importlib.util

        return [name for name in self.needs if importlib.util.find_spec(name) is None]


@dataclass
class CheckOutcome:
    name: str
    task: str
    ok: bool
    seconds: float
    model: str = ""
    runtime: str = ""
    placement: str = ""  # what really ran it, e.g. "transformers on cpu (fp32)"
    device: str = ""
    precision: str = ""
    detail: str = ""
    error: str = ""
    outputs: list[str] = field(default_factory=list)
    skipped: str = ""  # why the check did not run (a Lite build has no torch)


# -- where the bundled models are ----------------------------------------------------------


def resources_dir() -> Path:
    """resources/ inside a PyInstaller bundle, else next to the engine package."""
    candidates = []
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        candidates.append(Path(bundle) / "resources")
    candidates.append(Path(__file__).resolve().parents[1] / "resources")
    for path in candidates:
        if (path / SELFTEST_DIR).is_dir():
            return path
    from engine.errors import OculaError

    raise OculaError(
        f"The self-test models (resources/{SELFTEST_DIR}) were not found (looked "
        f"in: {', '.join(str(p) for p in candidates)}). Rebuild the bundle with "
        f"packaging/ocula.spec, or run packaging/make_selftest_models.py."
    )


def selftest_dir() -> Path:
    return resources_dir() / SELFTEST_DIR


# -- the synthetic image -----------------------------------------------------------------------


def synthetic_image() -> np.ndarray:
    """(H, W, 3) uint8: dim colour gradients and shapes, one white square on a known cell."""
    width, height = IMAGE_SIZE
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack(
        [40 + 80 * x / width, 30 + 70 * y / height, 90 - 50 * x / width + 30 * np.sin(y / 7.0)],
        axis=-1,
    )
    rgb[60:88, 10:40] = (140, 40, 40)  # a dim red block (something to detect or segment)
    disk = (x - 100) ** 2 + (y - 75) ** 2 < 12**2
    rgb[disk] = (40, 120, 60)
    row, col = BRIGHT_CELL
    cw, ch = CELL_PX
    rgb[row * ch : (row + 1) * ch, col * cw : (col + 1) * cw] = 255
    return np.clip(rgb, 0, 255).astype(np.uint8)


# -- result checks --------------------------------------------------------------------------


def _check_caption(result: Any, rgb: np.ndarray) -> str:
    text = getattr(result, "text", None)
    if not isinstance(text, str):
        raise CheckFailed(f"caption result has no text (got {type(result).__name__}).")
    if tuple(result.image_size) != IMAGE_SIZE:
        raise CheckFailed(f"caption image_size {result.image_size}, expected {IMAGE_SIZE}.")
    return f"{len(result.token_ids)} tokens: {text[:40]!r}"


def _check_detect(result: Any, rgb: np.ndarray) -> str:
    width, height = IMAGE_SIZE
    boxes = list(getattr(result, "boxes", []))
    if not boxes:  # threshold 0 keeps every query: none back means post-processing broke
        raise CheckFailed("no boxes at threshold 0 (the tiny DETR has 12 queries).")
    for box in boxes:
        inside = -1 <= box.x0 <= box.x1 <= width + 1 and -1 <= box.y0 <= box.y1 <= height + 1
        if not inside or not 0.0 <= box.score <= 1.0:
            raise CheckFailed(
                f"box {box} is outside the {width}x{height} image or its score is not in [0, 1]."
            )
    for i, a in enumerate(boxes):  # class-wise NMS at 0.5 ran (torchvision's kernel if loaded)
        for b in boxes[i + 1 :]:
            if a.label == b.label and _iou(a, b) > 0.5 + 1e-6:
                raise CheckFailed(
                    f"boxes {a} and {b} overlap (IoU {_iou(a, b):.2f}) after NMS at 0.5."
                )
    return f"{len(boxes)} boxes after NMS, labels {sorted({b.label for b in boxes})}"


def _iou(a: Any, b: Any) -> float:
    iw = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    ih = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = iw * ih
    union = (a.x1 - a.x0) * (a.y1 - a.y0) + (b.x1 - b.x0) * (b.y1 - b.y0) - inter
    return inter / union if union > 0 else 0.0


def _check_segment(result: Any, rgb: np.ndarray) -> str:
    label_map = getattr(result, "label_map", None)
    if label_map is None:
        raise CheckFailed(f"segmentation ({getattr(result, 'kind', '?')}) has no label map.")
    if label_map.shape != rgb.shape[:2]:
        raise CheckFailed(f"label map is {label_map.shape}, expected {rgb.shape[:2]}.")
    known = set(result.labels) | {-1}
    found = {int(v) for v in np.unique(label_map)}
    if not found <= known:
        raise CheckFailed(f"label map holds ids {sorted(found - known)} that are not labels.")
    return f"{result.kind}, ids {sorted(found)}"


def _check_restore(result: Any, rgb: np.ndarray) -> str:
    expected = np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)
    image = np.asarray(result.image)[..., :3]
    if image.shape != expected.shape:
        raise CheckFailed(f"restored image is {image.shape}, expected {expected.shape} (2x).")
    diff = int(np.abs(image.astype(np.int32) - expected.astype(np.int32)).max())
    if diff > 1:  # the model is an exact nearest-neighbour upscale
        raise CheckFailed(f"restored image differs from the exact 2x upscale by up to {diff}.")
    return f"{image.shape[1]}x{image.shape[0]}, max diff {diff}"


def _check_explain(result: Any, rgb: np.ndarray) -> str:
    grid = np.asarray(result.grid_map)
    heat = np.asarray(result.heatmap)
    if heat.shape != rgb.shape[:2]:
        raise CheckFailed(f"heatmap is {heat.shape}, expected {rgb.shape[:2]}.")
    peak = tuple(int(v) for v in np.unravel_index(int(np.argmax(grid)), grid.shape))
    if peak != BRIGHT_CELL:  # the ViT's CLS attends to the brightest patch by construction
        raise CheckFailed(
            f"attention peaks on patch {peak}, expected the bright patch {BRIGHT_CELL}."
        )
    return f"{result.method}, {grid.shape[0]}x{grid.shape[1]} grid, peak {peak}"


TORCH = ("torch", "transformers")
DETECT_OPTIONS = {"threshold": 0.0, "nms_iou": 0.5, "formats": ["coco", "overlay"]}
CHECKS: tuple[Check, ...] = (
    Check("caption", "caption", "caption", {"max_new_tokens": 8}, _check_caption, TORCH),
    Check("detect", "detect", "detect", DETECT_OPTIONS, _check_detect, TORCH),
    Check("segment", "segment", "segment", {}, _check_segment, TORCH),
    Check("restore", "restore", "restore/compact-2x.safetensors", {}, _check_restore,
          ("torch", "spandrel")),
    Check("explain", "explain", "explain", {"method": "rollout"}, _check_explain, TORCH),
    # the same models exported to ONNX (packaging/make_selftest_models.py): what the Lite
    # build, which has no torch, runs — numpy processors, onnxruntime, tokenizers
    Check("caption-onnx", "caption", "caption-onnx", {"max_new_tokens": 8}, _check_caption),
    Check("detect-onnx", "detect", "detect-onnx", DETECT_OPTIONS, _check_detect),
    Check("segment-onnx", "segment", "segment-onnx", {}, _check_segment),
    Check("restore-onnx", "restore", "restore-onnx/nearest2x.onnx", {}, _check_restore),
    Check("explain-onnx", "explain", "explain-onnx", {"method": "rollout"},
          _check_explain),
)


def build_kind() -> str:
    """"full" when torch and transformers are installed, else "lite"."""
    import importlib.util

    return "full" if all(importlib.util.find_spec(m) is not None for m in TORCH) else "lite"


# -- isolation ---------------------------------------------------------------------------------


@contextmanager
def _isolated(home: Path) -> Iterator[None]:
    """Offline, and Ocula's own data in `home`, for the length of the self-test."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "OCULA_HOME", "HF_HUB_DISABLE_PROGRESS_BARS")
    saved = {n: os.environ.get(n) for n in names}
    # no progress bars: transformers reads this once, at import (the CLI imports it later)
    os.environ.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OCULA_HOME=str(home),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    hub_constants = sys.modules.get("huggingface_hub.constants")
    hub_offline = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    if hub_constants is not None:  # imported earlier in this process: read once at import
        hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        # huggingface_hub reads HF_HUB_OFFLINE once, at import: imported during the self-test,
        # it read "1", so put back what the restored environment says (or the value before)
        constants = sys.modules.get("huggingface_hub.constants")
        if constants is not None:
            constants.HF_HUB_OFFLINE = hub_offline if hub_constants is not None else (
                os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"))


# -- running -------------------------------------------------------------------------------------


def _run_check(
    check: Check,
    image_path: Path,
    rgb: np.ndarray,
    work: Path,
    device: str,
) -> CheckOutcome:
    from engine.catalog.local_import import import_model
    from engine.jobs import JobSpec, run_job

    outcome = CheckOutcome(check.name, check.task, ok=False, seconds=0.0)
    started = time.perf_counter()
    results: list[Any] = []
    failures: list[str] = []
    placements: list[str] = []

    def on_event(event: Any) -> None:
        if event.kind == "item_done":
            results.append(getattr(event.result, "result", event.result))
            # the handler records its runner's Placement.describe(): what really ran it
            info = getattr(event.result, "info", None) or {}
            if info.get("placement"):
                placements.append(str(info["placement"]))
        elif event.kind == "item_failed":
            failures.append(event.message)

    try:
        card = import_model(selftest_dir() / check.model_path, name=f"selftest-{check.name}")
        outcome.model, outcome.runtime = card.id, card.runtime
        spec = JobSpec(
            task=check.task,
            model=card.id,
            inputs=[str(image_path)],
            output_dir=str(work / "out" / check.name),
            options=dict(check.options),
            device=device,
            precision="auto",
        )
        summary = run_job(spec, on_event=on_event)
        if placements:
            outcome.placement = placements[0]
            outcome.device, outcome.precision = _device_and_precision(placements[0])
        outcome.outputs = sorted(
            str(p.relative_to(work))
            for p in Path(spec.output_dir).rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )
        if failures or not summary.ok:
            raise CheckFailed(
                "; ".join(failures) or f"job ended {summary.state}: {summary.message}"
            )
        if len(results) != 1:
            raise CheckFailed(f"expected 1 result, got {len(results)}.")
        outcome.detail = check.verify(results[0], rgb)
        outcome.ok = True
    except Exception as exc:  # noqa: BLE001 — every failure goes in the report, then on
        outcome.error = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, CheckFailed):
            outcome.detail = traceback.format_exc(limit=8)
    outcome.seconds = round(time.perf_counter() - started, 3)
    return outcome


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {"ocula": __version__, "python": platform.python_version()}
    for dist in (
        "torch",
        "torchvision",
        "transformers",
        "tokenizers",
        "safetensors",
        "huggingface-hub",
        "onnxruntime",
        "onnxruntime-gpu",
        "spandrel",
        "av",
        "numpy",
        "pillow",
        "PySide6",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


_PLACEMENT = re.compile(r"^\S+ on (?P<where>\S+) \((?P<precision>\w+)\)")


def _device_and_precision(placement: str) -> tuple[str, str]:
    """("cpu", "fp32") from Placement.describe()'s "transformers on cpu (fp32)"."""
    match = _PLACEMENT.match(placement)
    return (match["where"], match["precision"]) if match else ("", "")


def _import_heavy_libraries() -> tuple[float, str]:
    """Import torch and transformers up front, so per-check times are the checks' own.
    A failure here is recorded and the checks still run (each then says what broke)."""
    started = time.perf_counter()
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        from transformers.models.auto import modeling_auto  # noqa: F401
    except Exception as exc:  # noqa: BLE001 — reported, not raised
        return round(time.perf_counter() - started, 3), f"{type(exc).__name__}: {exc}"
    return round(time.perf_counter() - started, 3), ""


def _write_png(rgb: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="PNG")
    return path


def _default_report_path() -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(tempfile.gettempdir()) / f"ocula-selftest-{stamp}-{os.getpid()}.json"


def run_self_test(
    report_path: str | os.PathLike | None = None,
    *,
    checks: tuple[Check, ...] | None = None,
    device: str | None = None,
    quiet: bool = False,
) -> int:
    """Run every check; write the JSON report; print a summary. 0 only if all passed."""
    total_start = time.perf_counter()
    report_file = Path(
        report_path or os.environ.get("OCULA_SELFTEST_REPORT") or _default_report_path()
    )
    device = device or os.environ.get("OCULA_SELFTEST_DEVICE") or "auto"
    checks = CHECKS if checks is None else checks
    work = Path(tempfile.mkdtemp(prefix="ocula-selftest-"))
    outcomes: list[CheckOutcome] = []
    setup_error = import_error = ""
    import_seconds = 0.0
    try:
        with _isolated(work / "home"):
            rgb = synthetic_image()
            image_path = _write_png(rgb, work / "inputs" / "selftest.png")
            if build_kind() == "full":
                import_seconds, import_error = _import_heavy_libraries()
            for check in checks:
                missing = check.missing()
                if missing:
                    outcomes.append(CheckOutcome(
                        check.name, check.task, ok=False, seconds=0.0,
                        skipped=f"needs {', '.join(missing)} (not in this build)"))
                    continue
                outcomes.append(_run_check(check, image_path, rgb, work, device))
    except Exception as exc:  # noqa: BLE001 — e.g. resources missing: reported, exit 1
        setup_error = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = round(time.perf_counter() - total_start, 3)
    ran = [o for o in outcomes if not o.skipped]
    passed = sum(o.ok for o in ran)
    failed = len(ran) - passed + (1 if setup_error else 0)
    skipped = len(outcomes) - len(ran)
    report = {
        "ok": failed == 0 and passed + skipped == len(checks) and passed > 0,
        "build": build_kind(),
        "passed": passed,
        "failed": failed,
        "skipped": skipped,
        "seconds": seconds,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "frozen": bool(getattr(sys, "frozen", False)),
        "platform": f"{platform.system()} {platform.machine()} ({platform.platform()})",
        "executable": sys.executable,
        "device_requested": device,
        # importing torch + transformers, once, before the first check (a frozen app's
        # slowest step); the per-check seconds below do not include it
        "import_seconds": import_seconds,
        "import_error": import_error,
        "versions": _versions(),
        "error": setup_error,
        "tasks": {o.name: asdict(o) for o in outcomes},
    }
    report_file.parent.mkdir(parents=True, exist_ok=True)
    report_file.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if not quiet:
        print(_summary_text(report, outcomes, report_file))
    return 0 if report["ok"] else 1


def _summary_text(report: dict, outcomes: list[CheckOutcome], report_file: Path) -> str:
    frozen = "frozen" if report["frozen"] else "source"
    header = (
        f"Ocula {report['versions']['ocula']} self-test ({frozen}, {platform.system()} "
        f"{platform.machine()}, {report['build']} build, torch "
        f"{report['versions'].get('torch') or 'not installed'})"
    )
    lines = [header]
    for o in outcomes:
        state = "ok" if o.ok else "skip" if o.skipped else "FAILED"
        text = o.detail if o.ok else o.skipped or o.error
        lines.append(
            f"  {o.name:13} {state:6} {o.seconds:6.2f} s  "
            f"{o.placement or o.runtime or '-':34} {text.splitlines()[0] if text else ''}"
        )
    if report["error"]:
        lines.append(f"  could not start: {report['error']}")
    if report["import_error"]:
        lines.append(f"  importing torch/transformers failed: {report['import_error']}")
    imported = (f"{report['import_seconds']:.1f} s importing torch and transformers"
                if report["build"] == "full" else "Lite build: no torch")
    lines.append(
        f"{report['passed']} passed, {report['failed']} failed, {report['skipped']} skipped in "
        f"{report['seconds']:.1f} s ({imported}). Report: {report_file}"
    )
    return "\n".join(lines)
