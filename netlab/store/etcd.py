"""The etcd v3 backend: the Store contract over etcd's JSON gateway (/v3/), through
etcd3gw's client (HTTP session, error mapping, base64 helpers).

    open_store("etcd://192.168.56.11:2379")          keys as they are (flannel's layout)
    open_store("etcd://192.168.56.11:2379/lab1")     every key under "/lab1" (a namespace,
                                                     like etcd's --namespace proxies)

How each call maps (one request each; conditional writes are single-op Txns):

    get / list          Range (header.revision is the read revision)
    put(ttl=)           LeaseGrant(ttl) + Put(lease=id): one lease per key, as flannel's
                        registry does; the key's previous lease is revoked
    create / CAS        Txn(If ModRevision(key) == r Then Put)   r = 0: must not exist
    delete(r)           Txn(If ModRevision(key) == r Then DeleteRange(prev_kv))
    delete_prefix       DeleteRange(prefix, prev_kv)
    events_since        a Watch from revision+1 over the whole keyspace, read until the
                        event of the head revision a Range reported, then closed
    watch               events_since up to now, then a Watch stream from there

etcd3gw's own watch iterator does not notice a stream that closed (an etcd restart, a
cut link) and ignores `canceled` and `compact_revision`; ours reads the stream itself,
reconnects from the last revision it delivered + 1 with backoff, and turns a compacted
start into CompactedError. Every request has a timeout (a cut link would otherwise hang
for TCP's minutes of retransmissions); an unreachable etcd raises StoreUnavailable.

TTLs are whole seconds, at least etcd's minimum lease TTL (2 s with default timings).
KV.expires_at is the grant time + TTL for leases this object granted, else from
LeaseTimeToLive (cached per lease: nobody here keeps a lease alive, renewing = a new lease).
"""
from __future__ import annotations

import bisect
import json
import math
import queue
import socket
import threading
import time
from typing import Iterator
from urllib.parse import urlsplit

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw import exceptions as etcd3gw_errors
from etcd3gw.utils import _decode, _encode

from .base import (
    KV, CompactedError, Event, EventType, Store, StoreError, StoreUnavailable, _check_ttl, _check_value, prefix_end,
)

REQUEST_TIMEOUT = 5.0       # seconds for one request (connect and read)
WATCH_IDLE = 10.0           # a watch stream silent this long is reopened (from its revision)
MIN_TTL = 2                 # etcd's minimum lease TTL with default heartbeat/election timings
_ALL = "\0"                 # key and range_end "\0": the whole keyspace


def parse_url(url: str) -> tuple[str, int, str]:
    """etcd://host[:port][/prefix] -> (host, port, prefix without a trailing slash)."""
    parts = urlsplit(url)
    if parts.scheme not in ("etcd", "http") or not parts.hostname:
        raise StoreError(f"{url!r}: an etcd store is etcd://HOST[:PORT][/PREFIX], e.g. etcd://192.168.56.11:2379")
    try:
        port = parts.port or 2379
    except ValueError:
        raise StoreError(f"{url!r}: the port is not a number; use etcd://HOST:2379") from None
    return parts.hostname, port, parts.path.rstrip("/")


def _b64(text: str) -> str:
    # UTF-8 (etcd keys are bytes; etcd3gw's _encode would take str as latin-1)
    return _encode(text.encode())


def _int(obj: dict, name: str) -> int:
    # the gateway writes int64 as strings and leaves zero values out
    return int(obj.get(name, 0) or 0)


