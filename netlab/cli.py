"""kube-netlab: kubectl-like verbs over a lab.

    kube-netlab up LAB.yaml            build (or converge) a lab, wait until it is ready
    kube-netlab down [LAB] [--all]     remove everything a lab created
    kube-netlab get RESOURCE[,RESOURCE] [NAME...] [-o wide|json|name] [-n NS | -A]
                                       pods|po, nodes|no, services|svc, endpoints|ep, endpointslices, events|ev
    kube-netlab get events [-w]        what the agents did and when (-w: as it happens)
    kube-netlab apply -f FILE          create or update Namespaces, Pods, Deployments, Services
    kube-netlab delete -f FILE         delete them again
    kube-netlab delete node NAME       take a node out of the lab
    kube-netlab exec POD [-n NS] -- CMD...   run CMD in a pod (also --node NAME, --external)
    kube-netlab status                 what runs, what is ready
"""
from __future__ import annotations

import argparse
import signal
import json
import os
import sys
import time

from . import engine, state, views
from .engine import LabError
from .cluster import cli as cluster_cli
from .debug import cli as debug_cli
from .exercises import cli as exercise_cli
from .model import ModelError, manifest_warnings
from .progress import Progress
from .store import StoreError

DEFAULT_NAMESPACE = "default"   # kubectl's, without a kubeconfig context


# --- reading the lab: typed records in, Kubernetes-shaped objects out (netlab.views) -------

class LabView:
    """One lab's records, read once per command through state.LabState."""

    def __init__(self, lab_name: str, store: str | None = None):
        self.paths, store, self.lab = engine.open_lab(lab_name, store)
        self.state = state.LabState(store)

    def pods(self, namespace: str | None = None) -> list[dict]:
        statuses = self.state.pod_statuses()
        host_ips = {n.name: str(n.underlay_ip) for n in self.lab.nodes}
        out = []
        for key, pod in sorted(self.state.pods().items()):
            if namespace is None or pod.namespace == namespace:
                out.append(views.pod_object(pod, statuses.get(key), lab=self.lab.name,
                                            host_ip=host_ips.get(pod.node_name or "")))
        return out

    def nodes(self, namespace: str | None = None) -> list[dict]:
        statuses, beats = self.state.node_statuses(), self.state.heartbeats()
        # the agent's pid from this machine's pid file, else from its heartbeat (another machine)
        return [views.node_object(node, statuses.get(node.name),
                                  agent_pid=state.agent_alive(self.paths, node.name)
                                  or (beats[node.name].pid if node.name in beats else None),
                                  netns=self.lab.node_netns(node.name), vxlan=self.lab.vxlan,
                                  created=_mtime(self.paths.vtep_mac(node.name)))
                for node in self.lab.nodes]

    def _services(self, namespace: str | None) -> list:
        return [svc for _, svc in sorted(self.state.services().items())
                if namespace is None or svc.namespace == namespace]

    def services(self, namespace: str | None = None) -> list[dict]:
        return [views.service_object(svc) for svc in self._services(namespace)]

    def endpoints(self, namespace: str | None = None) -> list[dict]:
        """One Endpoints per Service that has a cluster IP or none (every type but ExternalName),
        so a Service without endpoints shows <none>, the reason its traffic is rejected."""
        out = []
        for svc in self._services(namespace):
            if svc.type != "ExternalName":
                created = _created(views.service_object(svc))
                out.append(views.endpoints_object(svc.namespace, svc.name, self.state.endpoint_slices(svc.key),
                                                  labels=svc.labels, created=created))
        return out

    def endpointslices(self, namespace: str | None = None) -> list[dict]:
        created = {svc.key: _created(views.service_object(svc)) for svc in self._services(namespace)}
        slices = [s for s in self.state.endpoint_slices() if namespace is None or s.namespace == namespace]
        return [views.endpoint_slice_object(s, created.get(s.service_key))
                for s in sorted(slices, key=lambda s: (s.namespace, s.name))]

    def events(self, namespace: str | None = None) -> list[dict]:
        """Oldest first, as `kubectl get events --sort-by=.lastTimestamp`: the latest is nearest the prompt."""
        return [views.event_object(ev) for ev in self.state.events(namespace)]

    def objects(self, res: views.Resource, namespace: str | None) -> list[dict]:
        return getattr(self, res.name)(namespace)


