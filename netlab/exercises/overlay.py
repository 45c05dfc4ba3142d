"""Overlay and node exercises: what flanneld programs per remote node (FDB entry, route) and
what a node needs to route at all (ip_forward). One node is broken towards one peer; --seed
chooses which."""
from __future__ import annotations

import random

from ..state import pause_token
from .framework import Check, Context, Exercise, ExerciseError, register

TRACE_HINT = ("Follow one packet: kube-netlab trace --lab {lab} {pod} {peer_pod_ip} shows each hop and "
              "where it stops (or tcpdump -ni eth0 udp port 8472 on both nodes with kube-netlab exec --node).")


def choose_node_and_peer(ctx: Context, rng: random.Random) -> dict:
    """A broken node, the peer it loses, and a pod on each side to probe with (chosen once, so
    hints and checks name the same ones)."""
    node = rng.choice(ctx.node_names)
    peer = rng.choice([n for n in ctx.node_names if n != node])
    facts = ctx.node_facts(peer)
    pods = ctx.pods()
    mine = [p for p in pods if p.node == node]
    theirs = [p for p in pods if p.node == peer]
    if not mine or not theirs:
        raise ExerciseError(f"this exercise needs a running pod on {node} and on {peer}")
    subnet, peer_pod = facts.pod_cidr, rng.choice(theirs)
    return {"lab": ctx.lab_name, "node": node, "peer": peer, "peer_subnet": subnet,
            "peer_vtep_ip": subnet.split("/")[0], "peer_mac": facts.vtep_mac, "peer_ip": facts.underlay_ip,
            "dev": ctx.lab.vxlan.device, "pod": rng.choice(mine).key, "peer_pod": peer_pod.key,
            "peer_pod_ip": peer_pod.ip}


def _probe(ctx: Context, params: dict) -> Check:
    """The data path across the broken pair, both ways."""
    pod, peer_pod = ctx.pod(params["pod"]), ctx.pod(params["peer_pod"])
    there = ctx.ping(pod.netns, peer_pod.ip)
    back = ctx.ping(peer_pod.netns, pod.ip)
    return Check(f"pods on {params['node']} and {params['peer']} ping each other", there and back,
                 f"{pod.key} -> {peer_pod.ip}: {'reply' if there else 'no reply'}; "
                 f"{peer_pod.key} -> {pod.ip}: {'reply' if back else 'no reply'}")


class _NodeFault(Exercise):
    """A fault of one node towards one peer: `fault` and `fix` are shell lines run on the node
    (formatted with params), `repair` the agent's repair paused on that node meanwhile."""

    repair: str = ""
    fault: str = ""
    fix: str = ""

    def choose(self, ctx, rng):
        return choose_node_and_peer(ctx, rng)

    def pauses(self, params):
        return {pause_token(self.repair, params["node"])}

    def inject(self, ctx, params):
        ctx.must(ctx.node_netns(params["node"]), *self.fault.format(**params).split())

    def solution(self, ctx, params):
        return [ctx.node_cmd(params["node"], self.fix.format(**params))]


@register
class FdbMissing(_NodeFault):
    name = "fdb-missing"
    title = "A VXLAN FDB entry is missing on one node"
    goal = ("How flannel's VXLAN backend forwards without learning: one static FDB entry per remote node "
            "maps its VTEP MAC to its underlay IP; without it the kernel has nowhere to send the frame.")
    symptom = ("Pods on one node no longer reach the pods of one other node (ping: no reply, no error), "
               "in both directions; pods on the same node, and the nodes' underlay addresses, still answer.")
    hints = (
        "Which pairs of pods fail? Try every pod against a pod on each node (kube-netlab get pods -o wide).",
        TRACE_HINT,
        "On {node}, each remote node needs three entries on {dev}: a route to its /24, a neighbour for its "
        "VTEP IP (VTEP MAC) and an FDB entry (VTEP MAC -> underlay IP). Compare ip route, ip neigh and "
        "bridge fdb show dev {dev} with kube-netlab get nodes -o wide.",
        "bridge fdb show dev {dev} on {node} has no entry for {peer} (VTEP MAC {peer_mac}, underlay IP {peer_ip}).",
    )
    explanation = ("Injected: bridge fdb del {peer_mac} dev {dev} dst {peer_ip} on {node}; the overlay's peer "
                   "sync on {node} is paused (overlay.fdb/{node}), else flanneld's resync would put it back.\n"
                   "The route and the neighbour entry still send {peer_subnet} to VTEP MAC {peer_mac}; with "
                   "learning off and no FDB entry the VXLAN device drops the frame (no default remote). The reply "
                   "direction fails the same way, so both directions break.")

    repair = "overlay.fdb"
    fault = "bridge fdb del {peer_mac} dev {dev} dst {peer_ip}"
    fix = "bridge fdb append {peer_mac} dev {dev} dst {peer_ip}"

    def checks(self, ctx, params):
        fdb = ctx.node_run(params["node"], "bridge", "fdb", "show", "dev", params["dev"]).stdout
        entries = [l.strip() for l in fdb.splitlines() if l.startswith(params["peer_mac"] + " ") and " dst " in l]
        ok = any(f" dst {params['peer_ip']} " in f"{l} " for l in entries) and len(entries) == 1
        return [Check(f"{params['node']}: {params['dev']} has one FDB entry {params['peer_mac']} -> "
                      f"{params['peer_ip']} ({params['peer']})", ok, "; ".join(entries) or "no entry"),
                _probe(ctx, params)]


