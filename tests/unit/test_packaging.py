"""The installer recipes agree with each other and with the repository.

One version (pyproject.toml), one pair of executable names (the spec), icons and
resources that exist, a .desktop entry that validates, a CI matrix that runs the
scripts that are really there, and self-test models that stay small and pickle-free.
"""

from __future__ import annotations

import ast
import configparser
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
SPEC = PACKAGING / "ocula.spec"
ISS = PACKAGING / "windows" / "ocula.iss"
DESKTOP = ROOT / "resources" / "ocula.desktop"
WORKFLOW = ROOT / ".github" / "workflows" / "build.yml"
SELFTEST = ROOT / "resources" / "selftest"


def _pyproject_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "version"
    ]


def _spec_tree() -> ast.Module:
    return ast.parse(SPEC.read_text(encoding="utf-8"))


def _spec_constants() -> dict[str, str]:
    """Top-level `NAME = "literal"` assignments of the spec."""
    constants = {}
    for node in _spec_tree().body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            constants[node.targets[0].id] = node.value.value
    return constants


def _spec_resource_paths() -> list[Path]:
    """Every `RESOURCES / "a" / "b"` and `ICONS / "x"` path the spec names."""
    bases = {"RESOURCES": ROOT / "resources", "ICONS": ROOT / "resources" / "icons"}
    paths = []
    for node in ast.walk(_spec_tree()):
        if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)):
            continue
        parts: list[str] = []
        current: ast.AST = node
        while isinstance(current, ast.BinOp) and isinstance(current.op, ast.Div):
            if not (
                isinstance(current.right, ast.Constant) and isinstance(current.right.value, str)
            ):
                break
            parts.insert(0, current.right.value)
            current = current.left
        else:
            if isinstance(current, ast.Name) and current.id in bases:
                paths.append(bases[current.id].joinpath(*parts))
    return paths


def _iss_defines() -> dict[str, str]:
    return dict(
        re.findall(r'^#define\s+(\w+)\s+"([^"]*)"', ISS.read_text(encoding="utf-8"), re.MULTILINE)
    )


# -- version ----------------------------------------------------------------------------------


def test_version_has_one_source():
    import engine

    version = _pyproject_version()
    # the installed metadata (what the frozen app bundles with copy_metadata) matches
    assert engine.__version__ == version, "reinstall: .venv/bin/pip install -e ."
    spec = SPEC.read_text(encoding="utf-8")
    assert "pyproject.toml" in spec and "copy_metadata(dist)" in spec and '"ocula"' in spec
    # no recipe hard-codes a version number
    for path in (
        SPEC,
        ISS,
        DESKTOP,
        WORKFLOW,
        PACKAGING / "build_linux.sh",
        PACKAGING / "macos" / "build_macos.sh",
        PACKAGING / "windows" / "build_windows.ps1",
    ):
        assert version not in path.read_text(encoding="utf-8"), path
    assert re.search(r"#ifndef AppVersion\s+#error", ISS.read_text(encoding="utf-8"))


# -- the spec --------------------------------------------------------------------------------------


def test_spec_is_python_and_names_its_executables():
    constants = _spec_constants()
    assert constants["APP_NAME"] == "ocula" and constants["CLI_NAME"] == "ocula-cli"
    assert re.fullmatch(r"[a-z]+(\.[A-Za-z]+)+", constants["BUNDLE_ID"])
    calls = [
        n.func.id
        for n in ast.walk(_spec_tree())
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    ]
    assert calls.count("EXE") == 2 and "COLLECT" in calls and "BUNDLE" in calls
    # the GUI executable has no console; the CLI one has
    consoles = {}
    for node in ast.walk(_spec_tree()):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "EXE":
            kw = {k.arg: k.value for k in node.keywords}
            consoles[kw["name"].id] = kw["console"].value
    assert consoles == {"APP_NAME": False, "CLI_NAME": True}


def test_spec_resources_and_icons_exist():
    paths = _spec_resource_paths()
    names = {p.relative_to(ROOT).as_posix() for p in paths}
    for needed in (
        "resources/catalog.toml",
        "resources/icons",
        "resources/themes",
        "resources/selftest",
        "resources/ocula.desktop",
        "resources/icons/ocula.ico",
        "resources/icons/ocula.icns",
    ):
        assert needed in names, f"the spec does not bundle {needed}"
    missing = [str(p) for p in paths if not p.exists() and p.name != "samples"]
    assert not missing
    assert (PACKAGING / "ocula_main.py").is_file()
    compile((PACKAGING / "ocula_main.py").read_text(encoding="utf-8"), "ocula_main.py", "exec")


