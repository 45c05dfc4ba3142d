"""Service exercises: what a node's kube-proxy programs for a Service (an endpoint's chain,
the masquerade rule, the conntrack entries it flushes) and what the bridge must do for it
(hairpin). Each works on the `echo` Service of topologies/two-node.yaml (any lab with a
ClusterIP Service `default/echo` whose endpoints are pods will do); --seed chooses the node,
pod or endpoint."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from dataclasses import replace

from cni.main.bridge import host_veth_name

from .. import engine
from ..model.names import POD_IFNAME
from ..pods import _container_id
from ..realize.namespace import pids_in_netns
from ..state import pause_token
from .framework import Check, Context, Exercise, ExerciseError, baseline, register, service_reach

SERVICE = "default/echo"
PROBE_TRIES = 40   # a random pick misses one of 4 endpoints 40 times in a row once in ~10^5

# Connects to ip:port up to `tries` times (a new source port each time) and prints each answer's
# first word (the echo server's pod name) or ERR; stops once every wanted pod answered, or at
# the first failure (a failure costs a timeout; one is enough to know).
PROBE = r"""
import socket, sys
ip, port, tries, want = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), set(sys.argv[4:])
for _ in range(tries):
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect((ip, port))
        s.sendall(b"x\n")
        name = s.recv(200).decode(errors="replace").split()[0]
        print(name, flush=True)
        want.discard(name)
    except (OSError, IndexError) as e:
        print("ERR", type(e).__name__, flush=True)
        break
    finally:
        s.close()
    if not want:
        break
"""


def probe_service(ctx: Context, netns: str, ip: str, port: int, want: set[str], *,
                  tries: int = PROBE_TRIES) -> tuple[list[str], int]:
    """New TCP connections from netns to ip:port until every pod in `want` answered: (the pod
    names that answered, in order; how many connections got no answer)."""
    out = ctx.run(netns, "python3", "-c", PROBE, ip, str(port), str(tries), *sorted(want)).stdout.split("\n")
    return [l for l in out if l and not l.startswith("ERR")], sum(1 for l in out if l.startswith("ERR"))


def _service(ctx: Context, key: str = SERVICE):
    svc = ctx.state.services().get(key)
    if svc is None or not svc.has_cluster_ip or not svc.cluster_ip:
        raise ExerciseError(f"this exercise needs the ClusterIP Service {key} (topologies/two-node.yaml has it; "
                            f"kube-netlab apply -f topologies/workloads/echo-service.yaml)")
    return svc


def _port(svc, protocol: str):
    port = next((p for p in svc.ports if p.protocol == protocol), None)
    if port is None:
        raise ExerciseError(f"this exercise needs a {protocol} port on Service {SERVICE} (see "
                            f"topologies/workloads/echo-service.yaml)")
    return port


def _endpoint_pods(ctx: Context, key: str = SERVICE) -> list:
    """The running pods behind a Service's ready endpoints."""
    ips = {e.address for s in ctx.state.endpoint_slices(key) for e in s.endpoints if e.ready}
    return [p for p in ctx.pods() if p.ip in ips]


def _answers_check(ctx, netns: str, who: str, params: dict, want: set[str], what: str) -> Check:
    answered, failed = probe_service(ctx, netns, params["cluster_ip"], params["port"], want)
    missing = want - set(answered)
    seen = ", ".join(f"{n} x{answered.count(n)}" for n in sorted(set(answered))) or "nothing"
    why = f"{len(answered) + failed} connections to {params['cluster_ip']}:{params['port']}: answered by {seen}"
    if failed:
        why += f"; {failed} got no answer"
    if missing:
        why += f"; never answered by {', '.join(sorted(missing))}"
    return Check(f"{who}: {what}", not failed and not missing, why)


def _need_mode(ctx: Context, *modes: str) -> str:
    mode = ctx.lab.proxy_mode
    if mode not in modes:
        raise ExerciseError(f"this exercise needs a lab with proxyMode {' or '.join(modes)} (this one has {mode}); "
                            f"set spec.proxyMode in the lab file and run kube-netlab up again")
    return mode


def _echo_params(ctx: Context, protocol: str = "TCP") -> dict:
    svc = _service(ctx)
    port = _port(svc, protocol)
    return {"lab": ctx.lab_name, "service": SERVICE, "cluster_ip": svc.cluster_ip, "port": port.port,
            "port_name": port.name or ""}


