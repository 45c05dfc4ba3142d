"""The Store contract: revisions, conditional writes, prefixes, watch, TTL,
compaction. The backend-neutral tests run against SQLite and against a real
etcd this module starts on loopback (its own ports and data dir, never the
system's etcd); TTLs are seconds on etcd (its minimum lease is 2 s) and a fake
clock on SQLite. Then several processes on one SQLite file."""
from __future__ import annotations

import itertools
import multiprocessing
import shutil
import threading
import time

import pytest

from netlab.cluster.etcd_server import EtcdServer, free_port
from netlab.store import (
    KV, CompactedError, EventType, SQLiteStore, Store, StoreError, StoreUnavailable, open_store, prefix_end,
)
from netlab.store.etcd import EtcdStore

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    if shutil.which("etcd") is None:
        pytest.skip("no etcd binary (Debian's etcd-server)")
    server = EtcdServer(str(tmp_path_factory.mktemp("etcd") / "data"), client_port=free_port(),
                        peer_port=free_port()).start()
    yield server
    server.destroy()


@pytest.fixture(params=["sqlite", "etcd"])
def connect(request, tmp_path):
    """Opens connections to one fresh store of the backend: SQLite a new file, etcd a
    new key prefix in the module's server."""
    if request.param == "sqlite":
        location = str(tmp_path / "lab" / "store.db")
    else:
        location = f"{request.getfixturevalue('etcd').store_url}/t{next(_prefixes)}"
    opened = []

    def open_one() -> Store:
        opened.append(open_store(location))
        return opened[-1]

    yield open_one
    for s in opened:
        s.close()


@pytest.fixture
def store(connect):
    return connect()


@pytest.fixture
def sqlite_store(tmp_path, clock):
    s = SQLiteStore(tmp_path / "lab" / "store.db", clock=clock)
    yield s
    s.close()


def test_revisions_increase_and_kv_fields(store):
    r1 = store.put("/a", "1")
    r2 = store.put("/b", "2")
    r3 = store.put("/a", "3")
    assert 0 < r1 < r2 < r3 == store.revision()
    assert store.get("/a") == KV("/a", "3", create_revision=r1, mod_revision=r3, version=2)
    assert store.get("/missing") is None


def test_create_only_if_absent(store):
    rev = store.create("/k", "first")
    assert rev == store.revision()
    assert store.create("/k", "second") == 0
    assert store.get("/k").value == "first"
    assert store.revision() == rev  # a failed condition writes nothing


def test_compare_and_swap(store):
    assert store.compare_and_swap("/k", "v1", 5) == 0  # absent: only 0 matches
    r1 = store.compare_and_swap("/k", "v1", 0)
    assert r1
    assert store.compare_and_swap("/k", "v2", 0) == 0  # 0 = must not exist
    assert store.compare_and_swap("/k", "v2", r1 + 100) == 0
    r2 = store.compare_and_swap("/k", "v2", r1)
    assert r2 > r1
    kv = store.get("/k")
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == ("v2", r1, r2, 2)
    assert store.compare_and_swap("/k", "v3", r1) == 0  # stale revision


def test_delete_with_and_without_revision(store):
    r = store.put("/k", "v")
    assert store.delete("/k", expected_mod_revision=r + 1) == 0
    assert store.get("/k") is not None
    assert store.delete("/k", expected_mod_revision=r) > r
    assert store.get("/k") is None
    assert store.delete("/k") == 0
    store.put("/k", "again")
    assert store.delete("/k")
    # a recreated key starts over, as in etcd
    r = store.put("/k", "new")
    assert store.get("/k").version == 1 and store.get("/k").create_revision == r


def test_list_prefix_is_a_prefix_not_a_pattern(store):
    for key in ["/a/1", "/a/2", "/a", "/ab", "/a0", "/b/1", "/a/%_*?[", "/a/\U0010ffff"]:
        store.put(key, key)
    assert [kv.key for kv in store.list("/a/")] == ["/a/%_*?[", "/a/1", "/a/2", "/a/\U0010ffff"]
    assert [kv.key for kv in store.list("/a/%")] == ["/a/%_*?["]
    assert len(store.list("")) == 8
    kvs, rev = store.list_with_revision("/b/")
    assert [kv.key for kv in kvs] == ["/b/1"] and rev == store.revision()


def test_prefix_end():
    assert prefix_end("/a/") == "/a0"
    assert prefix_end("") is None
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\ud7ff") == "\ue000"


