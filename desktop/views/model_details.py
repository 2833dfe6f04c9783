"""A model's details as Markdown: the card's facts, its seed paper and the repo README."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from desktop.format import human_bytes, human_params
from desktop.views.catalog_model import license_tooltip

_FRONT_MATTER = re.compile(r"\A---\s*\n.*?\n---\s*\n", re.DOTALL)


def card_markdown(card: Any, *, installed: bool = False, disk_bytes: int = 0,
                  readme: str = "", placement: str = "") -> str:
    from engine.catalog.requirements import full_build_message, needs_full_build

    lines = [f"# {card.name}", ""]
    if needs_full_build(card):
        lines += [f"**Needs the full build.** {full_build_message(card)}", ""]
    if card.description:
        lines += [card.description, ""]
    package = getattr(card, "package", None)
    facts = [
        ("Id", f"`{card.id}`"),
        ("Tasks", ", ".join(card.tasks) + (f" ({card.variant})" if card.variant else "")),
        ("Repository", f"[{card.repo}](https://huggingface.co/{card.repo})" if card.repo
         else f"none: the weights ship inside the `{package}` Python package" if package
         else (card.local_path or "—")),
        ("Revision", f"`{card.revision}`" if card.revision
         else f"the installed package (`{card.install or 'pip install ' + package}`)" if package
         else "latest (not pinned)"),
        ("Runtime", card.runtime + (f" · {card.architecture}" if card.architecture else "")),
        ("Download", human_bytes(card.download_bytes)),
        ("Parameters", human_params(card.params)),
        ("Memory (fp32 / fp16)", " / ".join(
            f"{m} MB" if m else "?" for m in (card.memory_estimate_mb("fp32"),
                                               card.memory_estimate_mb("fp16")))),
        ("License", license_tooltip(card)),
        ("Attention maps", getattr(card.attention, "value", str(card.attention))),
        ("Installed", f"yes, {human_bytes(disk_bytes)} on disk" if installed else "no"),
    ]
    if placement:
        facts.append(("Would run", placement))
    for variant in cpu_variants(card):
        facts.append((f"CPU variant {variant.precision}", variant.summary()))
    if card.trust_remote_code:
        facts.append(("Remote code", "needs trust_remote_code — allow it in Settings ▸ Models "
                                     "and downloads only if you trust the author"))
    if card.gated:
        facts.append(("Access", "gated: accept the terms on the hub and add a token in Settings"))
    lines += [f"- **{k}:** {v}" for k, v in facts] + [""]
    if card.seed:
        lines += ["## Seed paper", "", card.seed, ""]
    if readme.strip():
        lines += ["## Model card", "", readme.strip(), ""]
    elif not installed and card.repo:
        lines += ["*The full model card (README) appears here once the model is downloaded.*"]
    return "\n".join(lines)


def cpu_variants(card: Any) -> list[Any]:
    """The int8/fp16 variants `ocula models optimize --precision` measured for this card,
    each with its quality figures and whether it is recommended."""
    from engine.runtimes.optimized import list_variants

    try:
        return list_variants(card)
    except (AttributeError, TypeError):  # a card-like object without id/revision
        return []


def read_readme(folder: Path | None) -> str:
    """README.md of a snapshot folder without its YAML front matter ('' if none)."""
    if folder is None:
        return ""
    path = Path(folder) / "README.md"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return _FRONT_MATTER.sub("", text, count=1)[:60_000]


def installed_snapshot(card: Any, settings: Any = None) -> Path | None:
    """The cached snapshot folder of an installed card, without any network access."""
    if card.local_path:
        path = Path(card.local_path)
        return path if path.is_dir() else path.parent
    if not card.repo:
        return None
    from engine.hub.model_cache import cache_dir, cached_commit, repo_folder

    cache = cache_dir(settings)
    commit = cached_commit(cache, card.repo, card.revision)
    if commit is None:
        return None
    folder = repo_folder(cache, card.repo) / "snapshots" / commit
    return folder if folder.is_dir() else None