# --- hairpin ------------------------------------------------------------------------------------

@register
class HairpinOff(Exercise):
    name = "hairpin-off"
    title = "A pod cannot reach itself through its Service"
    goal = ("Why the node bridge's port of every pod needs hairpin mode: when a Service sends a pod's "
            "connection back to that same pod, the DNATed frame must leave the bridge through the port it "
            "came in on, which a bridge refuses by default (kubelet --hairpin-mode, the CNI bridge plugin's "
            "hairpinMode).")
    symptom = ("One echo pod's connections to the echo Service hang now and then (about one in four), "
               "while every other pod's always answer, and that pod answers everyone else.")
    hints = (
        "Which pod has the problem, and which connections fail? Connect to the echo Service many times from "
        "each pod: kube-netlab exec POD -- sh -c 'for i in $(seq 12); do curl -s --max-time 1 {cluster_ip}; done'. "
        "Which backend never answers {pod}?",
        "{pod} reaches every other endpoint, only never itself. Follow such a packet: kube-netlab trace "
        "{pod} {cluster_ip}:{port}, or tcpdump -ni cni0 on {node}: after the DNAT, where must the frame go?",
        "After the DNAT the frame goes back to {pod}, out of the same bridge port it came in on. A bridge does "
        "that only for ports in hairpin mode: kube-netlab exec --node {node} -- bridge -d link show",
    )
    explanation = ("Injected: bridge link set dev {veth} hairpin off on {node} ({pod}'s host-side veth). "
                   "Nothing in the lab reconciles a running pod's bridge port (the CNI plugin sets hairpin once, "
                   "at ADD), so no repair is paused.\nkube-proxy DNATs {pod}'s connection to the Service to {pod_ip} "
                   "itself about one time in four; br_netfilter does the DNAT on the bridged frame, which must "
                   "then leave through {veth}, its ingress port: without hairpin mode the bridge drops it. The "
                   "endpoint's chain also masquerades it (-s {pod_ip} -j KUBE-MARK-MASQ), or the reply would "
                   "come from {pod_ip} to itself.")

    def choose(self, ctx, rng):
        params = _echo_params(ctx)
        pods = _endpoint_pods(ctx)
        if not pods:
            raise ExerciseError(f"Service {SERVICE} has no running endpoint pod")
        pod = rng.choice(pods)
        veth = host_veth_name(_container_id(pod.namespace, pod.name), POD_IFNAME)
        return {**params, "pod": pod.key, "pod_ip": pod.ip, "node": pod.node, "veth": veth}

    def inject(self, ctx, params):
        ctx.must(ctx.node_netns(params["node"]), "bridge", "link", "set", "dev", params["veth"], "hairpin", "off")

    def undo(self, ctx, params):
        ctx.must(ctx.node_netns(params["node"]), "bridge", "link", "set", "dev", params["veth"], "hairpin", "on")

    def checks(self, ctx, params):
        link = ctx.node_run(params["node"], "bridge", "-d", "link", "show", "dev", params["veth"]).stdout
        mode = re.search(r"\bhairpin (on|off)\b", link)
        pod = ctx.pod(params["pod"])
        return [Check(f"{params['node']}: {params['veth']} ({pod.key}'s bridge port) is in hairpin mode",
                      bool(mode) and mode.group(1) == "on", f"hairpin {mode.group(1) if mode else '? (no such port)'}"),
                _answers_check(ctx, pod.netns, pod.key, params, {pod.name},
                               f"reaches itself through {params['service']} ({params['cluster_ip']}:{params['port']})")]

    def solution(self, ctx, params):
        return [ctx.node_cmd(params["node"], f"bridge link set dev {params['veth']} hairpin on")]


# --- an endpoint's rules missing -------------------------------------------------------------------

def _chain_rules(ctx: Context, node: str, chain: str) -> list[str]:
    """A nat chain's rules as iptables-save prints them (-A lines)."""
    lines = ctx.node_run(node, "iptables-save", "-t", "nat").stdout.splitlines()
    return [l for l in lines if l.startswith(f"-A {chain} ")]


