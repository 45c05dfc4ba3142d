"""kube-netlab: kubectl-like verbs over a lab.

    kube-netlab up LAB.yaml            build (or converge) a lab, wait until it is ready
    kube-netlab down [LAB] [--all]     remove everything a lab created
    kube-netlab get nodes|pods [-o wide|json] [-n NS]
    kube-netlab apply -f FILE          create or update Namespaces, Pods, Deployments
    kube-netlab delete -f FILE         delete them again
    kube-netlab delete node NAME       take a node out of the lab
    kube-netlab exec POD [-n NS] -- CMD...   run CMD in a pod (also --node NAME, --external)
    kube-netlab status                 what runs, what is ready
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import engine, state
from .engine import LabError
from .model import ModelError, names
from .progress import Progress


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("   ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *rows])


# --- views ---------------------------------------------------------------------------------

def node_items(lab_name: str) -> list[dict]:
    paths, store, lab = engine.open_lab(lab_name)
    statuses = engine.node_statuses(store)
    items = []
    for node in lab.nodes:
        st = statuses.get(node.name, {})
        pid = state.agent_alive(paths, node.name)
        items.append({"name": node.name, "underlayIP": str(node.underlay_ip), "podCIDR": st.get("podCIDR"),
                      "vtepMAC": st.get("vtepMAC"), "netns": lab.node_netns(node.name),
                      "vxlanDevice": lab.vxlan.device, "ready": bool(st.get("ready")) and pid is not None,
                      "agentPid": pid, "peers": st.get("peers", []), "labels": dict(node.labels)})
    return items


def pod_items(lab_name: str, namespace: str | None = None) -> list[dict]:
    paths, store, lab = engine.open_lab(lab_name)
    statuses = engine.pod_statuses(store)
    items = []
    for kv in store.list(state.PODS):
        doc = json.loads(kv.value)
        meta, spec = doc["metadata"], doc["spec"]
        ns, name = meta.get("namespace", "default"), meta["name"]
        if namespace and ns != namespace:
            continue
        st = statuses.get(f"{ns}/{name}", {})
        containers = st.get("containers", [])
        items.append({"name": name, "namespace": ns, "node": spec.get("nodeName"), "ip": st.get("podIP"),
                      "netns": names.pod_netns(lab.name, ns, name), "phase": st.get("phase", "Pending"),
                      "hostname": st.get("hostname"), "labels": meta.get("labels", {}),
                      "restarts": sum(c.get("restartCount", 0) for c in containers),
                      "containers": containers, "message": st.get("message")})
    return sorted(items, key=lambda p: (p["namespace"], p["name"]))


def print_nodes(items: list[dict], output: str | None) -> None:
    if output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2))
        return
    header = ["NAME", "STATUS", "UNDERLAY-IP", "POD-CIDR"]
    rows = [[n["name"], "Ready" if n["ready"] else "NotReady", n["underlayIP"], n["podCIDR"] or "<none>"]
            for n in items]
    if output == "wide":
        header += ["VTEP-MAC", "NETNS", "AGENT-PID"]
        for r, n in zip(rows, items):
            r += [n["vtepMAC"] or "<none>", n["netns"], n["agentPid"] or "<dead>"]
    print(_table(rows, header))


def print_pods(items: list[dict], output: str | None) -> None:
    if output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2))
        return
    header = ["NAMESPACE", "NAME", "STATUS", "RESTARTS", "IP", "NODE"]
    rows = [[p["namespace"], p["name"], p["phase"], p["restarts"], p["ip"] or "<none>", p["node"] or "<none>"]
            for p in items]
    if output == "wide":
        header += ["NETNS", "HOSTNAME"]
        for r, p in zip(rows, items):
            r += [p["netns"], p["hostname"] or "<none>"]
    print(_table(rows, header))


# --- commands ------------------------------------------------------------------------------

def cmd_up(a) -> int:
    progress = Progress(enabled=not a.quiet)
    lab = engine.up(a.file, name=a.name, timeout=a.timeout, progress=progress)
    print(f"lab {lab.name} is ready: {len(lab.nodes)} nodes on {lab.underlay.cidr}, "
          f"pods on {lab.pod_cidr} over VXLAN {lab.vxlan.device} (UDP {lab.vxlan.port})\n")
    print_nodes(node_items(lab.name), "wide")
    print()
    pods = pod_items(lab.name)
    print_pods(pods, "wide")
    running = [p for p in pods if p["ip"]]
    if len(running) >= 2:
        a_, b_ = running[0], next((p for p in running if p["node"] != running[0]["node"]), running[1])
        print(f"\ntry:  kube-netlab exec {a_['name']} -n {a_['namespace']} -- ping -c 3 {b_['ip']}")
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
    lab = engine.resolve_lab(a.lab)
    if a.what in ("nodes", "node", "no"):
        print_nodes(node_items(lab), a.output)
    else:
        print_pods(pod_items(lab, a.namespace), a.output)
    return 0


def cmd_apply(a) -> int:
    lab = engine.resolve_lab(a.lab)
    objects = engine.apply(lab, a.filename, timeout=a.timeout, progress=Progress(enabled=not a.quiet))
    for o in objects:
        print(f"{o.kind.lower()}/{o.name} configured")
    return 0


def cmd_delete(a) -> int:
    lab = engine.resolve_lab(a.lab)
    if a.what:
        if a.what[0] not in ("node", "nodes", "no") or len(a.what) != 2:
            raise LabError("use: kube-netlab delete -f FILE, or kube-netlab delete node NAME")
        engine.remove_node(lab, a.what[1], timeout=a.timeout)
        print(f"node/{a.what[1]} deleted")
        return 0
    if not a.filename:
        raise LabError("nothing to delete: give -f FILE or node NAME")
    for o in engine.delete(lab, a.filename, timeout=a.timeout):
        print(f"{o.kind.lower()}/{o.name} deleted")
    return 0


def cmd_exec(a, command: list[str]) -> int:
    if not command:
        raise LabError("no command: use kube-netlab exec POD -- CMD [ARGS...]")
    lab_name = engine.resolve_lab(a.lab)
    _, store, lab = engine.open_lab(lab_name)
    if a.external:
        if not lab.external:
            raise LabError(f"lab {lab_name} has no external host (spec.external is false)")
        argv = ["ip", "netns", "exec", lab.external_netns, *command]
    elif a.node:
        if a.node not in lab.node_names:
            raise LabError(f"no node {a.node!r} in lab {lab_name} (nodes: {', '.join(lab.node_names)})")
        argv = ["ip", "netns", "exec", lab.node_netns(a.node), *command]
    else:
        if not a.pod:
            raise LabError("name a pod, or use --node NAME or --external")
        pods = [p for p in pod_items(lab_name, a.namespace) if p["name"] == a.pod]
        if not pods:
            raise LabError(f"pod {a.pod!r} not found" + (f" in namespace {a.namespace}" if a.namespace else "")
                           + "; list pods with: kube-netlab get pods")
        if len(pods) > 1:
            raise LabError(f"pod {a.pod!r} exists in namespaces {', '.join(p['namespace'] for p in pods)}; "
                           "choose one with -n NAMESPACE")
        st = engine.pod_statuses(store).get(f"{pods[0]['namespace']}/{a.pod}", {})
        pause = st.get("pausePid")
        if not pause or not os.path.exists(f"/proc/{pause}"):
            raise LabError(f"pod {a.pod} is {pods[0]['phase']}, not running")
        # the pod's network, hostname and resolv.conf: the namespaces of its pause process
        argv = ["nsenter", "-t", str(pause), "-n", "-u", "-m", "--", *command]
    sys.stdout.flush()
    os.execvp(argv[0], argv)
    return 127


def cmd_status(a) -> int:
    labs = [a.lab] if a.lab else state.list_labs()
    if not labs:
        print("no lab is running")
        return 0
    for name in labs:
        engine.resolve_lab(name)
        nodes, pods = node_items(name), pod_items(name)
        phases: dict[str, int] = {}
        for p in pods:
            phases[p["phase"]] = phases.get(p["phase"], 0) + 1
        ready = sum(n["ready"] for n in nodes)
        print(f"lab {name}: nodes {ready}/{len(nodes)} ready, pods "
              + (", ".join(f"{v} {k}" for k, v in sorted(phases.items())) or "none"))
        for n in nodes:
            print(f"  {n['name']:<15} {'Ready' if n['ready'] else 'NotReady':<9} {n['podCIDR'] or '-':<16} "
                  f"agent {n['agentPid'] or 'dead'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kube-netlab", description="Real Kubernetes node networking, without Kubernetes.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def lab_opt(sp):
        sp.add_argument("--lab", "-l", default=os.environ.get("NETLAB_LAB"),
                        help="which lab (default: the only one running)")

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

    sp = sub.add_parser("get", help="list nodes or pods")
    sp.add_argument("what", choices=["nodes", "node", "no", "pods", "pod", "po"])
    sp.add_argument("-o", "--output", choices=["wide", "json"])
    sp.add_argument("-n", "--namespace")
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
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
    except LabError as e:
        print(f"kube-netlab: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
