"""netlab-ipam (cni/ipam/hostlocal.py): config parsing, allocation, release,
GC and STATUS, called in-process with tmp_path as the data directory."""
from __future__ import annotations

import ipaddress
import json
import os
import stat
import subprocess
import sys

import pytest

from cni import skel, spec
from cni.ipam import hostlocal as hl
from cni.spec import CniError

NET = "testnet"


def make_conf(tmp_path, version="1.1.0", **ipam):
    ipam.setdefault("ranges", [[{"subnet": "10.244.1.0/24"}]])
    return {"cniVersion": version, "name": NET, "type": "netlab-bridge",
            "ipam": {"type": "netlab-ipam", "dataDir": str(tmp_path), **ipam}}


def att(cid="c1", ifname="eth0", command="ADD", args=None):
    return spec.Attachment(command=command, container_id=cid, netns="/run/netns/x",
                           ifname=ifname, args=args or {})


def add(conf, cid="c1", ifname="eth0", args=None):
    return hl.cmd_add(conf, att(cid, ifname, args=args))


def addr(result, i=0):
    return result["ips"][i]["address"].split("/")[0]


def lease_files(tmp_path):
    d = tmp_path / NET
    return sorted(p.name for p in d.iterdir() if hl._parse_ip_name(p.name)) if d.exists() else []


def ip(s):
    return ipaddress.ip_address(s)


# ---------------------------------------------------------------- parsing

def test_defaults_ipv4():
    [[r]] = hl.parse_ranges({"ranges": [[{"subnet": "10.244.1.0/24"}]]})
    assert (str(r.start), str(r.end), str(r.gateway)) == ("10.244.1.1", "10.244.1.254", "10.244.1.1")
    assert r.capacity() == 253  # .1 is the gateway, .255 the broadcast
    assert r.where == "ipam.ranges[0][0]"


def test_defaults_ipv6_end_at_last_address():
    [[r]] = hl.parse_ranges({"ranges": [[{"subnet": "fd00:10::/120"}]]})
    assert (str(r.start), str(r.end), str(r.gateway)) == ("fd00:10::1", "fd00:10::ff", "fd00:10::1")


def test_explicit_start_end_gateway():
    [[r]] = hl.parse_ranges({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10",
                                         "rangeEnd": "10.0.0.20", "gateway": "10.0.0.254"}]]})
    assert (str(r.start), str(r.end), str(r.gateway)) == ("10.0.0.10", "10.0.0.20", "10.0.0.254")
    assert r.capacity() == 11


def test_single_range_shorthand_comes_first():
    sets = hl.parse_ranges({"subnet": "10.0.0.0/24", "gateway": "10.0.0.254",
                            "ranges": [[{"subnet": "fd00::/64"}]]})
    assert [s[0].where for s in sets] == ["ipam", "ipam.ranges[0][0]"]
    assert str(sets[0][0].gateway) == "10.0.0.254"


def test_runtime_ip_ranges_come_first():
    sets = hl.parse_ranges({"ranges": [[{"subnet": "10.0.0.0/24"}]]}, [[{"subnet": "10.1.0.0/24"}]])
    assert [str(s[0].subnet) for s in sets] == ["10.1.0.0/24", "10.0.0.0/24"]
    assert sets[0][0].where == "runtimeConfig.ipRanges[0][0]"


def one(**r):
    return {"ranges": [[r]]}