def test_delete_prefix_is_one_revision(store):
    for key in ["/p/1", "/p/2", "/p/3", "/q"]:
        store.put(key, "x")
    before = store.revision()
    assert store.delete_prefix("/p/") == 3
    assert store.revision() == before + 1
    events = store.events_since("/p/", before)
    assert [(e.type, e.key, e.revision) for e in events] == [
        (EventType.DELETE, f"/p/{i}", before + 1) for i in (1, 2, 3)]
    assert all(e.prev_kv.value == "x" for e in events)
    assert store.delete_prefix("/p/") == 0
    assert [kv.key for kv in store.list("")] == ["/q"]


def test_values_are_text_and_json_helpers(store):
    with pytest.raises(TypeError, match="put_json"):
        store.put("/k", {"a": 1})
    with pytest.raises(ValueError, match="ttl"):
        store.put("/k", "v", ttl=0)
    rev = store.put_json("/j", {"Network": "10.244.0.0/16", "SubnetLen": 24})
    assert store.get("/j").value == '{"Network":"10.244.0.0/16","SubnetLen":24}'  # compact, like Go
    assert store.get_json("/j")["SubnetLen"] == 24
    assert store.get_json("/none", default={}) == {}
    assert store.create_json("/j", {}) == 0
    assert store.compare_and_swap_json("/j", {"x": 1}, rev)
    assert store.get("/j").json() == {"x": 1}


def test_events_since_and_watch_in_order_from_a_start_revision(store):
    r1 = store.put("/w/a", "1")
    r2 = store.put("/other", "x")
    r3 = store.put("/w/b", "2")
    r4 = store.delete("/w/a")
    r5 = store.put("/w/b", "3")
    got = [(e.type, e.key, e.kv.value, e.revision) for e in store.events_since("/w/", 0)]
    assert got == [
        (EventType.PUT, "/w/a", "1", r1),
        (EventType.PUT, "/w/b", "2", r3),
        (EventType.DELETE, "/w/a", "", r4),
        (EventType.PUT, "/w/b", "3", r5),
    ]
    # watch's start revision is inclusive (etcd's WithRev)
    watched = list(store.watch("/w/", start_revision=r3, timeout=0))
    assert [e.revision for e in watched] == [r3, r4, r5]
    assert watched[1].prev_kv.value == "1"     # a DELETE says what left
    assert watched[2].prev_kv.value == "2"
    assert store.events_since("/w/", r5) == []
    assert r2 in [e.revision for e in store.events_since("", r1 - 1)]  # only the prefix filtered it


def test_watch_sees_writes_from_another_connection(connect):
    reader, writer = connect(), connect()
    start = reader.revision() + 1
    expected = []

    def write():
        time.sleep(0.1)
        for i in range(5):
            expected.append(writer.put(f"/n/{i}", str(i)))
        expected.append(writer.delete("/n/0"))

    t = threading.Thread(target=write)
    t.start()
    seen = []
    for event in reader.watch("/n/", start, timeout=5, poll_interval=0.01):
        seen.append(event.revision)
        if len(seen) == 6:
            break
    t.join()
    assert seen == expected


def test_watch_ends_on_timeout_or_stop(store):
    t0 = time.monotonic()
    assert list(store.watch("/x/", timeout=0.2, poll_interval=0.05)) == []
    assert 0.15 < time.monotonic() - t0 < 2
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    t0 = time.monotonic()
    assert list(store.watch("/x/", stop=stop, poll_interval=10)) == []
    assert time.monotonic() - t0 < 2  # stop interrupts the wait


def test_watch_without_start_revision_sees_writes_after_the_call(store):
    store.put("/x/old", "1")
    events = store.watch("/x/", timeout=5, poll_interval=0.01)
    store.put("/x/new", "2")  # before the first next(), after the call
    assert next(events).key == "/x/new"


def test_ttl_expiry_hides_then_deletes_with_event(sqlite_store, clock):
    store = sqlite_store
    store.put("/lease/a", "v", ttl=10)
    r = store.put("/lease/b", "forever")
    assert store.get("/lease/a").ttl(clock.now) == pytest.approx(10)
    assert store.get("/lease/b").ttl() is None
    clock.now += 9
    assert store.get("/lease/a") is not None
    clock.now += 2
    assert store.get("/lease/a") is None                      # hidden at once
    assert [kv.key for kv in store.list("/lease/")] == ["/lease/b"]
    events = store.events_since("/lease/", r)                 # a poll expires it
    assert [(e.type, e.key) for e in events] == [(EventType.DELETE, "/lease/a")]
    assert events[0].prev_kv.value == "v"
    assert events[0].revision == store.revision()
    assert store.sweep() == 0
    # gone means gone for conditional writes too
    assert store.create("/lease/a", "w", ttl=10)


def test_ttl_is_cleared_by_a_put_without_ttl_and_sweep_counts(sqlite_store, clock):
    store = sqlite_store
    store.put("/t/a", "v", ttl=5)
    store.put("/t/a", "v")
    store.put("/t/b", "v", ttl=5)
    store.put("/t/c", "v", ttl=5)
    clock.now += 6
    assert store.sweep() == 2
    assert [kv.key for kv in store.list("/t/")] == ["/t/a"]


