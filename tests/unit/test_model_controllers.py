"""StatefulSets and DaemonSets: pod names, hostnames, labels, owners,
scaling, placement, storage round trips and errors."""
from __future__ import annotations

import json
import textwrap

import pytest

from netlab.model import (DaemonSet, ModelError, StatefulSet, merge_objects, object_from_dict, parse_lab,
                          parse_manifests, remove_objects)
from netlab.model.endpoints import node_slices


def parse(text: str, source: str = "m.yaml"):
    return parse_manifests(textwrap.dedent(text).lstrip("\n"), source)


def statefulset(replicas=3, extra="", name="web", template_spec=""):
    return f"""
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: {name}}}
spec:
  serviceName: web
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}{extra}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:{template_spec}
      containers: [{{name: web, ports: [{{containerPort: 80, name: http}}]}}]
"""


def daemonset(node_selector="", extra=""):
    return f"""
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent, namespace: kube-system}}
spec:
  selector: {{matchLabels: {{app: agent}}}}{extra}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      {node_selector}
      containers: [{{name: agent}}]
"""


LAB = parse_lab("""
apiVersion: netlab.dev/v1alpha1
kind: Lab
metadata: {name: t}
spec:
  nodes: [{name: a, labels: {disk: ssd}}, {name: b}, {name: c, labels: {disk: ssd}}]
""")


def problems_of(text: str):
    with pytest.raises(ModelError) as ei:
        parse(text)
    return ei.value.problems


# --- StatefulSet ---------------------------------------------------------------------

def test_statefulset_pods_have_ordinal_names_hostnames_and_labels():
    [sts] = parse(statefulset())
    assert isinstance(sts, StatefulSet) and sts.service_name == "web"
    pods = sts.pods()
    assert [p.name for p in pods] == ["web-0", "web-1", "web-2"]
    p = pods[1]
    assert (p.spec.hostname, p.spec.subdomain, p.hostname) == ("web-1", "web", "web-1")
    assert p.labels["app"] == "web" and p.labels["statefulset.kubernetes.io/pod-name"] == "web-1"
    assert p.labels["apps.kubernetes.io/pod-index"] == "1"
    assert (p.owner.kind, p.owner.name) == ("StatefulSet", "web")


def test_statefulset_pods_get_per_pod_dns_hostnames_through_the_headless_service():
    [sts, svc] = parse(statefulset(replicas=1) + "---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
                       "spec: {clusterIP: None, selector: {app: web}, ports: [{port: 80, targetPort: http}]}\n")

    class Running:
        pod_ip, ready, terminal = "10.244.1.5", True, False
    [pod] = [p.bind("a") for p in sts.pods()]
    [slice_] = node_slices(svc, [(pod, Running())], "a")
    assert slice_.endpoints[0].hostname == "web-0" and slice_.ports[0].port == 80


def test_statefulset_scaling_adds_and_removes_the_highest_ordinals():
    three = [p.name for p in parse(statefulset(3))[0].pods()]
    assert [p.name for p in parse(statefulset(5))[0].pods()] == three + ["web-3", "web-4"]
    assert [p.name for p in parse(statefulset(1))[0].pods()] == three[:1]
    assert parse(statefulset(0))[0].pods() == []
    started = parse(statefulset(2, extra="\n  ordinals: {start: 5}"))[0]
    assert [p.name for p in started.pods()] == ["web-5", "web-6"]


def test_statefulset_errors():
    p = [p for p in problems_of(statefulset(name="Web_1")) if p.path == "metadata.name"][0]
    assert "RFC 1123 label" in p.message and p.line == 3
    long = "w" * 62
    p = [p for p in problems_of(statefulset(replicas=10, name=long)) if p.path == "metadata.name"][0]
    assert f"{long}-9" in p.message and "at most 63" in p.message
    bad = statefulset().replace("serviceName: web", "serviceName: Web_X")
    p = [p for p in problems_of(bad) if p.path == "spec.serviceName"][0]
    assert "not a valid name" in p.message and p.subject == 'StatefulSet "web"'
    p = [p for p in problems_of(statefulset(template_spec="\n      restartPolicy: Never"))
         if p.path == "spec.template.spec.restartPolicy"][0]
    assert "a StatefulSet's pods must use Always" in p.message
    p = [p for p in problems_of(statefulset().replace("{matchLabels: {app: web}}", "{matchLabels: {app: x}}"))
         if p.path == "spec.selector"][0]
    assert "does not match the template's labels" in p.message


