"""Input expansion: files, folders mirrored, globs, exclusions, unreadable folders."""
from __future__ import annotations

import ctypes
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from engine.media.inputs import InputItem, expand_inputs
from tests.fixtures.unprivileged import as_unprivileged


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folders_files_globs_in_stable_order(tmp_path):
    root = tmp_path / "photos"
    for rel in ["b.jpg", "a.PNG", "sub/z.webp", "sub/deeper/c.mp4", "notes.txt", ".hidden.jpg",
                ".cache/x.jpg", "sub/.y.jpg.part"]:
        touch(root / rel)
    single = touch(tmp_path / "one.unknownext")
    clips = [touch(tmp_path / "clips" / n) for n in ("k2.mov", "k1.mkv")]
    items = list(expand_inputs([str(root), str(single), str(tmp_path / "clips" / "*.m*"),
                                str(tmp_path / "missing.jpg")]))
    rels = [(Path(i.path).name, i.rel, i.kind) for i in items if i.kind != "error"]
    assert rels[:4] == [("a.PNG", "a.PNG", "image"), ("b.jpg", "b.jpg", "image"),
                        ("z.webp", "sub/z.webp", "image"), ("c.mp4", "sub/deeper/c.mp4", "video")]
    assert rels[4] == ("one.unknownext", "one.unknownext", "image")  # named: tried as image
    assert sorted(r[0] for r in rels[5:]) == sorted(c.name for c in clips)
    assert all(r[2] == "video" for r in rels[5:])
    (missing,) = [i for i in items if i.kind == "error"]
    assert "missing.jpg: not found" in missing.error


def test_output_folder_inside_input_is_skipped(tmp_path):
    touch(tmp_path / "in" / "a.jpg")
    touch(tmp_path / "in" / "out" / "a.restored.png")
    items = list(expand_inputs([str(tmp_path / "in")], exclude=[tmp_path / "in" / "out"]))
    assert [i.rel for i in items] == ["a.jpg"]


def test_glob_matching_nothing_is_reported(tmp_path):
    (item,) = list(expand_inputs([str(tmp_path / "*.jpg")]))
    assert item.kind == "error" and "matched no image or video" in item.error


def test_expansion_is_lazy(tmp_path):
    for i in range(5):
        touch(tmp_path / f"d{i}" / "a.jpg")
    gen = expand_inputs([str(tmp_path)])
    assert isinstance(next(gen), InputItem)  # a generator, not a list built up front


# -- an unreadable folder, for real ----------------------------------------------------------
# Root ignores permission bits, so as root the check runs in a thread whose filesystem
# uid is "nobody" (Linux setfsuid is per thread): the kernel then refuses the folder
# exactly as it would for a normal user.


@pytest.fixture
def open_tmp():
    """A temp folder every user can enter (pytest's tmp_path sits under a 0700 folder)."""
    path = Path(tempfile.mkdtemp(prefix="ocula-perm-"))
    path.chmod(0o777)
    yield path
    for p in path.rglob("*"):
        if p.is_dir():
            p.chmod(0o777)
    shutil.rmtree(path, ignore_errors=True)


def make_locked_tree(base: Path) -> tuple[Path, Path]:
    root = base / "in"
    touch(root / "ok" / "a.png")
    touch(root / "b.png")
    locked = root / "locked"
    touch(locked / "secret.png")
    for p in [root, root / "ok", root / "ok" / "a.png", root / "b.png"]:
        p.chmod(0o777 if p.is_dir() else 0o666)
    locked.chmod(0)
    return root, locked


@pytest.mark.skipif(os.name != "posix", reason="permission bits and setfsuid are POSIX/Linux")
def test_unreadable_folder_is_an_error_item_and_the_rest_continue(open_tmp):
    root, locked = make_locked_tree(open_tmp)
    if os.geteuid() == 0:
        if not hasattr(ctypes.CDLL(None), "setfsuid"):
            pytest.skip("running as root without setfsuid: cannot make a folder unreadable")
    items = as_unprivileged(lambda: list(expand_inputs([str(root)])))
    ok = sorted(i.rel for i in items if i.kind == "image")
    errors = [i for i in items if i.kind == "error"]
    assert ok == ["b.png", "ok/a.png"]
    assert len(errors) == 1 and errors[0].path == str(locked)
    assert "cannot read this folder" in errors[0].error and "ermission" in errors[0].error
    assert stat.S_IMODE(locked.stat().st_mode) == 0


def test_a_named_folder_is_read_even_when_it_is_the_output_folder(tmp_path):
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "out" / "b.jpg")
    items = list(expand_inputs([str(tmp_path)], exclude=[tmp_path]))
    assert [i.rel for i in items] == ["a.jpg", "out/b.jpg"]
    items = list(expand_inputs([str(tmp_path)], exclude=[tmp_path / "out"]))
    assert [i.rel for i in items] == ["a.jpg"]
