"""A cluster across machines, SQLite against etcd: the time from `kube-netlab node join`
to the node being Ready, and from a pod created (its record written) to its address
answering a ping from another host.

Each "machine" is a namespace on an emulated underlay (like tests/integration/
test_cluster_hosts.py): `bc<pid>-vm1`, `-vm2`, the etcd host `-etcd`, the switch
`-ul`; the cluster is the lab `bq<pid>`. vm1 runs `control up` and joins once; vm2 joins and leaves `--repeat` times
(the join is the timed part). Then `--pods` pods are created one at a time, pinned to
vm2 (spec.nodeName), each timed until vm1 pings it, and deleted. Both backends run the
same steps in the same namespaces; SQLite is one file shared by the "machines" (they
share this machine's filesystem), etcd runs on the underlay at 192.168.56.10.

    sudo .venv/bin/python bench/cluster.py [--repeat 5] [--pods 10] [--backends sqlite,etcd]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)
from cni import netns as _netns  # noqa: E402
from netlab import engine, state  # noqa: E402
from netlab.cluster.etcd_server import EtcdServer  # noqa: E402
from netlab.model import load_manifests, merge_objects, remove_objects  # noqa: E402
from netlab.realize import ensure_netns, ensure_underlay, ensure_underlay_port, remove_netns  # noqa: E402
from netlab.store import open_store  # noqa: E402

PID = os.getpid() % 10_000_000
PREFIX = f"bc{PID}-"
LAB = f"bq{PID}"  # not PREFIX: `down` of the lab removes namespaces "<lab>-*"
KUBE_NETLAB = os.path.join(os.path.dirname(sys.executable), "kube-netlab")
ETCD_IP = "192.168.56.10"
POD = """apiVersion: v1
kind: Pod
metadata: {{name: probe{i}}}
spec:
  nodeName: {node}
  containers: [{{name: c, command: [sleep, infinity]}}]
"""


def on(machine: str, *args: str) -> float:
    """kube-netlab on a machine; its wall time."""
    t0 = time.monotonic()
    proc = subprocess.run(["nsenter", f"--net=/run/netns/{machine}", "--", KUBE_NETLAB, *args],
                          capture_output=True, text=True)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"on {machine}: kube-netlab {' '.join(args)}: {proc.stdout}{proc.stderr}")
    return took


def build(machines: dict[str, str]) -> None:
    """The namespaces, named in machines as they are made (so a failure still removes them)."""
    machines["ul"] = PREFIX + "ul"
    ensure_underlay(machines["ul"], bridge="br", mtu=1500)
    for i, role in enumerate(["etcd", "vm1", "vm2"]):
        ns = machines[role] = PREFIX + role
        ensure_netns(ns)
        ensure_underlay_port(machines["ul"], ns, f"192.168.56.{10 + i}/24", ifname="eth0", bridge="br", mtu=1500,
                             port_name=f"p{i}")


def pod_reachable_times(store_url: str, vm1: str, node: str, pods: int, tmp: str) -> list[float]:
    """Seconds from each pod's record written to vm1 pinging its address."""
    out = []
    with _netns.entered(vm1):  # the store's address is on the underlay; sockets stay in vm1
        store = open_store(store_url)
        lab_state = state.LabState(store)
        for i in range(pods):
            path = os.path.join(tmp, f"probe{i}.yaml")
            with open(path, "w") as f:
                f.write(POD.format(i=i, node=node))
            objects = load_manifests(path)
            lab = lab_state.lab()
            t0 = time.monotonic()
            engine._write_desired(store, lab.with_objects(merge_objects(lab.objects, objects)))
            ip = None
            while True:
                if ip is None:
                    st = lab_state.pod_status(f"default/probe{i}")
                    ip = st.pod_ip if st else None
                if ip and subprocess.run(["ping", "-c", "1", "-W", "0.2", ip], capture_output=True).returncode == 0:
                    out.append(time.monotonic() - t0)
                    break
                if time.monotonic() - t0 > 60:
                    raise RuntimeError(f"pod probe{i} not reachable from {vm1} within 60 s")
                time.sleep(0.005)
            lab = lab_state.lab()
            engine._write_desired(store, lab.with_objects(remove_objects(lab.objects, objects)))
            while lab_state.pod_status(f"default/probe{i}") is not None:
                time.sleep(0.02)
        store.close()
    return out


def run_backend(backend: str, machines: dict[str, str], repeat: int, pods: int, tmp: str) -> dict[str, list[float]]:
    vm1, vm2 = machines["vm1"], machines["vm2"]
    server = None
    if backend == "etcd":
        server = EtcdServer(os.path.join(tmp, "etcd"), host=ETCD_IP, netns=machines["etcd"]).start()
        url = server.store_url
    else:
        url = os.path.join(tmp, "state.db")
    try:
        on(vm1, "control", "up", "--store", url, "--lab", LAB)
        on(vm1, "node", "join", "--store", url, "--name", "vm1")
        joins = []
        for _ in range(repeat):
            joins.append(on(vm2, "node", "join", "--store", url, "--name", "vm2"))
            on(vm2, "node", "leave", "--store", url)
        on(vm2, "node", "join", "--store", url, "--name", "vm2")
        reach = pod_reachable_times(url, vm1, "vm2", pods, tmp)
        return {"join": joins, "reach": reach}
    finally:
        for vm in (vm2, vm1):
            subprocess.run(["nsenter", f"--net=/run/netns/{vm}", "--", KUBE_NETLAB, "node", "leave", "--store", url],
                           capture_output=True)
        engine.down(LAB, joined_too=True)
        if server:
            server.destroy()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5, help="joins of vm2 per backend")
    p.add_argument("--pods", type=int, default=10, help="pods timed per backend")
    p.add_argument("--backends", default="sqlite,etcd")
    a = p.parse_args()
    if os.geteuid() != 0:
        print("bench/cluster.py: run as root (it creates namespaces)", file=sys.stderr)
        return 1
    tmp = tempfile.mkdtemp(prefix=PREFIX)
    machines: dict[str, str] = {}
    results = {}
    try:
        build(machines)
        for backend in a.backends.split(","):
            results[backend] = run_backend(backend, machines, a.repeat, a.pods, tmp)
    finally:
        for ns in machines.values():
            remove_netns(ns)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"cluster across hosts (namespaces on an emulated underlay), {time.strftime('%Y-%m-%d')}, "
          f"load {os.getloadavg()[0]:.2f}; median [min-max] seconds")
    print(f"{'backend':<8} {'node join -> Ready':<24} {'pod created -> pingable from the other host':<40}")
    for backend, r in results.items():
        def fmt(xs):
            return f"{statistics.median(xs):.2f} [{min(xs):.2f}-{max(xs):.2f}] n={len(xs)}"
        print(f"{backend:<8} {fmt(r['join']):<24} {fmt(r['reach']):<40}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