def test_spec_excludes_unused_qt_and_keeps_what_the_app_imports():
    spec = SPEC.read_text(encoding="utf-8")
    used = set(
        re.findall(
            r"PySide6\.(Qt\w+)",
            "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "desktop").rglob("*.py")),
        )
    )
    excluded = set(re.findall(r'"PySide6\.(Qt\w+)"', spec.split("excludes = [", 1)[1]))
    assert {"QtWebEngineCore", "QtQuick", "QtQml", "Qt3DCore", "QtMultimedia"} <= excluded
    assert not used & excluded, f"the spec excludes Qt modules the app imports: {used & excluded}"


def test_icons_are_real_images():
    from PIL import Image

    with Image.open(ROOT / "resources" / "icons" / "ocula.png") as png:
        assert png.size == (256, 256)
    with Image.open(ROOT / "resources" / "icons" / "ocula.ico") as ico:
        assert (256, 256) in ico.info["sizes"] and (16, 16) in ico.info["sizes"]
    with Image.open(ROOT / "resources" / "icons" / "ocula.icns") as icns:
        assert icns.size[0] >= 512


# -- Linux .desktop ----------------------------------------------------------------------------------


def test_desktop_entry_validates_and_matches_the_bundle():
    validator = shutil.which("desktop-file-validate")
    if validator:
        run = subprocess.run([validator, str(DESKTOP)], capture_output=True, text=True, check=False)
        assert run.returncode == 0, run.stdout + run.stderr
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(DESKTOP, encoding="utf-8")
    entry = parser["Desktop Entry"]
    assert entry["Type"] == "Application" and entry["Name"] == "Ocula"
    assert entry["Exec"].split()[0] == _spec_constants()["APP_NAME"]
    assert entry["Terminal"] == "false"
    assert (ROOT / "resources" / "icons" / f"{entry['Icon']}.png").is_file()
    assert entry["Categories"].endswith(";") and "Graphics" in entry["Categories"]
    install = (PACKAGING / "linux" / "install.sh").read_text(encoding="utf-8")
    assert "ocula.desktop" in install and "ocula.png" in install


# -- Windows installer ----------------------------------------------------------------------------------


def test_inno_setup_script_matches_the_spec():
    defines = _iss_defines()
    constants = _spec_constants()
    assert defines["AppExeName"] == constants["APP_NAME"] + ".exe"
    assert defines["CliExeName"] == constants["CLI_NAME"] + ".exe"
    iss_dir = ISS.parent
    # PyInstaller's default dist folder + COLLECT name
    assert (iss_dir / defines["BundleDir"].replace("\\", "/")).resolve() == ROOT / "dist" / "ocula"
    text = ISS.read_text(encoding="utf-8")
    icon = re.search(r"^SetupIconFile=(.+)$", text, re.MULTILINE).group(1).strip()
    assert (iss_dir / icon.replace("\\", "/")).resolve().is_file()
    for section in ("[Setup]", "[Files]", "[Icons]", "[Run]"):
        assert section in text
    assert re.search(r"^AppId=\{\{[0-9A-F-]{36}\}$", text, re.MULTILINE), "AppId must stay fixed"


# -- CI --------------------------------------------------------------------------------------------------


def test_workflow_builds_and_self_tests_on_three_systems():
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    job = workflow["jobs"]["bundle"]
    systems = job["strategy"]["matrix"]["os"]
    assert {s.split("-")[0] for s in systems} == {"ubuntu", "windows", "macos"}
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert "--self-test" in runs
    for script in re.findall(r"(packaging[/\\][\w/\\.-]+\.(?:sh|ps1))", runs):
        assert (ROOT / script.replace("\\", "/")).is_file(), script


def test_shell_scripts_parse():
    for script in (
        PACKAGING / "build_linux.sh",
        PACKAGING / "linux" / "install.sh",
        PACKAGING / "macos" / "build_macos.sh",
    ):
        run = subprocess.run(
            ["bash", "-n", str(script)], capture_output=True, text=True, check=False
        )
        assert run.returncode == 0, f"{script}: {run.stderr}"
        assert script.stat().st_mode & 0o111, f"{script} is not executable"


# -- self-test models -------------------------------------------------------------------------------------


