"""Every third-party module that engine/ and desktop/ import is declared in pyproject.toml.

Each `import x` / `from x import …` (lazy ones inside functions too) is mapped to the
installed distributions that provide `x` (importlib.metadata.packages_distributions());
one of them must be a dependency or in an optional extra. A transitive dependency does
not count: `httpx2` comes with huggingface_hub today, but we import it ourselves, so a
huggingface_hub that drops it would break us with nothing in pyproject saying why.

Two kinds of optional imports need no dependency, and must then sit in a
`try: … except ImportError` so that their absence is a sentence, not a crash:
[tool.ocula] no-deps (packages installed by hand without their dependencies, whose
metadata pins old torch/numpy) and NEVER_DEPENDENCIES below.
"""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("engine", "desktop")
FIRST_PARTY = {"engine", "desktop"}
# module -> why it is imported although no Ocula install asks for it
NEVER_DEPENDENCIES = {
    "keyring": "engine/hub/auth.py moves a token the old desktop store kept in the OS "
               "keyring (used only when keyring happened to be installed) to the hub's store",
}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _canonical(re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0])


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _declared() -> set[str]:
    project = _pyproject()["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return {_requirement_name(r) for r in requirements}


def _no_deps() -> set[str]:
    tool = _pyproject().get("tool", {}).get("ocula", {})
    return {_requirement_name(r) for r in tool.get("no-deps", [])}


def _guarded_lines(tree: ast.AST) -> set[int]:
    """Line numbers of the imports inside a `try` that catches ImportError."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught = set()
        for handler in node.handlers:
            names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            caught |= {getattr(n, "id", None) for n in names}
        if caught & {"ImportError", "ModuleNotFoundError"}:
            for stmt in node.body:
                lines |= {n.lineno for n in ast.walk(stmt)
                          if isinstance(n, ast.Import | ast.ImportFrom)}
    return lines


def _third_party_imports() -> dict[str, list[tuple[str, int, bool]]]:
    """top-level module -> [(file, line, guarded by except ImportError)]"""
    found: dict[str, list[tuple[str, int, bool]]] = {}
    for package in SOURCES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            guarded = _guarded_lines(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in FIRST_PARTY or top in sys.stdlib_module_names:
                        continue
                    where = (str(path.relative_to(ROOT)), node.lineno, node.lineno in guarded)
                    found.setdefault(top, []).append(where)
    return found


def test_the_walk_finds_the_imports_it_must_judge():
    found = _third_party_imports()
    assert {"torch", "PySide6", "huggingface_hub", "httpx2", "numpy"} <= set(found)
    assert not {"os", "json", "engine", "desktop", "__future__"} & set(found)


def test_every_third_party_import_is_declared_in_pyproject():
    declared, no_deps = _declared(), _no_deps()
    providers = importlib.metadata.packages_distributions()
    problems = []
    for module, places in sorted(_third_party_imports().items()):
        dists = {_canonical(d) for d in providers.get(module, [])}
        if dists & declared:
            continue
        file, line, _ = places[0]
        if module in NEVER_DEPENDENCIES or dists & no_deps:
            unguarded = [f"{f}:{n}" for f, n, guarded in places if not guarded]
            if unguarded:
                problems.append(f"{module} (optional) is imported outside a try/except "
                                f"ImportError at {', '.join(unguarded)}")
            continue
        if not dists:
            problems.append(f"{module} ({file}:{line}) is not installed here, so no "
                            f"distribution can be found for it: declare it or remove it")
        else:
            problems.append(f"{module} ({file}:{line}) comes from {', '.join(sorted(dists))}, "
                            f"which pyproject.toml does not declare")
    assert not problems, "\n".join(problems)


def test_the_exceptions_are_still_imported():
    """NEVER_DEPENDENCIES names nothing the code has stopped importing."""
    assert set(NEVER_DEPENDENCIES) <= set(_third_party_imports())


def test_the_app_does_not_import_what_only_the_tests_install():
    """A distribution declared only in the `test` extra (oracles such as OpenCV, pycocotools,
    scikit-image) is not there for a user: engine/ and desktop/ never import it."""
    optional = _pyproject()["project"]["optional-dependencies"]
    for_users = {_requirement_name(r) for r in _pyproject()["project"]["dependencies"]}
    for name, requirements in optional.items():
        if name != "test":
            for_users |= {_requirement_name(r) for r in requirements}
    test_only = {_requirement_name(r) for r in optional["test"]} - for_users
    assert "opencv-python-headless" in test_only
    providers = importlib.metadata.packages_distributions()
    problems = [f"{module} ({places[0][0]}:{places[0][1]}) comes from "
                f"{', '.join(sorted(dists & test_only))}, which only the tests install"
                for module, places in sorted(_third_party_imports().items())
                if (dists := {_canonical(d) for d in providers.get(module, [])}) & test_only
                and not dists & for_users]
    assert not problems, "\n".join(problems)
