"""The base install is the Lite build: no torch family, no Qt add-ons; [torch] has them."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TORCH_FAMILY = {"torch", "torchvision", "transformers", "spandrel", "timm", "accelerate"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", r.strip(), maxsplit=1)[0].lower().replace("_", "-")
            for r in requirements}


def test_base_dependencies_are_torch_free_and_qt_essentials_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    base = _names(project["dependencies"])
    assert not base & TORCH_FAMILY, base & TORCH_FAMILY
    assert "pyside6-essentials" in base and "pyside6" not in base  # not the ~500 MB add-ons
    assert {"onnx", "tokenizers", "numpy", "pillow", "huggingface-hub"} <= base
    extras = {k: _names(v) for k, v in project["optional-dependencies"].items()}
    assert {"torch", "torchvision", "transformers", "spandrel"} <= extras["torch"]
    assert "onnxruntime" in extras["cpu"] and "onnxruntime-gpu" in extras["gpu"]
    assert not extras["cpu"] & TORCH_FAMILY


def test_readme_install_command_is_the_lite_build():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install -e '.[cpu]' && .venv/bin/ocula" in readme
    run_sh = (ROOT / "tests" / "run.sh").read_text(encoding="utf-8")
    assert "torch" in re.search(r"pip install -q -e '\.\[([^\]]*)\]'", run_sh).group(1)