def test_selftest_models_are_small_safe_and_complete():
    from engine.selftest import CHECKS

    manifest = json.loads((SELFTEST / "manifest.json").read_text(encoding="utf-8"))
    files = [p for p in SELFTEST.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 5_000_000
    # no pickles: safetensors weights, ONNX graphs, JSON/TOML configs, tokenizer files
    assert {p.suffix for p in files} <= {".safetensors", ".onnx", ".json", ".toml", ".txt"}
    for check in CHECKS:
        assert (SELFTEST / check.model_path).exists(), check.model_path
    assert {m["path"] for m in manifest["models"].values()} == {c.model_path for c in CHECKS}


def _config(path: Path) -> dict:
    """A JSON config without the library version that wrote it."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("transformers_version", None)
    return data


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module}
    return {name.split(".")[0] for name in names}


def test_packaging_never_imports_the_tests_and_its_model_builders_not_the_engine():
    """The tests use packaging/tiny_models.py (one copy of the tiny models), not the reverse."""
    for script in PACKAGING.rglob("*.py"):
        assert "tests" not in _imported_packages(script), script
    assert not {"engine", "desktop", "tests"} & _imported_packages(PACKAGING / "tiny_models.py")
    assert "tiny_models" in _imported_packages(PACKAGING / "make_selftest_models.py")


@pytest.mark.slow
def test_selftest_models_are_what_the_generator_makes(tmp_path):
    """Re-run packaging/make_selftest_models.py: same configs, same tensor names and
    shapes; the hand-set (explain) and hand-written (ONNX) models byte for byte."""
    import importlib.util

    from safetensors import safe_open

    spec = importlib.util.spec_from_file_location(
        "make_selftest_models", PACKAGING / "make_selftest_models.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build_all(tmp_path)
    for fresh in sorted(tmp_path.rglob("*")):
        committed = SELFTEST / fresh.relative_to(tmp_path)
        if fresh.is_dir():
            continue
        assert committed.is_file(), f"{committed} is not committed"
        if fresh.suffix == ".json" and fresh.name != "manifest.json":
            assert _config(fresh) == _config(committed), fresh.name
        elif fresh.suffix == ".safetensors":
            with safe_open(str(fresh), "pt") as a, safe_open(str(committed), "pt") as b:
                assert sorted(a.keys()) == sorted(b.keys())
                for key in a.keys():  # noqa: SIM118 — safe_open is not a dict
                    assert a.get_slice(key).get_shape() == b.get_slice(key).get_shape(), key
                    if "explain" in fresh.parts:
                        assert a.get_tensor(key).equal(b.get_tensor(key)), key
        elif fresh.suffix in (".onnx", ".toml"):
            assert fresh.read_bytes() == committed.read_bytes(), fresh.name


def test_linux_install_script_installs_and_removes(tmp_path):
    """install.sh from an unpacked folder: PATH links, icon, and a menu entry whose Exec
    names the folder's executable by full path; --remove takes them away."""
    bundle = tmp_path / "ocula-x.y.z"
    bundle.mkdir()
    (bundle / "ocula").write_text('#!/bin/sh\necho frozen-ocula "$@"\n', encoding="utf-8")
    (bundle / "ocula").chmod(0o755)
    (bundle / "ocula-cli").symlink_to("ocula")
    shutil.copy(DESKTOP, bundle / "ocula.desktop")
    shutil.copy(ROOT / "resources" / "icons" / "ocula.png", bundle / "ocula.png")
    shutil.copy(PACKAGING / "linux" / "install.sh", bundle / "install.sh")
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        ["sh", str(bundle / "install.sh")], env=env, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    entry = home / ".local/share/applications/ocula.desktop"
    text = entry.read_text(encoding="utf-8")
    assert f'Exec="{bundle}/ocula" %F' in text and f"TryExec={bundle}/ocula" in text
    assert (home / ".local/share/icons/hicolor/256x256/apps/ocula.png").is_file()
    cli = home / ".local/bin/ocula-cli"
    out = subprocess.run([str(cli), "--self-test"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "frozen-ocula --self-test"
    validator = shutil.which("desktop-file-validate")
    if validator:
        check = subprocess.run([validator, str(entry)], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout
    subprocess.run(
        ["sh", str(bundle / "install.sh"), "--remove"], env=env, check=True, capture_output=True
    )
    assert not entry.exists() and not cli.exists() and not cli.is_symlink()
    assert (bundle / "ocula").is_file()  # the unpacked folder is left alone
