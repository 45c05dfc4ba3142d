"""netlab-ipam: a host-local-compatible IPAM plugin.

Leases live on disk exactly as the reference host-local keeps them, so the
two plugins can share one data directory:

    <dataDir>/<network>/<ip>                 "<containerID>\\r\\n<ifname>", created O_EXCL
    <dataDir>/<network>/last_reserved_ip.<N> last address handed out from range set N
    <dataDir>/<network>/lock                 flock(2) held around every read-modify-write

Standard library only: this module is on the exec'd plugin's path.
"""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field

from .. import skel, spec
from ..spec import CniError

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
LAST_RESERVED_PREFIX = "last_reserved_ip."
LOCK_NAME = "lock"
LINE_BREAK = "\r\n"  # host-local's separator between container ID and ifname

_FREE_HINT = ("free addresses: DEL the containers that no longer exist, or run GC with the "
              "valid attachments; or widen the range (subnet, rangeStart/rangeEnd, or add a range to the set)")


def _show(value) -> str:
    # Show config values as JSON, the way the user wrote them.
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _invalid(msg: str, details: str) -> CniError:
    return CniError(spec.INVALID_CONFIG, msg, details)


# ---------------------------------------------------------------- config model

@dataclass(frozen=True)
class Range:
    """One pool: the allocatable addresses rangeStart..rangeEnd of a subnet."""
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network
    start: ipaddress.IPv4Address | ipaddress.IPv6Address
    end: ipaddress.IPv4Address | ipaddress.IPv6Address
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address
    where: str = ""  # config path, e.g. ipam.ranges[0][1], for messages

    @property
    def version(self) -> int:
        return self.subnet.version

    def contains(self, ip) -> bool:
        return ip.version == self.version and self.start <= ip <= self.end

    def capacity(self) -> int:
        # the iterator skips the gateway, so it does not count
        n = int(self.end) - int(self.start) + 1
        return n - 1 if self.contains(self.gateway) else n

    def overlaps(self, other: "Range") -> bool:
        return (self.version == other.version
                and not (self.end < other.start or other.end < self.start))

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


def set_str(rset: list[Range]) -> str:
    return ",".join(str(r) for r in rset)


def set_contains(rset: list[Range], ip) -> Range | None:
    for r in rset:
        if r.contains(ip):
            return r
    return None


@dataclass
class IpamConfig:
    """The parsed and validated IPAM request."""
    name: str
    data_dir: str
    range_sets: list[list[Range]]
    routes: list[dict] = field(default_factory=list)
    resolv_conf: str = ""
    requested: list[tuple[str, object]] = field(default_factory=list)  # (source, ip)

    @property
    def net_dir(self) -> str:
        return os.path.join(self.data_dir, self.name)


def _parse_ip(value, where: str):
    if not isinstance(value, str):
        raise _invalid(f"{where} must be a string, got {_show(value)}", 'write the address as a string, e.g. "10.244.1.1"')
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise _invalid(f"{where}: {_show(value)} is not a valid IP address",
                       "write it like 10.244.1.1 or fd00::1") from None
    if ip.version == 6 and (ip.ipv4_mapped is not None or ip.scope_id):
        # Go's net.IP prints a mapped address as IPv4, so file names would not match
        raise _invalid(f"{where}: {_show(value)} is an IPv4-mapped or scoped IPv6 address",
                       "write IPv4 addresses in dotted form and IPv6 addresses without a %scope")
    return ip