class EtcdStore(Store):
    def __init__(self, url: str, *, timeout: float = REQUEST_TIMEOUT):
        self.url = url
        self.host, self.port, self.prefix = parse_url(url)
        self.timeout = timeout
        self._local = threading.local()      # one HTTP session per thread
        self._lease_expiry: dict[int, float] = {}
        self._tail: _Tail | None = None
        self._tail_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EtcdStore({self.url!r})"

    # -- plumbing ------------------------------------------------------------
    @property
    def _client(self) -> Etcd3Client:
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._local.client = Etcd3Client(self.host, self.port, timeout=self.timeout,
                                                 api_path="/v3/")
            c.session.trust_env = False  # etcd is on the cluster's network: never through an HTTP proxy
        return c

    def _post(self, path: str, body: dict) -> dict:
        c = self._client
        try:
            return c.post(c.get_url(path), json=body)
        except (etcd3gw_errors.ConnectionFailedError, etcd3gw_errors.ConnectionTimeoutError) as e:
            raise StoreUnavailable(f"etcd at {self.host}:{self.port} is unreachable ({type(e).__name__}); "
                                   f"is it running and reachable from here?") from e
        except etcd3gw_errors.Etcd3Exception as e:
            raise StoreError(f"etcd at {self.host}:{self.port}: {e}") from e

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _range_end(self, prefix: str) -> str:
        end = prefix_end(self._key(prefix))
        return _ALL if end is None else end

    def _kv(self, raw: dict) -> KV:
        key = _decode(raw["key"]).decode()[len(self.prefix):]
        value = _decode(raw["value"]).decode() if raw.get("value") else ""
        lease = _int(raw, "lease")
        return KV(key, value, _int(raw, "create_revision"), _int(raw, "mod_revision"), _int(raw, "version"),
                  self._expires_at(lease) if lease else None)

    def _expires_at(self, lease: int) -> float | None:
        at = self._lease_expiry.get(lease)
        if at is None:
            left = _int(self._post("/kv/lease/timetolive", {"ID": lease}), "TTL")
            at = time.time() + max(left, 0)
            self._lease_expiry[lease] = at
        return at

    def _grant(self, ttl: float) -> int:
        seconds = max(MIN_TTL, math.ceil(ttl))
        now = time.time()
        res = self._post("/lease/grant", {"TTL": seconds})
        lease = _int(res, "ID")
        self._lease_expiry[lease] = now + _int(res, "TTL")
        return lease

    def _revoke(self, lease: int) -> None:
        """A key's old lease, once the key has a new one (else leases pile up until they expire)."""
        try:
            self._post("/kv/lease/revoke", {"ID": lease})
        except StoreError:
            pass  # already expired, or etcd went away: it expires on its own
        self._lease_expiry.pop(lease, None)

    def _put_request(self, key: str, value: str, ttl: float | None) -> dict:
        _check_value(value)
        _check_ttl(ttl)
        req = {"key": _b64(self._key(key)), "value": _b64(value), "prev_kv": True}
        if ttl is not None:
            req["lease"] = self._grant(ttl)
        return req

    def _after_put(self, req: dict, prev: dict | None) -> None:
        old = _int(prev or {}, "lease")
        if old and old != req.get("lease"):
            self._revoke(old)

    def _txn(self, compare: dict, success: dict) -> dict:
        return self._post("/kv/txn", {"compare": [compare], "success": [success]})

    def _mod_equal(self, key: str, revision: int) -> dict:
        return {"key": _b64(self._key(key)), "target": "MOD", "result": "EQUAL", "mod_revision": revision}

    # -- reads ---------------------------------------------------------------
    def get(self, key: str) -> KV | None:
        res = self._post("/kv/range", {"key": _b64(self._key(key))})
        kvs = res.get("kvs") or []
        return self._kv(kvs[0]) if kvs else None

    def list_with_revision(self, prefix: str) -> tuple[list[KV], int]:
        res = self._post("/kv/range", {"key": _b64(self._key(prefix) or _ALL),
                                       "range_end": _b64(self._range_end(prefix))})
        kvs = sorted((self._kv(r) for r in res.get("kvs") or []), key=lambda kv: kv.key)
        return kvs, _int(res["header"], "revision")

    def revision(self) -> int:
        # a range that matches nothing still carries the header's revision
        res = self._post("/kv/range", {"key": _b64("\0"), "count_only": True})
        return _int(res["header"], "revision")

    # -- writes --------------------------------------------------------------
    def put(self, key: str, value: str, *, ttl: float | None = None) -> int:
        req = self._put_request(key, value, ttl)
        res = self._post("/kv/put", req)
        self._after_put(req, res.get("prev_kv"))
        return _int(res["header"], "revision")

    def create(self, key: str, value: str, *, ttl: float | None = None) -> int:
        return self.compare_and_swap(key, value, 0, ttl=ttl)

    def compare_and_swap(self, key: str, value: str, expected_mod_revision: int, *,
                         ttl: float | None = None) -> int:
        req = self._put_request(key, value, ttl)
        res = self._txn(self._mod_equal(key, expected_mod_revision), {"request_put": req})
        if not res.get("succeeded"):
            if "lease" in req:
                self._revoke(req["lease"])
            return 0
        prev = (res.get("responses") or [{}])[0].get("response_put", {}).get("prev_kv")
        self._after_put(req, prev)
        return _int(res["header"], "revision")

    def delete(self, key: str, expected_mod_revision: int | None = None) -> int:
        req = {"key": _b64(self._key(key)), "prev_kv": True}
        if expected_mod_revision is None:
            res = self._post("/kv/deleterange", req)
        else:
            txn = self._txn(self._mod_equal(key, expected_mod_revision), {"request_delete_range": req})
            if not txn.get("succeeded"):
                return 0
            res = dict((txn.get("responses") or [{}])[0].get("response_delete_range", {}), header=txn["header"])
        if not _int(res, "deleted"):
            return 0
        for prev in res.get("prev_kvs") or []:
            if _int(prev, "lease"):
                self._revoke(_int(prev, "lease"))
        return _int(res["header"], "revision")

    def delete_prefix(self, prefix: str) -> int:
        res = self._post("/kv/deleterange", {"key": _b64(self._key(prefix) or _ALL),
                                             "range_end": _b64(self._range_end(prefix))})
        return _int(res, "deleted")

    def compact(self, revision: int) -> None:
        """Drop history up to revision (etcd's Compact)."""
        self._post("/kv/compaction", {"revision": revision, "physical": True})

    # -- history -------------------------------------------------------------
    def events_since(self, prefix: str, revision: int) -> list[Event]:
        head = self.revision()
        if head <= revision:
            return []
        # A poller (an agent's watcher) asks again and again: the first call starts a
        # stream following the whole keyspace, and later calls are answered from what it
        # has seen, once it has seen the head (no new watch each time: etcd serves a watch
        # that starts in the past from a loop that runs every 100 ms).
        with self._tail_lock:
            tail = self._tail
            if tail is not None and tail.failed is not None:
                tail.stop()
                tail = self._tail = None
        if tail is not None:
            events = tail.since(prefix, revision, head, timeout=self.timeout)
            if events is not None:
                return events
        events = self._history(prefix, revision, head)
        with self._tail_lock:
            if self._tail is None:
                self._tail = _Tail(self, head + 1)
        return events

    def _history(self, prefix: str, after: int, head: int | None = None) -> list[Event]:
        """Events under prefix after revision `after`, up to head (default: the head now)."""
        head = self.revision() if head is None else head
        if head <= after:
            return []
        events = []
        # The whole keyspace, filtered here: every revision has at least one event
        # somewhere, so the head's event marks the end of the history asked for.
        with _WatchStream(self, _ALL, _ALL, after + 1, self.timeout) as stream:
            for batch, last in stream.batches(deadline=time.monotonic() + max(self.timeout, 10.0)):
                events += [e for e in batch if e.key.startswith(prefix) and e.revision <= head]
                if last >= head:
                    return events
        raise StoreUnavailable(f"etcd at {self.host}:{self.port}: the watch from revision {after + 1} ended "
                               f"before revision {head}; try again")

    def _event(self, raw: dict) -> Event | None:
        kv = raw["kv"]
        key = _decode(kv["key"]).decode()
        if not key.startswith(self.prefix):
            return None
        prev = self._kv(raw["prev_kv"]) if raw.get("prev_kv") else None
        if raw.get("type") == "DELETE":
            return Event(EventType.DELETE, KV(key[len(self.prefix):], "", 0, _int(kv, "mod_revision"), 0), prev)
        return Event(EventType.PUT, self._kv(kv), prev)

    def watch(self, prefix: str, start_revision: int | None = None, *,
              timeout: float | None = None, stop: threading.Event | None = None,
              poll_interval: float = 0.05) -> Iterator[Event]:
        after = self.revision() if start_revision is None else start_revision - 1
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._watch(prefix, after, deadline, stop)

    def _watch(self, prefix: str, after: int, deadline: float | None,
               stop: threading.Event | None) -> Iterator[Event]:
        # catch up first (so timeout=0 still delivers the history asked for), then stream
        head = self.revision()
        yield from self._history(prefix, after, head)
        follower = _Follower(self, self._key(prefix) or _ALL, self._range_end(prefix), max(head, after) + 1)
        try:
            while True:
                if stop is not None and stop.is_set():
                    return
                wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                if wait <= 0:
                    return
                try:
                    item = follower.queue.get(timeout=wait)
                except queue.Empty:
                    continue
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            follower.stop()

    def close(self) -> None:
        with self._tail_lock:
            if self._tail is not None:
                self._tail.stop()
                self._tail = None
        c = getattr(self._local, "client", None)
        if c is not None:
            c.session.close()
            self._local.client = None


