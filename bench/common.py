"""Shared pieces of the Services benchmarks (bench/proxy.py, bench/datapath.py,
bench/netprog.py): synthetic proxy states, the proxy variants this kernel
runs, throwaway namespaces, and timing of a tool alone (the anchors).

Synthetic state: N ClusterIP Services `bench/svc-<i>` (TCP port 80, unnamed
port), cluster IPs from 10.96.0.0/12 (from 10.96.1.0, clear of the
`kubernetes` and `kube-dns` addresses), each with 2 endpoints on :8080 from
10.244.0.0/16 (from 10.244.2.2), as a node with that many Services sees them.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)
from cni import netns  # noqa: E402
from netlab.realize.namespace import ensure_netns, remove_netns, run_in  # noqa: E402
from proxy.types import Endpoint, ProxyNode, ProxyState, ServicePort, ServicePortName  # noqa: E402

# bench/ goes after the repository: bench/proxy.py must not shadow the `proxy` package
if BENCH in sys.path:
    sys.path.remove(BENCH)
sys.path.append(BENCH)
from lab import Interrupted, _on_term, loadavg  # noqa: E402,F401  (loadavg: for the Services benches)

PID = os.getpid() % 10_000_000
PREFIX = f"bs{PID}-"            # our plain namespaces (bench/README.md lists every bench's prefix)
NODE = ProxyNode(name="node-a", node_ips=("192.168.56.11",), cluster_cidr="10.244.0.0/16")
SERVICE_BASE = ipaddress.IPv4Address("10.96.1.0")
ENDPOINT_BASE = ipaddress.IPv4Address("10.244.2.2")   # 10.244.1.0/24 is left to real pods
DATE = "2026-11-29"


# --- synthetic states ------------------------------------------------------------------------

def service_name(i: int) -> ServicePortName:
    return ServicePortName("bench", f"svc-{i}")


def synthetic_service(i: int, endpoints: tuple[Endpoint, ...] | None = None,
                      *, per_service: int = 2) -> tuple[ServicePort, tuple[Endpoint, ...]]:
    """Service i (ClusterIP, TCP 80) and its endpoints (default: per_service synthetic pod IPs on :8080)."""
    svc = ServicePort(name=service_name(i), protocol="TCP", cluster_ip=str(SERVICE_BASE + i), port=80)
    if endpoints is None:
        endpoints = tuple(Endpoint(str(ENDPOINT_BASE + i * per_service + j), 8080, NODE.name)
                          for j in range(per_service))
    return svc, endpoints


def synthetic_state(n: int, *, per_service: int = 2) -> ProxyState:
    """n Services x per_service endpoints."""
    if n * per_service > 60_000:
        raise ValueError(f"{n} Services x {per_service} endpoints do not fit 10.244.0.0/16; use fewer")
    return plus(ProxyState(), *(synthetic_service(i, per_service=per_service) for i in range(n)))


def plus(state: ProxyState, *services: tuple[ServicePort, tuple[Endpoint, ...]]) -> ProxyState:
    """state with these (service port, endpoints) added."""
    return ProxyState({**state.services, **{svc.name: svc for svc, _ in services}},
                      {**state.endpoints, **{svc.name: eps for svc, eps in services}})


def with_service(state: ProxyState, i: int) -> tuple[ProxyState, ServicePortName]:
    """state plus Service i: the one-Service change."""
    svc, eps = synthetic_service(i)
    return plus(state, (svc, eps)), svc.name


# --- the proxy variants ----------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """One proxier configuration and the tool that loads its text alone."""

    key: str            # what --modes takes
    label: str
    mode: str           # "iptables" | "nftables"
    option: str         # iptables backend or nftables layout

    @property
    def tool_argv(self) -> list[str]:
        """The tool that loads the proxier's text alone, as the proxier calls it."""
        if self.mode == "iptables":
            return [f"iptables-{self.option}-restore", "-w", "--noflush"]
        return ["nft", "-f", "-"]

    def make(self):
        """The proxier for the namespace the calling thread is in."""
        if self.mode == "iptables":
            from proxy.iptables import IptablesProxier
            return IptablesProxier(NODE, backend=self.option)
        from proxy.nftables import NftablesProxier
        return NftablesProxier(NODE, layout=self.option)

    def proxier(self, netns_name: str) -> NodeProxier:
        return NodeProxier(self, netns_name)


