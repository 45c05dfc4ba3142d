"""Putting pods on nodes: a tiny, deterministic scheduler.

Rules, in order:
1. a pod already running on a node that still exists stays there (pods do
   not move on re-apply; pass `current`);
2. a pod with spec.nodeName goes to that node;
3. every other pod goes to the least-loaded node that matches its
   nodeSelector, ties broken by the order of spec.nodes.
Pods are placed in the order given, so the same input gives the same result.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from .errors import ModelError, Problem, show
from .workloads import Pod, node_labels

__all__ = ["node_labels", "schedule"]   # node_labels lives with DaemonSet, which needs it too


def _problem(pod: Pod, rel: str, message: str) -> Problem:
    if pod.owner is not None:
        rel = "spec.template." + rel  # a controller's pod: point at the template
    path, line = pod.origin.where(rel)
    ns = f"{pod.namespace}/" if pod.namespace != "default" else ""
    subject = f'{pod.owner.kind} "{ns}{pod.owner.name}"' if pod.owner else f'Pod "{ns}{pod.name}"'
    return Problem(pod.origin.source, path, message, line, subject)


def schedule(pods: Iterable[Pod], nodes: Sequence, *, current: Mapping[str, str] | None = None,
             max_pods_per_node: int | None = None) -> list[Pod]:
    """Every pod bound to a node (spec.nodeName set), in the order given.

    nodes: the lab's Node objects (name, labels). current: pod key
    ("namespace/name") -> node it runs on now. max_pods_per_node: the pod
    addresses in one node subnet. Raises ModelError naming the pod when a
    pinned node is unknown, no node matches a nodeSelector, or nodes are full.
    """
    pods = list(pods)
    by_name = {n.name: n for n in nodes}
    order = {n.name: i for i, n in enumerate(nodes)}
    load = {n.name: 0 for n in nodes}
    current = current or {}
    placed: dict[int, str] = {}
    problems: list[Problem] = []

    def fits(pod: Pod, node) -> bool:
        labels = node_labels(node)
        return all(labels.get(k) == v for k, v in pod.spec.node_selector.items())

    def full(name: str) -> bool:
        return max_pods_per_node is not None and load[name] >= max_pods_per_node

    # 1 + 2: pods whose node is already decided
    for i, pod in enumerate(pods):
        want = pod.spec.node_name
        if want is None:
            cur = current.get(pod.key)
            if cur in by_name and fits(pod, by_name[cur]):
                want = cur
            else:
                continue
        elif want not in by_name:
            problems.append(_problem(pod, "spec.nodeName",
                                     f"{show(want)} is not a node of this lab; use one of "
                                     f"{', '.join(by_name) or '(no nodes)'} or remove nodeName"))
            continue
        if full(want):
            problems.append(_problem(pod, "spec.nodeName",
                                     f"node {show(want)} is full: its pod subnet holds {max_pods_per_node} pods; "
                                     "pin fewer pods there or use a shorter subnetLen"))
            continue
        placed[i] = want
        load[want] += 1

    # 3: the rest, least-loaded first
    for i, pod in enumerate(pods):
        if i in placed or pod.spec.node_name is not None:
            continue
        candidates = [n.name for n in nodes if fits(pod, n)]
        if not candidates:
            problems.append(_problem(pod, "spec.nodeSelector",
                                     f"{show(pod.spec.node_selector)} matches no node; add these labels to a node "
                                     "(spec.nodes[].labels in the lab file) or change the nodeSelector"))
            continue
        free = [n for n in candidates if not full(n)]
        if not free:
            problems.append(_problem(pod, "spec", f"no room: every node this pod may use already "
                                                  f"has {max_pods_per_node} pods (one subnet's addresses); "
                                                  "add nodes, fewer replicas or a shorter subnetLen"))
            continue
        best = min(free, key=lambda n: (load[n], order[n]))
        placed[i] = best
        load[best] += 1

    if problems:
        # a controller's pods share one field: report it once
        unique = list(dict.fromkeys(problems))
        raise ModelError(unique)
    return [pod.bind(placed[i]) for i, pod in enumerate(pods)]
