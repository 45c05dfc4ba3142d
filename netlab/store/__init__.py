"""State layer: desired state and leases, with revisions, compare-and-swap and
watch. Code outside this package talks to `Store` and gets one from
open_store(), so a backend can change (SQLite now, etcd for multi-VM labs)
without changes elsewhere. See docs/store.md."""
from __future__ import annotations

import os

from .base import KV, CompactedError, Event, EventType, Store, StoreBusy, StoreError, dumps, prefix_end
from .sqlite import SQLiteStore


def open_store(location: str | os.PathLike, **options) -> Store:
    """The store at location: a file path (or sqlite:///path) opens the
    embedded SQLite store; options go to the backend."""
    text = os.fspath(location)
    if text.startswith("sqlite://"):
        return SQLiteStore(text[len("sqlite://"):], **options)
    if text.startswith(("etcd://", "http://", "https://")):
        raise StoreError(f"{text}: the etcd backend is not built yet; use a SQLite file path")
    return SQLiteStore(text, **options)


__all__ = [
    "KV", "CompactedError", "Event", "EventType", "Store", "StoreBusy", "StoreError",
    "SQLiteStore", "dumps", "open_store", "prefix_end",
]
