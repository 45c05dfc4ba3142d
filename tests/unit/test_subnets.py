"""flannel-style subnet leasing over the SQLite store."""
from __future__ import annotations

import json
import multiprocessing
from ipaddress import IPv4Address, IPv4Network

import pytest

from netlab.store import SQLiteStore
from netlab.store import subnets as sn
from netlab.store.subnets import (
    ADDED, REMOVED, ConfigError, Lease, LeaseLost, NetworkConfig, SubnetsExhausted,
)

VXLAN = {"VNI": 1, "VtepMAC": "12:c6:65:89:b4:e3"}


@pytest.fixture
def store(tmp_path, clock):
    s = SQLiteStore(tmp_path / "store.db", clock=clock)
    sn.set_network_config(s, NetworkConfig.make("10.244.0.0/16", backend={"Type": "vxlan", "VNI": 1}))
    yield s
    s.close()


# -- config ------------------------------------------------------------------

def test_config_defaults_follow_flannel():
    c = NetworkConfig.from_json('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}')
    assert c.subnet_len == 24
    assert c.subnet_min == IPv4Address("10.244.1.0")     # the first /24 is skipped
    assert c.subnet_max == IPv4Address("10.244.255.0")
    assert c.capacity == 255
    assert next(c.subnets()) == IPv4Network("10.244.1.0/24")
    assert c.backend_type == "vxlan"
    # small networks are split in quarters; no Backend means udp, as in flannel
    small = NetworkConfig.from_json('{"Network": "10.1.0.0/23"}')
    assert (small.subnet_len, small.backend_type, small.capacity) == (25, "udp", 3)


