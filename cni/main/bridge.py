"""netlab-bridge: the CNI main plugin. A veth pair from the container's
network namespace into a node bridge, addresses and routes from IPAM,
optional gateway, hairpin and masquerade: the reference bridge plugin's
options and meaning, so an existing bridge config works by changing `type`.

The host side is the network namespace of the calling thread, as for any
CNI plugin. Two ways in:
  - exec'd by a runtime: cni.client hands the request to the node's warm
    daemon when one listens (cni.daemon), else runs HANDLERS in-process;
  - in-process by the lab engine: `add()`, `delete()`, `check()`.

The standard library only (netlink through cni.rtnl), so the exec'd
plugin runs under `python -I -S` and a cold call imports nothing big.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import threading
from dataclasses import dataclass

from .. import delegate, iptables, spec
from ..netns import check_netns_path, entered
from ..rtnl import Rtnl
from ..spec import CniError

DEFAULT_BRIDGE = "cni0"
# The host veth carries this alias, so GC can tell our veths (and whose they are) from any other.
ALIAS_PREFIX = "netlab-bridge"


@dataclass
class BridgeConf:
    network: str
    bridge: str = DEFAULT_BRIDGE
    is_gateway: bool = False
    is_default_gateway: bool = False
    force_address: bool = False
    ip_masq: bool = False
    hairpin_mode: bool = False
    promisc_mode: bool = False
    mtu: int = 0
    dns: dict | None = None


def _bool(conf: dict, key: str) -> bool:
    value = conf.get(key, False)
    if not isinstance(value, bool):
        raise CniError(spec.INVALID_CONFIG, f"{key} must be true or false, not {value!r}",
                       f'write "{key}": true or "{key}": false')
    return value


def parse_conf(conf: dict) -> BridgeConf:
    """Validate the plugin's keys (pure)."""
    bridge = conf.get("bridge", DEFAULT_BRIDGE)
    if not isinstance(bridge, str) or not bridge:
        raise CniError(spec.INVALID_CONFIG, f"bridge must be an interface name, not {bridge!r}",
                       'e.g. "bridge": "cni0"')
    if len(bridge) > spec.IFNAME_MAX:
        raise CniError(spec.INVALID_CONFIG, f"bridge name {bridge!r} is longer than {spec.IFNAME_MAX} characters",
                       "Linux interface names have at most 15 characters; choose a shorter bridge name")
    if bridge in (".", "..") or any(c in bridge for c in "/:") or any(c.isspace() for c in bridge):
        raise CniError(spec.INVALID_CONFIG, f"bridge name {bridge!r} is not a valid interface name",
                       "it must not be '.' or '..' nor contain '/', ':' or whitespace")
    mtu = conf.get("mtu", 0)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not (mtu == 0 or 68 <= mtu <= 65535):
        raise CniError(spec.INVALID_CONFIG, f"mtu {mtu!r} is invalid", "use an integer from 68 to 65535, or leave it out")
    bc = BridgeConf(network=conf["name"], bridge=bridge,
                    is_gateway=_bool(conf, "isGateway"), is_default_gateway=_bool(conf, "isDefaultGateway"),
                    force_address=_bool(conf, "forceAddress"), ip_masq=_bool(conf, "ipMasq"),
                    hairpin_mode=_bool(conf, "hairpinMode"), promisc_mode=_bool(conf, "promiscMode"),
                    mtu=mtu, dns=conf.get("dns") or None)
    if bc.is_default_gateway:
        bc.is_gateway = True  # as the reference: a default gateway is a gateway
    if bc.hairpin_mode and bc.promisc_mode:
        raise CniError(spec.INVALID_CONFIG, "hairpinMode and promiscMode cannot both be set",
                       "choose one: hairpinMode (per-port reflection) or promiscMode (bridge sees all frames)")
    if bc.dns is not None and not isinstance(bc.dns, dict):
        raise CniError(spec.INVALID_CONFIG, "dns must be an object", 'e.g. "dns": {"nameservers": ["10.96.0.10"]}')
    delegate.ipam_type(conf)
    return bc


