"""flannel-style subnet leases on top of any Store.

The key layout and values are flannel's etcd ones, byte for byte where it
matters, so `etcdctl get --prefix /coreos.com/network` on a multi-VM lab reads
like a flannel cluster's:

    /coreos.com/network/config                  {"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}
    /coreos.com/network/subnets/10.244.1.0-24   {"PublicIP":"192.168.56.11","PublicIPv6":null,
                                                 "BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"..."}}

Acquiring follows flannel's LocalManager.tryAcquireLease: reuse the lease that
already names our PublicIP (a restarted agent keeps its /24), else the
preferred subnet (from the previous subnet.env) if free, else a free one,
taken with create-if-absent and retried when another node wins the race.
One deliberate difference: flannel picks at random among the first 100 free
subnets; we take the lowest, so a lab's addresses are predictable.
"""
from __future__ import annotations

import ipaddress
import json
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Iterator, Mapping

from .base import KV, EventType, Store, StoreError, dumps

DEFAULT_PREFIX = "/coreos.com/network"  # flanneld --etcd-prefix
DEFAULT_TTL = 24 * 3600.0               # flannel's subnetTTL
# Each failed create means another node just took a subnet, so this bounds
# how many nodes may race for the same subnet at once, not the lab size.
RACE_RETRIES = 256


class SubnetError(StoreError):
    """Base class of subnet-leasing errors."""


class ConfigError(SubnetError, ValueError):
    """The network config is missing or invalid."""


class SubnetsExhausted(SubnetError):
    """Every subnet of the pod CIDR is leased."""

    def __init__(self, config: "NetworkConfig", leased: int):
        self.network = config.network
        self.subnet_len = config.subnet_len
        self.leased = leased
        bigger = config.network.supernet() if config.network.prefixlen > 0 else config.network
        super().__init__(
            f"no free /{config.subnet_len} left in pod CIDR {config.network}: all {config.capacity} "
            f"subnets from {config.subnet_min} to {config.subnet_max} are leased ({leased} leases). "
            f"Fix: give the lab a larger pod CIDR (e.g. {bigger}), or a longer SubnetLen "
            f"(smaller per-node subnets), or release the leases of nodes that are gone.")


class LeaseLost(SubnetError):
    """Our lease was deleted, expired, or taken by another node (flannel shuts
    down on this: "Lease has been revoked")."""


