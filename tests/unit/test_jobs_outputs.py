"""OutputPlan: names, atomic writes, never over an input, clean-up of interrupted writes."""
from __future__ import annotations

import numpy as np
from PIL import Image

from engine.jobs import FrameInfo, FrameOutput, OutputPlan
from engine.jobs.outputs import cleanup_partial


def test_paths_mirror_the_key_and_writes_are_recorded(tmp_path):
    out = OutputPlan(tmp_path / "out", "trip/beach", tmp_path / "in" / "trip" / "beach.jpg")
    assert out.path(".json") == tmp_path / "out" / "trip" / "beach.json"
    arr = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    p_img = out.write_image(".restored.png", arr, kind="restored")
    p_txt = out.write_text(".txt", "a caption", kind="caption")
    p_bin = out.write_bytes(".bin", b"\x00\x01")
    assert np.array_equal(np.asarray(Image.open(p_img)), arr)
    assert p_txt.read_text() == "a caption" and p_bin.read_bytes() == b"\x00\x01"
    assert out.written == [p_img, p_txt, p_bin]
    assert out.by_kind["restored"] == p_img
    assert sorted(p.name for p in (tmp_path / "out" / "trip").iterdir()) == [
        "beach.bin", "beach.restored.png", "beach.txt"]  # no temporary files left


def test_an_input_is_never_overwritten(tmp_path):
    src = tmp_path / "photo.png"
    Image.new("RGB", (4, 4), "red").save(src)
    before = src.read_bytes()
    # Output folder = input folder and a suffix that would give the input's own name.
    out = OutputPlan(tmp_path, "photo", src)
    target = out.write_image(".png", np.zeros((4, 4, 3), np.uint8))
    assert target == tmp_path / "photo.ocula.png"
    assert src.read_bytes() == before
    # Another input of the job with the would-be name is protected too.
    other = tmp_path / "clip.json"
    other.write_text("{}")
    out2 = OutputPlan(tmp_path, "clip", tmp_path / "clip.mp4", is_input=lambda p: p == other)
    assert out2.path(".json") == tmp_path / "clip.ocula.json"
    assert other.read_text() == "{}"


def test_frame_output_keeps_writes_in_memory(tmp_path):
    plan = FrameOutput(tmp_path, "clip", tmp_path / "clip.mp4", FrameInfo(3, 1536, 0.12))
    picture = np.full((2, 2, 3), 7, np.uint8)
    plan.write_text(".json", "{}")
    plan.write_image(".overlay.png", Image.fromarray(picture), kind="overlay")
    assert list(tmp_path.iterdir()) == []  # nothing on disk
    assert np.array_equal(plan.frame_image(), picture)
    assert plan.is_frame and plan.frame.index == 3


def test_cleanup_removes_only_temporary_files_of_the_item(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    for name in [".beach.restored.x1y2.png", ".beach.json.abc.part", "beach.json",
                 ".other.json.zz.part", "beach.restored.png"]:
        (folder / name).write_text("x")
    assert cleanup_partial(tmp_path, "a/beach") == 2
    assert sorted(p.name for p in folder.iterdir()) == [
        ".other.json.zz.part", "beach.json", "beach.restored.png"]