class _WatchStream:
    """One Watch request over the gateway: a streamed HTTP response of JSON lines."""

    def __init__(self, store: EtcdStore, key: str, range_end: str, start_revision: int, idle: float):
        self.store = store
        create = {"key": _b64(key), "range_end": _b64(range_end), "start_revision": start_revision,
                  "prev_kv": True}
        c = Etcd3Client(store.host, store.port, api_path="/v3/")  # its own connection
        c.session.trust_env = False
        self.session = c.session
        self.start_revision = start_revision
        try:
            self.resp = c.session.post(c.get_url("/watch"), json={"create_request": create}, stream=True,
                                       timeout=(store.timeout, idle))
        except requests.RequestException as e:
            self.session.close()
            raise StoreUnavailable(f"etcd at {store.host}:{store.port}: cannot open a watch: {e}") from e
        if self.resp.status_code != 200:
            text = self.resp.text[:200]
            self.close()
            raise StoreError(f"etcd at {store.host}:{store.port}: watch refused: {text}")

    def batches(self, deadline: float | None = None) -> Iterator[tuple[list[Event], int]]:
        """Each response's events under the store's prefix, and the highest revision among
        all its events (0 for a response without). Ends when the stream does; raises
        CompactedError for a start etcd has compacted away."""
        try:
            for line in self.resp.iter_lines():
                if not line.strip():
                    continue
                msg = json.loads(line)
                if "error" in msg:
                    raise StoreError(f"etcd watch: {msg['error']}")
                result = msg.get("result", {})
                if _int(result, "compact_revision"):
                    raise CompactedError(self.start_revision, _int(result, "compact_revision"))
                if result.get("canceled"):
                    raise StoreError(f"etcd canceled the watch: {result.get('cancel_reason') or 'no reason given'}")
                raw = result.get("events") or ()
                last = max((_int(e["kv"], "mod_revision") for e in raw), default=0)
                yield [e for e in map(self.store._event, raw) if e is not None], last
                if deadline is not None and time.monotonic() > deadline:
                    return
        except requests.RequestException:
            return  # closed or silent: the caller decides (reconnect, or give up)

    def close(self) -> None:
        # shut the socket down first: a reader blocked on it in another thread wakes up
        try:
            sock = socket.fromfd(self.resp.raw._fp.fileno(), socket.AF_INET, socket.SOCK_STREAM)
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        except Exception:
            pass
        try:
            self.resp.close()
        except Exception:
            pass
        self.session.close()

    def __enter__(self) -> "_WatchStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Follower:
    """A thread following a key range (raw keys) from a revision into a queue; when the
    stream ends (etcd restarted, the link was cut, it was idle too long) it reopens it
    from the revision after the last one it saw, backing off while etcd is away."""

    def __init__(self, store: EtcdStore, key: str, range_end: str, start_revision: int):
        self.store, self.key, self.range_end, self.next_revision = store, key, range_end, start_revision
        self.queue: queue.Queue = queue.Queue()
        self._stopped = threading.Event()
        self._stream: _WatchStream | None = None
        self._lock = threading.Lock()
        self.reconnects = 0
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"etcd-watch {key!r}")
        self.thread.start()

    def _deliver(self, events: list[Event], last: int) -> None:
        for event in events:
            self.queue.put(event)

    def _fail(self, error: StoreError) -> None:
        self.queue.put(error)

    def _run(self) -> None:
        backoff = 0.1
        while not self._stopped.is_set():
            try:
                stream = _WatchStream(self.store, self.key, self.range_end, self.next_revision, WATCH_IDLE)
            except StoreUnavailable:
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except StoreError as e:
                self._fail(e)
                return
            with self._lock:
                if self._stopped.is_set():
                    stream.close()
                    return
                self._stream = stream
            try:
                for batch, last in stream.batches():
                    backoff = 0.1
                    self._deliver(batch, last)
                    if last:
                        self.next_revision = last + 1
            except StoreError as e:       # compacted or canceled: the consumer must re-list
                self._fail(e)
                return
            finally:
                stream.close()
            self.reconnects += 1

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            if self._stream is not None:
                self._stream.close()


