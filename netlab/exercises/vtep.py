"""VTEP exercises: what each node's flannel.1 must agree on with its peers. The neighbour
entry that names a peer's VTEP MAC, and the VXLAN device's own settings (VNI, UDP port,
MAC) that every node must share. One node is broken; --seed chooses which (and its peer)."""
from __future__ import annotations

import json

from ..realize import ensure_vxlan, sync_peers
from ..realize.overlay import Peer
from ..state import pause_token
from .framework import Check, Context, Exercise, register
from .overlay import TRACE_HINT, _NodeFault, _probe, choose_node_and_peer

PAIR_HINT = "Which pairs of pods fail? Try every pod against a pod on each node (kube-netlab get pods -o wide)."


def random_vtep_mac(rng, avoid) -> str:
    """A MAC as flannel makes one (locally administered, unicast), none of avoid."""
    while True:
        b = [rng.randrange(256) for _ in range(6)]
        b[0] = (b[0] & 0xFE) | 0x02
        mac = ":".join(f"{x:02x}" for x in b)
        if mac not in avoid:
            return mac


@register
class NeighWrongMac(_NodeFault):
    name = "neigh-wrong-mac"
    title = "A node's neighbour entry names the wrong VTEP MAC of a peer"
    goal = ("How flannel.1 finds a peer: the route sends the peer's /24 to its VTEP IP (onlink), a permanent "
            "neighbour entry turns that IP into the peer's VTEP MAC, and the FDB turns the MAC into the peer's "
            "underlay IP. A stale MAC (a peer whose flannel.1 was re-created) matches no FDB entry: the frame is "
            "dropped.")
    symptom = ("Pods on one node no longer reach the pods of one other node (ping: no reply, no error), in "
               "both directions; the requests of the other side even arrive, the replies do not. Pods on the same "
               "node and the nodes' underlay addresses still answer.")
    hints = (
        PAIR_HINT,
        TRACE_HINT,
        "Does {node} send anything? kube-netlab exec --node {node} -- ip -s link show {dev}: its TX dropped count "
        "grows with each ping, and tcpdump -ni eth0 udp port 8472 on {node} sees no packet go to {peer_ip}.",
        "On {node}, follow the three entries for {peer}: ip route get {peer_pod_ip}, ip neigh show dev {dev}, "
        "bridge fdb show dev {dev}. Does the MAC of the neighbour {peer_vtep_ip} have an FDB entry? Compare with "
        "{peer}'s VTEP MAC: kube-netlab get nodes -o wide, or ip link show {dev} on {peer}.",
        "{node}'s neighbour {peer_vtep_ip} on {dev} says {wrong_mac}; {peer}'s VTEP MAC is {peer_mac}. Replace "
        "the entry (permanent, as flanneld writes it).",
    )
    explanation = ("Injected: ip neigh replace {peer_vtep_ip} dev {dev} lladdr {wrong_mac} nud permanent on {node}; "
                   "the overlay's peer sync on {node} is paused (overlay.neigh/{node}), else its resync would put "
                   "the right MAC back.\nThe route {peer_subnet} via {peer_vtep_ip} onlink resolves to {wrong_mac}; "
                   "the FDB has no entry for that MAC and flannel.1 has no default remote (no learning, no "
                   "00:00:00:00:00:00 entry), so the frame is dropped (flannel.1 TX dropped). The peer's requests "
                   "still arrive; {node}'s replies take the same broken way back.")

    repair = "overlay.neigh"
    fault = "ip neigh replace {peer_vtep_ip} dev {dev} lladdr {wrong_mac} nud permanent"
    fix = "ip neigh replace {peer_vtep_ip} dev {dev} lladdr {peer_mac} nud permanent"

    def choose(self, ctx, rng):
        params = choose_node_and_peer(ctx, rng)
        macs = {ctx.node_facts(n).vtep_mac for n in ctx.node_names}
        return {**params, "wrong_mac": random_vtep_mac(rng, macs)}

    def checks(self, ctx, params):
        out = ctx.node_run(params["node"], "ip", "-4", "neigh", "show", params["peer_vtep_ip"],
                           "dev", params["dev"]).stdout.strip()
        lines = out.splitlines()
        ok = len(lines) == 1 and f" lladdr {params['peer_mac']} " in f" {lines[0]} " and lines[0].endswith("PERMANENT")
        return [Check(f"{params['node']}: neighbour {params['peer_vtep_ip']} on {params['dev']} is {params['peer']}'s "
                      f"VTEP MAC {params['peer_mac']}, permanent", ok, out or "no entry"),
                _probe(ctx, params)]


