"""Issue 16 through the command line: 16-bit images keep their depth through a real restore
job, every output of a job gets the umask's mode, and a bad pixel limit (flag or setting)
is a usage error before any work."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")
spandrel = pytest.importorskip("spandrel")


@pytest.fixture()
def checkpoint(tmp_path):
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    path = tmp_path / "compact-x2.safetensors"
    save_file(Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).state_dict(),
              str(path))
    return path


@pytest.fixture()
def upscaler(checkpoint, capsys):
    """A spandrel Compact ×2 checkpoint, imported: a real restoration model in one second."""
    assert main(["models", "import", str(checkpoint), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["id"]


def _expected(checkpoint: Path, rgb16: np.ndarray) -> np.ndarray:
    """The model run directly in float32 on the 16-bit values: what restore must give."""
    model = spandrel.ModelLoader().load_from_file(str(checkpoint)).model.eval()
    x = torch.from_numpy(rgb16.astype(np.float32) / 65535.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        y = model(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    return np.round(y * 65535.0)


def test_16bit_rgb_and_gray_pngs_keep_their_depth_through_restore(upscaler, checkpoint,
                                                                 tmp_path, capsys):
    rng = np.random.default_rng(3)
    photos = tmp_path / "photos"
    photos.mkdir()
    rgb = rng.integers(0, 65536, (20, 24, 3), dtype=np.uint16)
    gray = rng.integers(0, 65536, (18, 22), dtype=np.uint16)
    cv2.imwrite(str(photos / "colour.png"), rgb[..., ::-1])
    cv2.imwrite(str(photos / "gray.png"), gray)
    out = tmp_path / "out"
    code = main(["restore", "--model", upscaler, str(photos), "--out", str(out), "--json",
                 "--device", "cpu"])
    assert code == 0, capsys.readouterr()
    capsys.readouterr()
    for name, source in (("colour", rgb), ("gray", np.repeat(gray[..., None], 3, axis=2))):
        written = cv2.imread(str(out / f"{name}.x2.png"), cv2.IMREAD_UNCHANGED)
        assert written is not None and written.dtype == np.uint16, name
        assert written.shape == (source.shape[0] * 2, source.shape[1] * 2, 3), name
        diff = np.abs(written[..., ::-1].astype(np.float64) - _expected(checkpoint, source))
        # float32 arithmetic and rounding: a few 16-bit levels, never the 257 of 8 bits
        assert diff.max() <= 16, (name, diff.max())
        assert len(np.unique(written % 257)) > 1  # not 8-bit values stretched to 16 bits


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _job_modes(upscaler, tmp_path, mask) -> dict[str, str]:
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (16, 12), (10, 200, 30)).save(photos / "a.png")
    out = tmp_path / "out"
    old = os.umask(mask)
    try:
        code = main(["restore", "--model", upscaler, str(photos), "--out", str(out), "--json",
                     "--device", "cpu"])
    finally:
        os.umask(old)
    assert code == 0
    files = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert files
    return {p.relative_to(out).as_posix(): oct(_mode(p)) for p in files}


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_every_output_of_a_job_gets_the_umask_mode(upscaler, tmp_path, capsys, mask):
    modes = {k: v for k, v in _job_modes(upscaler, tmp_path, mask).items()
             if not k.startswith("ocula-report.")}
    assert {"a.x2.png", "a.restore.json"} <= set(modes)
    assert modes == {name: oct(0o666 & ~mask) for name in modes}


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_the_job_report_gets_the_umask_mode(upscaler, tmp_path, capsys, mask):
    modes = {k: v for k, v in _job_modes(upscaler, tmp_path, mask).items()
             if k.startswith("ocula-report.")}
    assert set(modes) == {"ocula-report.json", "ocula-report.html"}
    assert modes == {name: oct(0o666 & ~mask) for name in modes}


def test_negative_pixel_limit_flag_is_a_usage_error_before_any_work(upscaler, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    for value in ("-1", "0"):
        code = main(["detect", "--model", upscaler, str(tmp_path / "a.png"), "--out", str(out),
                     "--pixel-limit", value])
        assert code == 2
        assert "pixel_limit" in capsys.readouterr().err
        assert not out.exists()


def test_negative_pixel_limit_setting_stops_the_run_naming_the_setting(upscaler, tmp_path,
                                                                       capsys):
    from PIL import Image

    from engine import paths

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    paths.settings_file().write_text("pixel_limit = -1\n", encoding="utf-8")
    try:
        code = main(["restore", "--model", upscaler, str(tmp_path / "a.png"), "--out", str(out)])
        err = capsys.readouterr().err
        assert code != 0
        assert "pixel_limit" in err and str(paths.settings_file()) in err
        assert not out.exists() or not any(out.rglob("*.png"))
    finally:
        paths.settings_file().unlink()
