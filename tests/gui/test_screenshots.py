"""Screenshots of every main view on a real X server (Xvfb), saved to tests/artifacts/.

Three sizes, each in its own process (the scale factor is read once, at start): a
1600x1000 window, 1024x700, and 2x scale (QT_SCALE_FACTOR=2: the 1600x1000 screen is
800x500 logical pixels). At each, every main view (each task with a result, catalog,
jobs dock, settings) is saved as `<view>_<size>.png`, and the window's geometry is
checked: no toolbar action clipped or pushed into the toolbar's overflow, no dock over
the central widget.

Set-up (Debian): `apt-get install -y xvfb libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1`
(the last three are what Qt's xcb plugin loads besides the basics). Without them the
test skips and says which one is missing.
"""
from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
VIEWS = {  # file -> minimum (width, height)
    "main_empty_results.png": (1200, 800),
    "main_explain.png": (1200, 800),
    "main_explain_dark.png": (1200, 800),
    "main_detect.png": (1200, 800),
    "catalog.png": (1000, 600),
    "settings.png": (400, 300),
    "welcome.png": (400, 200),
    "error_dialog.png": (300, 150),
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def x_display():
    """A private Xvfb server (24-bit, 1600x1000) on a free display number."""
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed: apt-get install -y xvfb")
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([exe, "-displayfd", str(write_end), "-screen", "0", "1600x1000x24",
                             "-nolisten", "tcp"], pass_fds=(write_end,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_end)
    reply = b""
    try:
        while not reply.endswith(b"\n"):  # Xvfb writes "N\n" once it accepts clients
            ready, _, _ = select.select([read_end], [], [], 20)
            chunk = os.read(read_end, 32) if ready else b""
            if not chunk:
                proc.kill()
                pytest.fail(f"Xvfb did not report a display (exit code {proc.poll()})")
            reply += chunk
    finally:
        os.close(read_end)
    number = reply.decode().strip()
    yield f":{number}"
    proc.terminate()
    proc.wait(10)


SIZES = {  # tag -> (window size in device pixels, extra environment)
    "1600x1000": ("1600x1000", {}),
    "1024x700": ("1024x700", {}),
    "2x": ("1600x1000", {"QT_SCALE_FACTOR": "2"}),
}
# At 2x the 1600x1000 screen is 800x500 logical pixels: the main toolbar still pushes
# Cancel/Models/Settings, and the viewer bar Compare/Heatmap/Opacity, into the overflow.
# Strict: the day they fit, this marker must go.
NOT_YET: dict[str, str] = {}  # sizes whose layout is known to be broken (none now)
TASK_VIEWS = ("main_detect", "main_caption", "main_segment", "main_restore", "main_explain",
              "catalog", "jobs_dock", "settings")


@pytest.mark.parametrize("tag", [pytest.param(t, marks=pytest.mark.xfail(
    reason=NOT_YET[t], strict=True)) if t in NOT_YET else t for t in SIZES])
def test_each_view_at_each_size_is_unclipped(x_display, tag):
    import json

    size, extra = SIZES[tag]
    env = dict(os.environ, DISPLAY=x_display, QT_QPA_PLATFORM="xcb", **extra)
    done = subprocess.run([sys.executable, "-m", "tests.gui.shots", str(ARTIFACTS), size, tag],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    if done.returncode != 0 and "could not load the Qt platform plugin" in log.lower():
        pytest.skip("Qt's xcb plugin cannot load here")
    assert done.returncode == 0, log[-4000:]
    for view in TASK_VIEWS:
        path = ARTIFACTS / f"{view}_{tag}.png"
        assert path.is_file(), f"{path.name} was not written:\n{log[-2000:]}"
        pixels = np.asarray(Image.open(path).convert("RGB"), np.float32)
        assert pixels.std() > 10, f"{path.name} looks blank"
    layout = json.loads((ARTIFACTS / f"layout_{tag}.json").read_text())
    assert set(layout) >= {"main_detect", "main_caption", "main_segment", "main_restore",
                           "main_explain", "jobs_dock"}
    assert {view: problems for view, problems in layout.items() if problems} == {}
    main = np.asarray(Image.open(ARTIFACTS / f"main_detect_{tag}.png"))
    want_w = int(size.split("x")[0])
    assert abs(main.shape[1] - want_w) <= 2, (main.shape, size)  # device pixels


def test_screenshots_of_each_main_view(x_display):
    env = dict(os.environ, DISPLAY=x_display, QT_QPA_PLATFORM="xcb")
    done = subprocess.run([sys.executable, "-m", "tests.gui.shots", str(ARTIFACTS)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    if done.returncode != 0 and "could not load the Qt platform plugin" in log.lower():
        missing = [line for line in log.splitlines() if "needed" in line or "xcb" in line]
        pytest.skip("Qt's xcb plugin cannot load here: " + " / ".join(missing[:3]))
    assert done.returncode == 0, log[-4000:]
    for name, (min_w, min_h) in VIEWS.items():
        path = ARTIFACTS / name
        assert path.is_file(), f"{name} was not written:\n{log[-2000:]}"
        pixels = np.asarray(Image.open(path).convert("RGB"), np.float32)
        height, width = pixels.shape[:2]
        assert width >= min_w and height >= min_h, (name, width, height)
        assert pixels.std() > 10, f"{name} looks blank"
    # the explain screenshot really has the heatmap drawn over the photo
    before = np.asarray(Image.open(ARTIFACTS / "main_empty_results.png").convert("RGB"), np.int16)
    after = np.asarray(Image.open(ARTIFACTS / "main_explain.png").convert("RGB"), np.int16)
    h, w = min(before.shape[0], after.shape[0]), min(before.shape[1], after.shape[1])
    centre = (slice(h // 4, h // 2), slice(w // 4, w // 2))
    assert np.abs(after[centre] - before[centre]).mean() > 10
    dark = np.asarray(Image.open(ARTIFACTS / "main_explain_dark.png").convert("L"))
    light = np.asarray(Image.open(ARTIFACTS / "main_explain.png").convert("L"))
    assert dark[-40:, :].mean() < light[-40:, :].mean() - 40  # the dark theme is dark
