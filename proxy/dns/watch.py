"""Keeping the zone current: watch the lab's store for Services and
EndpointSlices, as CoreDNS's kubernetes plugin watches the API server, and
hand every new zone to a callback. The zone itself is built by zone.py."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

from netlab import state
from netlab.store import CompactedError, open_store

from .zone import DEFAULT_TTL, Zone, cluster_zone

log = logging.getLogger("netlab-dns")
WATCHED = (state.SERVICES, state.ENDPOINT_SLICES)


@dataclass(frozen=True)
class ClusterSettings:
    domain: str = "cluster.local"
    ttl: int = DEFAULT_TTL
    service_cidr: str = "10.96.0.0/12"
    pod_cidr: str = "10.244.0.0/16"
    dns_ip: str | None = "10.96.0.10"
    upstream: str | None = None          # "IP" or "IP:PORT"


def lab_settings(lab) -> ClusterSettings:
    """Defaults from the lab document (model.Lab, or None for a store without one).
    `lab.dns` (ttl, upstream) is optional: without it, TTL 30 and the external host as upstream."""
    if lab is None:
        return ClusterSettings()
    dns = getattr(lab, "dns", None)
    external = getattr(lab, "external", None)
    upstream = getattr(dns, "upstream", None)
    if upstream is None and external is not None:
        upstream = str(external.ip)
    return ClusterSettings(domain=lab.cluster_domain, ttl=int(getattr(dns, "ttl", None) or DEFAULT_TTL),
                           service_cidr=str(lab.service_cidr), pod_cidr=str(lab.pod_cidr), dns_ip=str(lab.dns_ip),
                           upstream=str(upstream) if upstream else None)


def build_zone(labstate: state.LabState, settings: ClusterSettings, serial: int) -> Zone:
    return cluster_zone(labstate.services().values(), labstate.endpoint_slices(), domain=settings.domain,
                        ttl=settings.ttl, service_cidr=settings.service_cidr, pod_cidr=settings.pod_cidr,
                        dns_ip=settings.dns_ip, serial=serial)


class StoreWatcher:
    """Rebuilds the zone whenever a Service or EndpointSlice key changes (polled every `interval`),
    and once more every `resync` seconds whatever happened."""

    def __init__(self, store_path: str, settings: ClusterSettings, on_zone: Callable[[Zone], None],
                 interval: float = 0.1, resync: float = 30.0):
        self.store = open_store(store_path)
        self.labstate = state.LabState(self.store)
        self.settings = settings
        self.on_zone = on_zone
        self.interval = interval
        self.resync = resync
        self.revision = 0

    def rebuild(self) -> None:
        self.revision = self.store.revision()   # read first: a write during the list is seen again, never lost
        zone = build_zone(self.labstate, self.settings, serial=max(1, self.revision))
        self.on_zone(zone)

    def changed(self) -> bool:
        try:
            return any(self.store.events_since(prefix, self.revision) for prefix in WATCHED)
        except CompactedError:
            return True

    def run(self, stop: threading.Event) -> None:
        waited = 0.0
        while not stop.wait(self.interval):
            waited += self.interval
            try:
                if self.changed() or waited >= self.resync:
                    waited = 0.0
                    self.rebuild()
            except Exception:   # a store hiccup (locked, replaced) must not end the watch
                log.exception("zone rebuild failed; keeping the previous zone")

    def start(self, stop: threading.Event) -> threading.Thread:
        """Builds the first zone now (so a worker binds only once it can answer), then watches on a thread."""
        self.rebuild()
        t = threading.Thread(target=self.run, args=(stop,), name="store-watch", daemon=True)
        t.start()
        return t
