"""kube-netlab logs: a container's output, as kubectl logs prints it.

The pod runtime (netlab/pods.py) writes each container's stdout and stderr to
/run/netlab/<lab>/pods/<ns>.<pod>/<container>.log and, when it restarts a container,
keeps the run before as <container>.previous.log, as the kubelet keeps the previous
container's log (`--previous`). So this reads files; it needs no agent and no root.

    kube-netlab logs [NS/]POD [-n NS] [-c CONTAINER] [-f] [-p] [--tail N] [--all-containers]
"""
from __future__ import annotations

import os
import sys
import time

from .. import engine, state
from ..engine import LabError
from .path import split_pod_ref

FOLLOW_POLL_SECONDS = 0.1


def add_parser(sub, lab_opt) -> None:
    sp = sub.add_parser("logs", help="print a container's output (kubectl logs)",
                        description="A pod's container output: the echo servers' and the DNS pod's too. "
                                    "A pod with several containers needs -c (or --all-containers).")
    sp.add_argument("pod", metavar="[NS/]POD")
    sp.add_argument("-n", "--namespace", help="the pod's namespace (default: default)")
    sp.add_argument("-c", "--container", help="which container (needed when the pod has several)")
    sp.add_argument("-f", "--follow", action="store_true", help="keep printing what the container writes")
    sp.add_argument("-p", "--previous", action="store_true",
                    help="the run before the container's last restart")
    sp.add_argument("--tail", type=int, default=-1, help="only the last N lines (-1: all)")
    sp.add_argument("--all-containers", action="store_true", help="every container of the pod, one after another")
    lab_opt(sp)
    sp.set_defaults(func=cmd_logs)


class LogError(LabError):
    """kubectl's wording, which cmd_logs prints as is."""


def log_files(paths: state.LabPaths, pod, status: state.PodStatus | None, container: str | None, *,
              previous: bool = False, all_containers: bool = False) -> list[tuple[str, str]]:
    """(container, log file) pairs to print, or the error kubectl would give."""
    names = [c.name for c in pod.containers]
    if container is None and not all_containers:
        if len(names) > 1:
            raise LogError(f"error: a container name must be specified for pod {pod.name}, "
                           f"choose one of: [{' '.join(names)}]")
        container = names[0]
    if container is not None and container not in names:
        raise LogError(f'Error from server (BadRequest): container "{container}" is not valid for pod "{pod.name}"')
    chosen = names if container is None else [container]
    netns = status.netns if status and status.netns else None
    out = []
    for name in chosen:
        path = paths.container_log(netns, name, previous=previous) if netns else None
        if path is None or not os.path.exists(path):
            if previous:
                raise LogError(f'Error from server (BadRequest): previous terminated container "{name}" '
                               f'in pod "{pod.name}" not found')
            raise LogError(f'Error from server (BadRequest): container "{name}" in pod "{pod.name}" is waiting '
                           f"to start: {_waiting_reason(status, name)}")
        out.append((name, path))
    return out


def _waiting_reason(status: state.PodStatus | None, container: str) -> str:
    c = next((c for c in (status.containers if status else ()) if c.name == container), None)
    return (c.reason if c and c.reason else None) or "ContainerCreating"


def last_lines(text: str, n: int) -> str:
    if n < 0:
        return text
    if n == 0:
        return ""
    lines = text.splitlines(keepends=True)
    return "".join(lines[-n:])


def follow(path: str, out, *, stop=None, poll: float = FOLLOW_POLL_SECONDS, tail: int = -1) -> None:
    """Print the file, then what is appended, until it is replaced (the container restarted:
    its log was rotated), removed (the pod was deleted) or stop() says so."""
    with open(path, "rb") as f:
        inode = os.fstat(f.fileno()).st_ino
        out.write(last_lines(f.read().decode(errors="replace"), tail))
        out.flush()
        while not (stop and stop()):
            chunk = f.read()
            if chunk:
                out.write(chunk.decode(errors="replace"))
                out.flush()
                continue
            try:
                if os.stat(path).st_ino != inode:
                    out.write(f.read().decode(errors="replace"))   # what it wrote before it was replaced
                    return
            except FileNotFoundError:
                return
            time.sleep(poll)


def cmd_logs(a) -> int:
    paths, store, lab = engine.open_lab(engine.resolve_lab(a.lab))
    lab_state = state.LabState(store)
    ns, name = split_pod_ref(a.pod, a.namespace)
    pod = lab_state.pods().get(f"{ns}/{name}")
    try:
        if pod is None:
            raise LogError(f'Error from server (NotFound): pods "{name}" not found'
                           + (f" in namespace {ns}" if ns else ""))
        files = log_files(paths, pod, lab_state.pod_status(pod.key), a.container, previous=a.previous,
                          all_containers=a.all_containers)
    except LogError as e:
        print(str(e), file=sys.stderr)
        return 1
    if a.follow and not a.previous:
        if len(files) > 1:
            raise LabError("-f follows one container: choose it with -c")
        follow(files[0][1], sys.stdout, tail=a.tail)
        return 0
    for _, path in files:
        with open(path, "rb") as f:
            sys.stdout.write(last_lines(f.read().decode(errors="replace"), a.tail))
    sys.stdout.flush()
    return 0
