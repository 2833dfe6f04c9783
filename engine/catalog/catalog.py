"""The model catalog: curated entries (resources/catalog.toml) plus imported local models.

`load_catalog()` reads and validates the curated file; `Catalog.resolve(ref)` turns
whatever a user typed (a catalog id, an imported model id, or a hub repo id
`owner/name[@revision]`) into a ModelCard.

Strictness: a malformed catalog.toml entry is always reported, never silently dropped.
`strict=True` (the default, for the CLI and tests) raises one CatalogError listing every
problem; `strict=False` (for the GUI) keeps the good entries and returns the problems in
`Catalog.problems`. Problems in the user's import index (a moved file, a hand-edited
entry) never raise: they are listed in `Catalog.problems` in both modes, because a broken
import must not stop the app from starting.
"""
from __future__ import annotations

import difflib
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

from engine.catalog.card import ModelCard, Source
from engine.catalog.entries import CatalogProblem, card_from_entry
from engine.errors import CatalogError, UnknownModelError
from engine.settings import Settings

CATALOG_FILE = "catalog.toml"


def default_catalog_path() -> Path:
    """resources/catalog.toml: inside a PyInstaller bundle, else next to the engine package."""
    candidates = []
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:  # frozen: data files are unpacked under sys._MEIPASS
        candidates.append(Path(bundle) / "resources" / CATALOG_FILE)
    candidates.append(Path(__file__).resolve().parents[2] / "resources" / CATALOG_FILE)
    for path in candidates:
        if path.is_file():
            return path
    raise CatalogError(
        f"The model catalog {CATALOG_FILE} was not found (looked in: "
        f"{', '.join(str(p) for p in candidates)}). Reinstall Ocula, or pass a catalog path."
    )


def _read_entries(path: Path) -> tuple[list[ModelCard], dict[str, str], list[CatalogProblem]]:
    origin = path.name
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(f"The model catalog {path} does not exist.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path} is not valid TOML ({exc}). Fix the file or reinstall Ocula.") from exc
    entries = data.get("models", [])
    if not isinstance(entries, list):
        raise CatalogError(f"{path}: 'models' must be an array of tables ([[models]]).")
    cards: list[ModelCard] = []
    seen_commits: dict[str, str] = {}
    problems: list[CatalogProblem] = []
    ids: set[str] = set()
    for index, entry in enumerate(entries):
        entry_id = entry.get("id") if isinstance(entry, dict) else None
        try:
            if not isinstance(entry, dict):
                raise CatalogError(f"{origin} entry #{index + 1}: is not a table")
            card = card_from_entry(entry, origin=origin, index=index)
            if card.id in ids:
                raise CatalogError(f"{origin} entry '{card.id}': field 'id' duplicates an earlier "
                                   f"entry; ids must be unique")
        except CatalogError as exc:
            problems.append(CatalogProblem(origin, entry_id if isinstance(entry_id, str) else None, str(exc)))
            continue
        ids.add(card.id)
        cards.append(card)
        if "seen_commit" in entry:
            seen_commits[card.id] = entry["seen_commit"]
    return cards, seen_commits, problems


def load_catalog(path: str | Path | None = None, *, strict: bool = True,
                 include_imports: bool = True) -> Catalog:
    """Read the curated catalog (and the user's imported models) into a Catalog."""
    path = Path(path) if path is not None else default_catalog_path()
    cards, seen_commits, problems = _read_entries(path)
    if problems and strict:
        lines = "\n".join(f"  - {p.message}" for p in problems)
        raise CatalogError(f"{path} has {len(problems)} invalid entr{'y' if len(problems) == 1 else 'ies'}:\n{lines}")
    imported: list[ModelCard] = []
    if include_imports:
        from engine.catalog.local_import import load_imports

        imported, import_problems = load_imports()
        problems.extend(import_problems)
    return Catalog(cards, imported=imported, problems=problems, seen_commits=seen_commits, path=path)


