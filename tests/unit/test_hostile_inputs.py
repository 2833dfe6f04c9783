"""Issue 16, "nothing lost, nothing read that should not be": hostile sidecars and catalog
entries, absurd sidecar values, 16-bit colour images, output file modes under any umask,
and errors that say what really went wrong (permission, symlink loop, a bad setting)."""
from __future__ import annotations

import json
import os
import stat
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from engine.catalog.entries import card_from_entry
from engine.catalog.local_import import import_model, index_path, list_imports
from engine.errors import CatalogError, InputError, OculaError, UsageError
from engine.media.image import atomic_write_bytes, read_image, write_image
from engine.media.inputs import expand_inputs
from engine.settings import Settings
from tests.fixtures.unprivileged import as_unprivileged as _as_unprivileged

cv2 = pytest.importorskip("cv2")


@pytest.fixture(autouse=True)
def app_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own Ocula home, hence its own import index and settings."""
    home = tmp_path / "ocula-home"
    monkeypatch.setenv("OCULA_HOME", str(home))
    return home


# -- tiny ONNX graphs ------------------------------------------------------------------------

def _yolo_onnx(path: Path, classes: int, *, dynamic: bool = False) -> Path:
    torch = pytest.importorskip("torch")

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4 + classes, 4, stride=4)

        def forward(self, x):
            return self.conv(x).flatten(2)

    torch.manual_seed(0)
    axes = {"images": {0: "batch", 2: "height", 3: "width"}} if dynamic else None
    torch.onnx.export(Head().eval(), (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False,
                      input_names=["images"], output_names=["output"], dynamic_axes=axes)
    return path


YOLO_SIDECAR = 'task = "detect"\noutput = "yolov8"\nmean = [0, 0, 0]\nstd = [1, 1, 1]\n'


# -- 1. a sidecar or catalog entry names only files inside its own folder ----------------------

@pytest.fixture()
def secret(tmp_path: Path) -> Path:
    """A file outside the model's folder, three lines long like the model's class list."""
    path = tmp_path / "private" / "secret.txt"
    path.parent.mkdir()
    path.write_text("alice:hunter2\nbob:swordfish\ncarol:letmein\n", encoding="utf-8")
    return path


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "yolo"
    folder.mkdir(parents=True)
    _yolo_onnx(folder / "yolo.onnx", classes=3)
    return folder


def _assert_refused(model_dir: Path, secret: Path, field: str) -> None:
    with pytest.raises(CatalogError) as err:
        import_model(model_dir / "yolo.onnx")
    message = str(err.value)
    assert f"field '{field}'" in message and "yolo.toml" in message
    assert str(model_dir.resolve()) in message or "model's folder" in message
    assert list_imports() == []
    if index_path().exists():
        assert "hunter2" not in index_path().read_text(encoding="utf-8")


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_labels_file_outside_the_model_folder_is_refused(model_dir, secret, how):
    rel = os.path.relpath(secret, model_dir) if how == "dotdot" else str(secret)
    (model_dir / "yolo.toml").write_text(YOLO_SIDECAR + f"labels_file = {json.dumps(rel)}\n",
                                         encoding="utf-8")
    _assert_refused(model_dir, secret, "labels_file")


def test_labels_file_symlink_pointing_out_is_refused(model_dir, secret):
    (model_dir / "classes.txt").symlink_to(secret)
    (model_dir / "yolo.toml").write_text(YOLO_SIDECAR + 'labels_file = "classes.txt"\n',
                                         encoding="utf-8")
    _assert_refused(model_dir, secret, "labels_file")


def test_labels_file_inside_the_folder_still_works(model_dir):
    (model_dir / "lists").mkdir()
    (model_dir / "lists" / "classes.txt").write_text("cat\ndog\nbird\n", encoding="utf-8")
    (model_dir / "yolo.toml").write_text(YOLO_SIDECAR + 'labels_file = "lists/classes.txt"\n',
                                         encoding="utf-8")
    assert import_model(model_dir / "yolo.onnx").sidecar["labels"] == ["cat", "dog", "bird"]


@pytest.mark.parametrize("line, field", [
    ('preprocessor = "/etc/passwd"\nlabels = ["a", "b", "c"]\n', "preprocessor"),
    ('preprocessor = "../../x.json"\nlabels = ["a", "b", "c"]\n', "preprocessor"),
    ('graphs = { model = "../other/yolo.onnx" }\nlabels = ["a", "b", "c"]\n', "graphs.model"),
])
def test_sidecar_graph_and_preprocessor_paths_are_confined(model_dir, secret, line, field):
    (model_dir / "yolo.toml").write_text(YOLO_SIDECAR + line, encoding="utf-8")
    _assert_refused(model_dir, secret, field)


def _onnx_entry(**sidecar) -> dict:
    return {"id": "evil", "name": "Evil", "tasks": ["detect"], "runtime": "onnx",
            "repo": "org/evil", "revision": "0" * 40, "files": ["model.onnx"],
            "license": "mit", "attention": "none", "memory_mb": {"fp32": 10}, "seed": "",
            "description": "",
            "sidecar": {"output": "yolov8", "labels": ["a"], **sidecar}}


@pytest.mark.parametrize("sidecar, field", [
    ({"graphs": {"model": "../../../../tmp/x.onnx"}}, "graphs.model"),
    ({"graphs": {"model": "/tmp/x.onnx"}}, "graphs.model"),
    ({"graphs": {"model": "C:\\x.onnx"}}, "graphs.model"),
    ({"graphs": {"model": "model.onnx"}, "preprocessor": "../../../etc/passwd"}, "preprocessor"),
])
def test_catalog_entry_paths_are_confined(sidecar, field):
    entry = _onnx_entry(**sidecar)
    entry["files"] = [*entry["files"], *sidecar["graphs"].values()]
    with pytest.raises(CatalogError, match=f"field '{field}'") as err:
        card_from_entry(entry, origin="catalog.toml", index=0)
    assert "model's folder" in str(err.value)


def test_runtime_refuses_a_card_whose_graph_leaves_the_snapshot(tmp_path):
    import dataclasses

    from engine.runtimes.onnx_backend import select_graphs

    card = card_from_entry(_onnx_entry(graphs={"model": "model.onnx"}), origin="c", index=0)
    card = dataclasses.replace(card, sidecar={**card.sidecar, "graphs": {"model": "../x.onnx"}})
    (tmp_path / "snap").mkdir()
    (tmp_path / "x.onnx").write_bytes(b"")
    with pytest.raises(CatalogError, match="graphs.model"):
        select_graphs(card, tmp_path / "snap", "fp32")


# -- 2. absurd sidecar values are refused at import, naming key, file and limit -----------------

@pytest.mark.parametrize("line, field, limit", [
    ("input_size = [100000, 100000]\n", "input_size", "16,384"),
    ("input_size = [16384, 16384]\n", "input_size", "67,108,864"),
    ("input_size = [0, 640]\n", "input_size", "[width, height]"),
    ("mean = [nan, 0, 0]\n", "mean", "finite"),
    ("std = [inf, 1, 1]\n", "std", "finite"),
    ("mean = [1e30, 0, 0]\n", "mean", "10000"),
    ('labels = [""]\n', "labels", "1 to 256 characters"),
])
def test_absurd_sidecar_values_are_refused(tmp_path, line, field, limit):
    path = _yolo_onnx(tmp_path / "yolo.onnx", classes=1, dynamic=True)
    base = YOLO_SIDECAR if "mean" not in line and "std" not in line else (
        'task = "detect"\noutput = "yolov8"\n')
    labels = "" if "labels" in line else 'labels = ["a"]\n'
    path.with_suffix(".toml").write_text(base + labels + line, encoding="utf-8")
    with pytest.raises(CatalogError) as err:
        import_model(path)
    message = str(err.value)
    assert f"field '{field}'" in message and str(path.with_suffix(".toml")) in message
    assert limit in message
    assert list_imports() == []


def test_too_many_labels_are_refused(tmp_path):
    path = _yolo_onnx(tmp_path / "yolo.onnx", classes=1, dynamic=True)
    (tmp_path / "classes.txt").write_text("\n".join(f"c{i}" for i in range(100_001)))
    path.with_suffix(".toml").write_text(YOLO_SIDECAR + 'labels_file = "classes.txt"\n')
    with pytest.raises(CatalogError, match="field 'labels' names 100,001 classes; the limit is 100,000"):
        import_model(path)


# -- 3. 16-bit colour is read at 16 bits -------------------------------------------------------

def _u16(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, (h, w, c), dtype=np.uint16)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_rgb_and_rgba_are_read_at_full_depth(tmp_path, suffix):
    bgr = _u16(12, 10, 3)
    cv2.imwrite(str(tmp_path / f"rgb{suffix}"), bgr)
    image = read_image(tmp_path / f"rgb{suffix}")
    assert image.bit_depth == 16 and image.array.dtype == np.uint16
    np.testing.assert_array_equal(image.array, bgr[..., ::-1])
    assert image.rgb.mode == "RGB" and image.size == (10, 12)

    bgra = _u16(12, 10, 4, seed=1)
    cv2.imwrite(str(tmp_path / f"rgba{suffix}"), bgra)
    image = read_image(tmp_path / f"rgba{suffix}")
    np.testing.assert_array_equal(image.array, bgra[..., 2::-1])
    assert image.alpha is not None and image.alpha.dtype == np.uint16
    np.testing.assert_array_equal(image.alpha, bgra[..., 3])

    out = write_image(tmp_path / f"again{suffix}", image.array, alpha=image.alpha)
    np.testing.assert_array_equal(cv2.imread(str(out), cv2.IMREAD_UNCHANGED), bgra)


def test_16bit_rgb_png_keeps_its_exif_orientation(tmp_path):
    from PIL import Image, ImageOps

    bgr = _u16(6, 9, 3)
    plain = tmp_path / "plain.png"
    cv2.imwrite(str(plain), bgr)
    # the same 16-bit pixels with an EXIF "rotate 90° clockwise" (6): add an eXIf chunk
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = plain.read_bytes()
    payload = exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif\x00\x00") else exif.tobytes()
    import struct
    import zlib

    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + payload) & 0xFFFFFFFF)
    rotated = tmp_path / "rotated.png"
    rotated.write_bytes(raw[:33] + chunk + raw[33:])  # after the signature and IHDR
    image = read_image(rotated)
    assert image.exif_transposed and image.array.dtype == np.uint16
    np.testing.assert_array_equal(image.array, np.rot90(bgr[..., ::-1], -1))
    eight = np.asarray(ImageOps.exif_transpose(Image.open(rotated)))
    assert eight.shape == image.array.shape  # the same turn Pillow makes for 8-bit reads


# -- 4. outputs get the mode any new file gets: 0666 & ~umask ----------------------------------

@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_writer_gives_the_umask_mode(tmp_path, umask):
    from engine.exporters.captions import JsonlWriter
    from engine.exporters.detections import write_coco
    from engine.results import Box, Detections

    expected = 0o666 & ~umask
    reference = tmp_path / "reference"
    reference.write_text("x")
    assert _mode(reference) == expected

    written = [
        atomic_write_bytes(tmp_path / "a.json", b"{}") or tmp_path / "a.json",
        write_image(tmp_path / "b.png", np.zeros((4, 4, 3), np.uint8)),
        write_image(tmp_path / "c.png", np.zeros((4, 4, 3), np.uint16)),  # the 16-bit path
        write_image(tmp_path / "d.png", np.zeros((4, 4, 1), np.uint16)),
        write_image(tmp_path / "e.jpg", np.zeros((4, 4, 3), np.uint8)),
    ]
    jsonl = JsonlWriter(tmp_path / "captions.jsonl")
    jsonl.write({"a": 1})
    written.append(jsonl.close())
    det = Detections(boxes=[Box(0, 0, 2, 2, "cat", 0.9, 0)], image_size=(4, 4))
    write_coco(tmp_path / "coco.json", [det], ["b.png"])
    written.append(tmp_path / "coco.json")
    Settings().save(tmp_path / "settings.toml")
    written.append(tmp_path / "settings.toml")
    modes = {p.name: oct(_mode(p)) for p in written}
    assert modes == {p.name: oct(expected) for p in written}


def test_video_segments_get_the_umask_mode(tmp_path, umask):
    from engine.media.video import EncodeSettings, SegmentWriter, video_encoders

    encoders = video_encoders()
    codec = next((c for c in ("h264", "vp9", "ffv1") if c in encoders), None)
    if codec is None:
        pytest.skip("no video encoder in this FFmpeg build")
    writer = SegmentWriter(tmp_path / "seg.mp4", EncodeSettings(
        codec, encoders[codec], 16, 16, Fraction(1, 25), Fraction(25)))
    for i in range(2):
        writer.write(np.zeros((16, 16, 3), np.uint8), i)
    writer.close()
    assert _mode(tmp_path / "seg.mp4") == 0o666 & ~umask


def test_temp_folders_get_the_umask_mode(tmp_path, umask):
    from engine.paths import make_temp_dir

    assert _mode(Path(make_temp_dir(tmp_path, prefix=".x.", suffix=".part"))) == 0o777 & ~umask


# -- 5. errors say what really went wrong ------------------------------------------------------

def test_unreadable_image_says_permission_denied():
    if not hasattr(os, "geteuid"):
        pytest.skip("POSIX permissions")
    folder = Path(tempfile.mkdtemp(prefix="ocula-perm-"))  # tmp_path sits under a 0700 folder
    try:
        folder.chmod(0o777)
        path = folder / "locked.png"
        write_image(path, np.zeros((4, 4, 3), np.uint8))
        path.chmod(0o000)
        with pytest.raises(InputError) as err:
            _as_unprivileged(lambda: read_image(path))
        assert "permission denied" in str(err.value) and "corrupt" not in str(err.value)
    finally:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


def test_symlink_loop_and_dangling_link_are_named(tmp_path):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop.name)
    with pytest.raises(InputError, match="symbolic link loop"):
        read_image(loop)
    dangling = tmp_path / "gone.png"
    dangling.symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(InputError, match="symbolic link to .*nowhere.png, which does not exist"):
        read_image(dangling)
    items = {Path(i.path).name: i for i in expand_inputs([str(loop), str(dangling)])}
    assert items["loop.png"].kind == "error" and "symbolic link loop" in items["loop.png"].error
    assert "nowhere.png" in items["gone.png"].error

    from engine.media.video import probe

    clip = tmp_path / "clip.mp4"
    clip.symlink_to(clip.name)
    with pytest.raises(InputError, match="symbolic link loop"):
        probe(clip)


def test_pixel_limit_setting_is_validated(tmp_path):
    with pytest.raises(UsageError, match="'pixel_limit' is -1; expected a whole number from 1"):
        Settings(pixel_limit=-1)
    with pytest.raises(UsageError, match="'pixel_limit'"):
        Settings(pixel_limit="lots")  # type: ignore[arg-type]
    settings = Settings()
    settings.pixel_limit = 0  # what `ocula settings set pixel_limit 0` does
    with pytest.raises(UsageError, match="not saved: 'pixel_limit' is 0"):
        settings.save(tmp_path / "s.toml")
    assert not (tmp_path / "s.toml").exists()
    (tmp_path / "s.toml").write_text("pixel_limit = -1\n")
    with pytest.raises(OculaError) as err:
        Settings.load(tmp_path / "s.toml")
    assert str(tmp_path / "s.toml") in str(err.value) and "'pixel_limit' is -1" in str(err.value)