def _parse_range(entry, where: str) -> Range:
    if not isinstance(entry, dict):
        raise _invalid(f"{where} must be an object, got {_show(entry)}",
                       'write a range like {"subnet": "10.244.1.0/24"}')
    raw = entry.get("subnet")
    if raw is None or raw == "":
        raise _invalid(f"{where}.subnet is missing", 'every range needs a "subnet", e.g. "10.244.1.0/24"')
    if not isinstance(raw, str):
        raise _invalid(f"{where}.subnet must be a string, got {_show(raw)}", 'write it like "10.244.1.0/24"')
    try:
        net = ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise _invalid(f"{where}.subnet: {_show(raw)} is not a valid subnet",
                       "write it in CIDR form, like 10.244.1.0/24 or fd00:10:244:1::/64") from None
    if "/" not in raw:
        raise _invalid(f"{where}.subnet: {_show(raw)} has no prefix length",
                       f"write it in CIDR form, e.g. {raw}/24")
    if net.network_address != ipaddress.ip_address(raw.split("/", 1)[0]):
        # host-local would take the host part as the network address and shift
        # every default by it; refuse instead of guessing
        raise _invalid(f"{where}.subnet: {_show(raw)} has host bits set", f"did you mean {net}?")
    if net.version == 6 and net.network_address.ipv4_mapped is not None:
        raise _invalid(f"{where}.subnet: {_show(raw)} is an IPv4-mapped IPv6 subnet",
                       "write the IPv4 subnet in dotted form instead")
    if net.prefixlen > net.max_prefixlen - 2:
        raise _invalid(f"{where}.subnet: network {net} is too small to allocate from",
                       "use a /30 or larger for IPv4, a /126 or larger for IPv6")

    def inside(key):
        value = entry.get(key)
        if value is None or value == "":
            return None
        ip = _parse_ip(value, f"{where}.{key}")
        if ip.version != net.version:
            raise _invalid(f"{where}.{key}: {ip} is IPv{ip.version} but {where}.subnet {net} is IPv{net.version}",
                           f"use an IPv{net.version} address inside {net}")
        if ip not in net:
            raise _invalid(f"{where}.{key}: {ip} is not inside {where}.subnet {net}",
                           f"use an address inside {net}, or widen the subnet")
        return ip

    gateway = inside("gateway")
    start = inside("rangeStart")
    end = inside("rangeEnd")
    first = net.network_address + 1
    if gateway is None:
        gateway = first
    if start is None:
        start = first  # may equal the gateway; allocation skips it
    if end is None:
        # last usable address: skip the IPv4 broadcast, IPv6 has none
        end = net.broadcast_address - 1 if net.version == 4 else net.broadcast_address
    if start > end:
        raise _invalid(f"{where}.rangeStart {start} is after {where}.rangeEnd {end}",
                       "rangeStart must not be greater than rangeEnd")
    return Range(subnet=net, start=start, end=end, gateway=gateway, where=where)


def _parse_range_set(rs, where: str) -> list[Range]:
    if not isinstance(rs, list):
        raise _invalid(f"{where} must be a list of ranges, got {_show(rs)}",
                       'each range set is a list: [{"subnet": "10.244.1.0/24"}]')
    if not rs:
        raise _invalid(f"{where} is an empty range set", 'add at least one range, e.g. [{"subnet": "10.244.1.0/24"}]')
    out = [_parse_range(entry, f"{where}[{j}]") for j, entry in enumerate(rs)]
    for r in out[1:]:
        if r.version != out[0].version:
            raise _invalid(f"{r.where}.subnet {r.subnet} is IPv{r.version} but {out[0].where}.subnet "
                           f"{out[0].subnet} is IPv{out[0].version}: mixed address families in one range set",
                           "put IPv4 and IPv6 ranges in separate range sets (one address is allocated per set)")
    for i, a in enumerate(out):
        for b in out[i + 1:]:
            if a.overlaps(b):
                raise _invalid(f"{a.where} ({a}) and {b.where} ({b}) overlap",
                               "make the rangeStart-rangeEnd pools of one range set disjoint")
    return out