def host_veth_name(container_id: str, ifname: str) -> str:
    """Deterministic, so DEL and GC find it without the container's namespace."""
    return "veth" + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:8]


def veth_alias(network: str, container_id: str, ifname: str) -> str:
    return f"{ALIAS_PREFIX} net={network} id={container_id} if={ifname}"


def _parse_alias(alias: str | None) -> tuple[str, str, str] | None:
    if not alias or not alias.startswith(ALIAS_PREFIX + " "):
        return None
    fields = dict(p.split("=", 1) for p in alias.split()[1:] if "=" in p)
    if {"net", "id", "if"} <= fields.keys():
        return fields["net"], fields["id"], fields["if"]
    return None


def _requested_mac(conf: dict, att: spec.Attachment) -> str | None:
    return (att.args.get("MAC") or conf.get("args", {}).get("cni", {}).get("mac")
            or conf.get("runtimeConfig", {}).get("mac"))


def _write_sysctl(path: str, value: str) -> None:
    """Sysctls under /proc/sys/net belong to the netns of the thread that opens them."""
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError:
        pass  # an interface-specific knob may be missing (e.g. IPv6 disabled); not fatal


def _netlink_error(what: str, e: Exception) -> CniError:
    return CniError(spec.INTERNAL, f"{what}: {e}", type(e).__name__)


# A daemon worker serves one namespace for its whole life: it keeps its host-side netlink socket
# between calls (a socket and a bind fewer a call; about 1 ms with pyroute2, little with cni.rtnl).
# Other threads open one per call: a socket kept in a lab node's namespace would keep that
# namespace alive after the node is gone.
_kept = threading.local()


def keep_host_socket() -> None:
    """Called by a long-lived worker thread that stays in one namespace (cni.daemon's workers)."""
    _kept.enabled, _kept.inode, _kept.ipr = True, None, None


def release_host_socket() -> None:
    """Close the kept socket, if any (a worker's last act; also after a failed call)."""
    ipr, _kept.ipr, _kept.inode = getattr(_kept, "ipr", None), None, None
    if ipr is not None:
        ipr.close()


def _host_socket(host_ns_fd: int):
    if not getattr(_kept, "enabled", False):
        return Rtnl()
    inode = os.fstat(host_ns_fd).st_ino
    if _kept.ipr is None or _kept.inode != inode:
        release_host_socket()
        _kept.ipr, _kept.inode = Rtnl(), inode
    return _kept.ipr


class _Links:
    """Netlink sockets (cni.rtnl: the requests packed by hand, not pyroute2's event loop) for
    the host and the container namespace, for one call."""

    def __init__(self, container_netns: str | None):
        self.host_ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.host = _host_socket(self.host_ns_fd)
        self.cont = None
        if container_netns:
            try:
                self.cont = Rtnl(container_netns)
            except BaseException:
                self.close(failed=True)
                raise

    def close(self, failed: bool = False):
        if self.host is getattr(_kept, "ipr", None):
            if failed:  # a call that failed midway may leave replies unread: start afresh
                release_host_socket()
        else:
            self.host.close()
        os.close(self.host_ns_fd)
        if self.cont is not None:
            self.cont.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(failed=exc_type is not None)


def _get(ipr, name: str):
    """The link called name, in one round trip (RTM_GETLINK by name), or None."""
    try:
        return ipr.link("get", ifname=name)[0]
    except Exception as e:
        if getattr(e, "code", None) == 19:  # ENODEV
            return None
        raise


def _lookup(ipr, name: str) -> int | None:
    link = _get(ipr, name)
    return None if link is None else link["index"]


def _random_mac() -> str:
    mac = bytearray(os.urandom(6))
    mac[0] = (mac[0] & 0xFE) | 0x02  # locally administered, unicast
    return ":".join(f"{b:02x}" for b in mac)


