"""The store interface: a small key-value store shaped like etcd v3's KV API.

Keys are strings ("/coreos.com/network/subnets/10.244.1.0-24"); values are
text, in practice JSON (flannel stores JSON, and the store only needs to hand
it back unchanged). Every write bumps one global revision, and every key
records create_revision, mod_revision and version exactly as etcd does, so the
conditional writes here map one to one onto an etcd Txn:

    create(k, v)                     If(Version(k) == 0).Then(Put(k, v))
    compare_and_swap(k, v, r)        If(ModRevision(k) == r).Then(Put(k, v))
    delete(k, expected_mod_revision) If(ModRevision(k) == r).Then(Delete(k))

A key may carry a TTL; when it runs out the key disappears and watchers see a
DELETE, like a key attached to an expired etcd lease.
"""
from __future__ import annotations

import abc
import enum
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator


class StoreError(Exception):
    """Base class of the store's errors."""


class StoreBusy(StoreError):
    """The store stayed locked by other writers for longer than the timeout."""


class StoreUnavailable(StoreError):
    """The store could not be reached (etcd down, a cut link). Callers keep what they
    have and retry with backoff."""


class CompactedError(StoreError):
    """The events asked for were compacted away (etcd's ErrCompacted).

    The caller has to re-list (list_with_revision) and watch from the
    revision that returns, as an etcd client does.
    """

    def __init__(self, requested: int, compact_revision: int):
        self.requested = requested
        self.compact_revision = compact_revision
        super().__init__(
            f"revision {requested} has been compacted (history starts after "
            f"revision {compact_revision}); re-list and watch from the revision the list returns")


@dataclass(frozen=True)
class KV:
    """One key as stored. Revisions and version have etcd's meaning."""

    key: str
    value: str
    create_revision: int
    mod_revision: int
    version: int
    # Wall-clock time (time.time()) when a TTL key expires; None = no TTL.
    # Wall clock, not monotonic, because several processes (and a reboot
    # later) must agree on it.
    expires_at: float | None = None

    def json(self) -> Any:
        return json.loads(self.value)

    def ttl(self, now: float | None = None) -> float | None:
        """Seconds left before the key expires, or None for a key without TTL."""
        if self.expires_at is None:
            return None
        return max(0.0, self.expires_at - (time.time() if now is None else now))


class EventType(str, enum.Enum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True)
class Event:
    """A change to one key.

    For PUT, kv is the new state. For DELETE, kv has the key, an empty value,
    version 0 and mod_revision = the deleting revision (as etcd sends it).
    prev_kv is the state before the change, or None (a PUT that created the
    key); a DELETE always carries it here, so a watcher learns what left.
    """

    type: EventType
    kv: KV
    prev_kv: KV | None = None

    @property
    def revision(self) -> int:
        return self.kv.mod_revision

    @property
    def key(self) -> str:
        return self.kv.key


def dumps(obj: Any) -> str:
    """JSON the way Go's json.Marshal writes it (compact), so values look like flannel's."""
    return json.dumps(obj, separators=(",", ":"))