def test_expiry_comes_before_a_write_in_the_same_call(sqlite_store, clock):
    store = sqlite_store
    r = store.put("/k", "old", ttl=1)
    clock.now += 2
    assert store.compare_and_swap("/k", "new", r) == 0   # expired first, so r no longer matches
    assert store.compare_and_swap("/k", "new", 0)


def test_compaction_keeps_recent_history(tmp_path):
    s = SQLiteStore(tmp_path / "c.db", history=10)
    for i in range(40):
        s.put("/c", str(i))
    rev = s.revision()
    assert len(s.events_since("", rev - 10)) == 10
    with pytest.raises(CompactedError) as err:
        s.events_since("", 0)
    assert err.value.compact_revision > 0 and "re-list" in str(err.value)
    with pytest.raises(CompactedError):
        list(s.watch("", start_revision=1, timeout=0))
    # the recovery an agent does: re-list, then watch from that revision + 1
    kvs, at = s.list_with_revision("")
    s.put("/c", "after")
    assert [e.kv.value for e in s.watch("", at + 1, timeout=0)] == ["after"]
    s.compact(s.revision())
    assert s.events_since("", s.revision()) == []
    s.close()


def test_data_survives_reopen(tmp_path):
    path = tmp_path / "r.db"
    with SQLiteStore(path) as s:
        s.put("/k", "v")
        rev = s.revision()
    with open_store(path) as s:
        assert s.get("/k").value == "v" and s.revision() == rev
    with open_store(f"sqlite://{path}") as s:
        assert s.revision() == rev


def test_open_store_picks_the_backend_from_the_location(tmp_path):
    assert isinstance(open_store(tmp_path / "x.db"), SQLiteStore)
    s = open_store("etcd://192.0.2.1:2379/lab1")
    assert isinstance(s, EtcdStore) and (s.host, s.port, s.prefix) == ("192.0.2.1", 2379, "/lab1")
    assert open_store("etcd://etcd.example").port == 2379
    with pytest.raises(StoreError, match="etcd://HOST"):
        open_store("etcd:///nohost")
    with pytest.raises(StoreError, match="TLS"):
        open_store("https://192.0.2.1:2379")


# -- etcd only: TTLs in seconds, compaction, a restart, an unreachable server ------------

def test_etcd_ttl_expires_in_seconds_with_a_delete_event(etcd):
    s = open_store(f"{etcd.store_url}/ttl{next(_prefixes)}")
    r = s.put("/lease/a", "v", ttl=2)
    s.put("/lease/b", "forever")
    kv = s.get("/lease/a")
    assert 0 < kv.ttl() <= 2 and s.get("/lease/b").ttl() is None
    deadline = time.monotonic() + 10
    while s.get("/lease/a") is not None:       # etcd expires leases itself, within a second or so
        assert time.monotonic() < deadline, "a 2 s lease outlived 10 s"
        time.sleep(0.2)
    events = s.events_since("/lease/", r)
    assert [(e.type, e.key) for e in events if e.key == "/lease/a"] == [(EventType.DELETE, "/lease/a")]
    assert events[-1].prev_kv.value == "v"
    # a TTL below etcd's minimum is raised to it, never refused
    s.put("/lease/short", "v", ttl=0.5)
    assert s.get("/lease/short").ttl() >= 1
    # a put without TTL keeps the key for good (the old lease is revoked, not left to expire it)
    s.put("/lease/c", "v", ttl=2)
    s.put("/lease/c", "v")
    assert s.get("/lease/c").expires_at is None
    s.close()


def test_etcd_compacted_history_raises_compacted_error(etcd):
    s = open_store(f"{etcd.store_url}/cmp{next(_prefixes)}")
    first = s.put("/c", "0")
    for i in range(5):
        s.put("/c", str(i + 1))
    s.compact(s.revision() - 1)
    with pytest.raises(CompactedError):
        s.events_since("/c", first - 1)
    with pytest.raises(CompactedError):
        list(s.watch("/c", start_revision=first, timeout=0))
    kvs, at = s.list_with_revision("/c")
    s.put("/c", "after")
    assert [e.kv.value for e in s.watch("/c", at + 1, timeout=0)] == ["after"]
    s.close()