def _created(obj: dict) -> float | None:
    return views.parse_rfc3339(obj["metadata"].get("creationTimestamp"))


def _mtime(path: str) -> float | None:
    """When a file was written: a node's vtep-mac is written once, when the node first joins."""
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _print_get(view: LabView, what: str, output: str | None, *, namespace: str | None = None,
               names_: list[str] | None = None) -> int:
    """kubectl get: one resource type, or several as "svc,ep" (one table each, rows named
    kind/name; one JSON List of every item)."""
    kinds = [views.resource(w) for w in what.split(",")]
    if names_ and len(kinds) > 1:
        raise LabError(f"names go with one resource type; use e.g. kube-netlab get {kinds[0].name} {names_[0]}")
    found = [(res, view.objects(res, namespace if res.namespaced else None)) for res in kinds]
    status = 0
    if names_:
        res, objects = found[0]
        by_name = {o["metadata"]["name"]: o for o in objects}
        for n in names_:
            if n not in by_name:
                print(f'Error from server (NotFound): {res.name} "{n}" not found'
                      + (f" in namespace {namespace}" if res.namespaced and namespace else ""), file=sys.stderr)
                status = 1
        found = [(res, [by_name[n] for n in names_ if n in by_name])]
    if output == "json":
        items = [o for _, objects in found for o in objects]
        single = bool(names_) and len(names_) == 1
        if items or not single:
            print(views.render(kinds[0], items, "json", now=0, single=single))
        return status
    texts = [views.render(res, objects, output, now=time.time(), kind_in_name=len(kinds) > 1,
                          all_namespaces=res.namespaced and namespace is None) for res, objects in found if objects]
    if texts:
        print("\n\n".join(texts) if output != "name" else "\n".join(texts))
    elif not names_:
        namespaced = any(res.namespaced for res in kinds)
        print("No resources found" + (f" in {namespace} namespace." if namespaced and namespace else "."),
              file=sys.stderr)
    return status


# --- commands ------------------------------------------------------------------------------

def cmd_up(a) -> int:
    progress = Progress(enabled=not a.quiet)
    lab = engine.up(a.file, name=a.name, timeout=a.timeout, progress=progress)
    print(f"lab {lab.name} is ready: {len(lab.nodes)} nodes on {lab.underlay.cidr}, "
          f"pods on {lab.pod_cidr} over VXLAN {lab.vxlan.device} (UDP {lab.vxlan.port})\n")
    view = LabView(lab.name)
    _print_get(view, "nodes", "wide")
    print()
    _print_get(view, "pods", "wide")
    if view.state.services():
        print()
        _print_get(view, "services", None)
    running = [p for p in view.pods() if p["status"].get("podIP") and p["status"]["phase"] == "Running"]
    if len(running) >= 2:
        first = running[0]
        other = next((p for p in running if p["spec"].get("nodeName") != first["spec"].get("nodeName")), running[1])
        print(f"\ntry:  kube-netlab exec {first['metadata']['name']} -n {first['metadata']['namespace']} "
              f"-- ping -c 3 {other['status']['podIP']}")
    return 0


def cmd_down(a) -> int:
    # only labs with a state directory: a namespace named "x-..." alone may belong to someone else
    labs = state.list_labs() if a.all else [a.lab or engine.resolve_lab(None)]
    for lab in labs:
        removed = engine.down(lab)
        print(f"lab {lab} removed ({len(removed)} namespaces)")
    if not labs:
        print("no lab is running")
    return 0


