"""Keeping loaded models warm: one least-recently-used cache for checkpoints and ControlNets alike."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

Loaded = TypeVar("Loaded")


class WarmCache(Generic[Loaded]):
    """Loaded models keyed by (path, device, dtype), so a model is read from disk once while it is in use.

    Thread-safe; loads run under the lock (two requests for one model load it once); beyond ``max_models`` the
    least recently used one is dropped. ``loads`` counts real reads from disk, for tests and metrics.
    """

    def __init__(self, load: Callable[..., Loaded], *, max_models: int, **load_options: Any) -> None:
        self._load = load
        self._load_options = load_options
        self.max_models = max_models
        self._items: OrderedDict[tuple[str, str, str], Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, path: str | os.PathLike[str], *, device: str = "cpu", dtype: Any = None) -> Loaded:
        key = (str(Path(path).resolve()), device, str(dtype))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            loaded = self._load(path, device=device, dtype=dtype, **self._load_options)
            self.loads += 1
            self._items[key] = loaded
            while len(self._items) > self.max_models:
                self._items.popitem(last=False)
            return loaded

    def loaded_paths(self) -> list[str]:
        """The paths of the models held now, least recently used first."""
        with self._lock:
            return [path for path, _device, _dtype in self._items]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
