"""flannel's VXLAN backend, as kernel objects in a node namespace.

Per node: one device `flannel.<vni>` (learning off, no miss handlers, the
node's subnet network address as /32 so no broadcast or prefix route is
made). Per remote node, three static entries replace any learning or
flooding:

    neigh   10.244.2.0 dev flannel.1 lladdr <peer vtep mac> PERMANENT
    fdb     <peer vtep mac> dev flannel.1 dst <peer underlay ip> self permanent
    route   10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink

Everything is found again from the device alone (its permanent neighbours,
its fdb remotes, the gateway routes through it), so `sync_peers` converges
after a crash without any record of what was programmed before.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from .namespace import iproute, netlink_error, netns_exists

DEFAULT_VNI = 1
DEFAULT_PORT = 8472  # the kernel's VXLAN default; flannel's Port=0 means this
ENCAP_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14

_AF_INET = 2
_RT_TABLE_MAIN = 254
_RTPROT_BOOT = 3  # what a netlink route gets by default (flannel's); `ip route` hides it
_ENOENT, _ESRCH, _ENODEV, _EADDRNOTAVAIL = 2, 3, 19, 99
NUD_PERMANENT, NTF_SELF = 0x80, 0x02  # linux/neighbour.h
RTNH_F_ONLINK = 0x04                   # linux/rtnetlink.h


def vxlan_name(vni: int = DEFAULT_VNI) -> str:
    """flannel's device name for a VNI."""
    return f"flannel.{vni}"


def new_vtep_mac() -> str:
    """A random locally administered unicast MAC, as flannel makes one.

    The caller persists it: a VTEP MAC that changes on restart leaves stale
    neighbour/fdb entries on every peer until they resync (flannel #533).
    """
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def _mac(value: str) -> str:
    parts = value.lower().replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"{value!r} is not a MAC address")
    int("".join(parts), 16)
    return ":".join(parts)


@dataclass(frozen=True)
class Peer:
    """A remote node as the overlay needs it (flannel's lease: subnet, VtepMAC, PublicIP)."""

    subnet: str
    mac: str
    underlay_ip: str
    vtep_ip: str = ""  # default: the subnet's network address, like flannel

    def __post_init__(self):
        net = ipaddress.ip_network(self.subnet, strict=False)
        object.__setattr__(self, "subnet", str(net))
        object.__setattr__(self, "mac", _mac(self.mac))
        object.__setattr__(self, "underlay_ip", str(ipaddress.IPv4Address(self.underlay_ip)))
        vtep = self.vtep_ip or str(net.network_address)
        object.__setattr__(self, "vtep_ip", str(ipaddress.IPv4Address(vtep)))


@dataclass(frozen=True)
class Vxlan:
    """The device as it is in the kernel after ensure_vxlan."""

    name: str
    index: int
    vni: int
    port: int
    local_ip: str
    mac: str
    mtu: int
    created: bool  # (re)created by this call
    peers_reset: bool  # the kernel dropped peer entries: call sync_peers again


def _info(link):
    info = link.get_attr("IFLA_LINKINFO")
    if info is None:
        return None, None
    return info.get_attr("IFLA_INFO_KIND"), info.get_attr("IFLA_INFO_DATA")


def _lookup(ipr, ifname):
    idx = ipr.link_lookup(ifname=ifname)
    return ipr.get_links(idx[0])[0] if idx else None


def _first_ipv4(ipr, index):
    for a in ipr.get_addr(family=_AF_INET, index=index):
        return a.get_attr("IFA_ADDRESS")
    return None