BAD = [
    # (ipam section, text the message must contain)
    (one(subnet="10.0.0/24"), "ipam.ranges[0][0].subnet"),
    (one(subnet="bogus"), '"bogus"'),
    (one(subnet=42), "ipam.ranges[0][0].subnet"),
    (one(gateway="10.0.0.1"), "ipam.ranges[0][0].subnet is missing"),
    (one(subnet="10.0.0.0"), "no prefix length"),
    (one(subnet="10.0.0.5/24"), "host bits"),
    (one(subnet="10.0.0.0/31"), "too small to allocate from"),
    (one(subnet="10.0.0.1/32"), "too small to allocate from"),
    (one(subnet="fd00::/127"), "too small to allocate from"),
    (one(subnet="10.0.0.0/24", rangeStart="10.0.1.5"), "ipam.ranges[0][0].rangeStart"),
    (one(subnet="10.0.0.0/24", rangeEnd="10.0.1.5"), "ipam.ranges[0][0].rangeEnd"),
    (one(subnet="10.0.0.0/24", gateway="10.0.1.1"), "ipam.ranges[0][0].gateway"),
    (one(subnet="10.0.0.0/24", gateway="10.0.0.x"), '"10.0.0.x"'),
    (one(subnet="10.0.0.0/24", gateway="fd00::1"), "ipam.ranges[0][0].gateway"),
    (one(subnet="10.0.0.0/24", gateway=7), "ipam.ranges[0][0].gateway"),
    (one(subnet="10.0.0.0/24", rangeStart="10.0.0.50", rangeEnd="10.0.0.40"), "ipam.ranges[0][0].rangeStart"),
    ({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "bogus"}]]}, "ipam.ranges[0][1].subnet"),
    ({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.0/25"}]]}, "ipam.ranges[0][1]"),
    ({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.128/25"}]]}, "ipam.ranges[1][0]"),
    ({"subnet": "10.0.0.0/24", "ranges": [[{"subnet": "10.0.0.0/24"}]]}, "ipam.ranges[0][0]"),
    ({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}, "mixed address families"),
    ({"ranges": {"subnet": "10.0.0.0/24"}}, "ipam.ranges must be a list"),
    ({"ranges": [{"subnet": "10.0.0.0/24"}]}, "ipam.ranges[0] must be a list"),
    ({"ranges": [[]]}, "ipam.ranges[0] is an empty range set"),
    ({"ranges": [["10.0.0.0/24"]]}, "ipam.ranges[0][0] must be an object"),
    ({"ranges": []}, "no address ranges"),
    ({}, "no address ranges"),
    ({"rangeStart": "10.0.0.5"}, "ipam.rangeStart"),
    ({"subnet": "10.0.0.0/31"}, "ipam.subnet"),
]


@pytest.mark.parametrize("ipam,needle", BAD, ids=[n for _, n in BAD])
def test_parse_ranges_rejects(ipam, needle):
    with pytest.raises(CniError) as e:
        hl.parse_ranges(ipam)
    assert e.value.code == spec.INVALID_CONFIG
    assert needle in e.value.msg
    assert e.value.details  # always says what to do


def test_overlap_message_names_both_ranges():
    with pytest.raises(CniError) as e:
        hl.parse_ranges({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.200"}]]})
    assert "ipam.ranges[0][0]" in e.value.msg and "ipam.ranges[1][0]" in e.value.msg


def test_disjoint_pools_in_one_subnet_are_fine():
    sets = hl.parse_ranges({"ranges": [[
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.19"},
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.20", "rangeEnd": "10.0.0.29"}]]})
    assert len(sets[0]) == 2


BAD_CONF = [
    ({"routes": {"dst": "0.0.0.0/0"}}, "ipam.routes"),
    ({"routes": [{"dst": "0.0.0.0"}]}, "ipam.routes[0].dst"),
    ({"routes": [{"dst": "nope/8"}]}, "ipam.routes[0].dst"),
    ({"routes": [{"gw": "10.0.0.1"}]}, "ipam.routes[0].dst"),
    ({"routes": [{"dst": "0.0.0.0/0", "gw": "x"}]}, "ipam.routes[0].gw"),
    ({"routes": [{"dst": "0.0.0.0/0", "gw": "fd00::1"}]}, "ipam.routes[0].gw"),
    ({"routes": ["0.0.0.0/0"]}, "ipam.routes[0]"),
    ({"dataDir": 5}, "ipam.dataDir"),
    ({"resolvConf": ["x"]}, "ipam.resolvConf"),
    ({"resolvConf": "/nonexistent/resolv.conf"}, "ipam.resolvConf"),
]


@pytest.mark.parametrize("ipam,needle", BAD_CONF, ids=[n for _, n in BAD_CONF])
def test_add_rejects_bad_config(tmp_path, ipam, needle):
    conf = make_conf(tmp_path, **ipam)
    if "dataDir" in ipam:
        conf["ipam"]["dataDir"] = ipam["dataDir"]
    with pytest.raises(CniError) as e:
        add(conf)
    assert e.value.code == spec.INVALID_CONFIG
    assert needle in e.value.msg and e.value.details
    assert lease_files(tmp_path) == []


def test_missing_or_bad_ipam_section(tmp_path):
    for ipam in (None, "host-local"):
        conf = {"cniVersion": "1.0.0", "name": NET, "type": "netlab-bridge"}
        if ipam is not None:
            conf["ipam"] = ipam
        with pytest.raises(CniError) as e:
            add(conf)
        assert e.value.code == spec.INVALID_CONFIG and "ipam" in e.value.msg and e.value.details


# ---------------------------------------------------------------- ADD

def test_add_result_shape_and_files(tmp_path):
    conf = make_conf(tmp_path, routes=[{"dst": "0.0.0.0/0"}, {"dst": "10.96.0.0/12", "gw": "10.244.1.1"}])
    res = add(conf)
    assert res == {"cniVersion": "1.1.0",
                   "ips": [{"address": "10.244.1.2/24", "gateway": "10.244.1.1"}],
                   "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.96.0.0/12", "gw": "10.244.1.1"}],
                   "dns": {}}
    d = tmp_path / NET
    assert (d / "10.244.1.2").read_bytes() == b"c1\r\neth0"
    assert stat.S_IMODE((d / "10.244.1.2").stat().st_mode) == 0o600
    assert (d / "last_reserved_ip.0").read_text() == "10.244.1.2"
    assert (d / "lock").exists()


def test_round_robin_does_not_reuse_released_address(tmp_path):
    conf = make_conf(tmp_path)
    assert [addr(add(conf, f"c{i}")) for i in range(3)] == ["10.244.1.2", "10.244.1.3", "10.244.1.4"]
    hl.cmd_del(conf, att("c0", command="DEL"))
    assert addr(add(conf, "c9")) == "10.244.1.5"


def test_round_robin_wraps_and_skips_gateway_inside_range(tmp_path):
    conf = make_conf(tmp_path, ranges=[[{"subnet": "10.0.0.0/29", "rangeStart": "10.0.0.1",
                                         "rangeEnd": "10.0.0.4", "gateway": "10.0.0.3"}]])
    assert [addr(add(conf, f"c{i}")) for i in range(3)] == ["10.0.0.1", "10.0.0.2", "10.0.0.4"]
    hl.cmd_del(conf, att("c1", command="DEL"))
    assert addr(add(conf, "c7")) == "10.0.0.2"  # wrapped past .4 back to the start


def test_round_robin_across_ranges_of_a_set(tmp_path):
    conf = make_conf(tmp_path, ranges=[[
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.11"},
        {"subnet": "10.0.1.0/24", "rangeStart": "10.0.1.10", "rangeEnd": "10.0.1.10"}]])
    got = [add(conf, f"c{i}")["ips"][0] for i in range(3)]
    assert [g["address"] for g in got] == ["10.0.0.10/24", "10.0.0.11/24", "10.0.1.10/24"]
    assert got[2]["gateway"] == "10.0.1.1"


def test_stale_last_reserved_starts_from_the_top(tmp_path):
    conf = make_conf(tmp_path)
    (tmp_path / NET).mkdir()
    (tmp_path / NET / "last_reserved_ip.0").write_text("192.168.9.9")
    assert addr(add(conf)) == "10.244.1.2"


def test_duplicate_allocation_is_refused(tmp_path):
    conf = make_conf(tmp_path)
    add(conf)
    with pytest.raises(CniError) as e:
        add(conf)
    assert e.value.code == spec.DUPLICATE_ALLOCATION
    assert "duplicate allocation is not allowed" in e.value.msg and "10.244.1.2" in e.value.msg
    assert addr(add(conf, "c1", "eth1")) == "10.244.1.3"  # another interface is another attachment
    assert len(lease_files(tmp_path)) == 2


def test_dual_stack_one_address_per_set(tmp_path):
    conf = make_conf(tmp_path, ranges=[[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]])
    res = add(conf)
    assert res["ips"] == [{"address": "10.244.1.2/24", "gateway": "10.244.1.1"},
                          {"address": "fd00:10:244:1::2/64", "gateway": "fd00:10:244:1::1"}]
    # the file name is the address as host-local (Go's net.IP.String) writes it
    assert lease_files(tmp_path) == ["10.244.1.2", "fd00:10:244:1::2"]
    assert (tmp_path / NET / "last_reserved_ip.1").read_text() == "fd00:10:244:1::2"


def test_ipv6_range_bounds(tmp_path):
    conf = make_conf(tmp_path, ranges=[[{"subnet": "fd00::/126"}]])
    assert [addr(add(conf, f"c{i}")) for i in range(2)] == ["fd00::2", "fd00::3"]
    with pytest.raises(CniError) as e:
        add(conf, "c9")
    assert e.value.code == spec.TRY_AGAIN_LATER


def test_exhaustion(tmp_path):
    conf = make_conf(tmp_path, ranges=[[{"subnet": "10.0.0.0/29"}]])
    got = {addr(add(conf, f"c{i}")) for i in range(5)}
    assert got == {f"10.0.0.{i}" for i in range(2, 7)}
    with pytest.raises(CniError) as e:
        add(conf, "late")
    assert e.value.code == spec.TRY_AGAIN_LATER == 11
    assert "exhausted" in e.value.msg and "ipam.ranges[0]" in e.value.msg and "10.0.0.1-10.0.0.6" in e.value.msg
    assert "GC" in e.value.details and "widen" in e.value.details


def test_failure_in_later_set_rolls_back_earlier_sets(tmp_path):
    conf = make_conf(tmp_path, ranges=[[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/30"}]])
    add(conf, "a")
    with pytest.raises(CniError) as e:
        add(conf, "b")
    assert e.value.code == spec.TRY_AGAIN_LATER and "range set 1" in e.value.msg
    assert lease_files(tmp_path) == ["10.0.0.2", "10.1.0.2"]  # b's 10.0.0.3 was released


def test_resolv_conf_becomes_dns(tmp_path):
    rc = tmp_path / "resolv.conf"
    rc.write_text("# comment\nnameserver 10.96.0.10\nnameserver 1.1.1.1\nsearch a.svc b.svc\n"
                  "domain cluster.local\noptions ndots:5 edns0\n; other\nbogus\n")
    res = add(make_conf(tmp_path, resolvConf=str(rc)))
    assert res["dns"] == {"nameservers": ["10.96.0.10", "1.1.1.1"], "search": ["a.svc", "b.svc"],
                          "domain": "cluster.local", "options": ["ndots:5", "edns0"]}


# ---------------------------------------------------------------- requested IPs

def test_requested_ip_from_cni_args(tmp_path):
    assert addr(add(make_conf(tmp_path), args={"IP": "10.244.1.77"})) == "10.244.1.77"


def test_requested_ip_from_args_cni_ips(tmp_path):
    conf = make_conf(tmp_path)
    conf["args"] = {"cni": {"ips": ["10.244.1.78"]}}
    assert addr(add(conf)) == "10.244.1.78"


def test_requested_ip_from_runtime_config_with_prefix(tmp_path):
    conf = make_conf(tmp_path, ranges=[[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00::/64"}]])
    conf["runtimeConfig"] = {"ips": ["fd00::99/64", "10.244.1.79/24"]}
    res = add(conf)
    assert [addr(res, 0), addr(res, 1)] == ["10.244.1.79", "fd00::99"]


def test_requested_ip_taken(tmp_path):
    conf = make_conf(tmp_path)
    add(conf, "a", args={"IP": "10.244.1.50"})
    with pytest.raises(CniError) as e:
        add(conf, "b", args={"IP": "10.244.1.50"})
    assert e.value.code == spec.TRY_AGAIN_LATER and "10.244.1.50" in e.value.msg and "a (eth0)" in e.value.msg


@pytest.mark.parametrize("args,code,needle", [
    ({"IP": "10.9.9.9"}, spec.INVALID_CONFIG, "not inside any range set"),
    ({"IP": "10.244.1.1"}, spec.INVALID_CONFIG, "gateway"),
    ({"IP": "10.244.1.5,10.244.1.6"}, spec.INVALID_CONFIG, "not inside any range set"),
    ({"IP": "nope"}, spec.INVALID_ENV, "CNI_ARGS IP"),
])
def test_requested_ip_refused(tmp_path, args, code, needle):
    with pytest.raises(CniError) as e:
        add(make_conf(tmp_path), args=args)
    assert e.value.code == code and needle in e.value.msg and e.value.details
    assert lease_files(tmp_path) == []


def test_requested_ip_bad_runtime_config(tmp_path):
    conf = make_conf(tmp_path)
    conf["runtimeConfig"] = {"ips": ["10.244.1.x"]}
    with pytest.raises(CniError) as e:
        add(conf)
    assert e.value.code == spec.INVALID_CONFIG and "runtimeConfig.ips[0]" in e.value.msg


# ---------------------------------------------------------------- DEL / CHECK

def test_del_releases_and_is_idempotent(tmp_path):
    conf = make_conf(tmp_path, ranges=[[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00::/64"}]])
    add(conf, "a")
    add(conf, "b")
    for _ in range(2):
        assert hl.cmd_del(conf, att("a", command="DEL")) is None
    assert lease_files(tmp_path) == ["10.244.1.3", "fd00::3"]
    # bookkeeping stays, as with host-local
    assert (tmp_path / NET / "last_reserved_ip.0").read_text() == "10.244.1.3"


def test_del_without_directory_creates_nothing(tmp_path):
    hl.cmd_del(make_conf(tmp_path), att(command="DEL"))
    assert not (tmp_path / NET).exists()


def test_del_works_when_ranges_became_invalid(tmp_path):
    conf = make_conf(tmp_path)
    add(conf)
    conf["ipam"]["ranges"] = [[{"subnet": "garbage"}]]
    hl.cmd_del(conf, att(command="DEL"))
    assert lease_files(tmp_path) == []


def test_del_falls_back_to_id_only_legacy_leases(tmp_path):
    conf = make_conf(tmp_path)
    d = tmp_path / NET
    d.mkdir()
    (d / "10.244.1.9").write_text("old")        # written by an old host-local
    (d / "10.244.1.10").write_text("other\r\neth0")
    hl.cmd_del(conf, att("old", "eth0", command="DEL"))
    assert lease_files(tmp_path) == ["10.244.1.10"]


def test_del_of_one_interface_keeps_the_others(tmp_path):
    conf = make_conf(tmp_path)
    add(conf, "c", "eth0")
    add(conf, "c", "eth1")
    hl.cmd_del(conf, att("c", "eth1", command="DEL"))
    hl.cmd_del(conf, att("c", "eth2", command="DEL"))  # nothing of eth2: no fallback to eth0's lease
    assert lease_files(tmp_path) == ["10.244.1.2"]


def test_check(tmp_path):
    conf = make_conf(tmp_path)
    with pytest.raises(CniError) as e:
        hl.cmd_check(conf, att(command="CHECK"))
    assert e.value.code == spec.CHECK_MISMATCH and "c1" in e.value.msg
    assert not (tmp_path / NET).exists()
    add(conf)
    assert hl.cmd_check(conf, att(command="CHECK")) is None
    with pytest.raises(CniError):
        hl.cmd_check(conf, att("c1", "eth1", command="CHECK"))
    hl.cmd_del(conf, att(command="DEL"))
    with pytest.raises(CniError):
        hl.cmd_check(conf, att(command="CHECK"))


# ---------------------------------------------------------------- GC / STATUS

def gc_conf(tmp_path, valid, key="cni.dev/valid-attachments"):
    conf = make_conf(tmp_path)
    conf[key] = [{"containerID": c, "ifname": i} for c, i in valid]
    return conf


def test_gc_releases_what_is_not_valid(tmp_path):
    conf = make_conf(tmp_path)
    add(conf, "a", "eth0")   # .2 keep
    add(conf, "b", "eth0")   # .3 stale
    add(conf, "a", "eth1")   # .4 stale: same container, other interface
    (tmp_path / NET / "10.244.1.100").write_text("legacy")  # ID-only: kept while its container is valid
    (tmp_path / NET / "10.244.1.101").write_text("gone")
    hl.cmd_gc(gc_conf(tmp_path, [("a", "eth0"), ("legacy", "eth0")]), att(command="GC"))
    assert lease_files(tmp_path) == ["10.244.1.100", "10.244.1.2"]
    assert (tmp_path / NET / "lock").exists() and (tmp_path / NET / "last_reserved_ip.0").exists()


def test_gc_accepts_the_v110_key_and_empty_list(tmp_path):
    conf = make_conf(tmp_path)
    add(conf, "a")
    hl.cmd_gc(gc_conf(tmp_path, [("a", "eth0")], key="cni.dev/attachments"), att(command="GC"))
    assert lease_files(tmp_path) == ["10.244.1.2"]
    hl.cmd_gc(gc_conf(tmp_path, []), att(command="GC"))
    assert lease_files(tmp_path) == []


def test_gc_continues_past_errors(tmp_path, monkeypatch):
    conf = make_conf(tmp_path)
    for c in "abc":
        add(conf, c)
    real = hl.Store.remove

    def flaky(self, ip):
        if str(ip) == "10.244.1.3":
            raise PermissionError(1, "Operation not permitted")
        real(self, ip)
    monkeypatch.setattr(hl.Store, "remove", flaky)
    with pytest.raises(CniError) as e:
        hl.cmd_gc(gc_conf(tmp_path, []), att(command="GC"))
    assert e.value.code == spec.IO_FAILURE and "10.244.1.3" in e.value.msg
    assert lease_files(tmp_path) == ["10.244.1.3"]


def test_gc_without_directory(tmp_path):
    hl.cmd_gc(gc_conf(tmp_path, []), att(command="GC"))
    assert not (tmp_path / NET).exists()


def test_status(tmp_path):
    conf = make_conf(tmp_path, ranges=[[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/30"}]])
    assert hl.cmd_status(conf, att(command="STATUS")) is None
    assert not (tmp_path / NET).exists()  # STATUS does not create anything
    add(conf)
    with pytest.raises(CniError) as e:
        hl.cmd_status(conf, att(command="STATUS"))
    assert e.value.code == spec.NOT_AVAILABLE and "range set 1" in e.value.msg and "exhausted" in e.value.msg
    hl.cmd_del(conf, att(command="DEL"))
    assert hl.cmd_status(conf, att(command="STATUS")) is None


def test_status_unusable_data_dir(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    conf = make_conf(tmp_path)
    conf["ipam"]["dataDir"] = str(f)
    with pytest.raises(CniError) as e:
        hl.cmd_status(conf, att(command="STATUS"))
    assert e.value.code == spec.NOT_AVAILABLE and str(f) in e.value.msg
    with pytest.raises(CniError) as e:
        add(conf)
    assert e.value.code == spec.IO_FAILURE


# ---------------------------------------------------------------- cleanup helper

def test_remove_network_dir(tmp_path):
    conf = make_conf(tmp_path)
    assert hl.remove_network_dir(str(tmp_path), NET)  # absent is fine
    add(conf)
    assert not hl.remove_network_dir(str(tmp_path), NET)
    assert lease_files(tmp_path) == ["10.244.1.2"]
    hl.cmd_del(conf, att(command="DEL"))
    assert hl.remove_network_dir(str(tmp_path), NET)
    assert not (tmp_path / NET).exists()
    assert addr(add(conf)) == "10.244.1.2"  # round-robin starts over in a fresh directory
    hl.cmd_del(conf, att(command="DEL"))
    assert hl.remove_network_dir(str(tmp_path), NET)


# ---------------------------------------------------------------- through skel

def env(command, cid="c1", ifname="eth0", **extra):
    e = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/x",
         "CNI_IFNAME": ifname, "CNI_PATH": "/usr/lib/cni"}
    e.update(extra)
    return e


def run(conf, command, **kw):
    code, out = skel.execute(hl.HANDLERS, env(command, **kw), json.dumps(conf).encode())
    return code, (json.loads(out) if out else None)


def test_skel_add_and_old_version_result(tmp_path):
    code, out = run(make_conf(tmp_path, version="0.4.0"), "ADD", CNI_ARGS="IgnoreUnknown=1;IP=10.244.1.9")
    assert code == 0
    assert out["cniVersion"] == "0.4.0"
    assert out["ips"] == [{"address": "10.244.1.9/24", "gateway": "10.244.1.1", "version": "4"}]


def test_skel_error_json(tmp_path):
    conf = make_conf(tmp_path, ranges=[[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1"}]], version="1.0.0")
    code, out = run(conf, "ADD")
    assert code == 1
    assert out["cniVersion"] == "1.0.0" and out["code"] == spec.INVALID_CONFIG
    assert "ipam.ranges[0][0].rangeStart" in out["msg"] and "10.0.1.1" in out["msg"] and out["details"]


def test_skel_exhaustion_status_gc(tmp_path):
    conf = make_conf(tmp_path, ranges=[[{"subnet": "10.0.0.0/30"}]])
    assert run(conf, "ADD", cid="a")[0] == 0
    code, out = run(conf, "ADD", cid="b")
    assert code == 1 and out["code"] == 11 and "exhausted" in out["msg"] and out["details"]
    code, out = run(conf, "STATUS")
    assert code == 1 and out["code"] == spec.NOT_AVAILABLE
    assert run(dict(conf, **{"cni.dev/valid-attachments": []}), "GC") == (0, None)
    assert run(conf, "STATUS") == (0, None)
    assert lease_files(tmp_path) == []


def test_skel_duplicate_and_check(tmp_path):
    conf = make_conf(tmp_path)
    assert run(conf, "ADD")[0] == 0
    code, out = run(conf, "ADD")
    assert code == 1 and out["code"] == spec.DUPLICATE_ALLOCATION and "duplicate" in out["msg"]
    assert run(conf, "CHECK") == (0, None)
    assert run(conf, "DEL", CNI_NETNS="") == (0, None)
    code, out = run(conf, "CHECK")
    assert code == 1 and out["code"] == spec.CHECK_MISMATCH


def test_import_stays_light():
    # the exec'd plugin must not pull in pyroute2, yaml or scapy
    code = ("import sys, cni.ipam.hostlocal; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'yaml', 'scapy', 'netlab')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.stdout.strip() == "[]"
