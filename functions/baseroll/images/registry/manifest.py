"""A manifest as read from a registry, and the by-digest cache of them."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from baseroll.images import oci


@dataclass(frozen=True)
class Manifest:
    media_type: str
    digest: str
    raw: bytes
    data: dict[str, Any]
    size: int

    @property
    def is_index(self) -> bool:
        return self.media_type in oci.INDEX_TYPES


class ManifestCache:
    """LRU of manifests read by digest (content-addressed, so never stale), bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._size = 0
        self._items: OrderedDict[tuple[str, str, str], Manifest] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> Manifest | None:
        with self._lock:
            m = self._items.get(key)
            if m is not None:
                self._items.move_to_end(key)
            return m

    def put(self, key: tuple[str, str, str], m: Manifest) -> None:
        with self._lock:
            if key in self._items or m.size > self._max:
                return
            self._items[key] = m
            self._size += m.size
            while self._size > self._max:
                _, old = self._items.popitem(last=False)
                self._size -= old.size
