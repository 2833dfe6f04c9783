"""Loaded runners kept in memory between jobs, least recently used evicted by size.

Key: (card id, revision, device, precision, attention, speed) after planning, so "auto" and the
device it resolves to share one entry. Budget: `settings.runner_cache_mb`, measured with
each runner's `memory_bytes`. A runner larger than the whole budget is still returned
(the job needs it) but is the first to go when anything else loads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from engine.runtimes.base import Runner

if TYPE_CHECKING:
    from engine.catalog.card import ModelCard
    from engine.settings import Settings

CacheKey = tuple[str, "str | None", str, str, bool, str]


class RunnerCache:
    def __init__(self, budget_mb: int | None = None, *, settings: Settings | None = None) -> None:
        if budget_mb is None:
            budget_mb = settings.runner_cache_mb if settings is not None else 4096
        self.budget_bytes = int(budget_mb) * 2**20
        self.settings = settings
        self._runners: OrderedDict[CacheKey, Runner] = OrderedDict()
        self._lock = threading.RLock()
        self.evictions: list[CacheKey] = []  # keys evicted so far, oldest first (for the UI log)
        # the plan's fallback when each runner loaded: a later request that plans to the
        # same device for another reason (asked for cuda, got cpu) must say so again
        self._planned_fallback: dict[CacheKey, str | None] = {}

    def use_settings(self, settings: Settings) -> None:
        """The latest front end's settings: their memory budget and device defaults apply
        from the next load on (a changed default device or budget is seen at once)."""
        with self._lock:
            self.settings = settings
            self.budget_bytes = int(settings.runner_cache_mb) * 2**20
            self._evict_until(self.budget_bytes, keep=None)

    # -- queries -------------------------------------------------------------------
    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(r.memory_bytes for r in self._runners.values())

    def __len__(self) -> int:
        return len(self._runners)

    def __iter__(self) -> Iterator[CacheKey]:
        return iter(self.keys())

    def __contains__(self, key: object) -> bool:
        return key in self._runners

    def keys(self) -> list[CacheKey]:
        with self._lock:
            return list(self._runners)

    def key_for(
        self,
        card: ModelCard,
        *,
        device: str = "auto",
        precision: str = "auto",
        attention: bool = False,
        speed: str = "off",
    ) -> CacheKey:
        return self._plan(card, device=device, precision=precision, attention=attention,
                          speed=speed)[0]

    def _plan(self, card: ModelCard, *, device: str, precision: str,
              attention: bool, speed: str = "off") -> tuple[CacheKey, str | None]:
        """The cache key of this request and its planned fallback (None: runs as asked)."""
        from engine import devices

        if self.settings is not None:
            device, precision = self.settings.requested_placement(device, precision)
        placement = devices.plan(card, device=device, precision=precision)
        key = (card.id, card.revision, placement.device, placement.precision, bool(attention),
               speed)  # a token-merged model is another model: off and fast never share one
        return key, placement.fallback

    # -- loading and eviction ------------------------------------------------------------
    def get_or_load(self, card: ModelCard, **load_kwargs: Any) -> Runner:
        """The cached runner for this card/device/precision/attention, loading it if needed."""
        from engine.runtimes.loading import load_runner

        key, fallback = self._plan(
            card,
            device=load_kwargs.get("device", "auto"),
            precision=load_kwargs.get("precision", "auto"),
            attention=load_kwargs.get("attention", False),
            speed=load_kwargs.get("speed", "off"),
        )
        with self._lock:
            runner = self._runners.get(key)
            if runner is not None:
                self._runners.move_to_end(key)
                self._restate_fallback(key, runner, fallback)
                return runner
            # Make room for the card's estimate first, so two big models never coexist.
            estimate_mb = card.memory_estimate_mb(key[3]) or 0
            self._evict_until(self.budget_bytes - estimate_mb * 2**20, keep=None)
            if self.settings is not None:
                load_kwargs.setdefault("settings", self.settings)
            runner = load_runner(card, **load_kwargs)
            self._runners[key] = runner
            self._planned_fallback[key] = fallback
            self._evict_until(self.budget_bytes, keep=key)
            return runner

    def _restate_fallback(self, key: CacheKey, runner: Runner, fallback: str | None) -> None:
        """A cached runner serves a new request: its placement's fallback becomes this
        request's plan (plus anything found only while loading, e.g. a failed CUDA load)."""
        import dataclasses

        loaded = runner.placement.fallback
        at_load = self._planned_fallback.get(key)
        if fallback == at_load:
            return
        found_while_loading = loaded if loaded and loaded != at_load else None
        parts = [part for part in (fallback, found_while_loading) if part]
        runner.placement = dataclasses.replace(runner.placement,
                                               fallback="; ".join(parts) or None)
        self._planned_fallback[key] = fallback

    def _evict_until(self, budget_bytes: int, keep: CacheKey | None) -> None:
        for key in list(self._runners):
            if self.total_bytes <= budget_bytes:
                return
            if key == keep:
                continue
            self._runners.pop(key).release()
            self._planned_fallback.pop(key, None)
            self.evictions.append(key)

    def release(self, card_id: str | None = None) -> int:
        """Release every runner (or those of `card_id`); returns how many were released."""
        with self._lock:
            keys = [k for k in self._runners if card_id is None or k[0] == card_id]
            for key in keys:
                self._runners.pop(key).release()
                self._planned_fallback.pop(key, None)
            return len(keys)


_shared: RunnerCache | None = None
_shared_lock = threading.Lock()


def shared_runner_cache(settings: Settings | None = None) -> RunnerCache:
    """The process-wide cache of loaded models: job handlers and the GUI's explain view
    share it, so a model is loaded once per process. `settings`: the caller's, which
    replace those of earlier callers (RunnerCache.use_settings)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = RunnerCache(settings=settings)
        elif settings is not None and settings is not _shared.settings:
            _shared.use_settings(settings)
        return _shared


def release_shared(card_id: str | None = None) -> int:
    """Free the shared cache's models (all, or one card's); returns how many."""
    with _shared_lock:
        cache = _shared
    return cache.release(card_id) if cache is not None else 0
