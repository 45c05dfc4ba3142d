"""netlab-ipam as an exec'd plugin: many processes at once, and one data
directory shared with the reference host-local."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cni import spec
from cni.ipam import hostlocal as hl
from conftest import unique_name

REPO = Path(__file__).resolve().parents[2]
OURS = REPO / ".venv" / "bin" / "netlab-ipam"
REF = Path("/usr/lib/cni/host-local")
# IPAM plugins never open the namespace, so any path satisfies CNI_NETNS.
NETNS = "/run/netns/ipam-test-unused"

needs_ours = pytest.mark.skipif(not OURS.exists(), reason=f"{OURS} is not installed (run make bootstrap)")
needs_ref = pytest.mark.skipif(not REF.exists(), reason=f"reference plugin {REF} is not installed")


def cni_env(command, cid, ifname="eth0", args=""):
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid, "CNI_NETNS": NETNS, "CNI_IFNAME": ifname,
            "CNI_PATH": "/usr/lib/cni", "CNI_ARGS": args}


def call(exe, command, conf, cid, ifname="eth0", args=""):
    p = subprocess.run([str(exe)], input=json.dumps(conf).encode(), env=cni_env(command, cid, ifname, args),
                       capture_output=True, timeout=30)
    out = p.stdout.decode().strip()
    return p.returncode, (json.loads(out) if out else None)


@pytest.fixture
def network(tmp_path):
    """A uniquely named network in a private data dir, removed even on failure."""
    name = unique_name("ipam")
    data = tmp_path / "networks"

    def conf(ranges, version="1.0.0"):
        # the reference v1.1.1 speaks cniVersion up to 1.0.0
        return {"cniVersion": version, "name": name, "type": "bridge",
                "ipam": {"type": "host-local", "dataDir": str(data), "ranges": ranges}}
    conf.dir = data / name
    try:
        yield conf
    finally:
        shutil.rmtree(data, ignore_errors=True)


def leases(d: Path) -> dict[str, str]:
    if not d.exists():
        return {}
    return {p.name: p.read_bytes().decode() for p in d.iterdir() if hl._parse_ip_name(p.name)}


def run_parallel(calls, conf):
    """Start every (exe, command, cid) at once; returns [(rc, stdout)] in order."""
    stdin = json.dumps(conf).encode()
    procs = []
    try:
        for exe, command, cid in calls:
            procs.append(subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, env=cni_env(command, cid)))
        return [(p.returncode, out.decode()) for p in procs for out, _ in [p.communicate(stdin, timeout=60)]]
    finally:
        for p in procs:  # never leave a plugin process behind
            if p.poll() is None:
                p.kill()
                p.wait()


@needs_ours
def test_parallel_add_then_parallel_del(network):
    conf = network([[{"subnet": "10.123.0.0/24"}]])
    ids = [f"par{i}" for i in range(50)]

    added = run_parallel([(OURS, "ADD", cid) for cid in ids], conf)
    assert all(rc == 0 for rc, _ in added), [o for rc, o in added if rc]
    addrs = [json.loads(o)["ips"][0]["address"] for _, o in added]
    assert len(set(addrs)) == 50
    assert all(a.startswith("10.123.0.") and a.endswith("/24") and a != "10.123.0.1/24" for a in addrs)
    on_disk = leases(network.dir)
    assert sorted(on_disk) == sorted(a.split("/")[0] for a in addrs)
    assert sorted(v.split("\r\n")[0] for v in on_disk.values()) == sorted(ids)

    deleted = run_parallel([(OURS, "DEL", cid) for cid in ids], conf)
    assert all(rc == 0 and not out.strip() for rc, out in deleted), deleted
    assert leases(network.dir) == {}
    assert hl.remove_network_dir(str(network.dir.parent), network.dir.name)
    assert not network.dir.exists()


@needs_ours
@needs_ref
def test_interop_parallel_mixed(network):
    # both plugins flock the same lock file, so racing ADDs never share an address
    conf = network([[{"subnet": "10.123.4.0/24"}]])
    calls = [((REF, OURS)[i % 2], "ADD", f"mix{i}") for i in range(20)]
    added = run_parallel(calls, conf)
    assert all(rc == 0 for rc, _ in added), [o for rc, o in added if rc]
    assert len({json.loads(o)["ips"][0]["address"] for _, o in added}) == 20
    assert len(leases(network.dir)) == 20
    deleted = run_parallel([((OURS, REF)[i % 2], "DEL", f"mix{i}") for i in range(20)], conf)
    assert all(rc == 0 for rc, _ in deleted), deleted
    assert leases(network.dir) == {}


@needs_ours
def test_exec_error_json_and_version(network):
    conf = network([[{"subnet": "10.123.1.0/31"}]])
    rc, out = call(OURS, "ADD", conf, "bad")
    assert rc == 1
    assert out["cniVersion"] == "1.0.0" and out["code"] == spec.INVALID_CONFIG
    assert "ipam.ranges[0][0].subnet" in out["msg"] and "too small to allocate from" in out["msg"] and out["details"]
    rc, out = call(OURS, "VERSION", {"cniVersion": "1.0.0"}, "")
    assert rc == 0 and "1.1.0" in out["supportedVersions"]


@needs_ours
@needs_ref
@pytest.mark.parametrize("first,second", [(REF, OURS), (OURS, REF)], ids=["ref-add", "ours-add"])
def test_interop_add_check_del(network, first, second):
    conf = network([[{"subnet": "10.123.2.0/24"}], [{"subnet": "fd00:123:2::/64"}]])
    rc, res = call(first, "ADD", conf, "x1")
    assert rc == 0, res
    assert [ip["address"] for ip in res["ips"]] == ["10.123.2.2/24", "fd00:123:2::2/64"]
    assert sorted(leases(network.dir)) == ["10.123.2.2", "fd00:123:2::2"]
    assert call(second, "CHECK", conf, "x1") == (0, None)
    rc, out = call(second, "CHECK", conf, "x1", "eth1")
    assert rc == 1
    # either plugin refuses a second ADD of the same attachment after reading the other's files
    rc, out = call(second, "ADD", conf, "x1")
    assert rc == 1 and "duplicate allocation is not allowed" in out["msg"]
    assert call(second, "DEL", conf, "x1") == (0, None)
    assert leases(network.dir) == {}
    rc, _ = call(first, "CHECK", conf, "x1")
    assert rc == 1
    assert call(first, "DEL", conf, "x1") == (0, None)  # idempotent in both


@needs_ours
@needs_ref
def test_interop_shared_pool(network):
    # /29 with .1 as gateway: .2-.6, five addresses
    conf = network([[{"subnet": "10.123.3.0/29"}]])
    got = []
    for i in range(5):
        rc, res = call((REF, OURS)[i % 2], "ADD", conf, f"s{i}")
        assert rc == 0, res
        got.append(res["ips"][0]["address"])
    # round-robin continues across plugins through last_reserved_ip.0
    assert got == [f"10.123.3.{i}/29" for i in range(2, 7)]
    rc, out = call(OURS, "ADD", conf, "late")
    assert rc == 1 and out["code"] == spec.TRY_AGAIN_LATER and "exhausted" in out["msg"]
    rc, out = call(REF, "ADD", conf, "late")
    assert rc == 1 and "no IP addresses available" in out["msg"]
    # each frees what the other took; the requested IP is honoured across plugins
    assert call(OURS, "DEL", conf, "s0") == (0, None)
    assert call(REF, "DEL", conf, "s1") == (0, None)
    rc, res = call(REF, "ADD", conf, "r", args="IP=10.123.3.3")
    assert rc == 0 and res["ips"][0]["address"] == "10.123.3.3/29"
    rc, res = call(OURS, "ADD", conf, "o")
    assert rc == 0 and res["ips"][0]["address"] == "10.123.3.2/29"
    held = leases(network.dir)
    assert held == {"10.123.3.2": "o\r\neth0", "10.123.3.3": "r\r\neth0", "10.123.3.4": "s2\r\neth0",
                    "10.123.3.5": "s3\r\neth0", "10.123.3.6": "s4\r\neth0"}
    for cid in ("o", "r", "s2", "s3", "s4"):
        assert call(OURS, "DEL", conf, cid) == (0, None)
    assert leases(network.dir) == {}
