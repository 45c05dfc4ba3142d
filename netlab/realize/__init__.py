"""Realize: idempotent ensure_*/remove_* functions that turn the model into
kernel objects. `ensure_*` converges whatever it finds; `remove_*` tolerates
absence. Everything is named so that it can be found after a crash, and
nothing here acts in the root network namespace unless host mode was enabled
explicitly (enable_host_mode: a VM joining a cluster is the node).

Modules: namespace (named netns, processes, sysctls), underlay (the lab's
L2 segment), node (a node's namespace), overlay (flannel's VXLAN backend),
masquerade (flannel's --ip-masq rules).
"""
from .masquerade import ensure_masquerade, remove_masquerade
from .namespace import (RootNamespaceError, enable_host_mode, ensure_netns, is_host_mode, netns_exists,
                        pids_in_netns, remove_netns)
from .node import ensure_node, remove_node
from .overlay import (Peer, ensure_peer, ensure_vxlan, list_peers, new_vtep_mac, remove_peer,
                      remove_vxlan, sync_peers, vxlan_name)
from .underlay import (ensure_default_route, ensure_underlay, ensure_underlay_port, remove_underlay,
                       remove_underlay_port, underlay_port_name)

__all__ = [
    "RootNamespaceError", "enable_host_mode", "is_host_mode", "ensure_netns", "netns_exists", "pids_in_netns", "remove_netns",
    "ensure_node", "remove_node",
    "ensure_default_route", "ensure_underlay", "ensure_underlay_port", "remove_underlay", "remove_underlay_port",
    "underlay_port_name",
    "Peer", "ensure_vxlan", "remove_vxlan", "ensure_peer", "remove_peer", "sync_peers",
    "list_peers", "new_vtep_mac", "vxlan_name",
    "ensure_masquerade", "remove_masquerade",
]