class Catalog:
    """Curated cards plus imported ones; lookups, filters, search and reference resolution."""

    def __init__(self, cards: list[ModelCard], *, imported: list[ModelCard] | None = None,
                 problems: list[CatalogProblem] | None = None,
                 seen_commits: dict[str, str] | None = None, path: Path | None = None) -> None:
        self.curated: tuple[ModelCard, ...] = tuple(cards)
        self.imported: tuple[ModelCard, ...] = tuple(imported or ())
        self.problems: list[CatalogProblem] = list(problems or [])
        self.path = path
        self._seen_commits = dict(seen_commits or {})
        self._by_id: dict[str, ModelCard] = {c.id: c for c in (*self.curated, *self.imported)}

    # -- lookups -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[ModelCard]:
        return iter((*self.curated, *self.imported))

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._by_id

    def ids(self) -> list[str]:
        return [c.id for c in self]

    def get(self, model_id: str) -> ModelCard:
        try:
            return self._by_id[model_id]
        except KeyError:
            raise UnknownModelError(model_id, self.suggest(model_id)) from None

    def suggest(self, text: str, limit: int = 5) -> list[str]:
        """Ids close to `text`: ids containing it first, then difflib's close matches."""
        ids = self.ids()
        lowered = text.lower()
        containing = [i for i in ids if lowered and lowered in i.lower()]
        close = difflib.get_close_matches(lowered, ids, n=limit, cutoff=0.5)
        by_name = [c.id for c in self if lowered and lowered in c.name.lower()]
        merged: list[str] = []
        for candidate in (*containing, *close, *by_name):
            if candidate not in merged:
                merged.append(candidate)
        return merged[:limit]

    def seen_commit(self, model_id: str) -> str | None:
        """The short SHA the catalog research saw for a branch-pinned entry (None if pinned)."""
        return self._seen_commits.get(model_id)

    def list(self, task: str | None = None, runtime: str | None = None) -> list[ModelCard]:
        return [c for c in self
                if (task is None or c.supports(task)) and (runtime is None or c.runtime == runtime)]

    def search(self, text: str) -> list[ModelCard]:
        """Cards whose id/name/repo/description (and architecture, seed, tasks) hold every word."""
        words = text.lower().split()
        if not words:
            return list(self)
        scored: list[tuple[int, int, ModelCard]] = []
        for order, card in enumerate(self):
            strong = f"{card.id} {card.name}".lower()
            # The repo's owner is who published it, not what it is: "face" must not match
            # every facebook/ model. The owner counts only when a word is the whole owner.
            owner, _, repo_name = (card.repo or "").lower().rpartition("/")
            medium = f"{repo_name} {card.architecture or ''}".lower()
            weak = " ".join((card.description, card.seed, " ".join(card.tasks), card.variant or "",
                             card.runtime)).lower()
            score = 0
            for word in words:
                if word in strong:
                    score += 3
                elif word in medium or (owner and word in (owner, owner + "/")):
                    score += 2
                elif word in weak:
                    score += 1
                else:
                    break
            else:
                scored.append((-score, order, card))
        return [card for _, _, card in sorted(scored, key=lambda t: (t[0], t[1]))]

    # -- resolving what a user typed ----------------------------------------------------------
    def resolve(self, model_ref: str, *, token: str | None = None,
                settings: Settings | None = None) -> ModelCard:
        """A catalog id, an imported model id, or a hub repo `owner/name[@revision]`.

        A hub repo in offline mode (settings.offline or HF_HUB_OFFLINE) is read from the
        model cache (`settings.cache_dir`, else HF_HUB_CACHE / HF_HOME): no request."""
        ref = model_ref.strip()
        if ref not in self._by_id and f"local:{ref}" in self._by_id:
            ref = f"local:{ref}"  # an imported model by its name alone (no curated id clashes)
        if ref in self._by_id:
            card = self._by_id[ref]
            if card.source is Source.LOCAL:
                from engine.catalog.local_import import check_available

                check_available(card)
            return card
        hub_ref = ref.removeprefix("hub:")
        repo, _, revision = hub_ref.partition("@")
        if "/" in repo:
            for card in self.curated:  # a curated, pinned entry beats metadata inference
                if card.repo == repo and (not revision or revision == card.revision):
                    return card
            from engine.catalog.hub_infer import card_from_hub

            return card_from_hub(repo, revision or None, token=token, settings=settings)
        raise UnknownModelError(ref, self.suggest(ref))