# --- DaemonSet -----------------------------------------------------------------------

def test_daemonset_runs_one_pinned_pod_per_node():
    [ds] = parse(daemonset())
    assert isinstance(ds, DaemonSet)
    pods = ds.pods(LAB.nodes)
    assert [p.node_name for p in pods] == ["a", "b", "c"]
    assert all(p.name.startswith("agent-") and len(p.name) == len("agent-") + 5 for p in pods)
    assert len({p.name for p in pods}) == 3 and all(p.namespace == "kube-system" for p in pods)
    assert all((p.owner.kind, p.owner.name) == ("DaemonSet", "agent") and p.labels["app"] == "agent" for p in pods)
    # per node and deterministic: a node's pod keeps its name when nodes come and go
    assert ds.pods(LAB.nodes[1:])[0].name == pods[1].name
    assert [p.name for p in parse(daemonset())[0].pods(LAB.nodes)] == [p.name for p in pods]


def test_daemonset_follows_the_node_selector():
    [ds] = parse(daemonset(node_selector="nodeSelector: {disk: ssd}"))
    assert [p.node_name for p in ds.pods(LAB.nodes)] == ["a", "c"]
    [one] = parse(daemonset(node_selector="nodeSelector: {kubernetes.io/hostname: b}"))
    assert [p.node_name for p in one.pods(LAB.nodes)] == ["b"]
    [none] = parse(daemonset(node_selector="nodeSelector: {disk: hdd}"))
    assert none.pods(LAB.nodes) == []


def test_a_changed_template_renames_the_daemonset_pods():
    before = parse(daemonset())[0].pods(LAB.nodes)
    after = parse(daemonset().replace("[{name: agent}]", "[{name: agent, command: [sleep, '9']}]"))[0].pods(LAB.nodes)
    assert not {p.name for p in before} & {p.name for p in after}


def test_daemonset_errors():
    p = [p for p in problems_of(daemonset(extra="\n  replicas: 2")) if p.path == "spec.replicas"][0]
    assert "one pod on every node" in p.message and "remove replicas" in p.message and p.line == 6
    p = [p for p in problems_of(daemonset().replace("  selector: {matchLabels: {app: agent}}\n", ""))
         if p.path == "spec.selector"][0]
    assert "missing" in p.message and "DaemonSets" in p.message


# --- in a lab ---------------------------------------------------------------------------

def test_lab_expands_and_schedules_both_kinds():
    lab = LAB.with_objects(parse(statefulset(2)) + parse(daemonset("nodeSelector: {disk: ssd}")))
    placed = {p.name: p.node_name for p in lab.scheduled_pods()}
    ds_pods = [n for n in placed if n.startswith("agent-")]
    assert sorted(placed[n] for n in ds_pods) == ["a", "c"]
    assert set(placed) == {"web-0", "web-1", *ds_pods}
    assert lab.statefulsets[0].name == "web" and lab.daemonsets[0].name == "agent"


def test_generated_names_clash_with_declared_pods():
    pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1}\nspec: {containers: [{name: c}]}\n"
    with pytest.raises(ModelError) as ei:
        LAB.with_objects(parse(statefulset(2)) + parse(pod))
    assert any('makes pod "default/web-1"' in p.message for p in ei.value.problems)


def test_stored_merged_and_removed_like_deployments():
    sts, ds = parse(statefulset()) + parse(daemonset())
    for obj in (sts, ds):
        assert object_from_dict(json.loads(json.dumps(obj.to_dict()))) == obj
    for pod in sts.pods() + ds.pods(LAB.nodes):
        again = object_from_dict(json.loads(json.dumps(pod.bind(pod.node_name or "a").to_dict())))
        assert again.owner == pod.owner and again.spec.hostname == pod.spec.hostname
    scaled = parse(statefulset(5))[0]
    assert merge_objects([sts, ds], [scaled]) == [scaled, ds]
    assert remove_objects([sts, ds], parse(daemonset())) == [sts]
