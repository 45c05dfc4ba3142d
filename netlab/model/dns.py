"""A pod's /etc/resolv.conf, written the way the kubelet asks the runtime to
(pkg/kubelet/network/dns): cluster DNS first, the namespace's search path,
ndots:5, then the pod's dnsConfig merged in.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .workloads import DNSConfig

if TYPE_CHECKING:
    from .lab import Lab
    from .workloads import Pod

DEFAULT_OPTIONS = (("ndots", "5"),)
MAX_NAMESERVERS = 3
MAX_SEARCHES = 32       # kubelet's limit since 1.28 (was 6)


def cluster_searches(namespace: str, cluster_domain: str = "cluster.local") -> list[str]:
    return [f"{namespace}.svc.{cluster_domain}", f"svc.{cluster_domain}", cluster_domain]


def parse_resolv_conf(text: str) -> tuple[list[str], list[str], list[tuple[str, str | None]]]:
    """(nameservers, searches, options) of a resolv.conf text (a host's)."""
    servers: list[str] = []
    searches: list[str] = []
    options: list[tuple[str, str | None]] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        if words[0] == "nameserver" and len(words) > 1:
            servers.append(words[1])
        elif words[0] in ("search", "domain"):
            searches = words[1:]  # the last search/domain line wins, as in glibc
        elif words[0] == "options":
            for opt in words[1:]:
                name, sep, value = opt.partition(":")
                options.append((name, value if sep else None))
    return servers, searches, options


def _dedupe(items):
    seen, out = set(), []
    for x in items:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def resolv_conf(namespace: str, *, dns_ip: str = "10.96.0.10", cluster_domain: str = "cluster.local",
                dns_policy: str = "ClusterFirst", dns_config: DNSConfig | None = None,
                host_resolv_conf: str = "") -> str:
    """The resolv.conf text for a pod in namespace.

    ClusterFirst (default, and ClusterFirstWithHostNet: there is no host
    network here): nameserver <dns_ip>, search <ns>.svc.<domain>
    svc.<domain> <domain>, options ndots:5. Default: the host's resolv.conf
    (pass its text). None: only dnsConfig. dnsConfig is appended (servers,
    searches, de-duplicated) and its options override same-named ones.
    """
    if dns_policy in ("ClusterFirst", "ClusterFirstWithHostNet"):
        _, host_searches, _ = parse_resolv_conf(host_resolv_conf)  # the kubelet keeps the host's search list
        servers = [str(dns_ip)]
        searches = cluster_searches(namespace, cluster_domain) + host_searches
        options = list(DEFAULT_OPTIONS)
    elif dns_policy == "Default":
        servers, searches, options = parse_resolv_conf(host_resolv_conf)
    elif dns_policy == "None":
        servers, searches, options = [], [], []
    else:
        raise ValueError(f"unknown dnsPolicy {dns_policy!r}")
    if dns_config is not None:
        servers += list(dns_config.nameservers)
        searches += list(dns_config.searches)
        merged = dict(options)
        for name, value in dns_config.options:
            merged[name] = value
        options = list(merged.items())
    servers = _dedupe(servers)[:MAX_NAMESERVERS]
    searches = _dedupe(searches)[:MAX_SEARCHES]
    lines = []
    # the order containerd writes: search, nameserver(s), options
    if searches:
        lines.append("search " + " ".join(searches))
    lines += [f"nameserver {s}" for s in servers]
    if options:
        lines.append("options " + " ".join(n if v is None else f"{n}:{v}" for n, v in options))
    return "\n".join(lines) + "\n"


def pod_resolv_conf(pod: "Pod", lab: "Lab", host_resolv_conf: str = "") -> str:
    """resolv_conf() for a pod of a lab (its namespace, policy and dnsConfig)."""
    return resolv_conf(pod.namespace, dns_ip=str(lab.dns_ip), cluster_domain=lab.cluster_domain,
                       dns_policy=pod.spec.dns_policy, dns_config=pod.spec.dns_config,
                       host_resolv_conf=host_resolv_conf)