def parse_ranges(ipam: dict, ip_ranges=None) -> list[list[Range]]:
    """The range sets of an ipam section, validated and with defaults filled.

    Like host-local, runtimeConfig.ipRanges (ip_ranges) and the top-level
    single-range shorthand come before ipam.ranges; the index of a set in
    the returned list is its last_reserved_ip.<N> suffix.
    """
    if not isinstance(ipam, dict):
        raise _invalid(f"ipam must be an object, got {_show(ipam)}",
                       '"ipam": {"type": "netlab-ipam", "ranges": [[{"subnet": "10.244.1.0/24"}]]}')
    sets: list[list[Range]] = []
    if ip_ranges:
        if not isinstance(ip_ranges, list):
            raise _invalid(f"runtimeConfig.ipRanges must be a list of range sets, got {_show(ip_ranges)}",
                           'use [[{"subnet": "10.244.1.0/24"}]]')
        sets += [_parse_range_set(rs, f"runtimeConfig.ipRanges[{i}]") for i, rs in enumerate(ip_ranges)]
    if ipam.get("subnet") not in (None, ""):
        sets.append([_parse_range(ipam, "ipam")])
    else:
        for key in ("rangeStart", "rangeEnd", "gateway"):
            if ipam.get(key) not in (None, ""):
                raise _invalid(f"ipam.{key} is set but ipam.subnet is not",
                               f"add ipam.subnet, or move {key} into a range in ipam.ranges")
    ranges = ipam.get("ranges")
    if ranges is not None:
        if not isinstance(ranges, list):
            raise _invalid(f"ipam.ranges must be a list of range sets, got {_show(ranges)}",
                           'use "ranges": [[{"subnet": "10.244.1.0/24"}]] (one inner list per address to allocate)')
        sets += [_parse_range_set(rs, f"ipam.ranges[{i}]") for i, rs in enumerate(ranges)]
    if not sets:
        raise _invalid("ipam has no address ranges (neither ipam.ranges nor ipam.subnet is set)",
                       'add "ranges": [[{"subnet": "10.244.1.0/24"}]] to the ipam section')
    for i, a_set in enumerate(sets):
        for b_set in sets[i + 1:]:
            for a in a_set:
                for b in b_set:
                    if a.overlaps(b):
                        raise _invalid(f"range sets overlap: {a.where} ({a}) and {b.where} ({b})",
                                       "each range set must allocate from addresses no other set uses")
    return sets


def parse_routes(routes) -> list[dict]:
    if routes is None:
        return []
    if not isinstance(routes, list):
        raise _invalid(f"ipam.routes must be a list, got {_show(routes)}", 'use "routes": [{"dst": "0.0.0.0/0"}]')
    out = []
    for i, rt in enumerate(routes):
        where = f"ipam.routes[{i}]"
        if not isinstance(rt, dict):
            raise _invalid(f"{where} must be an object, got {_show(rt)}", 'write a route like {"dst": "0.0.0.0/0"}')
        dst = rt.get("dst")
        if not isinstance(dst, str):
            raise _invalid(f"{where}.dst is missing or not a string: {_show(dst)}",
                           'every route needs "dst" in CIDR form, e.g. "0.0.0.0/0"')
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            raise _invalid(f"{where}.dst: {_show(dst)} is not a valid CIDR", 'write it like "10.96.0.0/12"') from None
        if "/" not in dst:
            raise _invalid(f"{where}.dst: {_show(dst)} has no prefix length", f"write it in CIDR form, e.g. {dst}/32")
        if rt.get("gw") not in (None, ""):
            gw = _parse_ip(rt["gw"], f"{where}.gw")
            if gw.version != net.version:
                raise _invalid(f"{where}.gw {gw} is IPv{gw.version} but {where}.dst is IPv{net.version}",
                               "use a gateway of the route's address family")
        out.append(dict(rt))  # passed through as written, like host-local
    return out