def cmd_get(a) -> int:
    what, names_ = a.what, list(a.names)
    if "/" in what:  # kubectl's TYPE/NAME form
        what, name = what.split("/", 1)
        names_.insert(0, name)
    for word in what.split(","):
        views.resource(word)  # an unknown resource fails before the lab is opened
    if a.all_namespaces and names_:
        raise LabError("a resource cannot be retrieved by name across all namespaces; use -n NAMESPACE")
    namespace = None if a.all_namespaces else (a.namespace or DEFAULT_NAMESPACE)
    if a.watch:
        if views.resource(what).name != "events" or names_:
            raise LabError("-w/--watch is supported for events: kube-netlab get events -w [-n NS | -A]")
        return _watch_events(LabView(engine.resolve_lab(a.lab, a.store), a.store), a.output, namespace)
    return _print_get(LabView(engine.resolve_lab(a.lab, a.store), a.store), what, a.output, namespace=namespace,
                      names_=names_)


def _watch_events(view: LabView, output: str | None, namespace: str | None) -> int:
    """kubectl get events -w: the table so far, then a row per new or updated event, as the
    agents write them (a store watch), until interrupted."""
    res = views.resource("events")
    all_ns = namespace is None
    evs, revision = view.state.events_with_revision(namespace)
    wide = output == "wide"

    def show(objects: list[dict], header: bool) -> None:
        if output == "json":
            for o in objects:
                print(json.dumps(o, indent=4))
        elif output == "name":
            for o in objects:
                print(f"{res.name_prefix}/{o['metadata']['name']}")
        else:
            text = views.table(res.columns(wide, all_ns), res.rows(objects, time.time(), wide, all_ns))
            print(text if header else text.split("\n", 1)[1])
        sys.stdout.flush()

    # the header's width is fixed by the first rows, as kubectl's watch output is
    show([views.event_object(e) for e in evs], header=True)
    for ev in view.state.watch_events(namespace, revision):
        show([views.event_object(ev)], header=False)
    return 0


def cmd_apply(a) -> int:
    lab = engine.resolve_lab(a.lab, a.store)
    objects = engine.apply(lab, a.filename, timeout=a.timeout, progress=Progress(enabled=not a.quiet),
                           store=a.store)
    for w in manifest_warnings(objects):  # accepted, as the API server accepts it, but said
        print(f"Warning: {w}", file=sys.stderr)
    for o in objects:
        print(f"{o.kind.lower()}/{o.name} configured")
    return 0


def cmd_delete(a) -> int:
    lab = engine.resolve_lab(a.lab, a.store)
    if a.what:
        if a.what[0] not in ("node", "nodes", "no") or len(a.what) != 2:
            raise LabError("use: kube-netlab delete -f FILE, or kube-netlab delete node NAME")
        engine.remove_node(lab, a.what[1], timeout=a.timeout)
        print(f"node/{a.what[1]} deleted")
        return 0
    if not a.filename:
        raise LabError("nothing to delete: give -f FILE or node NAME")
    for o in engine.delete(lab, a.filename, timeout=a.timeout, store=a.store):
        print(f"{o.kind.lower()}/{o.name} deleted")
    return 0