def _ensure_bridge(links: _Links, bc: BridgeConf):
    ipr = links.host
    link = _get(ipr, bc.bridge)
    if link is None:
        try:
            # An explicit MAC pins it: otherwise the bridge takes the lowest port MAC and changes as pods come and go.
            ipr.link("add", ifname=bc.bridge, kind="bridge", address=_random_mac(), state="up",
                     **({"mtu": bc.mtu} if bc.mtu else {}))
        except Exception as e:
            if getattr(e, "code", None) != 17:  # EEXIST: a concurrent ADD created it first
                raise _netlink_error(f"could not create bridge {bc.bridge!r}", e)
        link = _get(ipr, bc.bridge)
    kind = link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))
    if kind != "bridge":
        raise CniError(spec.INVALID_CONFIG, f"{bc.bridge!r} already exists and is not a bridge (it is {kind or 'a device'})",
                       'set "bridge" to another name, or remove that interface')
    changes = {}
    if not link["flags"] & 1:  # IFF_UP
        changes["state"] = "up"
    if bc.promisc_mode and not (link["flags"] & 0x100):
        changes["flags"] = link["flags"] | 0x100 | 1
    if changes:
        ipr.link("set", index=link["index"], **changes)
    return link


def _ensure_gateway_addr(links: _Links, bc: BridgeConf, br_idx: int, gateway: str, prefix: int) -> None:
    """The gateway on the bridge. Every pod after the first finds it there: try the add first
    (EEXIST, one round trip), and look at the bridge's other addresses only when it was new."""
    ipr = links.host
    try:
        ipr.addr("add", index=br_idx, address=gateway, prefixlen=prefix)
    except Exception as e:
        if getattr(e, "code", None) == 17:  # already there (also: concurrent ADDs racing on it)
            return
        raise _netlink_error(f"could not add {gateway}/{prefix} to {bc.bridge!r}", e)
    gw = ipaddress.ip_address(gateway)
    for a in ipr.get_addr(index=br_idx, family=10 if gw.version == 6 else 2):
        existing = ipaddress.ip_address(a.get("IFA_ADDRESS"))
        if existing == gw or (gw.version == 6 and existing.is_link_local):
            continue
        if not bc.force_address:
            ipr.addr("del", index=br_idx, address=gateway, prefixlen=prefix)
            raise CniError(spec.INVALID_CONFIG,
                           f"bridge {bc.bridge!r} already has address {existing}, not the gateway {gateway}",
                           'set "forceAddress": true to replace it, or use a bridge per network')
        ipr.addr("del", index=br_idx, address=str(existing), prefixlen=a["prefixlen"])


def _ipam_ips(ipam_result: dict) -> list[tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, str | None]]:
    out = []
    for ip in ipam_result.get("ips", []):
        out.append((ipaddress.ip_interface(ip["address"]), ip.get("gateway")))
    return out


def _create_veth(links: _Links, bc: BridgeConf, conf: dict, att: spec.Attachment) -> str:
    """The pair is born in the container's namespace, so CNI_IFNAME never clashes with a host
    device; the container end comes up at once. Returns the host end's MAC (we choose it, as the
    kernel would: random, locally administered), which saves reading the host end back."""
    host_name = host_veth_name(att.container_id, att.ifname)
    host_mac = _random_mac()
    peer = {"ifname": host_name, "net_ns_fd": links.host_ns_fd, "address": host_mac}
    extra = {"state": "up"}
    if bc.mtu:
        extra["mtu"] = peer["mtu"] = bc.mtu
    mac = _requested_mac(conf, att)
    if mac:
        extra["address"] = mac
    for attempt in (1, 2):
        try:
            links.cont.link("add", ifname=att.ifname, kind="veth", peer=peer, **extra)
            return host_mac
        except Exception as e:
            if getattr(e, "code", None) != 17:
                raise _netlink_error(f"could not create veth {att.ifname}/{host_name}", e)
        if _lookup(links.cont, att.ifname) is not None:
            raise CniError(spec.INVALID_ENV, f"CNI_IFNAME {att.ifname!r} already exists in {att.netns}",
                           "choose another CNI_IFNAME, or DEL the existing attachment first")
        stale = _lookup(links.host, host_name)
        if stale is None or attempt == 2:
            raise CniError(spec.INTERNAL, f"could not create veth {att.ifname}/{host_name}: exists", "retry the ADD")
        links.host.link("del", index=stale)  # left by an ADD that crashed before it could roll back
    return host_mac


