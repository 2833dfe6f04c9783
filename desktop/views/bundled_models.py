"""The models bundled with Ocula, offered as installed models: real-weight ones where a
licence allows shipping them (resources/first-run: MTCNN faces), and the tiny self-test
models of every task (resources/selftest).

They are the self-test's models (engine.selftest): a few hundred kilobytes each, random
weights, so their answers only show that a task runs end to end here — offline, with no
download. They are registered as imported local models (engine.catalog.local_import),
so the catalog and the model picker list them as installed, and a job runs them like
any other imported model. Registering is idempotent: the same folder keeps its id.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

# task -> the bundled model's path inside resources/selftest (engine.selftest.CHECKS): the
# PyTorch ones on the full build, their ONNX exports on the Lite build (no torch)
BUNDLED_TORCH = {
    "caption": "caption",
    "detect": "detect",
    "segment": "segment",
    "restore": "restore/compact-2x.safetensors",
    "explain": "explain",
}
BUNDLED_ONNX = {
    "caption": "caption-onnx",
    "detect": "detect-onnx",
    "segment": "segment-onnx",
    "restore": "restore-onnx/nearest2x.onnx",
    "explain": "explain-onnx",
}
BUNDLED = BUNDLED_TORCH  # the task list (both tables have the same tasks)
NAME = "Bundled {} (tiny test model)"


def bundled_table() -> dict[str, str]:
    from engine.selftest import build_kind

    return BUNDLED_TORCH if build_kind() == "full" else BUNDLED_ONNX


def bundled_path(task: str) -> Path:
    from engine.selftest import selftest_dir

    return (selftest_dir() / bundled_table()[task]).resolve()


def is_bundled(card: Any) -> bool:
    """A card registered from resources/selftest (its files ship with Ocula)."""
    local = getattr(card, "local_path", None)
    if not local:
        return False
    try:
        from engine.selftest import selftest_dir

        return Path(local).resolve().is_relative_to(selftest_dir().resolve())
    except Exception:  # noqa: BLE001 — no resources folder: nothing is bundled
        return False


FIRST_RUN_DIR = "first-run"  # resources/first-run: real-weight models (packaging/make_first_run_models.py)


def first_run_models() -> dict[str, Path]:
    """task -> folder of each real-weight model shipped in resources/first-run (the Lite
    bundle carries them; a source checkout has them after make_first_run_models.py)."""
    import tomllib

    from engine.selftest import resources_dir

    try:
        root = resources_dir() / FIRST_RUN_DIR
    except Exception:  # noqa: BLE001 — no resources folder
        return {}
    found: dict[str, Path] = {}
    for sidecar in sorted(root.glob("*/model.toml")) if root.is_dir() else ():
        try:
            task = tomllib.loads(sidecar.read_text(encoding="utf-8")).get("task")
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if task:
            found.setdefault(str(task), sidecar.parent.resolve())
    return found


def register_bundled(tasks: list[str] | tuple[str, ...] | None = None) -> list[Any]:
    """Register the bundled model of each task (all by default) that is not registered
    yet; returns the cards now registered for those tasks. Runs the local import, which
    reads the weights' headers (and torch for the restoration checkpoint): call it off
    the UI thread."""
    from engine.catalog.local_import import import_model, list_imports

    known = {str(Path(c.local_path).resolve()): c for c in list_imports() if c.local_path}
    cards = []
    real = first_run_models()
    for task in tasks or tuple(BUNDLED):
        if task not in BUNDLED:
            continue
        # a real-weight model where one ships (its own name and licence), first
        for path, name in ((real.get(task), None), (bundled_path(task), NAME.format(task))):
            if path is None:
                continue
            card = known.get(str(path))
            if card is None:
                card = import_model(path, name=name)
            cards.append(card)
    return cards


def tasks_without_installed(catalog: Any, installed: set[str]) -> list[str]:
    """The bundled tasks for which no installed model can run (explain: with attention)."""
    from engine.catalog.card import can_explain

    missing = []
    for task in BUNDLED:
        if task == "explain":
            usable = [c for c in catalog if can_explain(c)]
        else:
            usable = [c for c in catalog if c.supports(task)]
        if not any(c.id in installed for c in usable):
            missing.append(task)
    return missing