def cmd_exec(a, command: list[str]) -> int:
    if not command:
        raise LabError("no command: use kube-netlab exec POD -- CMD [ARGS...]")
    lab_name = engine.resolve_lab(a.lab, a.store)
    _, _, lab = engine.open_lab(lab_name, a.store)
    if a.external:
        if not lab.external:
            raise LabError(f"lab {lab_name} has no external host (spec.external is false)")
        argv = ["ip", "netns", "exec", lab.external_netns, *command]
    elif a.node:
        if a.node not in lab.node_names:
            raise LabError(f"no node {a.node!r} in lab {lab_name} (nodes: {', '.join(lab.node_names)})")
        argv = ["ip", "netns", "exec", lab.node_netns(a.node), *command]
        if a.store:  # a cluster's node is a machine: this one, or say which
            _check_on_this_machine(f"node {a.node}", a.node, str(lab.node(a.node).underlay_ip), command)
            argv = list(command)
    else:
        if not a.pod:
            raise LabError("name a pod, or use --node NAME or --external")
        view = LabView(lab_name, a.store)
        pods = [p for p in view.pods(a.namespace) if p["metadata"]["name"] == a.pod]
        if not pods:
            raise LabError(f"pod {a.pod!r} not found" + (f" in namespace {a.namespace}" if a.namespace else "")
                           + "; list pods with: kube-netlab get pods -A")
        if len(pods) > 1:
            raise LabError(f"pod {a.pod!r} exists in namespaces "
                           f"{', '.join(p['metadata']['namespace'] for p in pods)}; choose one with -n NAMESPACE")
        if a.store:
            pod = pods[0]
            _check_on_this_machine(f"pod {a.pod} (IP {pod['status'].get('podIP') or 'none yet'})",
                                   pod["spec"].get("nodeName"), pod["status"].get("hostIP"),
                                   [a.pod, "-n", pod["metadata"]["namespace"], "--", *command])
        pause = pods[0]["status"]["netlab"]["pausePid"]
        if not pause or not os.path.exists(f"/proc/{pause}"):
            raise LabError(f"pod {a.pod} is {views.pod_status_text(pods[0])}, not running")
        # the pod's network, hostname and resolv.conf: the namespaces of its pause process
        argv = ["nsenter", "-t", str(pause), "-n", "-u", "-m", "--", *command]
    sys.stdout.flush()
    os.execvp(argv[0], argv)
    return 127