def _iptables_endpoint_rules(ctx: Context, node: str, comment: str, endpoint: str) -> tuple[str, int, str, list[str]]:
    """(the Service chain, the 1-based position of the endpoint's jump in it, that rule's
    arguments, the endpoint chain's rules as -A lines) from the node's iptables-save."""
    lines = ctx.node_run(node, "iptables-save", "-t", "nat").stdout.splitlines()
    jump = re.compile(rf'^-A (KUBE-SVC-\S+) (.*--comment "{re.escape(comment)} -> {re.escape(endpoint)}".* -j (KUBE-SEP-\S+))$')
    for line in lines:
        m = jump.match(line)
        if m:
            svc_chain, args, sep = m.group(1), m.group(2), m.group(3)
            chain_rules = [l for l in lines if l.startswith(f"-A {svc_chain} ")]
            position = chain_rules.index(line) + 1
            return svc_chain, position, args, [l for l in lines if l.startswith(f"-A {sep} ")]
    raise ExerciseError(f"{node} has no iptables rule for {comment} -> {endpoint}; is its proxy running? "
                        f"(kube-netlab get events)")


def _nft_endpoint_chain(ctx: Context, node: str, service: str, proto: str, port_name: str,
                        endpoint: str) -> tuple[str, list[str]]:
    """(the endpoint chain's name, its rules) in table ip kube-proxy (layout kube-proxy)."""
    text = ctx.node_run(node, "nft", "list", "table", "ip", "kube-proxy").stdout
    ns, name = service.split("/")
    suffix = f"-{ns}/{name}/{proto}/{port_name}__{endpoint.replace(':', '/')}"
    m = re.search(rf"^\s*chain (endpoint-\w+{re.escape(suffix)}) {{\n(.*?)^\s*}}", text, re.M | re.S)
    if not m:
        raise ExerciseError(f"{node} has no nftables chain endpoint-...{suffix} (this exercise needs "
                            f"spec.nftables.layout kube-proxy, the default)")
    return m.group(1), [l.strip() for l in m.group(2).splitlines() if l.strip()]


def _rules_difference(was: list[str], now: list[str]) -> str:
    missing = [r for r in was if r not in now]
    extra = [r for r in now if r not in was]
    return "; ".join([*(f"missing: {r}" for r in missing), *(f"not the proxy's: {r}" for r in extra)]) or \
        "the same rules in another order"