@pytest.mark.parametrize("obj, words", [
    ({}, "Network is missing"),
    ({"Network": "10.244.0.1/16"}, "not an IPv4 CIDR"),
    ({"Network": "10.244.0.0/29"}, "too small"),
    ({"Network": "10.244.0.0/16", "SubnetLen": 31}, "/30 or shorter"),
    ({"Network": "10.244.0.0/16", "SubnetLen": 17}, "four subnets"),
    ({"Network": "10.244.0.0/16", "SubnetMin": "10.245.0.0"}, "not in Network"),
    ({"Network": "10.244.0.0/16", "SubnetMax": "10.244.3.7"}, "boundary"),
    ({"Network": "10.244.0.0/16", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.3.0"}, "above"),
    ({"Network": "10.244.0.0/16", "Backend": "vxlan"}, "Backend must be an object"),
])
def test_config_errors_name_the_field(obj, words):
    with pytest.raises(ConfigError, match=words):
        NetworkConfig.from_json(json.dumps(obj), where="lab.yaml")
    with pytest.raises(ConfigError, match="lab.yaml"):
        NetworkConfig.from_json(json.dumps(obj), where="lab.yaml")


def test_config_round_trips_and_is_written_once(store):
    key = sn.config_key()
    assert key == "/coreos.com/network/config"
    assert json.loads(store.get(key).value) == {
        "Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}
    rev = store.revision()
    assert sn.set_network_config(store, sn.get_network_config(store)) == rev
    assert store.revision() == rev  # re-running `up` does not churn the key
    custom = NetworkConfig.make("10.244.0.0/16", subnet_min="10.244.10.0", subnet_max="10.244.20.0")
    assert NetworkConfig.from_json(custom.to_json()) == custom


def test_missing_config_says_what_to_do(tmp_path):
    with SQLiteStore(tmp_path / "empty.db") as s:
        with pytest.raises(ConfigError, match="/coreos.com/network/config.*brought up"):
            sn.acquire_lease(s, "192.168.56.11")


def test_subnet_keys_are_flannels():
    assert sn.subnet_key(IPv4Network("10.244.1.0/24")) == "10.244.1.0-24"
    assert sn.lease_key("10.244.1.0/24") == "/coreos.com/network/subnets/10.244.1.0-24"
    assert sn.parse_subnet_key("/coreos.com/network/subnets/10.244.1.0-24") == IPv4Network("10.244.1.0/24")
    assert sn.parse_subnet_key("10.244.1.0-24&fc00::-64") == IPv4Network("10.244.1.0/24")
    for bad in ["/coreos.com/network/config", "10.244.1.0", "10.244.1.0-x", "10.244.1.1-24", "a-24"]:
        assert sn.parse_subnet_key(bad) is None


# -- leases ------------------------------------------------------------------

def test_first_leases_are_the_lowest_subnets_and_look_like_flannels(store, clock):
    a = sn.acquire_lease(store, "192.168.56.11", VXLAN, ttl=60)
    b = sn.acquire_lease(store, "192.168.56.12", VXLAN, ttl=60)
    assert (a.subnet, b.subnet) == (IPv4Network("10.244.1.0/24"), IPv4Network("10.244.2.0/24"))
    assert str(a.gateway) == "10.244.1.1/24"
    assert a.expiration == pytest.approx(clock.now + 60)
    value = store.get("/coreos.com/network/subnets/10.244.1.0-24").value
    assert value == ('{"PublicIP":"192.168.56.11","PublicIPv6":null,"BackendType":"vxlan",'
                     '"BackendData":{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}}')
    assert sn.list_leases(store) == [a, b]
    assert sn.find_lease(store, "192.168.56.12") == b
    assert sn.find_lease(store, "192.168.56.99") is None


def test_restarted_agent_gets_its_subnet_back(store, clock):
    sn.acquire_lease(store, "192.168.56.11", VXLAN)
    first = sn.acquire_lease(store, "192.168.56.12", VXLAN)
    sn.acquire_lease(store, "192.168.56.13", VXLAN)
    # a new process (new connection), a new VTEP MAC, as after an agent restart
    with SQLiteStore(store.path, clock=clock) as again:
        new_mac = {"VNI": 1, "VtepMAC": "0a:00:00:00:00:02"}
        second = sn.acquire_lease(again, "192.168.56.12", new_mac)
    assert second.subnet == first.subnet == IPv4Network("10.244.2.0/24")
    assert second.mod_revision > first.mod_revision
    kv = store.get(sn.lease_key(first.subnet))
    assert kv.json()["BackendData"] == new_mac and kv.version == 2
    assert len(sn.list_leases(store)) == 3


def test_prefer_takes_the_previous_subnet_when_free(store):
    env = sn.parse_subnet_env(sn.render_subnet_env("10.244.0.0/16", "10.244.7.0/24", 1450))
    lease = sn.acquire_lease(store, "192.168.56.11", VXLAN, prefer=env["FLANNEL_SUBNET"])
    assert lease.subnet == IPv4Network("10.244.7.0/24")
    # taken by someone else, or outside the config: fall back to the lowest free
    assert sn.acquire_lease(store, "192.168.56.12", prefer="10.244.7.0/24").subnet == IPv4Network("10.244.1.0/24")
    assert sn.acquire_lease(store, "192.168.56.13", prefer="10.244.0.0/24").subnet == IPv4Network("10.244.2.0/24")
    assert sn.acquire_lease(store, "192.168.56.14", prefer="10.9.0.0/24").subnet == IPv4Network("10.244.3.0/24")
    assert sn.acquire_lease(store, "192.168.56.15", prefer="garbage").subnet == IPv4Network("10.244.4.0/24")


def test_release_frees_the_subnet_only_for_its_holder(store):
    a = sn.acquire_lease(store, "192.168.56.11", VXLAN)
    impostor = Lease(a.subnet, IPv4Address("192.168.56.99"))
    assert sn.release_lease(store, impostor) is False
    assert sn.release_lease(store, a) is True
    assert sn.release_lease(store, a) is False
    assert sn.acquire_lease(store, "192.168.56.12", VXLAN).subnet == a.subnet


def test_renew_extends_and_detects_a_lost_lease(store, clock):
    a = sn.acquire_lease(store, "192.168.56.11", VXLAN, ttl=100)
    clock.now += 90
    renewed = sn.renew_lease(store, a, ttl=100)
    assert renewed.expiration == pytest.approx(clock.now + 100)
    assert renewed.subnet == a.subnet and renewed.mod_revision > a.mod_revision
    clock.now += 90
    assert sn.list_leases(store) == [renewed]  # still alive thanks to the renewal
    clock.now += 20
    assert sn.list_leases(store) == []
    with pytest.raises(LeaseLost, match="gone"):
        sn.renew_lease(store, renewed)
    # expired, then taken by another node
    sn.acquire_lease(store, "192.168.56.12", VXLAN)
    with pytest.raises(LeaseLost, match="192.168.56.12"):
        sn.renew_lease(store, renewed)


def test_expired_lease_frees_its_subnet_and_watchers_hear_it(store, clock):
    a = sn.acquire_lease(store, "192.168.56.11", VXLAN, ttl=30)
    start = store.revision() + 1
    clock.now += 31
    events = list(sn.watch_leases(store, start, timeout=0))
    assert [(e.type, e.subnet) for e in events] == [(REMOVED, a.subnet)]
    assert events[0].lease.public_ip == IPv4Address("192.168.56.11")  # who left
    assert sn.acquire_lease(store, "192.168.56.12").subnet == a.subnet


def test_reservation_without_ttl_stays_one(store, clock):
    a = sn.acquire_lease(store, "192.168.56.11", VXLAN, ttl=None)
    assert a.expiration is None
    clock.now += 10 * sn.DEFAULT_TTL
    again = sn.acquire_lease(store, "192.168.56.11", VXLAN)
    assert again.subnet == a.subnet and again.expiration is None


def test_lease_from_an_older_config_is_replaced(store):
    old = sn.acquire_lease(store, "192.168.56.11", VXLAN)
    sn.set_network_config(store, NetworkConfig.make("10.244.0.0/16", subnet_len=25))
    new = sn.acquire_lease(store, "192.168.56.11", VXLAN)
    assert new.subnet.prefixlen == 25
    assert not new.subnet.overlaps(old.subnet)
    assert [l.subnet for l in sn.list_leases(store)] == [new.subnet]


def test_exhaustion_names_the_pod_cidr_and_the_fix(tmp_path):
    with SQLiteStore(tmp_path / "small.db") as s:
        sn.set_network_config(s, NetworkConfig.make("10.244.0.0/22"))
        got = [sn.acquire_lease(s, f"192.168.56.{11 + i}").subnet for i in range(3)]
        assert [str(x) for x in got] == ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]
        with pytest.raises(SubnetsExhausted) as err:
            sn.acquire_lease(s, "192.168.56.20")
        message = str(err.value)
        assert "10.244.0.0/22" in message and "all 3 subnets" in message
        assert "larger pod CIDR (e.g. 10.244.0.0/21)" in message
        assert err.value.leased == 3


def test_bad_values_under_subnets_are_ignored(store):
    store.put("/coreos.com/network/subnets/10.244.1.0-24", "not json")
    store.put("/coreos.com/network/subnets/garbage", "{}")
    assert sn.list_leases(store) == []
    # the bad key still occupies its name, so leasing moves past it
    assert sn.acquire_lease(store, "192.168.56.11").subnet == IPv4Network("10.244.2.0/24")


def test_list_then_watch_leases(store):
    a = sn.acquire_lease(store, "192.168.56.11", VXLAN)
    kvs, at = store.list_with_revision(sn.subnets_prefix())
    assert len(kvs) == 1
    b = sn.acquire_lease(store, "192.168.56.12", VXLAN)
    b2 = sn.acquire_lease(store, "192.168.56.12", {"VNI": 1, "VtepMAC": "0a:00:00:00:00:09"})
    store.put("/coreos.com/network/subnets/not-a-subnet", "{}")
    sn.release_lease(store, a)
    events = list(sn.watch_leases(store, at + 1, timeout=0))
    assert [(e.type, str(e.subnet)) for e in events] == [
        (ADDED, "10.244.2.0/24"), (ADDED, "10.244.2.0/24"), (REMOVED, "10.244.1.0/24")]
    assert events[0].lease == b and events[1].lease == b2
    assert events[2].lease.public_ip == a.public_ip
    assert [e.revision for e in events] == sorted(e.revision for e in events)


# -- several agents at once ----------------------------------------------------

def _agent(path: str, i: int, start, results) -> None:
    start.wait()
    s = SQLiteStore(path)
    lease = sn.acquire_lease(s, f"192.168.56.{11 + i}", {"VNI": 1, "VtepMAC": f"0a:00:00:00:00:{i:02x}"})
    results.put((i, str(lease.subnet)))
    s.close()


def test_twenty_agents_at_once_get_twenty_distinct_subnets(tmp_path):
    path = str(tmp_path / "race.db")
    with SQLiteStore(path) as s:
        sn.set_network_config(s, NetworkConfig.make())
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_agent, args=(path, i, start, results)) for i in range(20)]
    for p in procs:
        p.start()
    start.set()
    try:
        got = dict(results.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0] * 20
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert len(set(got.values())) == 20
    assert sorted(got.values(), key=lambda x: IPv4Network(x)) == [f"10.244.{n}.0/24" for n in range(1, 21)]
    with SQLiteStore(path) as s:
        leases = sn.list_leases(s)
        assert len(leases) == 20
        assert {str(l.subnet): str(l.public_ip) for l in leases} == {
            subnet: f"192.168.56.{11 + i}" for i, subnet in got.items()}


# -- subnet.env ----------------------------------------------------------------

def test_render_subnet_env_like_flanneld():
    assert sn.render_subnet_env("10.244.0.0/16", "10.244.1.0/24", 1450) == (
        "FLANNEL_NETWORK=10.244.0.0/16\n"
        "FLANNEL_SUBNET=10.244.1.1/24\n"
        "FLANNEL_MTU=1450\n"
        "FLANNEL_IPMASQ=true\n")
    text = sn.render_subnet_env(IPv4Network("10.1.0.0/23"), IPv4Network("10.1.0.128/25"), 8950, ipmasq=False)
    assert sn.parse_subnet_env(text) == {
        "FLANNEL_NETWORK": "10.1.0.0/23", "FLANNEL_SUBNET": "10.1.0.129/25",
        "FLANNEL_MTU": "8950", "FLANNEL_IPMASQ": "false"}
    assert sn.parse_subnet_env("# comment\n\nFLANNEL_MTU = 1450\n") == {"FLANNEL_MTU": "1450"}