class _Tail(_Follower):
    """The whole keyspace followed from a revision and kept in memory (the last KEEP
    events under the store's prefix), for events_since."""

    KEEP = 10_000

    def __init__(self, store: EtcdStore, start_revision: int):
        self.events: list[Event] = []
        self.covers_from = start_revision    # every event from this revision on is in self.events
        self.seen = start_revision - 1       # the highest revision the stream has shown, any key
        self.failed: StoreError | None = None
        self.cond = threading.Condition()
        super().__init__(store, _ALL, _ALL, start_revision)

    def _deliver(self, events: list[Event], last: int) -> None:
        with self.cond:
            self.events += events
            self.seen = max(self.seen, last)
            if len(self.events) > self.KEEP:
                cut = self.events[-self.KEEP].revision   # whole revisions only
                self.events = self.events[bisect.bisect_left(self.events, cut, key=lambda e: e.revision):]
                self.covers_from = cut
            self.cond.notify_all()

    def _fail(self, error: StoreError) -> None:
        with self.cond:
            self.failed = error
            self.cond.notify_all()

    def since(self, prefix: str, after: int, head: int, *, timeout: float) -> list[Event] | None:
        """Events under prefix in (after, head]; None when this tail cannot say (it starts
        later, it failed, or it has not seen head within timeout)."""
        with self.cond:
            if after + 1 < self.covers_from:
                return None
            if not self.cond.wait_for(lambda: self.seen >= head or self.failed is not None, timeout):
                return None
            if self.failed is not None:
                return None
            first = bisect.bisect_right(self.events, after, key=lambda e: e.revision)
            return [e for e in self.events[first:] if e.revision <= head and e.key.startswith(prefix)]