@register
class EndpointRulesMissing(Exercise):
    name = "endpoint-rules-missing"
    title = "One endpoint's KUBE-SEP chain (nftables: endpoint chain) is missing on one node"
    goal = ("How kube-proxy turns a Service into rules: a Service chain picks an endpoint at random "
            "(iptables: -m statistic probabilities 1/n, 1/(n-1), ...; nftables: numgen random mod n), and "
            "one chain per endpoint DNATs to it. Rules are per node: each node's proxy has its own copy.")
    symptom = ("From the pods of one node, the echo Service never answers from one of its pods (iptables "
               "mode), or about one connection in four hangs (nftables mode); from the other node it is "
               "fine, and kube-netlab get endpoints still lists every pod.")
    hints = (
        "Compare what answers: kube-netlab exec POD -- sh -c 'for i in $(seq 20); do curl -s --max-time 1 "
        "{cluster_ip}; done' from a pod on each node, against kube-netlab get endpoints echo.",
        "The rules differ between nodes. Compare kube-netlab exec --node NODE -- iptables-save -t nat | grep "
        "{service}, or nft list table ip kube-proxy, on both nodes.",
        "On {node}, the rules for endpoint {endpoint} ({endpoint_pod}) are missing: iptables: its KUBE-SEP chain "
        "and the jump to it from the Service chain; nftables: the rules of its endpoint chain.",
        "Write them back as the proxy writes them: the other node's rules for the same endpoint show the exact "
        "form (the KUBE-SEP hash and the probability of the jump depend only on the Service and the endpoint).",
    )
    explanation = ("Injected on {node}, proxyMode {mode}: {injected}. The node's proxy syncs are paused "
                   "(proxy/{node}): its periodic full resync would rewrite them.\n"
                   "iptables: without the jump the Service chain spreads over the other endpoints only, so "
                   "{endpoint_pod} gets no traffic from {node}. nftables: the numgen vmap still picks the empty "
                   "endpoint chain one time in n; the packet leaves it without a DNAT and goes nowhere. The fix "
                   "puts back the same rules, at the same position (iptables evaluates the probabilities in order).")

    def choose(self, ctx, rng):
        mode = _need_mode(ctx, "iptables", "nftables")
        params = _echo_params(ctx)
        node = rng.choice(ctx.node_names)
        endpoint_pod = rng.choice(_endpoint_pods(ctx))
        svc = _service(ctx)
        target = _port(svc, "TCP")
        slice_port = next(p.port for s in ctx.state.endpoint_slices(SERVICE) for p in s.ports
                          if p.name == target.name and p.protocol == "TCP")
        endpoint = f"{endpoint_pod.ip}:{slice_port}"
        params.update(mode=mode, node=node, endpoint=endpoint, endpoint_pod=endpoint_pod.key)
        comment = f"{SERVICE}:{target.name}" if target.name else SERVICE
        if mode == "iptables":
            svc_chain, position, jump, sep_rules = _iptables_endpoint_rules(ctx, node, comment, endpoint)
            sep_chain = jump.rsplit(" ", 1)[1]
            params.update(svc_chain=svc_chain, position=position, jump=jump, sep_chain=sep_chain,
                          rules=sep_rules, svc_rules=_chain_rules(ctx, node, svc_chain), injected=f"iptables -t nat -D {svc_chain} {position}; "
                                                    f"iptables -t nat -F {sep_chain}; iptables -t nat -X {sep_chain}")
        else:
            chain, rules = _nft_endpoint_chain(ctx, node, SERVICE, "tcp", target.name, endpoint)
            params.update(chain=chain, rules=rules, injected=f"nft flush chain ip kube-proxy {chain}")
        return params

    def pauses(self, params):
        return {pause_token("proxy", params["node"])}

    def inject(self, ctx, params):
        netns = ctx.node_netns(params["node"])
        if params["mode"] == "iptables":
            ctx.must(netns, "iptables", "-t", "nat", "-D", params["svc_chain"], str(params["position"]))
            ctx.must(netns, "iptables", "-t", "nat", "-F", params["sep_chain"])
            ctx.must(netns, "iptables", "-t", "nat", "-X", params["sep_chain"])
        else:
            ctx.must(netns, "nft", "flush", "chain", "ip", "kube-proxy", params["chain"])

    def checks(self, ctx, params):
        node, endpoint = params["node"], params["endpoint"]
        if params["mode"] == "iptables":
            # exactly the proxy's rules: the probabilities are evaluated in order, so the jump's place matters
            wrong = [f"{chain}: {_rules_difference(was, _chain_rules(ctx, node, chain))}"
                     for chain, was in ((params["svc_chain"], params["svc_rules"]), (params["sep_chain"], params["rules"]))
                     if _chain_rules(ctx, node, chain) != was]
            rules = Check(f"{node}: {params['svc_chain']} jumps to {params['sep_chain']} (rule {params['position']}), "
                          f"which DNATs to {endpoint}, as the proxy wrote them", not wrong,
                          "; ".join(wrong) or "both chains as on the healthy lab")
        else:
            try:
                _, now = _nft_endpoint_chain(ctx, node, SERVICE, "tcp", params["port_name"], endpoint)
            except ExerciseError as e:
                now = []
                why = str(e)
            else:
                why = "; ".join(now) or "the chain is empty"
            rules = Check(f"{node}: chain {params['chain']} DNATs to {endpoint}, as the proxy wrote it",
                          now == params["rules"], why if now == params["rules"] else
                          f"{_rules_difference(params['rules'], now)} (it has: {why})")
        client = next((p for p in ctx.pods() if p.node == node and p.key != params["endpoint_pod"]), None)
        if client is None:
            return [rules]
        want = {p.name for p in _endpoint_pods(ctx)}
        return [rules, _answers_check(ctx, client.netns, f"{client.key} on {node}", params, want,
                                      f"every endpoint of {params['service']} answers, and every connection")]

    def solution(self, ctx, params):
        node = params["node"]
        if params["mode"] == "iptables":
            lines = [ctx.node_cmd(node, f"iptables -t nat -N {params['sep_chain']}")]
            lines += [ctx.node_cmd(node, f"iptables -t nat {rule}") for rule in params["rules"]]
            lines.append(ctx.node_cmd(node, f"iptables -t nat -I {params['svc_chain']} {params['position']} "
                                            f"{params['jump']}"))
            return lines
        return [ctx.node_cmd(node, "nft " + shlex.quote(f"add rule ip kube-proxy {params['chain']} {rule}"))
                for rule in params["rules"]]


