"""A machine as a node: which interface carries the overlay, and the record of what a
join makes on the host (cni0, flannel.<vni>, sysctls...), written BEFORE it is made,
so `node leave` removes exactly that: on a real host these names carry no lab prefix
that could find them again, and they may belong to something else (another CNI).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv4Interface, ip_address

from pyroute2 import IPRoute

from .. import state

# The provider's management network a Vagrant VM's first NIC is on: every VirtualBox VM
# has 10.0.2.15 behind NAT (the same address on each, so useless between VMs), libvirt
# gives 192.168.121.0/24. Never the underlay when another network exists.
MANAGEMENT_NETWORKS = (IPv4Interface("10.0.2.15/24").network, IPv4Interface("192.168.121.0/24").network)


class HostError(RuntimeError):
    """The host cannot be a node as asked; the message says what to change."""


@dataclass(frozen=True)
class Underlay:
    iface: str
    ip: IPv4Address
    prefixlen: int
    mtu: int
    why: str                          # why this interface, for the user


def _addresses() -> list[tuple[str, IPv4Interface, int, bool]]:
    """(ifname, address, mtu, up) of every IPv4 address in this namespace, in link order."""
    with IPRoute() as ipr:
        links = {l["index"]: l for l in ipr.get_links()}
        out = []
        for a in ipr.get_addr(family=2):
            link = links.get(a["index"])
            if link is None:
                continue
            out.append((link.get_attr("IFLA_IFNAME"), IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"),
                        link.get_attr("IFLA_MTU"), bool(link["flags"] & 1)))
        return out


def _default_route_iface() -> str | None:
    with IPRoute() as ipr:
        for r in ipr.get_default_routes(family=2):
            oif = r.get_attr("RTA_OIF")
            if oif:
                return ipr.get_links(oif)[0].get_attr("IFLA_IFNAME")
    return None


def choose_underlay(iface: str | None = None, public_ip: str | None = None, store_host: str | None = None) -> Underlay:
    """The interface and address the node's VXLAN runs over, like flanneld's --iface and
    --public-ip; without either: the private network (the one that reaches the store's
    host when it is on it), never the Vagrant management NIC when another one exists,
    else the default route's interface (flannel's default)."""
    addrs = [(n, a, m) for n, a, m, up in _addresses() if n != "lo" and not a.ip.is_loopback and up]
    if public_ip:
        try:
            want = IPv4Address(public_ip)
        except ValueError:
            raise HostError(f"--public-ip {public_ip!r} is not an IPv4 address") from None
        hit = [(n, a, m) for n, a, m in addrs if a.ip == want]
        if not hit:
            raise HostError(f"--public-ip {want} is not an address of this machine (it has: "
                            f"{', '.join(f'{n} {a}' for n, a, _ in addrs) or 'none'}); give one of them, or --iface")
        n, a, m = hit[0]
        return Underlay(n, a.ip, a.network.prefixlen, m, f"--public-ip {want} is on {n}")
    if iface:
        hit = [(n, a, m) for n, a, m in addrs if n == iface]
        if not hit:
            names = sorted({n for n, _, _ in addrs})
            raise HostError(f"--iface {iface}: no such interface with an IPv4 address that is up here "
                            f"(interfaces with one: {', '.join(names) or 'none'})")
        n, a, m = hit[0]
        return Underlay(n, a.ip, a.network.prefixlen, m, f"--iface {iface}")
    if not addrs:
        raise HostError("this machine has no IPv4 address except loopback; give --iface or --public-ip")
    private = [(n, a, m) for n, a, m in addrs if not any(a.ip in net for net in MANAGEMENT_NETWORKS)]
    skipped = [f"{n} ({a.ip}, Vagrant's management network)" for n, a, _ in addrs if (n, a, _) not in private]
    pool = private or addrs
    if store_host:
        try:
            host = ip_address(store_host)
        except ValueError:
            host = None
        near = [(n, a, m) for n, a, m in pool if host is not None and host in a.network]
        if near:
            n, a, m = near[0]
            return Underlay(n, a.ip, a.network.prefixlen, m, f"{n} is on the store's network ({a.network})"
                            + (f"; skipped {', '.join(skipped)}" if skipped else ""))
    default = _default_route_iface()
    pick = next(((n, a, m) for n, a, m in pool if n == default), pool[0])
    n, a, m = pick
    why = "the default route's interface" if n == default else "the first interface with an address"
    return Underlay(n, a.ip, a.network.prefixlen, m, why + (f"; skipped {', '.join(skipped)}" if skipped else ""))


def link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


# --- the record of what the node made on this host -----------------------------------------

@dataclass
class HostRecord:
    lab: str
    node: str
    store: str
    iface: str
    public_ip: str
    links: list[str] = field(default_factory=list)          # made by us: removed on leave
    sysctls: dict[str, str] = field(default_factory=dict)   # key -> the value before the join

    @staticmethod
    def path(lab: str, node: str) -> str:
        return os.path.join(state.LabPaths(lab).node_dir(node), "host.json")

    def save(self) -> None:
        state.write_file(self.path(self.lab, self.node), json.dumps(asdict(self), indent=1) + "\n", mode=0o600)

    @classmethod
    def load(cls, lab: str, node: str) -> "HostRecord | None":
        try:
            with open(cls.path(lab, node)) as f:
                return cls(**json.load(f))
        except FileNotFoundError:
            return None

    def remove(self) -> None:
        try:
            os.unlink(self.path(self.lab, self.node))
        except FileNotFoundError:
            pass


def records_here() -> list[HostRecord]:
    """The nodes joined from this machine (a machine is normally one node)."""
    out = []
    for lab in state.list_labs():
        try:
            nodes = os.listdir(os.path.join(state.LabPaths(lab).dir, "nodes"))
        except FileNotFoundError:
            continue
        out += [r for n in sorted(nodes) if (r := HostRecord.load(lab, n)) is not None]
    return out