def config_key(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/config"


def subnets_prefix(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/subnets/"


def subnet_key(subnet: IPv4Network | str) -> str:
    """flannel's MakeSubnetKey: 10.244.1.0/24 -> "10.244.1.0-24"."""
    sn = ipaddress.ip_network(subnet)
    return f"{sn.network_address}-{sn.prefixlen}"


def lease_key(subnet: IPv4Network | str, prefix: str = DEFAULT_PREFIX) -> str:
    return subnets_prefix(prefix) + subnet_key(subnet)


def parse_subnet_key(key: str) -> IPv4Network | None:
    """The subnet a key names ("…/10.244.1.0-24", also with flannel's "&<v6>-<len>"
    dual-stack suffix), or None when the key is not a subnet key."""
    name = key.rsplit("/", 1)[-1].split("&", 1)[0]
    addr, sep, plen = name.rpartition("-")
    if not sep or not plen.isdigit():
        return None
    try:
        return IPv4Network(f"{addr}/{plen}")
    except ValueError:
        return None


# -- network config ----------------------------------------------------------

@dataclass(frozen=True)
class NetworkConfig:
    """flannel's network config with its defaults applied (CheckNetworkConfig)."""

    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    backend: Mapping[str, Any] = field(default_factory=lambda: {"Type": "vxlan"})

    @classmethod
    def make(cls, network: str | IPv4Network = "10.244.0.0/16", *, subnet_len: int | None = None,
             subnet_min: str | None = None, subnet_max: str | None = None,
             backend: Mapping[str, Any] | None = None) -> "NetworkConfig":
        """Build and check a config; unset fields get flannel's defaults."""
        obj: dict[str, Any] = {"Network": str(network)}
        if subnet_len is not None:
            obj["SubnetLen"] = subnet_len
        if subnet_min is not None:
            obj["SubnetMin"] = str(subnet_min)
        if subnet_max is not None:
            obj["SubnetMax"] = str(subnet_max)
        obj["Backend"] = dict(backend) if backend is not None else {"Type": "vxlan"}
        return cls.from_dict(obj)

    @classmethod
    def from_json(cls, text: str, where: str = "network config") -> "NetworkConfig":
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{where}: not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"{where}: must be a JSON object like {{\"Network\": \"10.244.0.0/16\"}}")
        return cls.from_dict(obj, where)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], where: str = "network config") -> "NetworkConfig":
        try:
            network = IPv4Network(obj["Network"])
        except KeyError:
            raise ConfigError(f"{where}: Network is missing; set it to the pod CIDR, e.g. 10.244.0.0/16") from None
        except (ValueError, TypeError):
            raise ConfigError(f"{where}: Network {obj['Network']!r} is not an IPv4 CIDR with no host bits "
                              f"set, e.g. 10.244.0.0/16") from None
        subnet_len = obj.get("SubnetLen") or 0
        if not isinstance(subnet_len, int) or isinstance(subnet_len, bool) or subnet_len < 0:
            raise ConfigError(f"{where}: SubnetLen {subnet_len!r} must be a prefix length such as 24")
        if subnet_len:
            if subnet_len > 30:
                raise ConfigError(f"{where}: SubnetLen /{subnet_len} must be /30 or shorter "
                                  f"(each node needs a gateway and pod addresses)")
            if subnet_len < network.prefixlen + 2:
                raise ConfigError(f"{where}: SubnetLen /{subnet_len} must be at least /{network.prefixlen + 2} "
                                  f"so that {network} holds four subnets (the first is never used)")
        elif network.prefixlen > 28:
            raise ConfigError(f"{where}: Network {network} is too small; the smallest useful pod CIDR is a /28")
        else:
            # flannel: a /24 per node when the network can take it, else quarters
            subnet_len = 24 if network.prefixlen <= 22 else network.prefixlen + 2
        size = 1 << (32 - subnet_len)
        base = int(network.network_address)
        # flannel skips the first subnet: 10.244.0.0/24 would put a node's
        # interface on the network address of 10.244.0.0/16.
        lo = _bound(obj, "SubnetMin", network, subnet_len, where, base + size)
        hi = _bound(obj, "SubnetMax", network, subnet_len, where, base + network.num_addresses - size)
        if lo > hi:
            raise ConfigError(f"{where}: SubnetMin {lo} is above SubnetMax {hi}")
        backend = obj.get("Backend")
        if backend is None:
            backend = {"Type": "udp"}  # flannel's default when Backend is absent
        if not isinstance(backend, dict):
            raise ConfigError(f"{where}: Backend must be an object like {{\"Type\": \"vxlan\"}}")
        return cls(network, subnet_len, lo, hi, dict(backend))

    @property
    def backend_type(self) -> str:
        return str(self.backend.get("Type", "udp"))

    @property
    def capacity(self) -> int:
        """How many subnets can be leased."""
        return (int(self.subnet_max) - int(self.subnet_min)) // (1 << (32 - self.subnet_len)) + 1

    def subnets(self) -> Iterator[IPv4Network]:
        """Every leasable subnet, lowest first."""
        size = 1 << (32 - self.subnet_len)
        for addr in range(int(self.subnet_min), int(self.subnet_max) + 1, size):
            yield IPv4Network((addr, self.subnet_len))

    def fits(self, subnet: IPv4Network) -> bool:
        """Whether subnet could be leased under this config (flannel's isSubnetConfigCompat)."""
        return (subnet.prefixlen == self.subnet_len
                and self.subnet_min <= subnet.network_address <= self.subnet_max)

    def to_dict(self) -> dict[str, Any]:
        """The config as flannel's JSON, with defaulted SubnetMin/SubnetMax left out."""
        default = NetworkConfig.from_dict({"Network": str(self.network), "SubnetLen": self.subnet_len})
        obj: dict[str, Any] = {"Network": str(self.network), "SubnetLen": self.subnet_len}
        if self.subnet_min != default.subnet_min:
            obj["SubnetMin"] = str(self.subnet_min)
        if self.subnet_max != default.subnet_max:
            obj["SubnetMax"] = str(self.subnet_max)
        obj["Backend"] = dict(self.backend)
        return obj

    def to_json(self) -> str:
        return dumps(self.to_dict())