def test_etcd_watch_survives_a_restart_from_the_revision_it_had(tmp_path):
    server = EtcdServer(str(tmp_path / "data"), client_port=free_port(), peer_port=free_port()).start()
    try:
        s = open_store(server.store_url)
        start = s.put("/r/0", "before") + 1
        events = s.watch("/r/", start_revision=start, timeout=60)
        s.put("/r/1", "1")
        assert next(events).kv.value == "1"
        server.stop()                           # the stream closes under the watch
        with pytest.raises(StoreUnavailable, match="unreachable"):
            s.put("/r/x", "x")
        server.start()
        s.put("/r/2", "2")
        s.delete("/r/1")
        got = [next(events) for _ in range(2)]  # nothing lost, nothing twice
        assert [(e.type, e.key) for e in got] == [(EventType.PUT, "/r/2"), (EventType.DELETE, "/r/1")]
        events.close()
        s.close()
    finally:
        server.destroy()


def test_etcd_polling_events_since_is_exact_across_a_restart(tmp_path):
    # an agent's watcher polls events_since: answered from one followed stream, exactly
    server = EtcdServer(str(tmp_path / "data"), client_port=free_port(), peer_port=free_port()).start()
    try:
        reader, writer = open_store(server.store_url + "/p"), open_store(server.store_url + "/p")
        after, seen = reader.revision(), []

        def poll():
            nonlocal after
            events = reader.events_since("/k/", after)
            seen.extend((e.type, e.key) for e in events)
            after = max([after] + [e.revision for e in events])

        for i in range(3):
            writer.put(f"/k/{i}", "v")
            writer.put("/other", "x")   # outside the prefix asked for
            poll()
        server.stop()
        with pytest.raises(StoreUnavailable):
            poll()
        server.start()
        writer.delete("/k/0")
        writer.put("/k/3", "v")
        poll()
        assert seen == [(EventType.PUT, "/k/0"), (EventType.PUT, "/k/1"), (EventType.PUT, "/k/2"),
                        (EventType.DELETE, "/k/0"), (EventType.PUT, "/k/3")]
        reader.close()
        writer.close()
    finally:
        server.destroy()


def test_etcd_unreachable_fails_fast_and_says_so():
    s = open_store(f"etcd://127.0.0.1:{free_port()}", timeout=1)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match="unreachable"):
        s.get("/k")
    assert time.monotonic() - t0 < 5


def test_etcd_prefix_keeps_stores_apart(etcd):
    a, b = open_store(f"{etcd.store_url}/a{next(_prefixes)}"), open_store(f"{etcd.store_url}/b{next(_prefixes)}")
    a.put("/k", "a")
    assert b.get("/k") is None and b.list("") == []
    rev = b.put("/k", "b")
    assert [e.kv.value for e in b.events_since("", rev - 5)] == ["b"]
    assert a.get("/k").value == "a"


# -- several processes on one file ------------------------------------------

def _increment(path: str, times: int, start) -> None:
    start.wait()
    s = SQLiteStore(path)
    done = 0
    while done < times:
        kv = s.get("/counter")
        n = int(kv.value) if kv else 0
        if s.compare_and_swap("/counter", str(n + 1), kv.mod_revision if kv else 0):
            done += 1
    s.close()


def _open_and_put(path: str, i: int, start) -> None:
    start.wait()
    s = SQLiteStore(path)
    s.put(f"/p/{i}", str(i))
    s.close()


def _run_all(target, args_list):
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=target, args=(*args, start)) for args in args_list]
    for p in procs:
        p.start()
    start.set()
    try:
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * len(procs)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()


_inherited: SQLiteStore | None = None


def _put_through_inherited_store(i: int, start) -> None:
    start.wait()
    _inherited.put(f"/forked/{i}", "x")


def test_a_store_object_survives_fork(tmp_path):
    # an SQLite connection must not cross fork(); the child reopens its own
    global _inherited
    _inherited = SQLiteStore(tmp_path / "fork.db")
    try:
        _inherited.put("/parent", "before")
        _run_all(_put_through_inherited_store, [(i,) for i in range(4)])
        assert len(_inherited.list("/forked/")) == 4
        assert _inherited.put("/parent", "after") == 6
    finally:
        _inherited.close()
        _inherited = None


def test_compare_and_swap_is_atomic_across_processes(tmp_path):
    path = str(tmp_path / "cas.db")
    SQLiteStore(path).close()
    _run_all(_increment, [(path, 25)] * 8)
    with SQLiteStore(path) as s:
        assert s.get("/counter").value == str(8 * 25)
        assert s.get("/counter").version == 8 * 25
        events = s.events_since("/counter", 0)
        assert [e.revision for e in events] == list(range(1, 8 * 25 + 1))


def test_many_processes_open_a_fresh_file_at_once(tmp_path):
    path = str(tmp_path / "fresh.db")
    _run_all(_open_and_put, [(path, i) for i in range(12)])
    with SQLiteStore(path) as s:
        assert len(s.list("/p/")) == 12 and s.revision() == 12