# --- the VXLAN device itself ------------------------------------------------------------------

WRONG_PORTS = (4789, 8473, 9472)   # IANA's VXLAN port (Linux's default when asked for none), near misses


def vxlan_details(ctx: Context, node: str, dev: str) -> dict:
    """What `ip -d -j link show DEV` says of a VXLAN device ({} when it is missing or no VXLAN)."""
    res = ctx.node_run(node, "ip", "-d", "-j", "link", "show", dev)
    if res.returncode != 0:
        return {}
    link = json.loads(res.stdout)[0]
    info = link.get("linkinfo", {})
    if info.get("info_kind") != "vxlan":
        return {}
    data = info.get("info_data", {})
    addrs = json.loads(ctx.node_run(node, "ip", "-4", "-j", "addr", "show", "dev", dev).stdout or "[]")
    return {"vni": data.get("id"), "port": data.get("port"), "local": data.get("local"), "link": data.get("link"),
            "learning": data.get("learning"), "mac": link.get("address"), "mtu": link.get("mtu"),
            "up": "UP" in link.get("flags", []),
            "addresses": sorted(f"{a['local']}/{a['prefixlen']}" for l in addrs for a in l.get("addr_info", []))}


def peers_of(ctx: Context, node: str) -> list[dict]:
    """Every other node's VTEP as flanneld programs it on node."""
    out = []
    for n in ctx.node_names:
        if n != node:
            f = ctx.node_facts(n)
            out.append({"subnet": f.pod_cidr, "vtep_ip": f.pod_cidr.split("/")[0], "mac": f.vtep_mac,
                        "underlay_ip": f.underlay_ip})
    return out