@register
class RouteMissing(_NodeFault):
    name = "route-missing"
    title = "The route to a remote node's pod subnet is gone"
    goal = ("How a node reaches another node's pods: one route per remote /24, via that node's VTEP IP on "
            "flannel.1, onlink (the gateway is not on any local subnet); without it the packet follows the "
            "node's default route out of the cluster.")
    symptom = ("Pods on one node no longer reach the pods of one other node (ping: no reply, or "
               "'Destination Host Unreachable' from elsewhere), while the other direction's requests arrive.")
    hints = (
        "Which pairs of pods fail? Try every pod against a pod on each node (kube-netlab get pods -o wide).",
        TRACE_HINT,
        "Where does {node} send a packet for {peer_pod_ip}? kube-netlab exec --node {node} -- ip route get "
        "{peer_pod_ip}, and compare ip route on both nodes.",
        "{node} has no route to {peer_subnet}; the other nodes' routes show the form flanneld uses "
        "(via the remote node's VTEP IP, dev {dev}, onlink).",
    )
    explanation = ("Injected: ip route del {peer_subnet} on {node}; the overlay's peer sync on {node} is paused "
                   "(overlay.route/{node}).\nWithout the route, {node} sends {peer_subnet} traffic to its default "
                   "route (the external host), which has no route back into the pod network. The fix is the "
                   "route flannel programs: {peer_subnet} via {peer_vtep_ip} dev {dev} onlink; the neighbour entry "
                   "for {peer_vtep_ip} and the FDB entry were never touched.")

    repair = "overlay.route"
    fault = "ip route del {peer_subnet} dev {dev}"
    fix = "ip route add {peer_subnet} via {peer_vtep_ip} dev {dev} onlink"

    def checks(self, ctx, params):
        route = ctx.node_run(params["node"], "ip", "-4", "route", "show", params["peer_subnet"]).stdout.strip()
        want = f"via {params['peer_vtep_ip']} dev {params['dev']}"
        ok = route.startswith(params["peer_subnet"]) and want in route and "onlink" in route
        return [Check(f"{params['node']}: route {params['peer_subnet']} {want} onlink", ok,
                      route or "no route"), _probe(ctx, params)]


@register
class IpForwardOff(_NodeFault):
    name = "ip-forward-off"
    title = "A node stopped forwarding"
    goal = ("A node is a router between cni0, flannel.1 and eth0: with net.ipv4.ip_forward=0 it still "
            "answers packets to itself but forwards nothing, so its pods are cut off from everything "
            "beyond the node.")
    symptom = ("The pods of one node reach each other, and ping their node's cni0 address, but nothing "
               "else: pods on other nodes, Services with endpoints elsewhere. The node itself looks healthy.")
    hints = (
        "Which pods are cut off, and from what? Compare a pod's ping to its own gateway (10.244.x.1), to a pod "
        "on the same node and to a pod on another node.",
        "Follow one packet: kube-netlab trace --lab {lab} {pod} {peer_pod_ip}. The packet reaches {node}'s cni0 "
        "and goes no further: no route is missing, no rule drops it.",
        "Routing between interfaces is a switch of the node's network namespace: "
        "kube-netlab exec --node {node} -- sysctl net.ipv4.ip_forward",
    )
    explanation = ("Injected: sysctl -w net.ipv4.ip_forward=0 on {node}; the agent's node sysctl repair on "
                   "{node} is paused (node.sysctl/{node}).\nA packet from a pod to another node arrives on cni0 "
                   "and is for another host; without forwarding the kernel drops it (the node's own traffic still "
                   "works, which is why the node looks fine). Setting it to 1 again also re-enables forwarding "
                   "on every interface (net.ipv4.conf.all.forwarding).")

    repair = "node.sysctl"
    fault = "sysctl -qw net.ipv4.ip_forward=0"
    fix = "sysctl -w net.ipv4.ip_forward=1"

    def checks(self, ctx, params):
        value = ctx.node_run(params["node"], "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip()
        return [Check(f"{params['node']}: net.ipv4.ip_forward is 1", value == "1", f"it is {value or '?'}"),
                _probe(ctx, params)]
