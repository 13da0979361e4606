"""Keeping loaded models warm: one least-recently-used cache for checkpoints and ControlNets alike."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

Loaded = TypeVar("Loaded")
CacheKey = tuple[str, str, str]  # (resolved path, device, dtype)


class WarmCache(Generic[Loaded]):
    """Loaded models keyed by (path, device, dtype), so a model is read from disk once while it is in use.

    Thread-safe; loads run under the lock (two requests for one model load it once); beyond ``max_models`` the
    least recently used one is evicted (:meth:`_evicted` may keep it somewhere cheaper, :meth:`_reuse` brings
    it back). ``loads`` counts real reads from disk, ``reuses`` models brought back without one, for tests and
    metrics.
    """

    def __init__(self, load: Callable[..., Loaded], *, max_models: int, **load_options: Any) -> None:
        self._load = load
        self._load_options = load_options
        self.max_models = max_models
        self._items: OrderedDict[CacheKey, Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0
        self.reuses = 0

    def get(self, path: str | os.PathLike[str], *, device: str = "cpu", dtype: Any = None) -> Loaded:
        key = (str(Path(path).resolve()), device, str(dtype))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            loaded = self._reuse(key, device)
            if loaded is None:
                loaded = self._load(path, device=device, dtype=dtype, **self._load_options)
                self.loads += 1
            else:
                self.reuses += 1
            self._items[key] = loaded
            self._trim()
            return loaded

    def _trim(self) -> None:
        while len(self._items) > max(1, self.max_models):
            old_key, old = self._items.popitem(last=False)
            self._evicted(old_key, old)

    def _evicted(self, key: CacheKey, loaded: Loaded) -> None:
        """Called (under the lock) for a model pushed out of the cache; by default it is simply dropped."""

    def _reuse(self, key: CacheKey, device: str) -> Loaded | None:
        """A model evicted earlier and kept elsewhere, made ready on ``device`` again; None to load it."""
        return None

    def loaded_paths(self) -> list[str]:
        """The paths of the models held now, least recently used first."""
        with self._lock:
            return [path for path, _device, _dtype in self._items]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