@register
class VxlanPortMismatch(Exercise):
    name = "vxlan-port-mismatch"
    title = "One node's VXLAN device uses another UDP port"
    goal = ("VXLAN is UDP: every VTEP of an overlay must send to, and listen on, the same port (flannel: 8472, "
            "Linux's old default; IANA's is 4789). The port is fixed when the device is created, so a wrong one "
            "means re-creating flannel.1, and with it the entries the deletion took.")
    symptom = ("The pods of one node reach each other but no pod on any other node, in both directions; the nodes' "
               "underlay addresses answer each other, and every route, neighbour and FDB entry looks in place.")
    hints = (
        PAIR_HINT,
        "Watch the underlay while a pod of {node} pings a pod of {peer}: kube-netlab exec --node {peer} -- tcpdump "
        "-ni eth0 udp or icmp. What UDP port do the encapsulated packets of each side go to, and what answers them?",
        "Compare the VXLAN devices: kube-netlab exec --node NODE -- ip -d link show {dev} on each node "
        "(id, local, dev, dstport, nolearning).",
        "{node}'s {dev} uses dstport {wrong_port}, the others {port}. ip link set cannot change it ('Cannot change "
        "port'): delete {dev} and add it again as flanneld does (same MAC {mac}, MTU {mtu}, id {vni}, local "
        "{local_ip}, dev {underlay_dev}, nolearning, address {vtep_ip}/32, up); deleting it took its peers' "
        "neighbour and FDB entries and routes, so put those back too (ip neigh / bridge fdb / ip route replace).",
    )
    explanation = ("Injected: {node}'s {dev} deleted and created again with dstport {wrong_port} (everything else "
                   "as before), its peers programmed again; the overlay's re-creation of a wrong device on {node} "
                   "is paused (overlay.device/{node}), the peer sync is not.\n{node} sends its VXLAN packets to "
                   "UDP {wrong_port}, where no peer listens (ICMP port unreachable), and listens on {wrong_port}, so "
                   "the peers' packets to {port} get ICMP port unreachable from {node}. The MAC must stay {mac}: the "
                   "peers' neighbour and FDB entries name it.")

    def choose(self, ctx, rng):
        params = choose_node_and_peer(ctx, rng)
        node, dev = params["node"], params["dev"]
        facts, have = ctx.node_facts(node), vxlan_details(ctx, node, dev)
        return {**params, "wrong_port": rng.choice(WRONG_PORTS), "port": ctx.lab.vxlan.port,
                "vni": ctx.lab.vxlan.vni, "mtu": ctx.lab.overlay_mtu, "mac": facts.vtep_mac,
                "local_ip": facts.underlay_ip, "vtep_ip": facts.pod_cidr.split("/")[0], "subnet": facts.pod_cidr,
                "underlay_dev": have.get("link") or "eth0", "peers": peers_of(ctx, node)}

    def pauses(self, params):
        return {pause_token("overlay.device", params["node"])}

    def inject(self, ctx, params):
        netns = ctx.node_netns(params["node"])
        ensure_vxlan(netns, params["subnet"], vtep_mac=params["mac"], local_ip=params["local_ip"], vni=params["vni"],
                     port=params["wrong_port"], underlay_dev=params["underlay_dev"], mtu=params["mtu"])
        # the device's deletion took its peers; program them again at once, as the agent's next sync would
        sync_peers(netns, [Peer(subnet=p["subnet"], mac=p["mac"], underlay_ip=p["underlay_ip"])
                           for p in params["peers"]], vni=params["vni"])

    def checks(self, ctx, params):
        node, dev = params["node"], params["dev"]
        have = vxlan_details(ctx, node, dev)
        want = {"vni": params["vni"], "port": params["port"], "local": params["local_ip"],
                "link": params["underlay_dev"], "learning": False}
        wrong = [f"{k} {have.get(k)} (want {v})" for k, v in want.items() if have.get(k) != v]
        same = {"mac": params["mac"], "mtu": params["mtu"], "up": True, "addresses": [f"{params['vtep_ip']}/32"]}
        changed = [f"{k} {have.get(k)} (want {v})" for k, v in same.items() if have.get(k) != v]
        return [
            Check(f"{node}: {dev} is VXLAN id {params['vni']} dstport {params['port']} local {params['local_ip']} "
                  f"dev {params['underlay_dev']} nolearning, as on every node", bool(have) and not wrong,
                  "; ".join(wrong) if have and wrong else ("as wanted" if have else f"no VXLAN device {dev}")),
            Check(f"{node}: {dev} keeps VTEP MAC {params['mac']} (its peers' entries name it), MTU {params['mtu']}, "
                  f"address {params['vtep_ip']}/32, up", bool(have) and not changed,
                  "; ".join(changed) if have and changed else ("as wanted" if have else f"no VXLAN device {dev}")),
            _probe(ctx, params),
        ]

    def solution(self, ctx, params):
        dev, node = params["dev"], params["node"]
        lines = [f"ip link del {dev}",
                 f"ip link add {dev} address {params['mac']} mtu {params['mtu']} type vxlan id {params['vni']} "
                 f"local {params['local_ip']} dev {params['underlay_dev']} dstport {params['port']} nolearning",
                 f"ip addr add {params['vtep_ip']}/32 dev {dev}",
                 f"ip link set {dev} up"]
        for p in params["peers"]:   # flanneld's order: neighbour, FDB, route last
            lines += [f"ip neigh replace {p['vtep_ip']} dev {dev} lladdr {p['mac']} nud permanent",
                      f"bridge fdb replace {p['mac']} dev {dev} dst {p['underlay_ip']} self permanent",
                      f"ip route replace {p['subnet']} via {p['vtep_ip']} dev {dev} onlink"]
        return [ctx.node_cmd(node, line) for line in lines]
