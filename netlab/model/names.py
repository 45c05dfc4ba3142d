"""Names of the kernel objects a lab creates, as pure functions.

One place decides every name so realizers, agents, `down` and the tests agree,
and so anything left behind after a crash can be found again by name.

Scheme (lab "demo", node "node-a", pod "default/echo-...")::

    network namespaces                      /run/netns/<name>
      demo-node-a           node            node_netns(lab, node)
      demo-underlay         underlay switch underlay_netns(lab)
      demo-external         external host   external_netns(lab)
      demo-default.echo-x   pod             pod_netns(lab, namespace, pod)

    interfaces (each inside a lab namespace, so they need no lab prefix)
      node netns:      eth0 (underlay uplink), cni0 (pod bridge), flannel.<vni>, veth* (pods)
      underlay netns:  "underlay" (bridge), one port per node named after the
                       node, "external" (the external host's port)
      pod netns:       eth0
      external netns:  eth0

Why the limits:

- Every namespace of lab L is named "L-...". Lab names have no '-', so the
  first '-' always ends the lab name: lab "a" never claims lab "ab"'s
  objects, and cleanup by prefix after a crash is exact.
- Lab names are at most 10 characters so "<lab>-" plus a 4-character tag
  still fits an interface name (15, IFNAMSIZ-1) for the rare link that must
  exist in a shared namespace: see shared_ifname().
- Node names are RFC 1123 labels of at most 15 characters, because each one
  is also an interface name (its port on the underlay bridge), which makes
  `ip -n demo-underlay link` read like the topology. "underlay", "external"
  and "lo" are reserved: they would collide with those namespaces/ports.
- Pod namespaces use '.' between the Kubernetes namespace and the pod name.
  Neither lab, node nor Kubernetes namespace names can contain '.', so a pod
  namespace never collides with a node's, and "a-b"/"c" never meets "a"/"b-c".
  A namespace name is a file name (at most 255 bytes): the Kubernetes
  namespace plus the pod name may use at most MAX_POD_KEY characters.
- The VXLAN device is flannel.<vni>; for it to fit 15 characters the VNI has
  at most 7 digits.
"""
from __future__ import annotations

import base64
import hashlib

MAX_LAB_NAME = 10
MAX_NODE_NAME = 15
IFNAME_MAX = 15           # IFNAMSIZ (16) minus the terminating NUL
NETNS_NAME_MAX = 255      # a file name under /run/netns
MAX_POD_KEY = NETNS_NAME_MAX - MAX_LAB_NAME - 2   # "<lab>-" and the '.' between namespace and pod
MAX_VNI = 9_999_999       # flannel.<vni> must fit IFNAME_MAX
HOSTNAME_MAX = 63

# Interface names inside lab namespaces (same in every lab).
NODE_UPLINK = "eth0"          # node's link to the underlay (in the node netns)
NODE_BRIDGE = "cni0"          # the node's pod bridge (bridge plugin default)
POD_IFNAME = "eth0"           # pod's interface (CNI_IFNAME)
EXTERNAL_UPLINK = "eth0"      # the external host's link to the underlay
UNDERLAY_BRIDGE = "underlay"  # the switch, in the underlay netns
EXTERNAL_PORT = "external"    # the external host's port on that switch

UNDERLAY = "underlay"
EXTERNAL = "external"
RESERVED_NODE_NAMES = frozenset({UNDERLAY, EXTERNAL, "lo"})


def lab_prefix(lab: str) -> str:
    """What every namespace (and shared interface) of the lab starts with."""
    return f"{lab}-"


def belongs_to(lab: str, name: str) -> bool:
    """True when a namespace or shared interface name is one of lab's."""
    return name.startswith(lab_prefix(lab))


def lab_of(name: str) -> str | None:
    """The lab a kernel object name belongs to (the part before the first '-')."""
    lab, sep, rest = name.partition("-")
    return lab if sep and rest else None


def node_netns(lab: str, node: str) -> str:
    return f"{lab}-{node}"


def underlay_netns(lab: str) -> str:
    return f"{lab}-{UNDERLAY}"


def external_netns(lab: str) -> str:
    return f"{lab}-{EXTERNAL}"


def pod_netns(lab: str, namespace: str, pod: str) -> str:
    return f"{lab}-{namespace}.{pod}"


def underlay_port(node: str) -> str:
    """The node's port on the underlay bridge, in the underlay namespace."""
    return node


def vxlan_device(vni: int = 1) -> str:
    """flannel's device name: flannel.<VNI>."""
    return f"flannel.{vni}"


def cni_network(lab: str, node: str) -> str:
    """CNI network name for a node's pods. host-local keeps leases in
    /var/lib/cni/networks/<network>/, shared by every node emulated on this
    machine, so each node needs its own network name: its netns name."""
    return node_netns(lab, node)


def pod_hostname(pod: str, hostname: str | None = None) -> str:
    """The pod's hostname as the kubelet sets it: spec.hostname if given,
    else the pod name cut to 63 characters without a trailing '-' or '.'."""
    name = hostname or pod
    if len(name) > HOSTNAME_MAX:
        name = name[:HOSTNAME_MAX].rstrip("-.")
    return name


def shared_ifname(lab: str, key: str) -> str:
    """A lab-owned interface name for a link that must live, even briefly, in
    a namespace shared with others (the root namespace): "<lab>-" plus a
    4-character hash of key, so it fits 15 characters and is found by prefix."""
    digest = base64.b32encode(hashlib.sha256(key.encode()).digest()).decode().lower()
    return f"{lab}-{digest[:4]}"


def pod_key(namespace: str, name: str) -> str:
    """namespace/name, the way kubectl and the store name a pod."""
    return f"{namespace}/{name}"