# --- masquerade ----------------------------------------------------------------------------------

MASQUERADE_RULE = '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'


@register
class MasqueradeMissing(Exercise):
    name = "masquerade-missing"
    title = "kube-proxy's MASQUERADE rule is gone on one node"
    goal = ("Which Service traffic must be source-NATed and why: kube-proxy only marks packets "
            "(KUBE-MARK-MASQ, mark 0x4000) and one rule in KUBE-POSTROUTING masquerades the marked ones. "
            "Without it a reply goes straight to the client with the pod's address, not through the node "
            "that translated the request, and the client drops it. flannel's own masquerade covers traffic "
            "from outside the cluster to pods, which hides the fault from the external host.")
    symptom = ("On one node, a pod that reaches itself through the echo Service gets no answer (about one "
               "connection in four from it hangs), and pods calling their own node's NodePort 30080 may hang; "
               "from the external host every NodePort still answers.")
    hints = (
        "Which clients fail? Try the echo Service from each pod many times, and NodePort 30080 from pods and "
        "from the external host (kube-netlab exec --external -- curl ...).",
        "Only {node}'s pods are affected, and only connections the proxy marks for masquerading (mark 0x4000). "
        "Follow one: kube-netlab trace {pod} {cluster_ip}:{port}, and conntrack -L on {node}: is the source "
        "translated?",
        "Compare kube-netlab exec --node NODE -- iptables-save -t nat | grep -A3 ':KUBE-POSTROUTING' on both "
        "nodes: the rule that acts on the mark is missing on {node}.",
    )
    explanation = ("Injected: iptables -t nat -D KUBE-POSTROUTING ... -j MASQUERADE --random-fully on {node}; "
                   "the node's proxy syncs are paused (proxy/{node}).\nKUBE-POSTROUTING still clears the mark, so "
                   "flannel's FLANNEL-POSTRTG (which RETURNs for the mark) sees the packet unmarked: traffic from "
                   "outside the pod CIDR to a pod is masqueraded by flannel's '! -s 10.244.0.0/16 -d "
                   "10.244.0.0/16' rule anyway, which is why the external host sees nothing wrong. Traffic from a "
                   "pod to a pod is left alone by flannel: {pod} reaching itself via the Service, or a pod reaching "
                   "another local pod via {node}'s NodePort, gets a reply from the endpoint's own address and drops it.")

    def choose(self, ctx, rng):
        _need_mode(ctx, "iptables")
        params = _echo_params(ctx)
        node = rng.choice(ctx.node_names)
        pods = [p for p in _endpoint_pods(ctx) if p.node == node]
        if not pods:
            raise ExerciseError(f"this exercise needs an endpoint of {SERVICE} on {node}")
        nodeports = [f"{p.node_port}" for svc in ctx.state.services().values() for p in svc.ports
                     if p.node_port and p.protocol == "TCP"]
        return {**params, "node": node, "pod": rng.choice(pods).key, "node_ip": ctx.node_facts(node).underlay_ip,
                "nodeport": int(nodeports[0]) if nodeports else None}

    def pauses(self, params):
        return {pause_token("proxy", params["node"])}

    def _rule(self, ctx, node) -> str | None:
        """KUBE-POSTROUTING's MASQUERADE rule when it acts only on marked packets (after the RETURN of
        the unmarked ones), else None."""
        text = ctx.node_run(node, "iptables-save", "-t", "nat").stdout
        chain = [l for l in text.splitlines() if l.startswith("-A KUBE-POSTROUTING ")]
        at = next((i for i, l in enumerate(chain) if l.startswith(MASQUERADE_RULE)), None)
        unmarked_return = next((i for i, l in enumerate(chain) if "! --mark 0x4000/0x4000 -j RETURN" in l), None)
        return chain[at] if at is not None and unmarked_return is not None and unmarked_return < at else None

    def inject(self, ctx, params):
        rule = self._rule(ctx, params["node"])
        if rule is None:
            raise ExerciseError(f"{params['node']} has no rule {MASQUERADE_RULE}")
        ctx.must(ctx.node_netns(params["node"]), "iptables", "-t", "nat", "-D", *shlex.split(rule)[1:])

    def checks(self, ctx, params):
        node, pod = params["node"], ctx.pod(params["pod"])
        rule = self._rule(ctx, node)
        checks = [Check(f"{node}: KUBE-POSTROUTING masquerades the packets marked 0x4000", rule is not None,
                        rule or "no MASQUERADE rule in KUBE-POSTROUTING after the RETURN for unmarked packets"),
                  _answers_check(ctx, pod.netns, pod.key, params, {pod.name},
                                 f"reaches itself through {params['service']} ({params['cluster_ip']}:{params['port']})")]
        if params["nodeport"]:   # each client is pinned (ClientIP affinity): some fail, depending on their endpoint
            target = f"{params['node_ip']}:{params['nodeport']}"
            local = [p for p in ctx.pods() if p.node == node]
            failed = [p.key for p in local
                      if probe_service(ctx, p.netns, params["node_ip"], params["nodeport"], set(), tries=1)[1]]
            checks.append(Check(f"every pod on {node} connects to its node's NodePort {target}", not failed,
                                ("no answer to " + ", ".join(failed)) if failed else f"{len(local)} pods connected"))
        return checks

    def solution(self, ctx, params):
        return [ctx.node_cmd(params["node"], "iptables -t nat -A KUBE-POSTROUTING -m comment --comment "
                                             "'kubernetes service traffic requiring SNAT' -j MASQUERADE --random-fully")]


