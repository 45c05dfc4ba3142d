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

The `conntrack` tool exits 1 with "0 flow entries have been deleted" when
nothing matched; that is not an error.
"""
from __future__ import annotations

from proxy.iptables.backend import run
from proxy.types import Endpoint, ProxyNode, ServicePort


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


def _destinations(svc: ServicePort) -> list[list[str]]:
    """Original-destination filters of every address the service answers on (not its NodePort)."""
    return [["--orig-dst", ip, "--orig-port-dst", str(svc.port)] for ip in (svc.cluster_ip, *svc.external_ips)]


def flush_udp_endpoint(svc: ServicePort, ep: Endpoint, node: ProxyNode, netns: str | None = None) -> int:
    """Delete the UDP entries that would keep DNAT-ing svc's traffic to the gone ep.
    Returns the number of entries deleted."""
    if svc.protocol != "UDP":
        return 0
    reply = ["--reply-src", ep.ip]
    filters = [dst + reply for dst in _destinations(svc)]
    if svc.node_port:
        # any local address may have been the NodePort's destination; the reply source pins the endpoint
        filters.append(["--orig-port-dst", str(svc.node_port)] + reply)
    return sum(_delete(netns, f) for f in filters)


def flush_udp_service(svc: ServicePort, node: ProxyNode, netns: str | None = None) -> int:
    """Delete the UDP entries to svc made while it had no endpoint (they hold no
    DNAT and would keep a client's socket rejected). Returns the number deleted."""
    if svc.protocol != "UDP":
        return 0
    filters = _destinations(svc)
    if svc.node_port:
        # bounded to this node's addresses: a bare port would also hit the node's own
        # outgoing flows to that port elsewhere
        filters += [["--orig-dst", ip, "--orig-port-dst", str(svc.node_port)] for ip in node.node_ips]
    return sum(_delete(netns, f) for f in filters)
