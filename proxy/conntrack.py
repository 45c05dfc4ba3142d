"""Flushing stale UDP conntrack entries after a sync, for every proxy mode.

UDP has no connection to close: a client that keeps its socket (a resolver,
statsd) keeps matching the conntrack entry that DNATs to the endpoint it was
first given, long after that pod is gone (kubernetes#19029). So, like
kube-proxy's conntrack cleanup, the node agent deletes after each sync:

- for each endpoint that went away, the entries whose original destination is
  the service (clusterIP:port, each externalIP:port, the nodePort) and whose
  reply comes from the endpoint (`conntrack -D ... --reply-src <endpoint IP>`);
- for a service that had no endpoint and now has one, the entries made while
  it was rejected (kubernetes#48370).
The table is listed once a sync (`conntrack -L -p udp`) and `conntrack -D` runs
only for a filter that matches an entry: a Deployment's pods going away is one
exec per node, not two per pod.

The `conntrack` tool exits 1 with "0 flow entries have been deleted" when
nothing matched; that is not an error.
"""
from __future__ import annotations

from dataclasses import dataclass

from proxy.iptables.backend import run
from proxy.types import Endpoint, ProxyNode, ServicePort


@dataclass(frozen=True)
class UdpFlow:
    """One UDP conntrack entry: what a flush filter can match."""
    orig_dst: str
    orig_dport: int
    reply_src: str


@dataclass(frozen=True)
class Filter:
    """`conntrack -D -p udp` filters: original destination (address, port) and reply source."""
    orig_dport: int
    orig_dst: str | None = None
    reply_src: str | None = None

    def args(self) -> list[str]:
        return [*(["--orig-dst", self.orig_dst] if self.orig_dst else []),
                "--orig-port-dst", str(self.orig_dport),
                *(["--reply-src", self.reply_src] if self.reply_src else [])]

    def matches(self, f: UdpFlow) -> bool:
        return (f.orig_dport == self.orig_dport and self.orig_dst in (None, f.orig_dst)
                and self.reply_src in (None, f.reply_src))


def udp_flows(netns: str | None) -> list[UdpFlow]:
    """Every UDP entry of the namespace's table, listed once (`conntrack -L -p udp`), so a sync
    with many stale endpoints runs `conntrack -D` only for filters that match something, as
    kube-proxy's cleanup lists the table once and deletes what matches."""
    res = run(netns, ["conntrack", "-L", "-p", "udp"])
    if res.returncode != 0:
        raise RuntimeError(f"conntrack -L -p udp: exit {res.returncode}: {res.stderr.strip()}")
    return parse_udp_flows(res.stdout)


def parse_udp_flows(text: str) -> list[UdpFlow]:
    """`conntrack -L` lines: the original tuple's src/dst/sport/dport, then the reply's."""
    flows = []
    for line in text.splitlines():
        if not line.startswith("udp"):
            continue
        kv = [w.split("=", 1) for w in line.split() if "=" in w]
        src = [v for k, v in kv if k == "src"]
        dst = [v for k, v in kv if k == "dst"]
        dport = [v for k, v in kv if k == "dport"]
        if len(src) >= 2 and dst and dport:  # original tuple first, then the reply tuple
            flows.append(UdpFlow(dst[0], int(dport[0]), src[1]))
    return flows


def _flush(netns: str | None, filters: list[Filter], flows: list[UdpFlow] | None) -> int:
    """Delete what each filter matches; with the table listed (flows), only filters that match
    an entry cost a `conntrack -D`."""
    return sum(_delete(netns, f.args()) for f in filters
               if flows is None or any(f.matches(flow) for flow in flows))


def _delete(netns: str | None, filters: list[str]) -> int:
    """conntrack -D for UDP with the given filters; returns the number of entries deleted."""
    res = run(netns, ["conntrack", "-D", "-p", "udp", *filters])
    out = (res.stderr + res.stdout).strip()
    if res.returncode not in (0, 1) or (res.returncode == 1 and "flow entries" not in out):
        raise RuntimeError(f"conntrack -D -p udp {' '.join(filters)}: exit {res.returncode}: {out}")
    for line in out.splitlines():
        if "flow entries" in line:
            return int(line.split()[line.split().index("flow") - 1])
    return 0


def _destinations(svc: ServicePort, reply_src: str | None = None) -> list[Filter]:
    """Original-destination filters of every address the service answers on (not its NodePort)."""
    return [Filter(svc.port, ip, reply_src) for ip in (svc.cluster_ip, *svc.external_ips)]


def flush_udp_endpoint(svc: ServicePort, ep: Endpoint, node: ProxyNode, netns: str | None = None,
                       flows: list[UdpFlow] | None = None) -> int:
    """Delete the UDP entries that would keep DNAT-ing svc's traffic to the gone ep.
    Returns the number of entries deleted. flows: the table as udp_flows() listed it."""
    if svc.protocol != "UDP":
        return 0
    filters = _destinations(svc, ep.ip)
    if svc.node_port:
        # any local address may have been the NodePort's destination; the reply source pins the endpoint
        filters.append(Filter(svc.node_port, None, ep.ip))
    return _flush(netns, filters, flows)


def flush_udp_service(svc: ServicePort, node: ProxyNode, netns: str | None = None,
                      flows: list[UdpFlow] | None = None) -> int:
    """Delete the UDP entries to svc made while it had no endpoint (they hold no
    DNAT and would keep a client's socket rejected). Returns the number deleted."""
    if svc.protocol != "UDP":
        return 0
    filters = _destinations(svc)
    if svc.node_port:
        # bounded to this node's addresses: a bare port would also hit the node's own
        # outgoing flows to that port elsewhere
        filters += [Filter(svc.node_port, ip) for ip in node.node_ips]
    return _flush(netns, filters, flows)
