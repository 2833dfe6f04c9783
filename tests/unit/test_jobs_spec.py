"""JobSpec recipes: TOML roundtrip, validation messages, relative paths."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from engine.jobs import JobSpec, RecipeError
from engine.options import DetectOptions


def full_spec(tmp_path: Path) -> JobSpec:
    return JobSpec(task="detect", model="hustvl/yolos-tiny",
                   inputs=[str(tmp_path / "photos"), str(tmp_path / "clips" / "*.mp4")],
                   output_dir=str(tmp_path / "out"),
                   options={"threshold": 0.35, "every_nth_frame": 2, "time_range": [1.5, 9.0],
                            "formats": ["coco", "yolo"], "classes": ["a cat", "dog"],
                            "video_codec": "h265", "crf": 0, "track": False},
                   device="cuda:1", precision="fp16")


def test_recipe_roundtrip_is_identical(tmp_path):
    spec = full_spec(tmp_path)
    text = spec.to_toml()
    again = JobSpec.from_toml(text)
    assert again == spec
    assert again.to_toml() == text  # stable: saving twice gives the same file
    data = tomllib.loads(text)
    assert data["job"]["version"] == 1 and data["options"]["classes"] == ["a cat", "dog"]
    assert "max_detections" not in data["options"]  # a recipe holds what was chosen


def test_options_are_the_tasks_typed_dataclass(tmp_path):
    spec = full_spec(tmp_path)
    assert isinstance(spec.options, DetectOptions)
    assert spec.options.threshold == 0.35 and spec.options.max_detections == 100
    assert spec.options.time_range == (1.5, 9.0) and spec.options.crf == 0
    assert spec.options_dict["formats"] == ["coco", "yolo"]


def test_recipe_file_resolves_relative_paths_from_its_folder(tmp_path):
    recipe = tmp_path / "project" / "job.toml"
    recipe.parent.mkdir()
    recipe.write_text('[job]\ntask = "restore"\nmodel = "m"\ninputs = ["in", "/abs/x.png"]\n'
                      'output_dir = "out"\n[options]\ntile_size = 256\n', encoding="utf-8")
    spec = JobSpec.from_toml(recipe)
    assert spec.inputs == [str(recipe.parent / "in"), "/abs/x.png"]
    assert spec.output_dir == str(recipe.parent / "out")
    assert spec.options_dict == {"tile_size": 256} and spec.options.tile_overlap == 32
    # The same text given as text keeps the paths as written.
    assert JobSpec.from_toml(recipe.read_text()).inputs == ["in", "/abs/x.png"]
    # save() writes a file from_toml() reads back.
    saved = full_spec(tmp_path).save(tmp_path / "saved.toml")
    assert JobSpec.from_toml(saved) == full_spec(tmp_path)


@pytest.mark.parametrize("change, words", [
    ({"task": "paint"}, "task 'paint'"),
    ({"model": " "}, "model is empty"),
    ({"inputs": []}, "inputs must be a non-empty list"),
    ({"output_dir": ""}, "output_dir is empty"),
    ({"device": "tpu"}, "Device 'tpu'"),
    ({"device": "cuda:x"}, "a GPU number"),
    ({"precision": "int3"}, "Precision 'int3'"),
    ({"options": {"threshold": 1.5}}, "'threshold' must be from 0 to 1"),
    ({"options": {"every_nth_frame": 0}}, "'every_nth_frame' must be"),
    ({"options": {"every_nth_frame": 1.5}}, "must be a whole number"),
    ({"options": {"time_range": [5, 2]}}, "'time_range' must be [start_s, end_s]"),
    ({"options": {"video_codec": "divx"}}, "'video_codec' must be one of"),
    ({"options": {"segment_seconds": -1}}, "'segment_seconds' must be from 0.1"),
    ({"options": {"frames": "odd"}}, "'frames' must be one of all, keyframes, scenes"),
    ({"options": {"formats": "coco,pdf"}}, "unknown output format(s) for detect: pdf"),
    ({"options": {"classes": [1, 2]}}, "'classes' must be a list of names"),
    ({"options": {"treshold": 0.3}}, "Did you mean 'threshold'?"),
    ({"options": {"tile_size": 256}}, "'tile_size' is not a detect option"),
])
def test_validation_names_the_field(tmp_path, change, words):
    spec = full_spec(tmp_path)
    with pytest.raises(RecipeError) as info:
        for key, value in change.items():
            setattr(spec, key, value)
        spec.validate()
    assert words in str(info.value)


def test_the_same_device_words_as_the_doctor(tmp_path):
    """`ocula doctor --device directml` and a job on directml accept the same names."""
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps", "directml", "coreml", "tensorrt",
                   "gpu", "dml", "trt"):
        spec = full_spec(tmp_path)
        spec.device = device
        spec.validate()


def test_bad_recipe_texts_say_what_is_wrong(tmp_path):
    with pytest.raises(RecipeError, match="not valid TOML"):
        JobSpec.from_toml("[job\ntask=")
    with pytest.raises(RecipeError, match=r"no \[job\] table"):
        JobSpec.from_toml("[options]\nthreshold = 0.5\n")
    with pytest.raises(RecipeError, match="missing 'output_dir'"):
        JobSpec.from_toml('[job]\ntask = "detect"\nmodel = "m"\ninputs = ["a"]\n')
    with pytest.raises(RecipeError, match="unknown keys: threshold"):
        JobSpec.from_toml('[job]\ntask = "detect"\nmodel = "m"\ninputs = ["a"]\n'
                          'output_dir = "o"\nthreshold = 0.3\n')
    with pytest.raises(RecipeError, match="version 9"):
        JobSpec.from_toml('[job]\nversion = 9\ntask = "detect"\nmodel = "m"\ninputs = ["a"]\n'
                          'output_dir = "o"\n')
    missing = tmp_path / "nope.toml"
    with pytest.raises(RecipeError, match="cannot be read"):
        JobSpec.from_toml(missing)
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text('[job]\ntask = "x"\nmodel = "m"\ninputs = ["a"]\noutput_dir = "o"\n')
    with pytest.raises(RecipeError, match=r"bad\.toml: job task 'x'"):
        JobSpec.from_toml(bad_file)