# --- stale UDP conntrack ---------------------------------------------------------------------------

CLIENT_MARK = "netlab-exercise-udp-client"
CLIENT_PORT = 40053   # its flow to the Service; CLIENT_PORT + 1: its flow to the cluster DNS (a canary)
# A UDP client that keeps its socket, as a resolver or a metrics agent does: one datagram every
# 0.5 s from the same port, each answer's first word (the echo pod) or "timeout" logged a line.
# Its second socket asks the cluster DNS the same question as often: a flow the fix must leave
# alone (its conntrack entry keeps its id unless someone flushes the table).
CLIENT = r"""
import socket, sys, time
ip, port, sport, log, dns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", sport))
s.settimeout(0.5)
canary = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
canary.bind(("", sport + 1))
canary.setblocking(False)
name = b"".join(bytes([len(p)]) + p for p in b"kubernetes.default.svc.cluster.local".split(b"."))
query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x00\x01\x00\x01"
with open(log, "a", buffering=1) as out:
    while True:
        canary.sendto(query, (dns, 53))
        try:
            canary.recv(512)
        except OSError:
            pass
        s.sendto(b"x", (ip, port))
        try:
            got = s.recv(200).decode(errors="replace").split()[0]
        except (socket.timeout, IndexError):
            got = "timeout"
        out.write(f"{time.time():.2f} {got}\n")
        time.sleep(0.5)
"""
CLIENT_ANSWER_TIMEOUT = 10.0   # the client's first answer, the new pods' rules on the node


def _client_pids(ctx: Context, node: str) -> list[int]:
    pids = []
    for pid in pids_in_netns(ctx.node_netns(node)):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if CLIENT_MARK.encode() in f.read():
                    pids.append(pid)
        except OSError:
            pass
    return pids


def _log_lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError:
        return []


