"""Importing models from disk: real folders, checkpoints and ONNX files built here."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from engine.catalog.card import AttentionSupport, Source
from engine.catalog.catalog import load_catalog
from engine.catalog.entries import memory_rule_mb
from engine.catalog.local_import import import_model, index_path, list_imports, remove_import
from engine.errors import (
    CatalogError,
    UnknownModelError,
    UnsafeCheckpointError,
    UnsupportedModelError,
)

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def app_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own Ocula home, hence its own import index."""
    home = tmp_path / "ocula-home"
    monkeypatch.setenv("OCULA_HOME", str(home))
    return home


def test_catalog_modules_import_no_heavy_library() -> None:
    code = ("import sys, engine.catalog.catalog, engine.catalog.local_import, engine.catalog.hub_infer, "
            "engine.catalog.search\n"
            "heavy = [m for m in ('torch', 'transformers', 'spandrel', 'onnx', 'huggingface_hub', "
            "'onnxruntime') if m in sys.modules]\nprint(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- (b) restoration checkpoints through spandrel ------------------------------------------------

def tiny_compact(scale: int = 2):
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    return Compact(num_feat=8, num_conv=2, upscale=scale)


def tiny_rrdb(scale: int = 4):
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    return ESRGAN(num_filters=8, num_blocks=1, scale=scale)


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_compact_checkpoint_is_detected_by_spandrel(tmp_path: Path, suffix: str) -> None:
    from safetensors.torch import save_file

    model = tiny_compact(scale=2)
    path = tmp_path / f"my-upscaler{suffix}"
    if suffix == ".safetensors":
        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    card = import_model(path)
    assert card.id == "local:my-upscaler" and card.source is Source.LOCAL
    assert (card.tasks, card.runtime, card.architecture) == (("restore",), "spandrel", "Compact")
    assert card.local_path == str(path.resolve())
    assert card.sidecar["scale"] == 2 and card.sidecar["input_channels"] == 3
    assert card.params == n_params(model)
    assert card.memory_mb["fp32"] == memory_rule_mb(n_params(model), "fp32")
    assert card.attention is AttentionSupport.GRADCAM


def test_rrdbnet_checkpoint_records_scale_and_architecture(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = tiny_rrdb(scale=4)
    path = tmp_path / "RealESRGAN_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    card = import_model(path, name="Tiny ESRGAN")
    assert card.id == "local:tiny-esrgan" and card.name == "Tiny ESRGAN"
    assert card.architecture == "ESRGAN" and card.sidecar["scale"] == 4
    assert card.params == n_params(model)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with path.open("wb") as fh:
        torch.save({"params_ema": _Exploit(marker)}, fh, pickle_module=pickle)
    with pytest.raises(UnsafeCheckpointError, match="evil.pth holds more than weights"):
        import_model(path)
    assert not marker.exists()
    assert not index_path().exists() or "evil" not in index_path().read_text()


def test_unrecognised_or_broken_checkpoints_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    unknown = tmp_path / "mystery.safetensors"
    save_file({"encoder.foo.weight": torch.zeros(3, 3)}, str(unknown))
    with pytest.raises(UnsupportedModelError, match="does not recognise its architecture"):
        import_model(unknown)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(CatalogError, match="garbage.safetensors is not a valid safetensors file"):
        import_model(garbage)
    with pytest.raises(UnsupportedModelError, match="as task 'detect'"):
        import_model(unknown, task="detect")
    with pytest.raises(CatalogError, match="no such file"):
        import_model(tmp_path / "missing.pth")


# -- (a) hub-layout folders ------------------------------------------------------------------------

@pytest.mark.slow
def test_hub_layout_folder_infers_task_from_its_architecture(tmp_path: Path) -> None:
    from transformers import ViTForImageClassification

    from tests.fixtures.repos import tiny_vit_classifier

    folder = tiny_vit_classifier(tmp_path / "tiny-vit")
    card = import_model(folder)
    assert card.id == "local:tiny-vit"
    assert (card.tasks, card.runtime) == (("features",), "transformers")
    assert card.architecture == "ViTForImageClassification"
    assert card.params == ViTForImageClassification.from_pretrained(folder).num_parameters()
    assert card.attention is AttentionSupport.FULL and card.files == ()
    with pytest.raises(CatalogError, match="as task 'detect': its architecture ViTForImageClassification"):
        import_model(folder, task="detect")


def test_folders_that_cannot_run_are_refused_with_the_reason(tmp_path: Path) -> None:
    from tests.fixtures.repos import write_files

    onnx_only = write_files(tmp_path / "js", {"onnx/model.onnx": b"x"})
    with pytest.raises(UnsupportedModelError, match="no config.json.*import that file with a .toml sidecar"):
        import_model(onnx_only)
    remote = write_files(tmp_path / "remote", {
        "config.json": '{"architectures": ["BiRefNet"], "auto_map": {"AutoConfig": "c.C"}}',
        "model.safetensors": b""})
    with pytest.raises(UnsupportedModelError, match="needs trust_remote_code"):
        import_model(remote)
    tf_only = write_files(tmp_path / "tf", {"config.json": '{"architectures": ["ViTModel"]}',
                                            "tf_model.h5": b"x"})
    with pytest.raises(UnsupportedModelError, match=r"found only tf_model.h5"):
        import_model(tf_only)
    bad_json = write_files(tmp_path / "bad", {"config.json": "{nope", "model.safetensors": b""})
    with pytest.raises(CatalogError, match="config.json is not valid JSON"):
        import_model(bad_json)


# -- (c) ONNX with a sidecar --------------------------------------------------------------------

class _Upscaler(torch.nn.Module):
    def __init__(self, scale: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3 * scale * scale, 3, padding=1)
        self.shuffle = torch.nn.PixelShuffle(scale)

    def forward(self, x):
        return self.shuffle(self.conv(x))


class _YoloHead(torch.nn.Module):
    """[B,3,16,16] -> [B, 4 + classes, 16] like a YOLOv8 export."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4 + classes, 4, stride=4)

    def forward(self, x):
        return self.conv(x).flatten(2)


def export(module, path: Path, *, dynamic: bool = False) -> Path:
    torch.manual_seed(0)
    axes = {"images": {0: "batch", 2: "height", 3: "width"}} if dynamic else None
    torch.onnx.export(module.eval(), (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False,
                      input_names=["images"], output_names=["output"], dynamic_axes=axes)
    return path


def sidecar(path: Path, text: str) -> None:
    path.with_suffix(".toml").write_text(text, encoding="utf-8")


def test_onnx_upscaler_with_sidecar_is_checked_against_its_graph(tmp_path: Path) -> None:
    module = _Upscaler(scale=2)
    path = export(module, tmp_path / "sr2.onnx")
    sidecar(path, 'task = "restore"\nname = "My SR"\nlayout = "NCHW"\nrange = [0, 1]\n'
                  'output = "image"\nscale = 2\nlicense = "mit"\ncommercial_use = true\n')
    card = import_model(path)
    assert (card.id, card.name, card.runtime, card.tasks) == ("local:my-sr", "My SR", "onnx", ("restore",))
    assert card.license == "mit" and card.commercial_use is True
    assert card.sidecar == {
        "output": "image", "input_layout": "NCHW", "range": [0.0, 1.0], "scale": 2,
        "graphs": {"model": "sr2.onnx"}, "input_size": [16, 16], "input_name": "images",
        "output_names": ["output"]}
    assert card.params == n_params(module)  # the graph's initializers are the conv's weights
    assert card.attention is AttentionSupport.NONE and card.memory_mb.keys() == {"fp32"}


def test_dynamic_onnx_graph_leaves_the_input_size_open(tmp_path: Path) -> None:
    path = export(_Upscaler(scale=2), tmp_path / "dyn.onnx", dynamic=True)
    sidecar(path, 'task = "restore"\noutput = "image"\nscale = 2\n')
    assert "input_size" not in import_model(path).sidecar


def test_yolo_style_onnx_gets_the_detect_family_and_class_names(tmp_path: Path) -> None:
    path = export(_YoloHead(classes=3), tmp_path / "yolo.onnx")
    (tmp_path / "classes.txt").write_text("cat\ndog\n\nbird\n", encoding="utf-8")
    sidecar(path, 'task = "detect"\noutput = "yolov8"\nlabels_file = "classes.txt"\n'
                  'mean = [0, 0, 0]\nstd = [1, 1, 1]\ninput_size = [16, 16]\n')
    card = import_model(path)
    assert card.sidecar["labels"] == ["cat", "dog", "bird"]
    assert card.sidecar["family"] == "yolo" and card.variant is None


ONNX_SIDECAR_ERRORS = [
    ('task = "restore"\noutput = "image"\nscale = 4\n',
     "output height 32 is not input height 16 x scale 4"),
    ('task = "restore"\nlayout = "CHW"\noutput = "image"\nscale = 2\n',
     "field 'layout' is 'CHW'; expected NCHW or NHWC"),
    ('task = "restore"\nlayout = "v8"\noutput = "image"\nscale = 2\n',
     "the YOLO version goes in output"),
    ('task = "restore"\nrange = [0, 2]\noutput = "image"\nscale = 2\n',
     "field 'range' is [0, 2]; expected [0, 1] or [0, 255]"),
    ('task = "restore"\noutput = "image"\nscale = 2\ncolour = "red"\n',
     "field 'colour' is not a sidecar field"),
    ('task = "restore"\nscale = 2\n', "field 'output' is missing; expected one of detr"),
    ('task = "restore"\noutput = "image"\n', "field 'scale' is missing"),
    ('task = "segment"\noutput = "image"\nscale = 2\n',
     "field 'output' is 'image', an output for task 'restore', but the task is 'segment'"),
    ('output = "image"\nscale = 2\n', "field 'task' is missing"),
    ('task = "restore"\nlayout = "NHWC"\noutput = "image"\nscale = 2\n',
     "16 channels, but mean/std give 3. Is the layout NCHW?"),
    ('task = "restore"\noutput = "image"\nscale = 2\ninput_size = [32, 32]\n',
     "field 'input_size' is [32, 32] (width, height) but the graph input 'images' is fixed at [16, 16]"),
    ('task = "restore"\noutput = "image"\nscale = 2\nstd = [1, 0, 1]\n', "every value must be > 0"),
    ('task = "restore"\noutput = "image"\nscale = "2x"\n', "field 'scale' is '2x'"),
    ('task = "restore"\noutput = "image"\nscale = 2\nlabels_file = "nope.txt"\n',
     "field 'labels_file' names"),
    ('task = "restore"\noutput = \n', "is not valid TOML"),
]


@pytest.mark.parametrize("text, message", ONNX_SIDECAR_ERRORS, ids=[m[:36] for _, m in ONNX_SIDECAR_ERRORS])
def test_malformed_sidecar_gives_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = export(_Upscaler(scale=2), tmp_path / "sr.onnx")
    sidecar(path, text)
    with pytest.raises(CatalogError) as err:
        import_model(path)
    assert message in str(err.value)
    assert "sr.toml" in str(err.value)  # names the file to fix
    assert list_imports() == []


def test_sidecar_class_count_must_match_the_graph(tmp_path: Path) -> None:
    path = export(_YoloHead(classes=3), tmp_path / "yolo.onnx")
    sidecar(path, 'task = "detect"\noutput = "yolov8"\nlabels = ["cat", "dog"]\n')
    with pytest.raises(CatalogError, match="yolov8 has 3 class scores but 'labels' names 2 classes"):
        import_model(path)
    sidecar(path, 'task = "detect"\noutput = "yolov8"\n')
    with pytest.raises(CatalogError, match="field 'labels' is missing"):
        import_model(path)


def test_onnx_without_sidecar_explains_what_to_write(tmp_path: Path) -> None:
    path = export(_Upscaler(scale=2), tmp_path / "bare.onnx")
    with pytest.raises(CatalogError) as err:
        import_model(path)
    assert "needs a sidecar bare.toml next to it" in str(err.value)
    assert 'output = "yolov8"' in str(err.value)
    not_onnx = tmp_path / "fake.onnx"
    not_onnx.write_bytes(b"definitely not protobuf")
    sidecar(not_onnx, 'task = "restore"\noutput = "image"\nscale = 2\n')
    with pytest.raises(CatalogError, match="fake.onnx: not a readable ONNX model"):
        import_model(not_onnx)


# -- the index -----------------------------------------------------------------------------------

def test_imports_persist_in_the_index_and_join_the_catalog(tmp_path: Path, app_home: Path) -> None:
    from safetensors.torch import save_file

    first = tmp_path / "a" / "upscaler.safetensors"
    second = tmp_path / "b" / "upscaler.safetensors"
    for path in (first, second):
        path.parent.mkdir()
        save_file(tiny_compact().state_dict(), str(path))
    card = import_model(first)
    again = import_model(first)  # same file: replaced, not duplicated
    other = import_model(second)  # same name, another file: a distinct id
    assert card.id == again.id == "local:upscaler" and other.id == "local:upscaler-2"
    assert index_path() == app_home / "models" / "index.toml"
    assert [p.name for p in index_path().parent.iterdir()] == ["index.toml"]  # no temp files left

    catalog = load_catalog()  # a fresh load, as after a restart
    assert catalog.problems == []
    assert [c.id for c in catalog.imported] == ["local:upscaler", "local:upscaler-2"]
    assert catalog.get("local:upscaler") == card
    assert catalog.resolve("local:upscaler-2").local_path == str(second.resolve())
    assert catalog.list(task="restore", runtime="spandrel")[-1].id == "local:upscaler-2"

    removed = remove_import("local:upscaler")
    assert removed.id == "local:upscaler"
    assert [c.id for c in load_catalog().imported] == ["local:upscaler-2"]
    with pytest.raises(UnknownModelError):
        remove_import("local:upscaler")


def test_moved_or_changed_files_are_reported_not_dropped(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "sr.safetensors"
    save_file(tiny_compact().state_dict(), str(path))
    card = import_model(path)
    moved = path.rename(tmp_path / "elsewhere.safetensors")
    catalog = load_catalog(strict=True)  # index problems never stop the app
    assert catalog.imported == ()
    [problem] = catalog.problems
    assert problem.entry == "local:sr"
    assert f"points to {path.resolve()}, which no longer exists" in problem.message
    assert "ocula models remove local:sr" in problem.message

    moved.rename(path)
    stale = load_catalog()
    assert stale.get(card.id) == card
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(CatalogError, match="has changed since it was imported"):
        stale.resolve(card.id)


def test_hand_broken_index_entry_is_a_problem_naming_the_field(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "ok.safetensors"
    save_file(tiny_compact().state_dict(), str(path))
    import_model(path)
    text = index_path().read_text(encoding="utf-8").replace('runtime = "spandrel"', 'runtime = "keras"')
    index_path().write_text(text, encoding="utf-8")
    catalog = load_catalog()
    assert catalog.imported == ()
    assert "index.toml entry 'local:ok': field 'runtime' is 'keras'" in catalog.problems[0].message


def test_a_changed_import_says_so_after_a_restart_and_a_touched_one_still_loads(
        tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "sr2.safetensors"
    save_file(tiny_compact().state_dict(), str(path))
    card = import_model(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # copied back: same bytes
    assert load_catalog().resolve(card.id) == card  # hashed once, matches the import's sha256
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    fresh = load_catalog()  # a new process: the card is still listed, not "Unknown model"
    assert fresh.get(card.id) is not None
    with pytest.raises(CatalogError, match="has changed since it was imported"):
        fresh.resolve(card.id)