def _bound(obj, name: str, network: IPv4Network, subnet_len: int, where: str, default: int) -> IPv4Address:
    if not obj.get(name):
        return IPv4Address(default)
    try:
        addr = IPv4Address(obj[name])
    except ValueError:
        raise ConfigError(f"{where}: {name} {obj[name]!r} is not an IPv4 address") from None
    if addr not in network:
        raise ConfigError(f"{where}: {name} {addr} is not in Network {network}")
    if int(addr) % (1 << (32 - subnet_len)):
        raise ConfigError(f"{where}: {name} {addr} is not on a /{subnet_len} boundary")
    return addr


def set_network_config(store: Store, config: NetworkConfig, *, prefix: str = DEFAULT_PREFIX) -> int:
    """Write the config; a no-op (no new revision) when it is already there.
    Returns the config key's mod_revision."""
    key, value = config_key(prefix), config.to_json()
    current = store.get(key)
    if current is not None and current.value == value:
        return current.mod_revision
    return store.put(key, value)


def get_network_config(store: Store, *, prefix: str = DEFAULT_PREFIX) -> NetworkConfig:
    key = config_key(prefix)
    kv = store.get(key)
    if kv is None:
        raise ConfigError(f"no network config at {key} in {store!r}: the lab must be brought up "
                          f"(which writes it) before a node leases a subnet")
    return NetworkConfig.from_json(kv.value, where=key)


# -- leases ------------------------------------------------------------------

@dataclass(frozen=True)
class Lease:
    """One node's subnet lease (flannel's Lease with its LeaseAttrs)."""

    subnet: IPv4Network
    public_ip: IPv4Address
    backend_type: str = "vxlan"
    backend_data: Any = None            # flannel's BackendData, e.g. {"VNI": 1, "VtepMAC": "…"}
    expiration: float | None = None     # wall-clock time; None = no TTL (a reservation)
    mod_revision: int = 0               # of the lease key, for compare-and-swap

    @property
    def key(self) -> str:
        return subnet_key(self.subnet)

    @property
    def gateway(self) -> IPv4Interface:
        """The subnet's first address with its length (10.244.1.1/24): cni0's
        address and FLANNEL_SUBNET."""
        return IPv4Interface((int(self.subnet.network_address) + 1, self.subnet.prefixlen))

    def attrs_json(self) -> str:
        return lease_attrs_json(self.public_ip, self.backend_type, self.backend_data)

    @classmethod
    def from_kv(cls, kv: KV) -> "Lease":
        """Parse a lease key and value; raises SubnetError when they are not one."""
        subnet = parse_subnet_key(kv.key)
        if subnet is None:
            raise SubnetError(f"{kv.key}: not a subnet key")
        try:
            attrs = json.loads(kv.value)
            public_ip = IPv4Address(attrs["PublicIP"])
        except (ValueError, KeyError, TypeError) as e:
            raise SubnetError(f"{kv.key}: not a lease value ({e}): {kv.value[:200]!r}") from None
        return cls(subnet, public_ip, attrs.get("BackendType", ""), attrs.get("BackendData"),
                   kv.expires_at, kv.mod_revision)


def lease_attrs_json(public_ip: IPv4Address | str, backend_type: str = "vxlan", backend_data: Any = None) -> str:
    """flannel's LeaseAttrs as Go marshals it: PublicIPv6 is always present
    (null), the backend fields are left out when empty."""
    obj: dict[str, Any] = {"PublicIP": str(IPv4Address(public_ip)), "PublicIPv6": None}
    if backend_type:
        obj["BackendType"] = backend_type
    if backend_data is not None:
        obj["BackendData"] = backend_data
    return dumps(obj)


def _leases(kvs: list[KV]) -> list[Lease]:
    out = []
    for kv in kvs:
        try:
            out.append(Lease.from_kv(kv))
        except SubnetError:
            continue  # flannel also ignores what is not a lease ("Ignoring bad subnet node")
    return out


def list_leases(store: Store, *, prefix: str = DEFAULT_PREFIX) -> list[Lease]:
    """All current leases, lowest subnet first."""
    return sorted(_leases(store.list(subnets_prefix(prefix))), key=lambda l: l.subnet)


