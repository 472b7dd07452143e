"""A bounded, thread-safe least-recently-used mapping for constants built per chunk length.

Chunk lengths come from the caller, so a cache keyed by them must forget: a stream of many
distinct lengths would otherwise keep every length's constants for the life of the process.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import torch


class LRUCache:
    """``get`` / ``[key] = value`` / ``len`` over at most ``maxsize`` entries, least recently used out first."""

    def __init__(self, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        # Without the lock: one dict look-up is atomic, and torch.compile, which reads the
        # memory's cached constants while tracing, cannot enter a lock. A compiled step only reads.
        value = self._entries.get(key, default)
        if value is not default and not torch.compiler.is_compiling():
            try:
                self._entries.move_to_end(key)
            except KeyError:  # evicted by another thread meanwhile: it was least recent anyway
                pass
        return value

    def __setitem__(self, key, value) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def __reduce__(self):
        # Copies and pickles start empty: the entries are constants rebuilt on first use, and the
        # lock cannot be copied.
        return type(self), (self.maxsize,)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