def ensure_vxlan(node_ns: str, subnet: str, *, vtep_mac: str | None = None,
                 local_ip: str | None = None, vni: int = DEFAULT_VNI,
                 port: int = DEFAULT_PORT, underlay_dev: str = "eth0",
                 mtu: int | None = None) -> Vxlan:
    """Converge flannel.<vni> in node_ns.

    subnet: this node's pod /24; its network address goes on the device as /32.
    vtep_mac: the persisted VTEP MAC (None: keep the device's, or a new one).
    local_ip: outer source address (None: underlay_dev's first IPv4 address).
    mtu: None means underlay_dev's MTU minus the 50 bytes of encapsulation.

    A device whose VNI, port, local address, underlay link or learning
    differs is deleted and created again, as flannel does; its peers go with
    it. A MAC changed in place also costs the peers: the kernel flushes a
    device's neighbours, permanent ones included, on NETDEV_CHANGEADDR.
    Both show as `Vxlan.peers_reset`; sync_peers after ensure_vxlan always
    converges either way.
    """
    name = vxlan_name(vni)
    net = ipaddress.ip_network(subnet, strict=False)
    with iproute(node_ns) as ipr:
        under = _lookup(ipr, underlay_dev)
        if under is None:
            raise LookupError(f"no underlay device {underlay_dev} in {node_ns}")
        if local_ip is None:
            local_ip = _first_ipv4(ipr, under["index"])
            if local_ip is None:
                raise LookupError(f"{underlay_dev} in {node_ns} has no IPv4 address for the VTEP")
        local_ip = str(ipaddress.IPv4Address(local_ip))
        if mtu is None:
            mtu = under.get_attr("IFLA_MTU") - ENCAP_OVERHEAD
        want = {"IFLA_VXLAN_ID": vni, "IFLA_VXLAN_LOCAL": local_ip,
                "IFLA_VXLAN_PORT": port, "IFLA_VXLAN_LINK": under["index"],
                "IFLA_VXLAN_LEARNING": 0}

        link = _lookup(ipr, name)
        if link is not None:
            kind, data = _info(link)
            same = kind == "vxlan" and data is not None and all(
                data.get_attr(k) == v for k, v in want.items())
            if not same:
                ipr.link("del", index=link["index"])
                link = None
        created = link is None
        mac_changed = False
        if created:
            mac = _mac(vtep_mac) if vtep_mac else new_vtep_mac()
            # the MAC is set at creation, before the link is up, so udev /
            # systemd MACAddressPolicy cannot pick another (flannel #1155)
            ipr.link("add", ifname=name, kind="vxlan", address=mac, mtu=mtu,
                     vxlan_id=vni, vxlan_local=local_ip, vxlan_port=port,
                     vxlan_link=under["index"], vxlan_learning=0)
            link = _lookup(ipr, name)
        else:
            mac = _mac(vtep_mac) if vtep_mac else link.get_attr("IFLA_ADDRESS")
            change = {}
            mac_changed = link.get_attr("IFLA_ADDRESS") != mac
            if mac_changed:
                change["address"] = mac
            if link.get_attr("IFLA_MTU") != mtu:
                change["mtu"] = mtu
            if change:
                ipr.link("set", index=link["index"], **change)
        index = link["index"]

        # exactly one address: <subnet network>/32 (a /32 makes no broadcast
        # or prefix route; the peers' routes are added one by one)
        addr = str(net.network_address)
        present = False
        for a in ipr.get_addr(family=_AF_INET, index=index):
            got = (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
            if got == (addr, 32):
                present = True
            else:
                ipr.addr("del", index=index, address=got[0], prefixlen=got[1])
        if not present:
            ipr.addr("add", index=index, address=addr, prefixlen=32)
        if created or not link["flags"] & 1:
            ipr.link("set", index=index, state="up")
    return Vxlan(name, index, vni, port, local_ip, mac, mtu, created, created or mac_changed)


def remove_vxlan(node_ns: str, vni: int = DEFAULT_VNI) -> bool:
    """Delete flannel.<vni>; its neighbours, fdb entries and routes go with it."""
    if not netns_exists(node_ns):
        return False
    with iproute(node_ns) as ipr:
        idx = ipr.link_lookup(ifname=vxlan_name(vni))
        if not idx:
            return False
        try:
            ipr.link("del", index=idx[0])
        except netlink_error() as e:
            if e.code != _ENODEV:
                raise
    return True


# ---- peers -----------------------------------------------------------------

@dataclass
class _Programmed:
    """What the kernel holds for peers on one flannel device."""

    neigh: dict  # vtep ip -> mac (permanent entries only)
    fdb: dict  # mac -> set of underlay ips
    routes: dict  # subnet -> (gateway, onlink), gateway routes in main via the device


def _read(ipr, index: int) -> _Programmed:
    neigh = {}
    for n in ipr.neigh("dump", family=_AF_INET, ifindex=index):
        if n["ifindex"] == index and n["state"] & NUD_PERMANENT:
            neigh[n.get_attr("NDA_DST")] = n.get_attr("NDA_LLADDR")
    fdb = {}
    for n in ipr.fdb("dump", ifindex=index):
        dst, mac = n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR")
        if n["ifindex"] == index and dst and mac:
            fdb.setdefault(mac, set()).add(dst)
    routes = {}
    for r in ipr.route("dump", family=_AF_INET, table=_RT_TABLE_MAIN, oif=index):
        gw = r.get_attr("RTA_GATEWAY")
        if (r.get_attr("RTA_OIF") == index and gw
                and r.get_attr("RTA_TABLE", r["table"]) == _RT_TABLE_MAIN):
            dst = f"{r.get_attr('RTA_DST') or '0.0.0.0'}/{r['dst_len']}"
            routes[dst] = (gw, bool(r["flags"] & RTNH_F_ONLINK))
    return _Programmed(neigh, fdb, routes)


def _ignore(e: Exception, *codes) -> None:
    if e.code not in codes:
        raise e


def _del_route(ipr, index, subnet, gw):
    net = ipaddress.ip_network(subnet)
    try:
        ipr.route("del", dst=str(net.network_address), dst_len=net.prefixlen,
                  gateway=gw, oif=index, table=_RT_TABLE_MAIN)
    except netlink_error() as e:
        _ignore(e, _ESRCH, _ENOENT)


def _del_neigh(ipr, index, ip):
    try:
        ipr.neigh("del", ifindex=index, dst=ip, family=_AF_INET)
    except netlink_error() as e:
        _ignore(e, _ENOENT, _EADDRNOTAVAIL)


def _del_fdb(ipr, index, mac, dst=None):
    kw = {"dst": dst} if dst else {}
    try:
        ipr.fdb("del", ifindex=index, lladdr=mac, **kw)
    except netlink_error() as e:
        _ignore(e, _ENOENT)


def _program(ipr, index: int, peer: Peer, have: _Programmed) -> bool:
    """Add what peer lacks, in flannel's order: neighbour, fdb, route last
    (with the route in place first, the kernel would ARP for the gateway).
    No rollback on a failed step, unlike flannel: a route is never left
    without its neighbour, and the next sync completes or removes the rest."""
    changed = False
    if have.neigh.get(peer.vtep_ip) != peer.mac:
        ipr.neigh("replace", ifindex=index, dst=peer.vtep_ip, lladdr=peer.mac,
                  state=NUD_PERMANENT, family=_AF_INET)
        changed = True
    if have.fdb.get(peer.mac) != {peer.underlay_ip}:
        if have.fdb.get(peer.mac):
            _del_fdb(ipr, index, peer.mac)  # drop every old remote of this MAC
        ipr.fdb("append", ifindex=index, lladdr=peer.mac, dst=peer.underlay_ip,
                state=NUD_PERMANENT, flags=NTF_SELF)
        changed = True
    if have.routes.get(peer.subnet) != (peer.vtep_ip, True):
        net = ipaddress.ip_network(peer.subnet)
        ipr.route("replace", dst=str(net.network_address), dst_len=net.prefixlen,
                  gateway=peer.vtep_ip, oif=index, flags=RTNH_F_ONLINK,
                  table=_RT_TABLE_MAIN, proto=_RTPROT_BOOT)
        changed = True
    return changed


def _device(ipr, vni):
    idx = ipr.link_lookup(ifname=vxlan_name(vni))
    return idx[0] if idx else None


def ensure_peer(node_ns: str, peer_subnet: str, peer_mac: str, peer_underlay_ip: str, *,
                peer_vtep_ip: str | None = None, vni: int = DEFAULT_VNI) -> bool:
    """Program one remote node. Returns True if anything changed."""
    peer = Peer(peer_subnet, peer_mac, peer_underlay_ip, peer_vtep_ip or "")
    with iproute(node_ns) as ipr:
        index = _device(ipr, vni)
        if index is None:
            raise LookupError(f"no {vxlan_name(vni)} in {node_ns}: call ensure_vxlan first")
        have = _read(ipr, index)
        # a MAC change leaves the old MAC's fdb entry behind; drop it when
        # nothing else points at that MAC
        old = have.neigh.get(peer.vtep_ip)
        changed = _program(ipr, index, peer, have)
        others = {m for ip, m in have.neigh.items() if ip != peer.vtep_ip}
        if old and old != peer.mac and old not in others:
            _del_fdb(ipr, index, old)
        return changed


def remove_peer(node_ns: str, peer_subnet: str, *, peer_vtep_ip: str | None = None,
                vni: int = DEFAULT_VNI) -> bool:
    """Remove a remote node's route, neighbour and fdb entry (route first, the
    reverse of adding). The MAC is read from the neighbour entry. Absence of
    any piece, the device or the namespace is fine."""
    net = ipaddress.ip_network(peer_subnet, strict=False)
    vtep_ip = peer_vtep_ip or str(net.network_address)
    if not netns_exists(node_ns):
        return False
    with iproute(node_ns) as ipr:
        index = _device(ipr, vni)
        if index is None:
            return False
        have = _read(ipr, index)
        changed = False
        if str(net) in have.routes:
            _del_route(ipr, index, str(net), have.routes[str(net)][0])
            changed = True
        mac = have.neigh.get(vtep_ip)
        if mac is not None:
            _del_neigh(ipr, index, vtep_ip)
            changed = True
            others = {m for ip, m in have.neigh.items() if ip != vtep_ip}
            if mac in have.fdb and mac not in others:
                _del_fdb(ipr, index, mac)
        return changed


def list_peers(node_ns: str, vni: int = DEFAULT_VNI) -> list[Peer]:
    """The peers the kernel holds complete (route + neighbour + fdb agree)."""
    with iproute(node_ns) as ipr:
        index = _device(ipr, vni)
        if index is None:
            return []
        have = _read(ipr, index)
    peers = []
    for subnet, (gw, onlink) in sorted(have.routes.items()):
        mac = have.neigh.get(gw)
        remotes = have.fdb.get(mac, set()) if mac else set()
        if onlink and mac and len(remotes) == 1:
            peers.append(Peer(subnet, mac, next(iter(remotes)), gw))
    return peers


@dataclass(frozen=True)
class SyncResult:
    added: tuple[str, ...]  # subnets programmed or corrected
    removed: tuple[str, ...]  # subnets no longer wanted

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


def sync_peers(node_ns: str, peers, vni: int = DEFAULT_VNI) -> SyncResult:
    """Converge flannel.<vni>'s peers to exactly `peers` (Peer objects or
    dicts with Peer's fields): program what is missing or wrong, remove
    routes, neighbours and fdb entries nobody wants (including ones left
    while the agent was down, flannel #2554). One dump of each table, then
    only the changes."""
    want = {}
    for p in peers:
        p = p if isinstance(p, Peer) else Peer(**p)
        if p.subnet in want and want[p.subnet] != p:
            raise ValueError(f"two different peers for {p.subnet}")
        want[p.subnet] = p
    with iproute(node_ns) as ipr:
        index = _device(ipr, vni)
        if index is None:
            raise LookupError(f"no {vxlan_name(vni)} in {node_ns}: call ensure_vxlan first")
        have = _read(ipr, index)
        want_ips = {p.vtep_ip for p in want.values()}
        want_macs = {p.mac for p in want.values()}
        removed = []
        # stale first, route before neighbour before fdb
        for subnet, (gw, _) in have.routes.items():
            if subnet not in want:
                _del_route(ipr, index, subnet, gw)
                removed.append(subnet)
        for ip in have.neigh:
            if ip not in want_ips:
                _del_neigh(ipr, index, ip)
        for mac in have.fdb:
            if mac not in want_macs:
                _del_fdb(ipr, index, mac)
        added = [s for s, p in sorted(want.items()) if _program(ipr, index, p, have)]
    return SyncResult(tuple(added), tuple(sorted(removed)))