def _check_on_this_machine(what: str, node: str | None, host_ip: str | None, rest: list[str]) -> None:
    """In a cluster across machines, exec works only where the pod or node is: say where else."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        local = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2)}
    if host_ip and host_ip in local:
        return
    where = f"node {node} ({host_ip})" if host_ip else f"node {node or '(not scheduled yet)'}"
    cmd = " ".join(["kube-netlab", "exec", *(rest if "--" in rest else ["--node", node or "NODE", "--", *rest])])
    raise LabError(f"{what} runs on {where}, another machine: run it there, e.g. "
                   f"vagrant ssh {node or 'NODE'} -c 'sudo -i {cmd}'; from this machine its pod IPs are "
                   f"reachable over the overlay (ping, curl)")


def cmd_status(a) -> int:
    labs = [engine.resolve_lab(a.lab, a.store)] if a.store else [a.lab] if a.lab else state.list_labs()
    if not labs:
        print("no lab is running")
        return 0
    for name in labs:
        engine.resolve_lab(name, a.store)
        view = LabView(name, a.store)
        nodes, pods, services = view.nodes(), view.pods(), view.services()
        phases: dict[str, int] = {}
        for p in pods:
            phases[p["status"]["phase"]] = phases.get(p["status"]["phase"], 0) + 1
        ready = sum(views.node_ready(n) for n in nodes)
        print(f"lab {name}: nodes {ready}/{len(nodes)} ready, pods "
              + (", ".join(f"{v} {k}" for k, v in sorted(phases.items())) or "none")
              + (f", services {len(services)}" if services else ""))
        for n in nodes:
            lab_facts = n["status"]["netlab"]
            print(f"  {n['metadata']['name']:<15} {'Ready' if views.node_ready(n) else 'NotReady':<9} "
                  f"{n['spec'].get('podCIDR') or '-':<16} agent {lab_facts['agentPid'] or 'dead'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kube-netlab", description="Real Kubernetes node networking, without Kubernetes.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def lab_opt(sp):
        sp.add_argument("--lab", "-l", default=os.environ.get("NETLAB_LAB"),
                        help="which lab (default: the only one running)")
        sp.add_argument("--store", default=os.environ.get("NETLAB_STORE") or None,
                        help="the cluster's store, e.g. etcd://192.168.56.11:2379 (default: $NETLAB_STORE, "
                             "else the lab's own state file)")

    sp = sub.add_parser("up", help="build or converge a lab and wait until it is ready")
    sp.add_argument("file", metavar="LAB.yaml")
    sp.add_argument("--name", help="run the lab under another name (a second copy of a topology)")
    sp.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    sp.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_up)

    sp = sub.add_parser("down", help="remove everything a lab created")
    sp.add_argument("lab", nargs="?", metavar="LAB")
    sp.add_argument("--all", action="store_true", help="every lab")
    sp.set_defaults(func=cmd_down)

    sp = sub.add_parser("get", help="list pods, nodes, services, endpoints, endpointslices, events",
                        description="kubectl get: " + ", ".join(
                            f"{r.name} ({', '.join(x for x in r.aliases if '.' not in x)})" for r in views.RESOURCES))
    sp.add_argument("what", metavar="RESOURCE",
                    help="pods|po, nodes|no, services|svc, endpoints|ep, endpointslices, events|ev")
    sp.add_argument("names", nargs="*", metavar="NAME")
    sp.add_argument("-o", "--output", choices=["wide", "json", "name"])
    sp.add_argument("-n", "--namespace", help=f"default: {DEFAULT_NAMESPACE}")
    sp.add_argument("-A", "--all-namespaces", action="store_true")
    sp.add_argument("-w", "--watch", action="store_true", help="events: keep printing new ones")
    lab_opt(sp)
    sp.set_defaults(func=cmd_get)

    for verb, func, helptext in (("apply", cmd_apply, "create or update objects from manifests"),
                                 ("delete", cmd_delete, "delete objects from manifests, or a node")):
        sp = sub.add_parser(verb, help=helptext)
        if verb == "delete":
            sp.add_argument("what", nargs="*", metavar="node NAME")
        sp.add_argument("-f", "--filename", required=(verb == "apply"), help="a manifest file or directory")
        sp.add_argument("--timeout", type=float, default=120.0)
        sp.add_argument("--quiet", "-q", action="store_true")
        lab_opt(sp)
        sp.set_defaults(func=func)

    sp = sub.add_parser("exec", help="run a command in a pod, a node or the external host")
    sp.add_argument("pod", nargs="?", metavar="POD")
    sp.add_argument("-n", "--namespace")
    sp.add_argument("--node", help="run on this node (its network namespace)")
    sp.add_argument("--external", action="store_true", help="run on the external host")
    lab_opt(sp)
    sp.set_defaults(func=cmd_exec)

    sp = sub.add_parser("status", help="what runs and what is ready")
    lab_opt(sp)
    sp.set_defaults(func=cmd_status)

    # command groups that live in their own modules, each registering its subcommands
    for group in (debug_cli, cluster_cli, exercise_cli):
        group.register(sub, lab_opt)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `get pods -o name | head -1` ends quietly, as kubectl does
    command: list[str] = []
    if "--" in argv:  # everything after -- belongs to exec's command
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    if os.geteuid() != 0 and args.cmd in ("up", "down", "apply", "delete", "exec"):
        print("kube-netlab: run as root (it creates network namespaces)", file=sys.stderr)
        return 1
    try:
        if args.cmd == "exec":
            return cmd_exec(args, command)
        return args.func(args)
    except ModelError as e:
        print(f"kube-netlab: {e}", file=sys.stderr)
        print("nothing was created or changed", file=sys.stderr)
        return 2
    except (LabError, views.UnknownResource) as e:
        print(f"kube-netlab: {e}", file=sys.stderr)
        return 1
    except StoreError as e:  # e.g. the cluster's etcd went away in the middle of a command
        print(f"kube-netlab: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
