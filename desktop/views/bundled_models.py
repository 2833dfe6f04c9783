"""The tiny models bundled with Ocula (resources/selftest), offered as installed models.

They are the self-test's models (engine.selftest): a few hundred kilobytes each, random
weights, so their answers only show that a task runs end to end here — offline, with no
download. They are registered as imported local models (engine.catalog.local_import),
so the catalog and the model picker list them as installed, and a job runs them like
any other imported model. Registering is idempotent: the same folder keeps its id.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

# task -> the bundled model's path inside resources/selftest (engine.selftest.CHECKS)
BUNDLED = {
    "caption": "caption",
    "detect": "detect",
    "segment": "segment",
    "restore": "restore/compact-2x.safetensors",
    "explain": "explain",
}
NAME = "Bundled {} (tiny test model)"


def bundled_path(task: str) -> Path:
    from engine.selftest import selftest_dir

    return (selftest_dir() / BUNDLED[task]).resolve()


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


def register_bundled(tasks: list[str] | tuple[str, ...] | None = None) -> list[Any]:
    """Register the bundled model of each task (all by default) that is not registered
    yet; returns the cards now registered for those tasks. Runs the local import, which
    reads the weights' headers (and torch for the restoration checkpoint): call it off
    the UI thread."""
    from engine.catalog.local_import import import_model, list_imports

    known = {str(Path(c.local_path).resolve()): c for c in list_imports() if c.local_path}
    cards = []
    for task in tasks or tuple(BUNDLED):
        if task not in BUNDLED:
            continue
        path = bundled_path(task)
        card = known.get(str(path))
        if card is None:
            card = import_model(path, name=NAME.format(task))
        cards.append(card)
    return cards


def tasks_without_installed(catalog: Any, installed: set[str]) -> list[str]:
    """The bundled tasks for which no installed model can run (explain: with attention)."""
    from engine.catalog.card import AttentionSupport

    missing = []
    for task in BUNDLED:
        if task == "explain":
            usable = [c for c in catalog if c.attention != AttentionSupport.NONE]
        else:
            usable = [c for c in catalog if c.supports(task)]
        if not any(c.id in installed for c in usable):
            missing.append(task)
    return missing
