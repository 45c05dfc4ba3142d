"""kube-netlab capture: sniff in the right namespaces, one decoded line a
packet, and one time-ordered pcapng for several targets with each packet's hop
named (`capture pod-a node/node-b underlay`).

    TARGET            listens on                       (-i IFACE narrows it)
    POD, NS/POD       the pod's eth0
    node/NAME         every interface of the node: eth0, cni0, flannel.1, veths ("any")
    underlay          every port of the underlay switch
    external          the external host's eth0
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

from cni import netns as _netns
from netlab.engine import LabError
from netlab.model import names

from .path import LabPlaces, Place
from .sniff import Frame, Sniffer, SnifferError, compile_bpf

ANY = "any"


@dataclass(frozen=True)
class Target:
    place: Place
    interface: str | None     # None: every interface of its namespace


def default_interface(place: Place) -> str | None:
    if place.kind == "pod":
        return names.POD_IFNAME
    if place.kind == "external":
        return names.EXTERNAL_UPLINK
    return None


def targets(places: LabPlaces, texts: list[str], namespace: str | None, interface: str | None) -> list[Target]:
    out = []
    for text in texts:
        place = places.place(text, namespace)
        if not os.path.exists(_netns.path_of(place.netns)):
            raise LabError(f"{place.name} is not on this machine (no netns {place.netns}): "
                           "run kube-netlab capture on the machine that runs it")
        iface = default_interface(place) if interface in (None, ANY) and place.kind != "node" else interface
        out.append(Target(place, None if iface == ANY else iface))
    return out


def hop_name(place_name_by_netns: dict[str, str], frame: Frame) -> str:
    """"node/node-a:flannel.1": the pcapng interface name and the capture line's hop column."""
    return f"{place_name_by_netns.get(frame.netns, frame.netns)}:{frame.interface}"


def format_line(hop: str, frame: Frame, text: str) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(frame.time)) + f".{int(frame.time % 1 * 1e6):06d}"
    return f"{stamp} {hop} {frame.direction:<3} {text}"


def run_capture(lab_name: str, texts: list[str], *, namespace: str | None = None, interface: str | None = None,
                bpf: str | None = None, count: int | None = None, timeout: float | None = None,
                write: str | None = None, out=sys.stdout) -> int:
    """Capture until count packets, timeout seconds or Ctrl-C; print them; write pcapng. Returns packets seen."""
    from .decode import decode   # scapy, only once the arguments are known good

    places = LabPlaces(lab_name)
    chosen = targets(places, texts, namespace, interface)
    program = compile_bpf(bpf) if bpf else None
    netns_names = {t.place.netns: t.place.name for t in chosen}
    port = places.lab.vxlan.port
    kept: list[Frame] = []
    with Sniffer() as sniffer:
        for t in chosen:
            sniffer.open(t.place.netns, t.interface, program)
        print(f"capturing on {', '.join(t.place.name + ':' + (t.interface or ANY) for t in chosen)}"
              + (f" ({bpf})" if bpf else "") + "; Ctrl-C stops", file=sys.stderr)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while count is None or len(kept) < count:
                left = 0.2 if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    break
                batch = sorted(sniffer.read(min(left, 0.2)), key=lambda f: f.time)
                for frame in batch[: None if count is None else count - len(kept)]:
                    kept.append(frame)
                    print(format_line(hop_name(netns_names, frame), frame, decode(frame.data, port).line()),
                          file=out, flush=True)
        except KeyboardInterrupt:
            pass
    if write:
        from .pcapng import write_frames
        write_frames(write, kept, lambda f: (hop_name(netns_names, f), f"{hop_name(netns_names, f)} {f.direction}"))
        print(f"{len(kept)} packets written to {write} (tshark -r {write} -d udp.port=={port},vxlan)",
              file=sys.stderr)
    return len(kept)


def cmd_capture(a) -> int:
    from netlab.engine import resolve_lab
    if a.count is not None and a.count < 1:
        raise LabError(f"-c {a.count}: the packet count must be at least 1")
    try:
        run_capture(resolve_lab(a.lab), a.targets, namespace=a.namespace, interface=a.interface, bpf=a.filter,
                    count=a.count, timeout=a.timeout, write=a.write)
    except SnifferError as e:
        raise LabError(str(e)) from None
    return 0