def cmd_add(conf: dict, att: spec.Attachment) -> dict:
    bc = parse_conf(conf)
    check_netns_path(att.netns)
    with _Links(att.netns) as links:
        br = _ensure_bridge(links, bc)
        host_mac = _create_veth(links, bc, conf, att)
        try:
            ipam_result = delegate.ipam("ADD", conf, att)
        except BaseException:
            _rollback(links, bc, conf, att, ipam=False)
            raise
        masquerade = None
        try:
            if bc.ip_masq:  # the exec runs while _attach does its netlink work
                masquerade = iptables.start_masquerade(bc.network, att.container_id, _masquerade_ips(ipam_result))
            result = _attach(links, bc, br, host_mac, conf, att, ipam_result)
            if masquerade is not None:
                masquerade.finish()
            return result
        except BaseException:
            if masquerade is not None:
                try:
                    masquerade.finish()  # let it end before the rollback removes what it wrote
                except CniError:
                    pass
            _rollback(links, bc, conf, att)
            raise


def _masquerade_ips(ipam_result: dict) -> list[tuple[str, str]]:
    """(address/32, subnet) of each IPv4 address: traffic from it leaving the subnet is masqueraded."""
    return [(f"{i.ip}/32", str(i.network)) for i, _ in _ipam_ips(ipam_result) if i.version == 4]


def _attach(links: _Links, bc: BridgeConf, br, host_mac: str, conf: dict, att: spec.Attachment,
            ipam_result: dict) -> dict:
    host, cont = links.host, links.cont
    br_idx = br["index"]
    host_name = host_veth_name(att.container_id, att.ifname)
    cv = _get(cont, att.ifname)
    cont_idx = cv["index"]
    host_idx = cv.get("IFLA_LINK")  # a veth's IFLA_LINK is its peer's index, here in the host namespace
    host.link("set", index=host_idx, master=br_idx, state="up",
              ifalias=veth_alias(bc.network, att.container_id, att.ifname))
    if bc.hairpin_mode:
        host.brport("set", index=host_idx, mode=1)  # IFLA_BRPORT_MODE is hairpin mode

    ips = _ipam_ips(ipam_result)
    gateways = {}
    for iface, gw in ips:
        if gw is None and bc.is_gateway:
            gw = str(next(iface.network.hosts()))  # as the reference: the subnet's first address
        if gw:
            gateways[iface.version] = gw

    with entered(att.netns):
        _write_sysctl(f"/proc/sys/net/ipv4/conf/{att.ifname}/arp_notify", "1")
        _write_sysctl(f"/proc/sys/net/ipv6/conf/{att.ifname}/accept_dad", "0")
    for iface, _ in ips:
        cont.addr("add", index=cont_idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)

    routes = list(ipam_result.get("routes", []))
    if bc.is_default_gateway:
        for version, gw in gateways.items():
            dst = "0.0.0.0/0" if version == 4 else "::/0"
            if not any(r.get("dst") == dst for r in routes):
                routes.append({"dst": dst, "gw": gw})
    for r in routes:
        net = ipaddress.ip_network(r["dst"], strict=False)
        gw = r.get("gw") or gateways.get(net.version)
        kw = {"dst": str(net), "oif": cont_idx}
        if gw:
            kw["gateway"] = gw
        try:
            cont.route("add", **kw)
        except Exception as e:
            if getattr(e, "code", None) != 17:
                raise _netlink_error(f"could not add route {r['dst']}", e)

    if bc.is_gateway:
        for iface, _ in ips:
            gw = gateways.get(iface.version)
            if gw:
                _ensure_gateway_addr(links, bc, br_idx, gw, iface.network.prefixlen)
        _write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
        if 6 in gateways:
            _write_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")

    result = {
        "cniVersion": conf["cniVersion"],
        "interfaces": [
            {"name": bc.bridge, "mac": br.get("IFLA_ADDRESS")},
            {"name": host_name, "mac": host_mac},
            {"name": att.ifname, "mac": cv.get("IFLA_ADDRESS"), "sandbox": att.netns},
        ],
        "ips": [dict(ip, interface=2) for ip in ipam_result.get("ips", [])],
        "routes": routes,
        "dns": bc.dns if bc.dns else ipam_result.get("dns", {}),
    }
    for ip in result["ips"]:
        v = ipaddress.ip_interface(ip["address"]).version
        if "gateway" not in ip and v in gateways:
            ip["gateway"] = gateways[v]
    if bc.mtu:
        for i in result["interfaces"]:
            i["mtu"] = bc.mtu
    return result


