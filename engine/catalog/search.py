"""Hub search by task, for the GUI's "find a model" panel and `ocula models search --hub`.

One `list_models` query per pipeline tag of the task (caption -> image-to-text and
image-text-to-text, ...), merged, de-duplicated and sorted by downloads. Repos from
libraries Ocula cannot run (diffusers, timm, GGUF, ...) are left out unless asked for,
so the list shows what a click can actually open.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from engine.catalog.card import TASKS
from engine.catalog.hub_infer import TASK_PIPELINES, UNSUPPORTED_LIBRARIES
from engine.errors import UsageError

_EXPAND = ["downloads", "likes", "pipeline_tag", "library_name", "lastModified", "gated", "tags"]


@dataclass(frozen=True)
class HubModelSummary:
    repo_id: str
    downloads: int = 0
    likes: int = 0
    pipeline_tag: str | None = None
    library: str | None = None
    last_modified: datetime | None = None
    gated: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ref(self) -> str:
        """What to pass to Catalog.resolve()."""
        return self.repo_id


def search_hub(task: str, query: str = "", *, limit: int = 50, token: str | None = None,
               include_unsupported: bool = False) -> list[HubModelSummary]:
    """Hub models for an Ocula task, most downloaded first."""
    if task not in TASK_PIPELINES:
        raise UsageError(f"Unknown task '{task}' for hub search; expected one of "
                         f"{', '.join(t for t in TASKS if t in TASK_PIPELINES)}.")
    if limit <= 0:
        return []
    from huggingface_hub import HfApi  # lazy

    api = HfApi(token=token)
    found: dict[str, HubModelSummary] = {}
    for pipeline_tag in TASK_PIPELINES[task]:
        results = api.list_models(pipeline_tag=pipeline_tag, search=query or None, sort="downloads",
                                  limit=limit, expand=_EXPAND, token=token)
        for info in results:
            library = info.library_name
            if not include_unsupported and library and library.lower() in UNSUPPORTED_LIBRARIES:
                continue
            if info.id in found:
                continue
            found[info.id] = HubModelSummary(
                repo_id=info.id, downloads=int(info.downloads or 0), likes=int(info.likes or 0),
                pipeline_tag=info.pipeline_tag or pipeline_tag, library=library,
                last_modified=info.last_modified, gated=bool(info.gated),
                tags=tuple(info.tags or ()),
            )
    ranked = sorted(found.values(), key=lambda s: (-s.downloads, -s.likes, s.repo_id))
    return ranked[:limit]