def _wait_for(what: str, test, timeout: float = CLIENT_ANSWER_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = test()
        if found:
            return found
        time.sleep(0.2)
    raise ExerciseError(f"the exercise could not be set up: {what} did not happen within {timeout:.0f} s")


def _conntrack_entries(ctx: Context, node: str, ip: str, port: int) -> list[tuple[str, str]]:
    """The node's UDP conntrack entries to ip:port as (the client source ip:port, the endpoint
    the reply comes from)."""
    out = ctx.node_run(node, "conntrack", "-L", "-p", "udp", "--orig-dst", ip, "--dport", str(port)).stdout
    entries = []
    for line in out.splitlines():
        src, sport = re.findall(r"\bsrc=(\S+)", line), re.findall(r"\bsport=(\d+)", line)
        if len(src) == 2 and sport:
            entries.append((f"{src[0]}:{sport[0]}", src[1]))
    return entries


def _canary_id(ctx: Context, params: dict) -> str | None:
    """What identifies the conntrack entry of the client's flow to the cluster DNS: its id and the
    source port its masquerade chose (random, --random-fully). The id alone may come back for a new
    entry (it hashes the entry's address, which the kernel reuses); both together do not."""
    out = ctx.node_run(params["node"], "conntrack", "-L", "-p", "udp", "--orig-dst", params["dns_ip"],
                       "--sport", str(params["canary_port"]), "-o", "id").stdout
    found = re.search(r"\bdport=\d+ .*\bdport=(\d+)\b.*\bid=(\d+)", out)
    return f"{found.group(2)}/{found.group(1)}" if found else None


@register
class StaleUdpConntrack(Exercise):
    name = "stale-udp-conntrack"
    title = "A UDP client keeps sending to a pod that is gone"
    goal = ("Why kube-proxy deletes conntrack entries when a UDP endpoint goes away: a UDP 'connection' is "
            "a conntrack entry that remembers the DNAT to one pod, and it lives as long as the client keeps "
            "sending from the same socket (each datagram refreshes it), long after that pod is gone "
            "(kubernetes#19029, the classic DNS-stops-resolving-after-CoreDNS-restarts bug).")
    symptom = ("After the echo Deployment was restarted (every pod replaced), a process on one node that "
               "sends a UDP datagram to the echo Service every half second gets no answer any more (its log "
               "says timeout), while a new client (a new socket) gets answers at once.")
    hints = (
        "The client runs in {node}'s network namespace (ps -ef | grep {mark}); it logs every answer or timeout "
        "to {log}. A new client from the same node is answered: kube-netlab exec --node {node} -- python3 -c "
        "\"import socket; s = socket.socket(2, 2); s.settimeout(1); s.sendto(b'x', ('{cluster_ip}', {port})); "
        "print(s.recv(99))\". What differs between the two?",
        "A new client works, the old one does not: what does the kernel remember per UDP flow? "
        "kube-netlab exec --node {node} -- conntrack -L -p udp --orig-dst {cluster_ip}",
        "The client's entry (source port {client_port}) is still translated to {stale_ip}, which was "
        "{stale_pod} before the restart; kube-netlab get endpoints echo no longer lists it. kube-proxy would "
        "have deleted that entry (it does for every UDP endpoint that goes away), but its conntrack cleanup "
        "is paused on {node}.",
    )
    explanation = ("Set up: a client in {node}'s namespace sends to {cluster_ip}:{port}/UDP from port "
                   "{client_port} every 0.5 s; once answered by {stale_pod} ({stale_ip}), the echo Deployment "
                   "was restarted (a template label changed, so every pod was replaced with a new IP) while "
                   "the proxy's conntrack cleanup on {node} was paused (proxy.conntrack/{node}); its rules "
                   "still synced.\nThe client's datagrams match the old conntrack entry, so they are DNATed to "
                   "{stale_ip} without looking at the new rules, and each one refreshes the entry's timeout. "
                   "Deleting the entry (conntrack -D, as kube-proxy does for a removed UDP endpoint) lets the "
                   "next datagram through the Service's current rules. A flush of the whole table (conntrack -F) "
                   "would drop every other flow of the node: the check sees it on the client's DNS flow "
                   "(port {canary_port}), whose entry must stay the same.")

    def choose(self, ctx, rng):
        params = _echo_params(ctx, "UDP")
        deployments = [o for o in ctx.lab.objects if getattr(o, "kind", "") == "Deployment"
                       and o.namespace == "default" and o.name == "echo"]
        if not deployments:
            raise ExerciseError("this exercise needs the echo Deployment of topologies/workloads/echo.yaml")
        return {**params, "node": rng.choice(ctx.node_names), "client_port": CLIENT_PORT, "mark": CLIENT_MARK,
                "dns_ip": str(ctx.lab.dns_ip), "canary_port": CLIENT_PORT + 1,
                "log": os.path.join(ctx.paths.dir, f"{CLIENT_MARK}.log")}

    def pauses(self, params):
        return {pause_token("proxy.conntrack", params["node"])}

    def inject(self, ctx, params):
        node, log = params["node"], params["log"]
        subprocess.Popen(["ip", "netns", "exec", ctx.node_netns(node), "python3", "-c", CLIENT,
                          params["cluster_ip"], str(params["port"]), str(params["client_port"]), log,
                          params["dns_ip"], CLIENT_MARK],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
        answered = _wait_for("an answer to the UDP client", lambda: [
            l.split()[1] for l in _log_lines(log) if l.split()[1:] and l.split()[1] != "timeout"])
        stale = next(p for p in ctx.pods() if p.name == answered[-1])
        self._restart_deployment(ctx)
        _wait_for(f"{node}'s proxy removing {stale.ip} from its rules and the client timing out", lambda: (
            stale.ip not in {p.ip for p in _endpoint_pods(ctx)}
            and _log_lines(log)[-1].endswith(" timeout")
            and any(ep == stale.ip for _, ep in _conntrack_entries(ctx, node, params["cluster_ip"], params["port"]))))
        # the restart is the scenario, not the fault: the graded lab is the one with the new pods, measured
        # as start measures the healthy lab, after a first round of Service probes (in nftables mode those
        # add the new pods' ClientIP affinity set elements, and so lines, to the ruleset)
        service_reach(ctx)
        rec = ctx.state.exercise()
        canary = _wait_for("the client's DNS flow", lambda: _canary_id(ctx, params))
        ctx.state.put_exercise(replace(rec, params={**rec.params, "stale_ip": stale.ip, "stale_pod": stale.key,
                                                    "canary_id": canary}, baseline=baseline(ctx)))

    @staticmethod
    def _restart_deployment(ctx: Context) -> None:
        """kubectl rollout restart: a changed template replaces every pod (here, a template label:
        annotations are not part of the lab's model)."""
        deployment = next(o for o in ctx.lab.objects if getattr(o, "kind", "") == "Deployment"
                          and o.namespace == "default" and o.name == "echo")
        doc = deployment.to_dict()
        doc["spec"]["template"]["metadata"].setdefault("labels", {})["restarted-at"] = str(int(time.time()))
        path = os.path.join(ctx.paths.dir, "exercise-rollout.json")
        with open(path, "w") as f:
            json.dump(doc, f)
        try:
            engine.apply(ctx.lab_name, path)
        finally:
            os.unlink(path)

    def undo(self, ctx, params):
        for pid in _client_pids(ctx, params["node"]):
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
        try:
            os.unlink(params["log"])
        except FileNotFoundError:
            pass
        if params.get("stale_ip"):
            ctx.node_run(params["node"], "conntrack", "-D", "-p", "udp", "--orig-dst", params["cluster_ip"],
                         "--dst-nat", params["stale_ip"])

    def checks(self, ctx, params):
        node = params["node"]
        live = {p.ip for p in _endpoint_pods(ctx)}
        entries = _conntrack_entries(ctx, node, params["cluster_ip"], params["port"])
        stale = [f"{client} -> {ep}" for client, ep in entries if ep not in live]
        checks = [Check(f"{node}: no UDP conntrack entry for {params['cluster_ip']}:{params['port']} points at a "
                        f"pod that is gone", not stale,
                        ("stale: " + "; ".join(stale)) if stale else f"{len(entries)} entries, each to a current endpoint")]
        running = pause_token("proxy.conntrack", node) in ctx.state.paused_repairs()
        if not _client_pids(ctx, node):
            checks.append(Check(f"the UDP client on {node} gets answers", not running,
                                "the client is not running: it must keep its socket (do not restart it)" if running
                                else "no exercise client runs (the exercise is not running)"))
            return checks
        canary = _canary_id(ctx, params)
        checks.append(Check(f"{node}: the client's other flow (to {params['dns_ip']}:53 from port "
                            f"{params['canary_port']}) kept its conntrack entry", canary == params.get("canary_id"),
                            f"entry (id/masquerade port) {canary} as before" if canary == params.get("canary_id") else
                            f"entry (id/masquerade port) {canary or 'none'}, was {params.get('canary_id')}: the table was flushed "
                            "(that drops every flow of the node); delete only the stale entry"))
        before = len(_log_lines(params["log"]))
        deadline = time.monotonic() + 3
        while len(_log_lines(params["log"])) < before + 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        fresh = _log_lines(params["log"])[before:]
        last = fresh[-1].split()[-1] if fresh else "nothing"
        checks.append(Check(f"the UDP client on {node} (port {params['client_port']}) gets answers",
                            last not in ("timeout", "nothing"),
                            f"its last datagrams: {', '.join(l.split()[-1] for l in fresh) or 'none sent'}"))
        return checks

    def solution(self, ctx, params):
        return [ctx.node_cmd(params["node"], f"conntrack -D -p udp --orig-dst {params['cluster_ip']} "
                                             f"--dst-nat {params['stale_ip']}")]
