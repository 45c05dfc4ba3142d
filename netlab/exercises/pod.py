"""Pod exercises: what the CNI plugin set up inside one pod."""
from __future__ import annotations

from .framework import Check, Exercise, ExerciseError, register


@register
class PodMtu(Exercise):
    name = "pod-mtu"
    title = "One pod's MTU ignores the VXLAN overhead"
    goal = ("Why pods on a VXLAN overlay get the underlay MTU minus 50 bytes (outer IPv4 20 + UDP 8 + "
            "VXLAN 8 + inner Ethernet 14), and how a too-large MTU makes big packets vanish without an error.")
    symptom = ("One pod talks to everyone with small packets, but full-size ones to or from it get no "
               "reply and no error (ping -s 1472), while the same ping between other pods works.")
    hints = (
        "Find the pod: ping -s 1472 (a 1500-byte packet) from each pod to a pod on another node; compare "
        "with ping -s 1400.",
        "Compare what the pods' interfaces allow: kube-netlab exec POD -- ip link show eth0 on a few pods, "
        "and flannel.1's MTU on a node.",
        "{pod}'s eth0 has MTU {wrong_mtu}; its veth peer on {node}'s cni0 and flannel.1 have {mtu}. A frame "
        "larger than the receiving end's MTU is dropped by the veth, silently.",
    )
    explanation = ("Injected: ip link set eth0 mtu {wrong_mtu} in {pod} (on {node}); nothing in the lab "
                   "reconciles a running pod's MTU (the CNI plugin sets it once, at ADD), so no repair is "
                   "paused.\nThe pod sends 1500-byte frames; its veth peer in the node (MTU {mtu}) drops "
                   "anything larger than its own MTU on receive, so no ICMP 'fragmentation needed' comes back. "
                   "The fix is the MTU the CNI config gives every pod (subnet.env FLANNEL_MTU).")

    def choose(self, ctx, rng):
        pods = [p for p in ctx.pods("default") if any(q.node != p.node for q in ctx.pods())]
        if not pods:
            raise ExerciseError("this exercise needs a running pod in namespace default and one on another node")
        pod = rng.choice(pods)
        return {"pod": pod.key, "pod_name": pod.name, "node": pod.node, "mtu": ctx.lab.overlay_mtu,
                "wrong_mtu": ctx.lab.underlay.mtu}

    def inject(self, ctx, params):
        ctx.must(ctx.pod(params["pod"]).netns, "ip", "link", "set", "eth0", "mtu", str(params["wrong_mtu"]))

    def undo(self, ctx, params):
        ctx.must(ctx.pod(params["pod"]).netns, "ip", "link", "set", "eth0", "mtu", str(params["mtu"]))

    def checks(self, ctx, params):
        pod = ctx.pod(params["pod"])
        mtu = ctx.link_mtu(pod.netns)
        remote = next(p for p in ctx.pods() if p.node != pod.node)
        size = params["wrong_mtu"] - 28   # a full-size packet: 20 bytes IPv4 + 8 ICMP header
        there = ctx.ping(pod.netns, remote.ip, size=size)
        back = ctx.ping(remote.netns, pod.ip, size=size)
        return [Check(f"{pod.key}: eth0 MTU is {params['mtu']}", mtu == str(params["mtu"]), f"it is {mtu}"),
                Check(f"{size + 28}-byte pings between {pod.key} and {remote.key} ({remote.node}) are answered",
                      there and back, f"there: {'reply' if there else 'no reply'}, back: "
                                      f"{'reply' if back else 'no reply'}")]

    def solution(self, ctx, params):
        return [ctx.pod_cmd(ctx.pod(params["pod"]), f"ip link set eth0 mtu {params['mtu']}")]