def _rollback(links: _Links, bc: BridgeConf, conf: dict, att: spec.Attachment, ipam: bool = True) -> None:
    """Undo a half-done ADD: the veth pair, the masquerade chain, the lease."""
    for ipr, name in ((links.cont, att.ifname), (links.host, host_veth_name(att.container_id, att.ifname))):
        try:
            idx = _lookup(ipr, name)
            if idx is not None:
                ipr.link("del", index=idx)
        except Exception:
            pass
    if not ipam:
        return
    for undo in (lambda: iptables.teardown_masquerade(bc.network, att.container_id) if bc.ip_masq else None,
                 lambda: delegate.ipam("DEL", conf, att)):
        try:
            undo()
        except Exception:
            pass


def cmd_del(conf: dict, att: spec.Attachment) -> None:
    """Idempotent: whatever is already gone is fine, the netns included."""
    bc = parse_conf(conf)
    netns_alive = bool(att.netns) and os.path.exists(att.netns)
    if netns_alive:
        try:
            check_netns_path(att.netns)
        except CniError:
            netns_alive = False
    with _Links(att.netns if netns_alive else None) as links:
        if links.cont is not None:
            idx = _lookup(links.cont, att.ifname)
            if idx is not None:
                links.cont.link("del", index=idx)
        # the host end goes with its peer, unless the netns was already unmounted but alive
        idx = _lookup(links.host, host_veth_name(att.container_id, att.ifname))
        if idx is not None:
            links.host.link("del", index=idx)
    delegate.ipam("DEL", conf, att)
    if bc.ip_masq:  # DEL gets the config ADD got: only then is there a chain to remove
        iptables.teardown_masquerade(bc.network, att.container_id)
    return None


def cmd_check(conf: dict, att: spec.Attachment) -> None:
    bc = parse_conf(conf)
    prev = conf.get("prevResult")
    if not isinstance(prev, dict):
        raise CniError(spec.INVALID_CONFIG, "CHECK needs prevResult", "the runtime passes the ADD result as prevResult")
    check_netns_path(att.netns)
    problems = []
    with _Links(att.netns) as links:
        host, cont = links.host, links.cont
        br_idx = _lookup(host, bc.bridge)
        if br_idx is None:
            problems.append(f"bridge {bc.bridge} is missing")
        host_name = host_veth_name(att.container_id, att.ifname)
        hv = _get(host, host_name)
        if hv is None:
            problems.append(f"host veth {host_name} is missing")
        elif br_idx is not None and hv.get("IFLA_MASTER") != br_idx:
            problems.append(f"host veth {host_name} is not attached to {bc.bridge}")
        cidx = _lookup(cont, att.ifname)
        if cidx is None:
            problems.append(f"interface {att.ifname} is missing in {att.netns}")
        else:
            ifaces = prev.get("interfaces", [])
            have = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in cont.get_addr(index=cidx)}
            for ip in prev.get("ips", []):
                i = ip.get("interface")
                if i is not None and (i >= len(ifaces) or ifaces[i].get("name") != att.ifname):
                    continue
                want = ipaddress.ip_interface(ip["address"])
                if (str(want.ip), want.network.prefixlen) not in have:
                    problems.append(f"address {ip['address']} is missing on {att.ifname}")
            routes = {(r.get("RTA_DST") or ("0.0.0.0" if r["family"] == 2 else "::"), r["dst_len"], r.get("RTA_GATEWAY"))
                      for r in cont.get_routes(oif=cidx)}
            for r in prev.get("routes", []):
                net = ipaddress.ip_network(r["dst"], strict=False)
                if not any(d == str(net.network_address) and l == net.prefixlen and (not r.get("gw") or g == r["gw"])
                           for d, l, g in routes):
                    problems.append(f"route {r['dst']}{' via ' + r['gw'] if r.get('gw') else ''} is missing")
    try:
        delegate.ipam("CHECK", conf, att)
    except CniError as e:
        problems.append(f"IPAM: {e.msg}")
    if problems:
        raise CniError(spec.CHECK_MISMATCH, "; ".join(problems), f"container {att.container_id} on {bc.network}")
    return None