def find_lease(store: Store, public_ip: IPv4Address | str, *, prefix: str = DEFAULT_PREFIX) -> Lease | None:
    """The lease held by the node with this PublicIP, if any."""
    ip = IPv4Address(public_ip)
    return next((l for l in list_leases(store, prefix=prefix) if l.public_ip == ip), None)


def acquire_lease(store: Store, public_ip: IPv4Address | str, backend_data: Any = None, *,
                  prefer: IPv4Network | str | None = None, backend_type: str = "vxlan",
                  ttl: float | None = DEFAULT_TTL, config: NetworkConfig | None = None,
                  prefix: str = DEFAULT_PREFIX) -> Lease:
    """Lease a subnet for the node whose underlay address is public_ip.

    prefer: the subnet this node had before (e.g. FLANNEL_SUBNET from its old
    subnet.env, "10.244.3.1/24" is fine), used when no lease names public_ip
    and it is still free. ttl: seconds until the lease expires unless renewed
    (None = never). Raises SubnetsExhausted when nothing is free.
    """
    config = config or get_network_config(store, prefix=prefix)
    ip = IPv4Address(public_ip)
    attrs = lease_attrs_json(ip, backend_type, backend_data)
    try:
        wanted = ipaddress.ip_network(prefer, strict=False) if prefer else None
    except ValueError:
        wanted = None  # a damaged old subnet.env must not stop the node; flannel ignores it too

    def made(subnet: IPv4Network, revision: int, lease_ttl: float | None, started: float) -> Lease:
        return _written(store, lease_key(subnet, prefix), revision,
                        Lease(subnet, ip, backend_type, backend_data), lease_ttl, started)

    for _ in range(RACE_RETRIES):
        kvs = store.list(subnets_prefix(prefix))
        leases = _leases(kvs)
        mine = next((l for l in leases if l.public_ip == ip), None)
        if mine is not None:
            key = lease_key(mine.subnet, prefix)
            if config.fits(mine.subnet):
                # A restarted agent: same subnet, fresh attrs (a new VtepMAC)
                # and TTL. A lease without TTL is a reservation and stays one.
                lease_ttl = None if mine.expiration is None else ttl
                now = time.time()
                revision = store.compare_and_swap(key, attrs, mine.mod_revision, ttl=lease_ttl)
                if revision:
                    return made(mine.subnet, revision, lease_ttl, now)
            else:
                # left over from an older config (another Network/SubnetLen)
                store.delete(key, mine.mod_revision)
            continue

        # by key, not by parsed lease: a key with a bad value still blocks its create
        taken = _Taken([sub for sub in map(parse_subnet_key, (kv.key for kv in kvs)) if sub],
                       config.subnet_len)
        if isinstance(wanted, IPv4Network) and config.fits(wanted) and not taken.overlaps(wanted):
            candidate = wanted
        else:
            candidate = next((sn for sn in config.subnets() if not taken.overlaps(sn)), None)
        if candidate is None:
            raise SubnetsExhausted(config, len(taken.exact))
        now = time.time()
        revision = store.create(lease_key(candidate, prefix), attrs, ttl=ttl)
        if revision:
            return made(candidate, revision, ttl, now)
        # another node took it between our list and our create: look again
    raise SubnetError(f"could not lease a subnet in {config.network} for {ip} after {RACE_RETRIES} "
                      f"attempts: other nodes kept taking the subnets first")


class _Taken:
    """The subnets in use, checked by overlap as flannel does, but with a set
    for the usual case of leases as long as the config's subnets."""

    def __init__(self, subnets: list[IPv4Network], subnet_len: int):
        self.exact = set(subnets)
        self.others = [s for s in subnets if s.prefixlen != subnet_len]

    def overlaps(self, subnet: IPv4Network) -> bool:
        return subnet in self.exact or any(s.overlaps(subnet) for s in self.others)