def parse_resolv_conf(path: str) -> dict:
    """nameserver/domain/search/options of a resolv.conf, as the result's dns."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise _invalid(f"ipam.resolvConf: cannot read {_show(path)}: {e.strerror}",
                       "point resolvConf at a readable resolv.conf file, or remove it") from None
    dns: dict = {}
    for line in lines:
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        words = line.split()
        if len(words) < 2:
            continue
        key, rest = words[0], words[1:]
        if key == "nameserver":
            dns.setdefault("nameservers", []).append(rest[0])
        elif key == "domain":
            dns["domain"] = rest[0]
        elif key == "search":
            dns.setdefault("search", []).extend(rest)
        elif key == "options":
            dns.setdefault("options", []).extend(rest)
    return dns


def _requested_ips(conf: dict, att: spec.Attachment) -> list[tuple[str, object]]:
    """Requested addresses from CNI_ARGS IP=, args.cni.ips and runtimeConfig.ips, in that order."""
    out = []
    raw = (att.args or {}).get("IP", "")
    for part in filter(None, (p.strip() for p in raw.split(","))):
        try:
            out.append(("CNI_ARGS IP", ipaddress.ip_address(part)))
        except ValueError:
            raise CniError(spec.INVALID_ENV, f"CNI_ARGS IP={part!r} is not a valid IP address",
                           "use IP=10.244.1.5 (comma-separated for several)") from None

    def from_list(items, where):
        if items is None:
            return
        if not isinstance(items, list):
            raise _invalid(f"{where} must be a list of IP addresses, got {_show(items)}", 'use ["10.244.1.5"]')
        for i, item in enumerate(items):
            # runtimeConfig.ips may carry a prefix ("10.244.1.5/24"); only the address matters
            text = item.split("/", 1)[0] if isinstance(item, str) else item
            out.append((f"{where}[{i}]", _parse_ip(text, f"{where}[{i}]")))

    args = conf.get("args")
    if isinstance(args, dict) and isinstance(args.get("cni"), dict):
        from_list(args["cni"].get("ips"), "args.cni.ips")
    rc = conf.get("runtimeConfig")
    if isinstance(rc, dict):
        from_list(rc.get("ips"), "runtimeConfig.ips")
    return out


def _ipam_section(conf: dict) -> dict:
    ipam = conf.get("ipam")
    if ipam is None:
        raise _invalid('network config has no "ipam" section',
                       'add "ipam": {"type": "netlab-ipam", "ranges": [[{"subnet": "10.244.1.0/24"}]]}')
    if not isinstance(ipam, dict):
        raise _invalid(f"ipam must be an object, got {_show(ipam)}",
                       '"ipam": {"type": "netlab-ipam", "ranges": [[{"subnet": "10.244.1.0/24"}]]}')
    return ipam


def _data_dir(ipam: dict) -> str:
    d = ipam.get("dataDir")
    if d is None or d == "":
        return DEFAULT_DATA_DIR
    if not isinstance(d, str):
        raise _invalid(f"ipam.dataDir must be a string, got {_show(d)}", f'use a directory path, e.g. "{DEFAULT_DATA_DIR}"')
    return d


def _network_name(conf: dict) -> str:
    name = conf.get("name")
    spec.validate_network_name(name)  # also keeps the name a single path component
    return name


def load_ipam(conf: dict, att: spec.Attachment) -> IpamConfig:
    """Everything ADD/CHECK/STATUS need, validated."""
    name = _network_name(conf)
    ipam = _ipam_section(conf)
    rc = conf.get("runtimeConfig")
    ip_ranges = rc.get("ipRanges") if isinstance(rc, dict) else None
    resolv = ipam.get("resolvConf")
    if resolv is not None and not isinstance(resolv, str):
        raise _invalid(f"ipam.resolvConf must be a string, got {_show(resolv)}", "use the path of a resolv.conf file")
    return IpamConfig(name=name, data_dir=_data_dir(ipam), range_sets=parse_ranges(ipam, ip_ranges),
                      routes=parse_routes(ipam.get("routes")), resolv_conf=resolv or "",
                      requested=_requested_ips(conf, att))


# ---------------------------------------------------------------- disk store

def _io_error(what: str, path: str, e: OSError) -> CniError:
    return CniError(spec.IO_FAILURE, f"{what} {path}: {e.strerror or e}",
                    "check that ipam.dataDir is on a writable filesystem and usable by root")


def _parse_ip_name(name: str):
    # lease files are named after the address; lock and last_reserved_ip.* are not
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _read_owner(path: str) -> tuple[str, str | None] | None:
    """(containerID, ifname) of a lease file; ifname is None in the legacy ID-only format."""
    try:
        with open(path, "rb") as f:
            text = f.read(4096).decode("utf-8", "replace").strip()
    except FileNotFoundError:
        return None
    cid, sep, ifname = text.partition(LINE_BREAK)
    return (cid.strip(), ifname if sep else None)


# A long-lived caller (a node's agent, the CNI daemon) leases hundreds of addresses: a lease
# file is read once, then known by its identity (a file changed or replaced has another).
_LEASE_CACHE: dict[tuple, tuple] = {}


class Store:
    """One network's lease directory. Call the lease methods under lock()."""

    def __init__(self, data_dir: str, name: str):
        self.dir = os.path.join(data_dir, name)

    @contextmanager
    def lock(self, create: bool = True):
        """Hold the directory's flock. Yields False (without locking) when the
        directory does not exist and create is False: there is nothing to read."""
        path = os.path.join(self.dir, LOCK_NAME)
        while True:
            if create:
                try:
                    os.makedirs(self.dir, 0o755, exist_ok=True)
                except OSError as e:
                    raise _io_error("cannot create IPAM directory", self.dir, e) from None
            elif not os.path.isdir(self.dir):
                yield False
                return
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                continue  # remove_network_dir raced us; recreate or report absence
            except OSError as e:
                raise _io_error("cannot open lock file", path, e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # remove_network_dir may have unlinked the file we waited on;
                # a lock on an unlinked file protects nothing, so start over
                st, cur = os.fstat(fd), None
                try:
                    cur = os.stat(path)
                except FileNotFoundError:
                    pass
                if cur is None or (cur.st_dev, cur.st_ino) != (st.st_dev, st.st_ino):
                    os.close(fd)
                    continue
            except BaseException:
                os.close(fd)
                raise
            try:
                yield True
            finally:
                os.close(fd)  # closing drops the flock
            return

    def leases(self) -> dict:
        """ip -> (containerID, ifname|None) for every lease file."""
        out = {}
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return out
        except OSError as e:
            raise _io_error("cannot list IPAM directory", self.dir, e) from None
        for entry in entries:
            if not entry.is_file(follow_symlinks=False) or entry.name.startswith((LAST_RESERVED_PREFIX, LOCK_NAME)):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # released meanwhile (a reader without the lock)
            key = (entry.path, st.st_ino, st.st_mtime_ns, st.st_size)
            known = _LEASE_CACHE.get(key)
            if known is None:
                ip = _parse_ip_name(entry.name)
                if ip is None:
                    continue
                try:
                    owner = _read_owner(entry.path)
                except OSError as e:
                    raise _io_error("cannot read lease", entry.path, e) from None
                if owner is None:
                    continue
                known = _LEASE_CACHE[key] = (ip, owner)
            out[known[0]] = known[1]
        if len(_LEASE_CACHE) > 4 * max(len(out), 1024):
            _LEASE_CACHE.clear()  # released leases' entries: start afresh now and then
        return out

    def reserve(self, ip, cid: str, ifname: str, set_idx: int) -> bool:
        """Create the lease file; False if someone holds the address."""
        path = os.path.join(self.dir, str(ip))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        except OSError as e:
            raise _io_error("cannot create lease", path, e) from None
        try:
            os.write(fd, f"{cid.strip()}{LINE_BREAK}{ifname}".encode())
        except OSError as e:
            os.close(fd)
            os.unlink(path)
            raise _io_error("cannot write lease", path, e) from None
        os.close(fd)
        self._write_last_reserved(set_idx, ip)
        return True

    def _write_last_reserved(self, set_idx: int, ip) -> None:
        path = os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{set_idx}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, str(ip).encode())
            finally:
                os.close(fd)
        except OSError:
            pass  # only round-robin depends on it; the lease itself is written

    def last_reserved(self, set_idx: int):
        try:
            with open(os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{set_idx}"), "rb") as f:
                return _parse_ip_name(f.read(64).decode("ascii", "replace").strip())
        except OSError:
            return None  # missing or unreadable: start from the top, as host-local does

    def remove(self, ip) -> None:
        try:
            os.unlink(os.path.join(self.dir, str(ip)))
        except FileNotFoundError:
            pass


def _owned_by(owner, cid: str, ifname: str) -> bool:
    # the legacy format (ID only) matches any ifname, as host-local's GetByID does
    return owner[0] == cid and owner[1] in (ifname, None)


def remove_network_dir(data_dir: str, name: str) -> bool:
    """Remove <dataDir>/<name> when it holds no leases. Returns False (and
    leaves it) when leases or unknown files remain. Safe against a concurrent
    netlab-ipam ADD, which re-checks the lock file after taking it."""
    spec.validate_network_name(name)
    store = Store(data_dir, name)
    with store.lock(create=False) as present:
        if not present:
            return True
        if store.leases():
            return False
        for entry in os.scandir(store.dir):
            if entry.name.startswith(LAST_RESERVED_PREFIX):
                os.unlink(entry.path)
        os.unlink(os.path.join(store.dir, LOCK_NAME))  # while we still hold it
        try:
            os.rmdir(store.dir)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return False
            raise
    return True


# ---------------------------------------------------------------- allocation

def _rotation(rset: list[Range], last):
    """Every allocatable address of the set once, round-robin: from last+1
    through the end of the set, wrapping to its start, gateways skipped."""
    n = len(rset)
    idx, first = 0, int(rset[0].start)
    if last is not None:
        for i, r in enumerate(rset):
            if r.contains(last):
                if last < r.end:
                    idx, first = i, int(last) + 1
                else:
                    idx = (i + 1) % n
                    first = int(rset[idx].start)
                break
    for k in range(n + 1):
        r = rset[(idx + k) % n]
        lo = first if k == 0 else int(r.start)
        # the final pass revisits the starting range up to where we began
        hi = int(r.end) if k < n else first - 1
        make = type(r.start)
        for i in range(lo, hi + 1):
            ip = make(i)
            if ip != r.gateway:
                yield r, ip


def _used(rset: list[Range], leases: dict) -> int:
    """Leases that count against the set's capacity (a lease on a gateway does not)."""
    n = 0
    for ip in leases:
        r = set_contains(rset, ip)
        if r is not None and ip != r.gateway:
            n += 1
    return n


def _exhausted(idx: int, rset: list[Range], used: int) -> CniError:
    where = rset[0].where.rsplit("[", 1)[0] if rset[0].where != "ipam" else "ipam"
    total = sum(r.capacity() for r in rset)
    return CniError(spec.TRY_AGAIN_LATER,
                    f"range set {idx} ({where}: {set_str(rset)}) is exhausted: "
                    f"{used} of {total} addresses are leased",
                    _FREE_HINT)


def _allocate(store: Store, leases: dict, idx: int, rset: list[Range], cid: str, ifname: str, requested):
    """Reserve one address of range set idx; returns (ip, range)."""
    for ip, owner in leases.items():
        if _owned_by(owner, cid, ifname) and set_contains(rset, ip):
            raise CniError(spec.DUPLICATE_ALLOCATION,
                           f"{ip} has been allocated to {cid} ({ifname}) in range set {idx}, "
                           "duplicate allocation is not allowed",
                           "DEL the attachment before adding it again, or use another CNI_IFNAME")
    if requested is not None:
        source, ip = requested
        r = set_contains(rset, ip)
        if ip == r.gateway:
            raise _invalid(f"requested IP {ip} ({source}) is the gateway of {r.where}",
                           "request another address of the range")
        if not store.reserve(ip, cid, ifname, idx):
            holder = leases.get(ip)
            held = f" by {holder[0]} ({holder[1]})" if holder and holder[1] else ""
            raise CniError(spec.TRY_AGAIN_LATER, f"requested IP {ip} ({source}) is already leased{held}",
                           "request a free address, or DEL the attachment that holds it")
        return ip, r
    used = _used(rset, leases)
    if used >= sum(r.capacity() for r in rset):
        raise _exhausted(idx, rset, used)  # no need to walk a full pool
    for r, ip in _rotation(rset, store.last_reserved(idx)):
        if ip not in leases and store.reserve(ip, cid, ifname, idx):
            return ip, r
    raise _exhausted(idx, rset, used)


# ---------------------------------------------------------------- commands

def cmd_add(conf: dict, att: spec.Attachment) -> dict:
    cfg = load_ipam(conf, att)
    dns = parse_resolv_conf(cfg.resolv_conf) if cfg.resolv_conf else {}
    # match each requested IP to the first range set that holds it, as host-local
    wanted: dict[int, tuple] = {}
    for source, ip in cfg.requested:
        for idx, rset in enumerate(cfg.range_sets):
            if idx not in wanted and set_contains(rset, ip):
                wanted[idx] = (source, ip)
                break
        else:
            raise _invalid(f"requested IP {ip} ({source}) is not inside any range set "
                           f"({'; '.join(set_str(s) for s in cfg.range_sets)}), "
                           "or another requested IP already takes its range set",
                           "request addresses between rangeStart and rangeEnd, at most one per range set")
    store = Store(cfg.data_dir, cfg.name)
    ips = []
    with store.lock():
        leases = store.leases()
        done = []
        try:
            for idx, rset in enumerate(cfg.range_sets):
                ip, r = _allocate(store, leases, idx, rset, att.container_id, att.ifname, wanted.get(idx))
                done.append(ip)
                leases[ip] = (att.container_id, att.ifname)
                ips.append({"address": f"{ip}/{r.subnet.prefixlen}", "gateway": str(r.gateway)})
        except BaseException:
            # undo only what this call reserved; earlier leases stay
            for ip in done:
                store.remove(ip)
            raise
    return {"cniVersion": conf.get("cniVersion"), "ips": ips, "routes": cfg.routes, "dns": dns}


def _light_store(conf: dict) -> Store:
    # DEL and GC need only where the leases are: they must work even when the
    # ranges were edited into something invalid after the ADD
    ipam = _ipam_section(conf)
    return Store(_data_dir(ipam), _network_name(conf))


def cmd_del(conf: dict, att: spec.Attachment) -> None:
    store = _light_store(conf)
    with store.lock(create=False) as present:
        if not present:
            return None
        leases = store.leases()
        mine = [ip for ip, o in leases.items() if o == (att.container_id, att.ifname)]
        if not mine:
            # files written before ifname was recorded hold only the ID
            mine = [ip for ip, o in leases.items() if o == (att.container_id, None)]
        failed = []
        for ip in mine:
            try:
                store.remove(ip)
            except OSError as e:
                failed.append(f"{ip}: {e.strerror or e}")
    if failed:
        raise CniError(spec.IO_FAILURE, f"could not release {', '.join(failed)}",
                       "check the IPAM data directory's filesystem, then retry DEL")
    return None


def cmd_check(conf: dict, att: spec.Attachment) -> None:
    cfg = load_ipam(conf, att)
    store = Store(cfg.data_dir, cfg.name)
    with store.lock(create=False) as present:
        found = present and any(_owned_by(o, att.container_id, att.ifname) for o in store.leases().values())
    if not found:
        raise CniError(spec.CHECK_MISMATCH,
                       f"no address is leased to container {att.container_id} ({att.ifname}) in network {cfg.name}",
                       f"the lease under {store.dir} is gone; DEL and ADD the attachment again")
    return None


def cmd_gc(conf: dict, att: spec.Attachment) -> None:
    valid = spec.valid_attachments(conf)
    valid_ids = {cid for cid, _ in valid}
    store = _light_store(conf)
    failed = []
    with store.lock(create=False) as present:
        if not present:
            return None
        for ip, (cid, ifname) in store.leases().items():
            # a legacy (ID-only) lease is live while any attachment of its container is
            keep = cid in valid_ids if ifname is None else (cid, ifname) in valid
            if keep:
                continue
            try:
                store.remove(ip)
            except OSError as e:
                failed.append(f"{ip}: {e.strerror or e}")  # go on: GC releases what it can
    if failed:
        raise CniError(spec.IO_FAILURE, f"GC could not release {', '.join(failed)}",
                       "check the IPAM data directory's filesystem, then run GC again")
    return None


def _dir_usable(path: str) -> str:
    """Empty when ADD could create and write leases under path, else why not."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe.rstrip("/")) or "/"
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return ""


def cmd_status(conf: dict, att: spec.Attachment) -> None:
    cfg = load_ipam(conf, att)
    problem = _dir_usable(cfg.net_dir)
    if problem:
        raise CniError(spec.NOT_AVAILABLE, f"IPAM data directory unusable: {problem}",
                       "point ipam.dataDir at a writable directory")
    # purely informational, so a lock-free read is enough
    leases = Store(cfg.data_dir, cfg.name).leases()
    for idx, rset in enumerate(cfg.range_sets):
        used = _used(rset, leases)
        if used >= sum(r.capacity() for r in rset):
            e = _exhausted(idx, rset, used)
            raise CniError(spec.NOT_AVAILABLE, e.msg, e.details)
    return None


HANDLERS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}


def main():
    sys.exit(skel.run(HANDLERS))