def prefix_end(prefix: str) -> str | None:
    """The smallest key greater than every key starting with prefix (etcd's
    GetPrefixRangeEnd), or None when there is no upper bound (empty prefix)."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000  # surrogates cannot be encoded; UTF-8 order skips them
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def _check_value(value: str) -> None:
    if not isinstance(value, str):
        # catches put(key, {"a": 1}) early: JSON goes through put_json
        raise TypeError(f"store values are str (JSON text), not {type(value).__name__}; use put_json")


def _check_ttl(ttl: float | None) -> None:
    if ttl is not None and not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds or None, not {ttl!r}")


class Store(abc.ABC):
    """What the rest of kube-netlab may ask of a store.

    Conditional writes return the revision of the write, or 0 when the
    condition did not hold (so they read as booleans too). Revisions start
    at 1; revision() of an empty store is 0.
    """

    # -- reads ---------------------------------------------------------------
    @abc.abstractmethod
    def get(self, key: str) -> KV | None:
        """The key, or None when absent (or expired)."""

    @abc.abstractmethod
    def list_with_revision(self, prefix: str) -> tuple[list[KV], int]:
        """Keys starting with prefix, sorted, and the store revision they were
        read at (one consistent read; watch from that revision + 1)."""

    def list(self, prefix: str) -> list[KV]:
        """Keys starting with prefix, sorted by key."""
        return self.list_with_revision(prefix)[0]

    @abc.abstractmethod
    def revision(self) -> int:
        """The revision of the latest write."""

    # -- writes --------------------------------------------------------------
    @abc.abstractmethod
    def put(self, key: str, value: str, *, ttl: float | None = None) -> int:
        """Set key unconditionally; ttl (seconds) makes it expire. Returns the revision."""

    @abc.abstractmethod
    def create(self, key: str, value: str, *, ttl: float | None = None) -> int:
        """Set key only if it does not exist. Returns the revision, or 0 if it existed."""

    @abc.abstractmethod
    def compare_and_swap(self, key: str, value: str, expected_mod_revision: int, *,
                         ttl: float | None = None) -> int:
        """Set key only if its mod_revision equals expected_mod_revision
        (0 = the key must not exist). Returns the revision, or 0."""

    @abc.abstractmethod
    def delete(self, key: str, expected_mod_revision: int | None = None) -> int:
        """Delete key (only if its mod_revision matches, when given).
        Returns the revision of the delete, or 0 if nothing was deleted."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with prefix; returns how many were deleted."""

    # -- history -------------------------------------------------------------
    @abc.abstractmethod
    def events_since(self, prefix: str, revision: int) -> list[Event]:
        """Events on keys under prefix with a revision greater than revision,
        oldest first; never blocks. Raises CompactedError when part of that
        history is gone."""

    def watch(self, prefix: str, start_revision: int | None = None, *,
              timeout: float | None = None, stop: threading.Event | None = None,
              poll_interval: float = 0.05) -> Iterator[Event]:
        """Events on keys under prefix from start_revision (inclusive, as in
        etcd; None = only future events), oldest first.

        Ends when timeout seconds have passed (None = never) or stop is set.
        This default polls events_since; a backend with a native watch (etcd)
        overrides it.
        """
        # Read the start now, not at the first next(): "future" means after this call.
        after = self.revision() if start_revision is None else start_revision - 1
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._poll(prefix, after, deadline, stop, poll_interval)

    def _poll(self, prefix: str, after: int, deadline: float | None,
              stop: threading.Event | None, poll_interval: float) -> Iterator[Event]:
        while True:
            events = self.events_since(prefix, after)
            for event in events:
                yield event
            if events:
                after = events[-1].revision
            if stop is not None and stop.is_set():
                return
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                wait = min(poll_interval, left)
            else:
                wait = poll_interval
            if stop is not None:
                stop.wait(wait)  # wakes at once when stopped
            else:
                time.sleep(wait)

    # -- maintenance ---------------------------------------------------------
    def sweep(self) -> int:
        """Expire keys whose TTL has run out now; returns how many. Backends
        that expire on their own (etcd) need not do anything."""
        return 0

    def close(self) -> None:
        """Release connections; the store object must not be used afterwards."""

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- JSON helpers (values are JSON text everywhere in kube-netlab) ---------
    def get_json(self, key: str, default: Any = None) -> Any:
        kv = self.get(key)
        return default if kv is None else kv.json()

    def put_json(self, key: str, obj: Any, *, ttl: float | None = None) -> int:
        return self.put(key, dumps(obj), ttl=ttl)

    def create_json(self, key: str, obj: Any, *, ttl: float | None = None) -> int:
        return self.create(key, dumps(obj), ttl=ttl)

    def compare_and_swap_json(self, key: str, obj: Any, expected_mod_revision: int, *,
                              ttl: float | None = None) -> int:
        return self.compare_and_swap(key, dumps(obj), expected_mod_revision, ttl=ttl)
