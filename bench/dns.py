#!/usr/bin/env python3
"""Cluster DNS: dnsperf queries per second and loss on service names, netlab-dns
beside dnsmasq serving the same names, same namespace, interleaved runs.

N Services (web0..webN-1 in default, ClusterIPs from 10.96.0.0/12) are written to a
store with the LabState writers; netlab-dns serves them from it on 127.0.0.1:53 and
dnsmasq (--no-resolv --addn-hosts) from a hosts file on 127.0.0.2:53. dnsperf asks
A for every FQDN in a loop.

    sudo .venv/bin/python bench/dns.py [--services 1000] [--seconds 10] [--repeat 3] [--workers 2]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from netlab.model.workloads import Service, ServicePort  # noqa: E402
from netlab.state import LabState  # noqa: E402
from netlab.store import open_store  # noqa: E402

VENV_BIN = os.path.dirname(sys.executable)
NETNS = f"bd{os.getpid()}"
OURS, DNSMASQ = "127.0.0.1", "127.0.0.2"


def service_ip(i: int) -> str:
    return f"10.96.{1 + i // 250}.{1 + i % 250}"


def fill(store_path: str, n: int) -> None:
    with open_store(store_path) as store:
        st = LabState(store)
        for i in range(n):
            st.put_service(Service(f"web{i}", (ServicePort(80, 8080, "TCP", "http"),), cluster_ip=service_ip(i)))


def in_ns(*cmd: str) -> list[str]:
    return ["ip", "netns", "exec", NETNS, *cmd]


def wait_answer(server: str, name: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(in_ns("dig", "+short", "+time=1", "+tries=1", f"@{server}", name),
                             capture_output=True, text=True).stdout.strip()
        if re.fullmatch(r"[\d.]+", out):
            return
        time.sleep(0.2)
    raise SystemExit(f"{server} did not answer {name} within {timeout:.0f} s")


def dnsperf(server: str, queries: str, seconds: int, clients: int) -> tuple[float, float]:
    out = subprocess.run(in_ns("dnsperf", "-s", server, "-d", queries, "-l", str(seconds), "-c", str(clients),
                               "-q", "200"), capture_output=True, text=True).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    lost = float(re.search(r"Queries lost:\s+\d+ \(([\d.]+)%\)", out).group(1))
    return qps, lost


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clients", type=int, default=4, help="dnsperf -c (client sockets)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/dns.py needs root (it makes a network namespace)")
    tmp = tempfile.mkdtemp(prefix=f"{NETNS}-")
    procs: list[subprocess.Popen] = []
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        subprocess.run(["ip", "-n", NETNS, "link", "set", "lo", "up"], check=True)
        store = os.path.join(tmp, "state.db")
        fill(store, args.services)
        with open(os.path.join(tmp, "hosts"), "w") as f:
            f.writelines(f"{service_ip(i)} web{i}.default.svc.cluster.local\n" for i in range(args.services))
        queries = os.path.join(tmp, "queries")
        with open(queries, "w") as f:
            f.writelines(f"web{i}.default.svc.cluster.local A\n" for i in range(args.services))
        procs.append(subprocess.Popen(in_ns(os.path.join(VENV_BIN, "netlab-dns"), "serve", "--lab", NETNS,
                                            "--store", store, "--listen", f"{OURS}:53", "--no-upstream",
                                            "--workers", str(args.workers)),
                                      stderr=subprocess.DEVNULL, start_new_session=True))
        procs.append(subprocess.Popen(in_ns("dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces",
                                            f"--listen-address={DNSMASQ}", "--port=53", "--user=root",
                                            f"--addn-hosts={os.path.join(tmp, 'hosts')}", "--cache-size=10000"),
                                      stderr=subprocess.DEVNULL, start_new_session=True))
        last = f"web{args.services - 1}.default.svc.cluster.local"
        wait_answer(OURS, last)
        wait_answer(DNSMASQ, last)
        results: dict[str, list[tuple[float, float]]] = {"netlab-dns": [], "dnsmasq": []}
        for _ in range(args.repeat):   # interleaved: load on the machine hits both sides
            results["netlab-dns"].append(dnsperf(OURS, queries, args.seconds, args.clients))
            results["dnsmasq"].append(dnsperf(DNSMASQ, queries, args.seconds, args.clients))
        load = os.getloadavg()[0]
        print(f"{args.services} services, A for their FQDNs, dnsperf -c {args.clients} -q 200, {args.seconds} s x "
              f"{args.repeat}, netlab-dns --workers {args.workers}; load average {load:.2f}")
        print(f"{'server':<12} {'median qps':>12} {'runs qps':>28} {'max loss %':>10}")
        med = {}
        for name, runs in results.items():
            med[name] = statistics.median(q for q, _ in runs)
            print(f"{name:<12} {med[name]:>12.0f} {' / '.join(f'{q:.0f}' for q, _ in runs):>28} "
                  f"{max(lost for _, lost in runs):>10.2f}")
        print(f"ratio netlab-dns / dnsmasq: {med['netlab-dns'] / med['dnsmasq']:.2f}")
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