def cmd_gc(conf: dict, att: spec.Attachment) -> None:
    """Remove the host veths, masquerade chains and leases of attachments not in the valid list."""
    bc = parse_conf(conf)
    valid = spec.valid_attachments(conf)
    valid_ids = {cid for cid, _ in valid}
    errors = []
    with _Links(None) as links:
        for link in links.host.get_links():
            owner = _parse_alias(link.get("IFLA_IFALIAS"))
            if owner and owner[0] == bc.network and (owner[1], owner[2]) not in valid:
                try:
                    links.host.link("del", index=link["index"])
                except Exception as e:
                    errors.append(f"veth {link.get('IFLA_IFNAME')}: {e}")
    try:
        stale = {ch for ch, cid in iptables.masquerade_owners(bc.network).items() if cid not in valid_ids}
        iptables.teardown_chains(stale)
    except CniError as e:
        errors.append(f"masquerade: {e.msg}")
    try:
        delegate.ipam("GC", conf, att)
    except CniError as e:
        errors.append(f"IPAM: {e.msg}")
    if errors:  # GC goes on past errors, then reports them
        raise CniError(spec.INTERNAL, "GC could not remove everything", "; ".join(errors))
    return None


def cmd_status(conf: dict, att: spec.Attachment) -> None:
    bc = parse_conf(conf)
    with Rtnl() as ipr:
        link = _get(ipr, bc.bridge)
        if link is not None:
            kind = link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))
            if kind != "bridge":
                raise CniError(spec.NOT_AVAILABLE, f"{bc.bridge!r} exists and is not a bridge",
                               'remove that interface or set "bridge" to another name')
    try:
        delegate.ipam("STATUS", conf, att)
    except CniError as e:
        if e.code in (spec.NOT_AVAILABLE, spec.NOT_AVAILABLE_LIMITED):
            raise
        raise CniError(spec.NOT_AVAILABLE, f"IPAM is not available: {e.msg}", e.details) from None
    return None


HANDLERS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}


# --- in-process API for the lab engine -------------------------------------------------

def invoke(command: str, conf: dict, container_id: str = "", netns: str = "", ifname: str = "eth0",
           args: dict | None = None, cni_path: list[str] | None = None) -> dict | None:
    """Run one command in-process with the same validation as an exec'd call; raises CniError."""
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
           "CNI_ARGS": ";".join(f"{k}={v}" for k, v in (args or {}).items()),
           "CNI_PATH": ":".join(cni_path or [])}
    att = spec.attachment_from_env(env)
    conf = spec.load_config(conf, command)
    if command == "VERSION":
        return {"cniVersion": conf["cniVersion"], "supportedVersions": spec.SUPPORTED_VERSIONS}
    handler = HANDLERS.get(command)
    result = handler(conf, att) if handler else None
    return spec.convert_result(result, conf["cniVersion"]) if result else None


def add(conf: dict, container_id: str, netns: str, ifname: str = "eth0", **kw) -> dict:
    return invoke("ADD", conf, container_id, netns, ifname, **kw)


def delete(conf: dict, container_id: str, netns: str = "", ifname: str = "eth0", **kw) -> None:
    invoke("DEL", conf, container_id, netns, ifname, **kw)


def check(conf: dict, container_id: str, netns: str, ifname: str = "eth0", **kw) -> None:
    invoke("CHECK", conf, container_id, netns, ifname, **kw)
