"""A node's own namespace: what a Kubernetes node's root namespace would
have before flanneld and the CNI plugin run.

Sysctls, per namespace here (a new netns starts from kernel defaults for
most of net.*, IPv4 conf/all|default are copied from init_net):
- net.ipv4.ip_forward=1: the node routes between cni0, flannel.1 and eth0.
- net.bridge.bridge-nf-call-iptables: left at its default. It is per
  namespace on this kernel and 1 in a new one once br_netfilter is loaded,
  which is what kube-proxy needs for same-node ClusterIP hairpin. We do not
  force it, so a node looks like a stock kubeadm node.
- rp_filter: left as inherited; the overlay route to each peer /24 points
  back out flannel.1, so strict mode would pass too.
"""
from __future__ import annotations

from . import namespace

NODE_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
}


def ensure_node(node_ns: str, sysctls: dict[str, str] | None = None) -> bool:
    """Create the node namespace (lo up) and set its sysctls. Idempotent;
    returns True if anything changed."""
    # in host mode (node join) the node is the host: its namespace exists and is not ours to make
    changed = False if namespace.is_host_mode(node_ns) else namespace.ensure_netns(node_ns)
    for key, value in {**NODE_SYSCTLS, **(sysctls or {})}.items():
        changed |= namespace.set_sysctl(node_ns, key, value)
    return changed


def remove_node(node_ns: str) -> bool:
    """Delete the node namespace, its processes and everything in it (the
    underlay veth included: deleting one end removes the pair)."""
    return namespace.remove_netns(node_ns)
