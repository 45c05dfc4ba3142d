"""Cluster DNS exercises: the coredns pod behind kube-dns (10.96.0.10) and what a pod's
/etc/resolv.conf tells its resolver (the kubelet's search path, ndots:5). --seed chooses
which DNS pod, which client pod, which Service name and which wrong search path."""
from __future__ import annotations

import ipaddress
import os
import shlex
import signal

from ..model import dns as pod_dns
from ..model.system import DNS_APP_LABELS
from ..state import pause_token
from .framework import Check, Context, Exercise, ExerciseError, PodInfo, register

PROBE_NAME = "kube-dns.kube-system.svc.{domain}"   # a name the cluster DNS always has: it answers with dnsIP


def _labelled(ctx: Context, pod: PodInfo, labels: dict) -> bool:
    spec = ctx.state.pods().get(pod.key)
    return spec is not None and all(spec.labels.get(k) == v for k, v in labels.items())


def dig(ctx: Context, netns: str, name: str, server: str) -> list[str]:
    """The A records dig gets for name from server (UDP, one try of 1 s: a stopped server times out)."""
    out = ctx.run(netns, "dig", "+short", "+time=1", "+tries=1", f"@{server}", name, "A").stdout
    return [line for line in map(str.strip, out.splitlines()) if _is_ipv4(line)]   # ";; ... timed out": none


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def process_group(pgid: int) -> dict[int, str]:
    """pid -> state letter (R, S, T...) of every process in a process group, from /proc/<pid>/stat."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()   # after "(comm)": state ppid pgrp ...
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            found[int(entry)] = fields[0]
    return found


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


@register
class DnsPodStopped(Exercise):
    name = "dns-pod-stopped"
    title = "The cluster DNS pod is Running but does not answer"
    goal = ("How a pod's name lookup travels (resolv.conf -> 10.96.0.10 -> kube-proxy's DNAT -> the coredns "
            "pod), and that Running/Ready says a process exists, not that it works: a stopped process (SIGSTOP) "
            "has not exited, so no restart policy acts on it.")
    symptom = ("Names stop resolving in every pod: dig @10.96.0.10 kubernetes.default.svc.cluster.local says "
               "'connection timed out; no servers could be reached' (a timeout, not a refusal), curl echo hangs "
               "in name resolution. Pods and Services still answer by IP; kube-netlab get pods -n kube-system "
               "shows the coredns pod 1/1 Running.")
    hints = (
        "Is it the name or the path? From a pod: dig @10.96.0.10 kubernetes.default.svc.cluster.local, then curl "
        "a Service by its IP (kube-netlab get svc -A). A timeout and a 'connection refused' mean different things.",
        "Follow the query: kube-netlab trace --lab {lab} {client} kube-dns.kube-system --proto udp --port 53 "
        "shows each hop, the DNAT to the pod {dns_pod_ip} and where it stops; kube-netlab get endpoints -n "
        "kube-system kube-dns lists that pod. On {node}, conntrack -L -p udp --dport 53 shows the queries "
        "[UNREPLIED].",
        "The queries reach the pod and its socket (kube-netlab exec -n kube-system {dns_pod_name} -- ss -ulpn: "
        "the Recv-Q grows), so look at the server's processes: ps -eo pid,pgid,stat,args | grep 'netlab-dns serve'",
        "Their state is T: stopped by SIGSTOP (as Ctrl-Z or a debugger would). A stopped process has not exited, "
        "so the kubelet's restart policy never acts on it. Let it run again: send SIGCONT to its process group.",
    )
    explanation = ("Injected: kill -STOP -- -{pgid} (the processes of {dns_pod}'s container netlab-dns on {node}); "
                   "that pod's container restarts are paused (pods.restart/{dns_pod}), so killing the stopped "
                   "server does not get it silently restarted either: the fix is the one that undoes the fault.\n"
                   "The kernel still queues the queries on the stopped server's socket (TCP handshakes to :53 even "
                   "complete, from the listen backlog), so every pod's resolver times out. SIGCONT resumes it; it "
                   "answers what is still queued.")

    def choose(self, ctx, rng):
        dns_pods = [p for p in ctx.pods("kube-system") if _labelled(ctx, p, DNS_APP_LABELS)]
        clients = [p for p in ctx.pods() if p.namespace != "kube-system"]
        if not dns_pods or not clients:
            raise ExerciseError("this exercise needs a running coredns pod and a pod outside kube-system")
        pod = rng.choice(dns_pods)
        status = ctx.state.pod_status(pod.key)
        pid = status.containers[0].pid if status and status.containers else None
        if not pid:
            raise ExerciseError(f"pod {pod.key} has no running container to stop")
        by_node = {}
        for p in clients:
            by_node.setdefault(p.node, []).append(p.key)
        clients = [rng.choice(keys) for _node, keys in sorted(by_node.items())]   # one per node
        return {"lab": ctx.lab_name, "dns_pod": pod.key, "dns_pod_name": pod.name, "dns_pod_ip": pod.ip,
                "node": pod.node, "pgid": pid, "dns_ip": str(ctx.lab.dns_ip),
                "clients": clients, "client": clients[0]}

    def pauses(self, params):
        return {pause_token("pods.restart", params["dns_pod"])}

    def inject(self, ctx, params):
        os.killpg(params["pgid"], signal.SIGSTOP)

    def undo(self, ctx, params):
        _signal_group(params["pgid"], signal.SIGCONT)

    def checks(self, ctx, params):
        status = ctx.state.pod_status(params["dns_pod"])
        pid = status.containers[0].pid if status and status.containers and status.containers[0].running else None
        procs = process_group(pid) if pid else {}     # the container's processes now (a restart has others)
        stopped = sorted(p for p, st in procs.items() if st in "Tt")
        name = PROBE_NAME.format(domain=ctx.lab.cluster_domain)
        answers = {key: dig(ctx, ctx.pod(key).netns, name, params["dns_ip"]) for key in params["clients"]}
        failed = [key for key, ips in answers.items() if params["dns_ip"] not in ips]
        return [
            Check(f"{params['dns_pod']} is Ready (its container runs)", bool(status and status.ready),
                  "ready" if status and status.ready else
                  f"{status.phase if status else 'no status'}, containers: "
                  + ", ".join(f"{c.name} {c.state} {c.reason or ''}".strip() for c in (status.containers if status else ()))),
            Check(f"the processes of {params['dns_pod']}'s container run (none stopped)", bool(procs) and not stopped,
                  f"stopped (state T): {stopped}" if stopped else
                  (f"{len(procs)} processes, none stopped" if procs else "no running container")),
            Check(f"pods resolve {name} through {params['dns_ip']}", not failed,
                  "; ".join(f"{k}: {' '.join(v) or 'no answer'}" for k, v in answers.items())),
        ]

    def solution(self, ctx, params):
        # on the node (the same PID namespace): kill(1) of procps, "--" before a negative pid (the group)
        return [ctx.node_cmd(params["node"], f"kill -CONT -- -{params['pgid']}")]


# --- a pod's resolv.conf ----------------------------------------------------------------------

def resolv_path(netns: str) -> str:
    """Where `ip netns exec` (and so the pod's containers) finds the pod's /etc/resolv.conf."""
    return f"/etc/netns/{netns}/resolv.conf"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _write_in_place(path: str, text: str) -> None:
    # in place (same inode): the pod's mount namespace has this very file bound over /etc/resolv.conf
    with open(path, "r+") as f:
        f.truncate(0)
        f.write(text)


def with_search(text: str, searches: list[str]) -> str:
    lines = [line for line in text.splitlines() if not line.split()[:1] in (["search"], ["domain"])]
    return "\n".join([f"search {' '.join(searches)}", *lines]) + "\n"


def wrong_searches(kind: str, namespace: str, domain: str, other_namespace: str) -> list[str]:
    """The search lists a hand-edited or copied resolv.conf gets wrong."""
    if kind == "other-namespace":   # copied from a pod of another namespace
        return pod_dns.cluster_searches(other_namespace, domain)
    if kind == "namespace-dropped":
        return pod_dns.cluster_searches(namespace, domain)[1:]
    return pod_dns.cluster_searches(namespace, "cluster.lan")   # another cluster's domain


WRONG_KINDS = ("other-namespace", "namespace-dropped", "wrong-domain")


def _resolves(ctx: Context, pod: PodInfo, name: str) -> list[str]:
    """What the pod's own resolver (glibc, the pod's resolv.conf bound by ip netns exec) gives for name."""
    res = ctx.run(pod.netns, "ip", "netns", "exec", pod.netns, "timeout", "10", "getent", "ahostsv4", name)
    return sorted({line.split()[0] for line in res.stdout.splitlines() if line.strip()})


@register
class ResolvSearchWrong(Exercise):
    name = "resolv-search-wrong"
    title = "Short Service names do not resolve in one pod"
    goal = ("How a pod finds a Service by its short name: the kubelet writes the pod's resolv.conf with the "
            "search path <namespace>.svc.<domain> svc.<domain> <domain> and ndots:5, and the resolver tries "
            "the name with each suffix in turn.")
    symptom = ("In one pod, a Service's short name does not resolve (curl http://NAME/: 'Could not resolve "
               "host'; getent hosts NAME prints nothing), while its full name NAME.NAMESPACE.svc.cluster.local "
               "resolves, and the same short name works in the other pods of that namespace.")
    hints = (
        "Compare a pod where it works with {pod}: kube-netlab exec -n {namespace} {pod_name} -- getent hosts "
        "{service}, then with the full name {service}.{namespace}.svc.cluster.local. The DNS server answers both.",
        "With ndots:5 a name with fewer dots is first tried with each search suffix of /etc/resolv.conf. What does "
        "{pod} try? kube-netlab exec -n {namespace} {pod_name} -- cat /etc/resolv.conf, and the same in another "
        "pod of {namespace}.",
        "{pod}'s search path is '{wrong_search}'; the kubelet writes '{right_search}' for a pod in namespace "
        "{namespace}. Write it back (in the pod: /etc/resolv.conf; on the host it is {resolv_path}); the file is "
        "bound into the pod, so change it in place (sed -i replaces the file and fails on a bind mount).",
    )
    explanation = ("Injected: the search line of {pod}'s resolv.conf ({resolv_path}, bound over the pod's "
                   "/etc/resolv.conf) rewritten to '{wrong_search}' ({kind}). Nothing rewrites a pod's resolv.conf "
                   "after its sandbox is created (as the kubelet), so no repair is paused.\n"
                   "{service} has one dot fewer than ndots:5, so the resolver appends each search suffix: none "
                   "gives {service}.{namespace}.svc.cluster.local, the server answers NXDOMAIN to each, then to "
                   "'{service}.' itself.")

    def choose(self, ctx, rng):
        services = {}
        for key, svc in ctx.state.services().items():
            if svc.has_cluster_ip and svc.cluster_ip:
                services.setdefault(key.split("/", 1)[0], []).append((svc.name, svc.cluster_ip))
        specs = ctx.state.pods()
        pods = [p for p in ctx.pods() if p.namespace in services and p.key in specs
                and specs[p.key].spec.dns_policy in ("ClusterFirst", "ClusterFirstWithHostNet")]
        if not pods:
            raise ExerciseError("this exercise needs a running pod (dnsPolicy ClusterFirst) in a namespace "
                                "with a ClusterIP Service")
        pod = rng.choice(pods)
        service, service_ip = rng.choice(sorted(services[pod.namespace]))
        kind = rng.choice(WRONG_KINDS)
        original = _read(resolv_path(pod.netns))
        _, right, _ = pod_dns.parse_resolv_conf(original)
        other = "kube-system" if pod.namespace != "kube-system" else "default"
        wrong = wrong_searches(kind, pod.namespace, ctx.lab.cluster_domain, other)
        return {"lab": ctx.lab_name, "pod": pod.key, "pod_name": pod.name, "namespace": pod.namespace,
                "node": pod.node, "service": service, "service_ip": service_ip, "kind": kind,
                "right_search": " ".join(right), "wrong_search": " ".join(wrong),
                "resolv_path": resolv_path(pod.netns), "resolv_conf": original}

    def inject(self, ctx, params):
        _write_in_place(params["resolv_path"], with_search(params["resolv_conf"], params["wrong_search"].split()))

    def undo(self, ctx, params):
        if os.path.exists(params["resolv_path"]):
            _write_in_place(params["resolv_path"], params["resolv_conf"])

    def checks(self, ctx, params):
        pod = ctx.pod(params["pod"])
        now = pod_dns.parse_resolv_conf(_read(params["resolv_path"]))
        want = pod_dns.parse_resolv_conf(params["resolv_conf"])
        got = _resolves(ctx, pod, params["service"])
        return [
            Check(f"{pod.key}: /etc/resolv.conf as the kubelet wrote it (search {params['right_search']})",
                  now == want, f"search {' '.join(now[1])}; nameserver {' '.join(now[0])}; options "
                               + " ".join(n if v is None else f"{n}:{v}" for n, v in now[2])),
            Check(f"{pod.key} resolves the short name {params['service']} to {params['service_ip']}",
                  got == [params["service_ip"]], " ".join(got) or "not resolved"),
            self._others_check(ctx, pod),
        ]

    def _others_check(self, ctx: Context, broken: PodInfo) -> Check:
        """The other ClusterFirst pods keep the kubelet's search path (a fix must not copy one file over all)."""
        specs, domain, wrong = ctx.state.pods(), ctx.lab.cluster_domain, []
        pods = [p for p in ctx.pods() if p.key != broken.key and p.key in specs
                and specs[p.key].spec.dns_policy in ("ClusterFirst", "ClusterFirstWithHostNet")]
        for p in pods:
            servers, searches, _ = pod_dns.parse_resolv_conf(_read(resolv_path(p.netns)))
            if searches[:3] != pod_dns.cluster_searches(p.namespace, domain) or servers[:1] != [str(ctx.lab.dns_ip)]:
                wrong.append(f"{p.key}: search {' '.join(searches)}, nameserver {' '.join(servers)}")
        return Check("every other pod's resolv.conf has its namespace's search path and the cluster DNS",
                     not wrong, "; ".join(wrong) if wrong else f"{len(pods)} pods")

    def solution(self, ctx, params):
        script = "printf '%s\\n' " + " ".join(shlex.quote(line) for line in params["resolv_conf"].splitlines()) \
                 + " > /etc/resolv.conf"
        # resolv.conf holds names, addresses and options: double quotes read best and need no escapes
        quoted = f'"{script}"' if not set(script) & set('"$`') and "\\\\" not in script else shlex.quote(script)
        return [ctx.pod_cmd(ctx.pod(params["pod"]), f"sh -c {quoted}")]