def renew_lease(store: Store, lease: Lease, *, ttl: float | None = DEFAULT_TTL,
                prefix: str = DEFAULT_PREFIX) -> Lease:
    """Extend the lease (and rewrite its attributes from lease). Raises
    LeaseLost when the subnet is no longer leased to lease.public_ip."""
    key = lease_key(lease.subnet, prefix)
    for _ in range(RACE_RETRIES):
        current = store.get(key)
        holder = _holder(current)
        if holder != lease.public_ip:
            raise LeaseLost(f"lease {key} for {lease.public_ip} is gone"
                            + (f" (now held by {holder})" if holder else "")
                            + "; acquire a new one and reconfigure the node")
        now = time.time()
        revision = store.compare_and_swap(key, lease.attrs_json(), current.mod_revision, ttl=ttl)
        if revision:
            return _written(store, key, revision, lease, ttl, now)
    raise SubnetError(f"could not renew {key}: it kept changing under us")


def release_lease(store: Store, lease: Lease, *, prefix: str = DEFAULT_PREFIX) -> bool:
    """Delete the lease if lease.public_ip still holds it; True if deleted."""
    key = lease_key(lease.subnet, prefix)
    for _ in range(RACE_RETRIES):
        current = store.get(key)
        if _holder(current) != lease.public_ip:
            return False
        if store.delete(key, current.mod_revision):
            return True
    return False


def _holder(kv: KV | None) -> IPv4Address | None:
    if kv is None:
        return None
    try:
        return Lease.from_kv(kv).public_ip
    except SubnetError:
        return None


def _written(store: Store, key: str, revision: int, lease: Lease, ttl: float | None, started: float) -> Lease:
    """lease as just written at revision, with the expiration the store
    recorded (its clock decides expiry); estimated if the key moved on since."""
    kv = store.get(key)
    if kv is not None and kv.mod_revision == revision:
        expiration = kv.expires_at
    else:
        expiration = None if ttl is None else started + ttl
    return Lease(lease.subnet, lease.public_ip, lease.backend_type, lease.backend_data, expiration, revision)


@dataclass(frozen=True)
class LeaseEvent:
    """A lease appeared or changed ("added") or went away ("removed"), as
    flannel's EventAdded/EventRemoved. lease is None for a removal whose
    previous value the backend did not send."""

    type: str
    subnet: IPv4Network
    lease: Lease | None
    revision: int


ADDED = "added"
REMOVED = "removed"


def watch_leases(store: Store, start_revision: int | None = None, *, timeout: float | None = None,
                 stop: threading.Event | None = None, poll_interval: float = 0.05,
                 prefix: str = DEFAULT_PREFIX) -> Iterator[LeaseEvent]:
    """Lease changes from start_revision (inclusive; None = from now), in
    order. Pair with list_with_revision on subnets_prefix() for list-then-watch.
    Raises CompactedError when the start is too old: re-list then."""
    for event in store.watch(subnets_prefix(prefix), start_revision, timeout=timeout, stop=stop,
                             poll_interval=poll_interval):
        subnet = parse_subnet_key(event.key)
        if subnet is None:
            continue
        if event.type is EventType.PUT:
            try:
                lease = Lease.from_kv(event.kv)
            except SubnetError:
                continue
            yield LeaseEvent(ADDED, subnet, lease, event.revision)
        else:
            lease = None
            if event.prev_kv is not None:
                try:
                    lease = Lease.from_kv(event.prev_kv)
                except SubnetError:
                    pass
            yield LeaseEvent(REMOVED, subnet, lease, event.revision)


# -- subnet.env --------------------------------------------------------------

def render_subnet_env(network: IPv4Network | str, subnet: IPv4Network | str, mtu: int,
                      ipmasq: bool = True) -> str:
    """The text flanneld's WriteSubnetFile writes: FLANNEL_SUBNET is the
    subnet's first address with its length (10.244.1.0/24 -> 10.244.1.1/24)."""
    net = IPv4Network(network)
    sn = IPv4Network(subnet)
    gateway = IPv4Interface((int(sn.network_address) + 1, sn.prefixlen))
    return (f"FLANNEL_NETWORK={net}\n"
            f"FLANNEL_SUBNET={gateway}\n"
            f"FLANNEL_MTU={int(mtu)}\n"
            f"FLANNEL_IPMASQ={'true' if ipmasq else 'false'}\n")


def parse_subnet_env(text: str) -> dict[str, str]:
    """The variables of a subnet.env (KEY=VALUE lines; blanks and # comments skipped)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        out[name.strip()] = value.strip()
    return out
