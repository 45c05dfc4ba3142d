"""State layer: desired state and leases, with revisions, compare-and-swap and
watch. Code outside this package talks to `Store` and gets one from
open_store(), so a backend can change (SQLite now, etcd for multi-VM labs)
without changes elsewhere. See docs/store.md."""
from __future__ import annotations

import os

from .base import (
    KV, CompactedError, Event, EventType, Store, StoreBusy, StoreError, StoreUnavailable, dumps, prefix_end,
)
from .sqlite import SQLiteStore


def open_store(location: str | os.PathLike, **options) -> Store:
    """The store at location: a file path (or sqlite:///path) opens the
    embedded SQLite store; etcd://HOST:PORT[/PREFIX] an etcd cluster (every key
    under PREFIX when given). Options go to the backend."""
    text = os.fspath(location)
    if text.startswith("sqlite://"):
        return SQLiteStore(text[len("sqlite://"):], **options)
    if text.startswith("https://"):
        raise StoreError(f"{text}: TLS to etcd is not supported; use etcd://HOST:PORT on a private network")
    if text.startswith(("etcd://", "http://")):
        from .etcd import EtcdStore  # requests/etcd3gw only when asked for
        return EtcdStore(text, **options)
    return SQLiteStore(text, **options)


__all__ = [
    "KV", "CompactedError", "Event", "EventType", "Store", "StoreBusy", "StoreError", "StoreUnavailable",
    "SQLiteStore", "dumps", "open_store", "prefix_end",
]