class NodeProxier:
    """A proxier run as a node agent runs it: built and synced from a thread inside the
    node's namespace (netns=None: its tools are forked there, no `ip netns exec`). Both
    proxiers keep the text they handed their tool in the last sync (last_text): the anchor
    loads that alone."""

    def __init__(self, variant: "Variant", netns_name: str):
        self.netns = netns_name
        with netns.entered(netns_name):
            self.proxier = variant.make()

    def sync(self, state: ProxyState, changed: frozenset[ServicePortName] | None = None):
        with netns.entered(self.netns):
            return self.proxier.sync(state, changed)

    def cleanup(self) -> None:
        with netns.entered(self.netns):
            self.proxier.cleanup()

    @property
    def last_text(self) -> str:
        text = getattr(self.proxier, "last_text", None)
        if not text:
            raise RuntimeError(f"{type(self.proxier).__name__}: no rule text seen in the last sync; the bench "
                               "needs what it gave iptables-restore / nft to time the tool alone")
        return text


VARIANTS = {v.key: v for v in (
    Variant("iptables-legacy", "iptables, legacy backend", "iptables", "legacy"),
    Variant("iptables-nft", "iptables, nft backend", "iptables", "nft"),
    Variant("nftables", "nftables, kube-proxy layout", "nftables", "kube-proxy"),
    Variant("nftables-maps", "nftables, maps layout", "nftables", "maps"),
)}


def parse_variants(text: str) -> list[Variant]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in VARIANTS]
    if unknown:
        raise SystemExit(f"--modes: unknown {', '.join(unknown)}; use some of {', '.join(VARIANTS)}")
    return [VARIANTS[k] for k in keys]


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--sizes {text!r}: use comma-separated Service counts, e.g. 1000,5000,10000")
    if not sizes or any(not 1 <= n <= 30_000 for n in sizes):
        raise SystemExit(f"--sizes {text!r}: each size must be 1-30000 Services")
    return sizes


# --- namespaces ------------------------------------------------------------------------------

def ours() -> list[str]:
    try:
        return sorted(x for x in os.listdir("/run/netns") if x.startswith(PREFIX))
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def fresh_netns(tag: str) -> Iterator[str]:
    """A throwaway namespace `<PREFIX><tag>`, removed on the way out whatever happens."""
    name = PREFIX + tag
    remove_netns(name)
    ensure_netns(name)
    try:
        yield name
    finally:
        remove_netns(name)


def cleanup() -> None:
    """Every namespace this process created (and processes in them); never anyone else's."""
    for name in ours():
        remove_netns(name)


def guarded(body: Callable[[], None]) -> int:
    """Run a bench's measurements with SIGTERM/SIGHUP turned into an interruption, and remove
    our namespaces (and the processes in them) whatever happens; 0, or 130 when interrupted."""
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGHUP, _on_term)
    try:
        body()
        return 0
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"interrupted ({str(e) or 'Ctrl-C'}); cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not stop the cleanup
        cleanup()
        signal.signal(signal.SIGINT, signal.default_int_handler)


def need_root(bench: str) -> None:
    if os.geteuid() != 0:
        raise SystemExit(f"{bench} needs root (it creates network namespaces)")


def write_json(path: str | None, **data) -> None:
    """--json FILE: the raw figures, dated and with the machine."""
    if path:
        with open(path, "w") as f:
            json.dump({"date": DATE, "machine": machine(), **data}, f, indent=1)


# --- timing ----------------------------------------------------------------------------------

def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def tool(netns: str, argv: list[str], text: str) -> float:
    """Seconds for argv to read text on stdin inside netns (forked from a thread that entered
    it, as the proxiers run their tools: no `ip netns exec` in the figure)."""
    t0 = time.perf_counter()
    res = run_in(netns, argv, input=text, check=False)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {netns}: exit {res.returncode}: {res.stderr.strip()[-1500:]}")
    return seconds


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0-100)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    return f"{os.cpu_count()} cores, kernel {os.uname().release}"
