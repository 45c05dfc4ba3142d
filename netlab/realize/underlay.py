"""The emulated underlay: a Linux bridge in its own namespace standing in for
the lab's L2 segment (Vagrant's host-only 192.168.56.0/24), and one veth per
host (node or external machine) whose host end is that host's eth0.

The root namespace is never involved, so nothing in a lab can reach the
machine's real uplink.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import re


from cni import netns as _netns

from . import namespace
from .namespace import iproute, netlink_error

DEFAULT_BRIDGE = "br-underlay"
DEFAULT_MTU = 1500
IFNAMSIZ = 15  # usable characters in an interface name
_IFNAME_OK = re.compile(r"^[A-Za-z0-9_.-]+$")


def underlay_port_name(host_ns: str, ifname: str = "eth0") -> str:
    """Name of the underlay-side end of host_ns's ifname: deterministic, so a
    crashed run's ports can be found again.

    `<host_ns>-<ifname>` when that fits IFNAMSIZ (what a student reads in
    `ip -n underlay link`), otherwise `ul-` plus a hash of both. The full
    owner is always in the link's alias.
    """
    plain = f"{host_ns}-{ifname}"
    if len(plain) <= IFNAMSIZ and _IFNAME_OK.match(plain):
        return plain
    digest = hashlib.sha1(f"{host_ns}\0{ifname}".encode()).hexdigest()
    return "ul-" + digest[: IFNAMSIZ - 3]


def _attr(msg, name, default=None):
    value = msg.get_attr(name)
    return default if value is None else value


def _kind(link) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def _get(ipr, ifname):
    idx = ipr.link_lookup(ifname=ifname)
    return ipr.get_links(idx[0])[0] if idx else None


def ensure_underlay(netns_name: str, *, bridge: str = DEFAULT_BRIDGE,
                    mtu: int = DEFAULT_MTU) -> bool:
    """Create the underlay namespace with its bridge, up, at mtu.

    Returns True if anything had to be created. STP stays off (the kernel
    default), so a new port forwards at once instead of after 30 s.
    """
    created = namespace.ensure_netns(netns_name)
    with iproute(netns_name) as ipr:
        link = _get(ipr, bridge)
        if link is not None and _kind(link) != "bridge":
            ipr.link("del", index=link["index"])
            link = None
        if link is None:
            ipr.link("add", ifname=bridge, kind="bridge", mtu=mtu, state="up")
            return True
        if _attr(link, "IFLA_MTU") != mtu or not link["flags"] & 1:
            ipr.link("set", index=link["index"], mtu=mtu, state="up")
    return created


def remove_underlay(netns_name: str) -> bool:
    """Delete the underlay namespace; every port's veth goes with it."""
    return namespace.remove_netns(netns_name)


def _set_only_address(ipr, index: int, address: str) -> None:
    """Converge the link's IPv4 addresses to exactly `address` (a/len)."""
    iface = ipaddress.ip_interface(address)
    want = (str(iface.ip), iface.network.prefixlen)
    have = set()
    for a in ipr.get_addr(family=2, index=index):
        got = (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
        if got != want:
            ipr.addr("del", index=index, address=got[0], prefixlen=got[1])
        else:
            have.add(got)
    if want not in have:
        ipr.addr("add", index=index, address=want[0], prefixlen=want[1])


def ensure_underlay_port(underlay_ns: str, host_ns: str, address: str, *,
                         ifname: str = "eth0", bridge: str = DEFAULT_BRIDGE,
                         mtu: int = DEFAULT_MTU, port_name: str | None = None) -> str:
    """Connect host_ns to the underlay: `ifname` (with `address`, CIDR form)
    in host_ns, its veth peer enslaved to the underlay bridge.

    port_name names the underlay-side end (default: underlay_port_name()).
    Returns the underlay-side name. A pair that exists but is not this pair
    (for instance one end replaced by hand) is recreated.
    """
    uname = port_name or underlay_port_name(host_ns, ifname)
    alias = f"{host_ns}:{ifname}"  # who owns this port, for humans and cleanup
    ipaddress.ip_interface(address)  # fail before creating anything
    with iproute(underlay_ns) as u, iproute(host_ns) as h:
        br = u.link_lookup(ifname=bridge)
        if not br:
            raise LookupError(f"no bridge {bridge} in {underlay_ns}: call ensure_underlay first")
        br = br[0]
        ul, hl = _get(u, uname), _get(h, ifname)
        paired = (ul is not None and hl is not None
                  and _kind(ul) == "veth" and _kind(hl) == "veth"
                  and _attr(ul, "IFLA_LINK") == hl["index"]
                  and _attr(hl, "IFLA_LINK") == ul["index"])
        if not paired:
            for ipr, link in ((u, ul), (h, hl)):
                if link is not None:
                    try:
                        ipr.link("del", index=link["index"])
                    except netlink_error() as e:
                        if e.code != 19:  # ENODEV: went with its peer
                            raise
            # one message creates both ends, the host end directly in host_ns,
            # so there is never a half-made pair to clean up
            fd = os.open(_netns.path_of(host_ns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                u.link("add", ifname=uname, kind="veth", mtu=mtu, master=br, state="up",
                       peer={"ifname": ifname, "mtu": mtu, "net_ns_fd": fd})
            finally:
                os.close(fd)
            hl = _get(h, ifname)
            # the kernel ignores IFLA_IFALIAS when creating a link
            u.link("set", index=u.link_lookup(ifname=uname)[0], ifalias=alias)
        else:
            if (_attr(ul, "IFLA_MASTER") != br or _attr(ul, "IFLA_MTU") != mtu
                    or not ul["flags"] & 1 or _attr(ul, "IFLA_IFALIAS") != alias):
                u.link("set", index=ul["index"], master=br, mtu=mtu, state="up", ifalias=alias)
            if _attr(hl, "IFLA_MTU") != mtu:
                h.link("set", index=hl["index"], mtu=mtu)
        _set_only_address(h, hl["index"], address)
        if not hl["flags"] & 1:
            h.link("set", index=hl["index"], state="up")
    return uname


def remove_underlay_port(underlay_ns: str, host_ns: str, ifname: str = "eth0",
                         port_name: str | None = None) -> bool:
    """Delete host_ns's underlay veth (both ends). Absent pieces are fine."""
    uname = port_name or underlay_port_name(host_ns, ifname)
    for ns, name in ((underlay_ns, uname), (host_ns, ifname)):
        if not namespace.netns_exists(ns):
            continue
        with iproute(ns) as ipr:
            idx = ipr.link_lookup(ifname=name)
            if idx and _kind(ipr.get_links(idx[0])[0]) == "veth":
                try:
                    ipr.link("del", index=idx[0])
                except netlink_error() as e:
                    if e.code != 19:
                        raise
                return True
    return False


def ensure_default_route(host_ns: str, gateway: str) -> bool:
    """A default route via gateway (on the underlay), as a real node has one via its
    router: traffic to a Service without endpoints must be routable to reach
    kube-proxy's REJECT in the FORWARD chain (with no route the node answers
    'network unreachable' first), and pods' egress leaves the node this way.
    Returns True when the route changed."""
    with iproute(host_ns) as ipr:
        current = [r.get_attr("RTA_GATEWAY") for r in ipr.get_default_routes(family=2, table=254)]
        if current == [gateway]:
            return False
        ipr.route("replace", dst="0.0.0.0/0", gateway=gateway)
        return True
