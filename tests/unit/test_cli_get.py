"""`kube-netlab get` over a lab's store, without root: the store is written
through state.LabState as agents and the engine write it, and the CLI runs
as a user runs it (a process, NETLAB_STATE_DIR pointing at the lab)."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from netlab import state
from netlab.model import Container, ContainerPort, Pod, PodSpec, Service, ServicePort, parse_lab
from netlab.model.endpoints import EndpointPort, EndpointSlice, SliceEndpoint
from netlab.store import open_store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB = ("apiVersion: netlab.dev/v1alpha1\nkind: Lab\nmetadata: {name: getlab}\n"
       "spec:\n  nodes: [{name: node-a}, {name: node-b}]\n")


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("state"))
    paths = state.LabPaths("getlab", root=root)
    os.makedirs(paths.dir)
    st = state.LabState(open_store(paths.store))
    st.put_lab(parse_lab(LAB))
    for i, node in enumerate(("node-a", "node-b"), 1):
        st.put_node_status(node, state.NodeStatus(ready=True, pod_cidr=f"10.244.{i}.0/24",
                                                  vtep_mac=f"0e:00:00:00:00:0{i}"))
    echo = Container("echo", ports=(ContainerPort(8080),))
    for ns, name, ip in (("default", "web-1", "10.244.1.2"), ("default", "web-2", "10.244.1.3"),
                         ("kube-system", "dns-1", "10.244.1.4")):
        pod = Pod(name, PodSpec((echo,), node_name="node-a"), ns, {"app": name[:3]})
        st.put_pod(pod)
        st.put_pod_status(pod.key, state.PodStatus("node-a", f"getlab-{ns}.{name}", "Running", ip, name, None,
                                                   (state.ContainerStatus("echo", 1, "running"),), start_time=1.0))
    st.put_service(Service("web", (ServicePort(80, 8080),), selector={"app": "web"}, cluster_ip="10.96.0.20"))
    st.put_endpoint_slice(EndpointSlice("web-node-a", "default", "web", "node-a", (EndpointPort("", 8080),),
                                        (SliceEndpoint("10.244.1.2", "node-a", "web-1"),
                                         SliceEndpoint("10.244.1.3", "node-a", "web-2", ready=False))))
    return root


def get(root, *args):
    env = {**os.environ, "NETLAB_STATE_DIR": root, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "netlab.cli", "get", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_pods_list_the_default_namespace_unless_all_namespaces(lab_dir):
    out = get(lab_dir, "pods").stdout.splitlines()
    assert out[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert [line.split()[0] for line in out[1:]] == ["web-1", "web-2"]
    every = json.loads(get(lab_dir, "po", "-A", "-o", "json").stdout)
    assert every["kind"] == "List"
    assert [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in every["items"]] == [
        ("default", "web-1"), ("default", "web-2"), ("kube-system", "dns-1")]
    wide = get(lab_dir, "pods", "--all-namespaces", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NETNS",
                               "HOSTNAME"]
    assert get(lab_dir, "pods", "-n", "kube-system").stdout.splitlines()[1].split()[0] == "dns-1"


def test_one_pod_by_name_prints_the_object_and_a_missing_one_fails(lab_dir):
    one = json.loads(get(lab_dir, "pod", "web-1", "-o", "json").stdout)
    assert one["kind"] == "Pod" and one["status"]["podIP"] == "10.244.1.2"
    assert json.loads(get(lab_dir, "pods/web-2", "-o", "json").stdout)["metadata"]["name"] == "web-2"
    missing = get(lab_dir, "pod", "nope")
    assert missing.returncode == 1 and 'pods "nope" not found' in missing.stderr
    across = get(lab_dir, "pod", "web-1", "-A")
    assert across.returncode == 1 and "across all namespaces" in across.stderr


def test_services_endpoints_and_slices(lab_dir):
    svc = get(lab_dir, "svc").stdout.splitlines()
    assert svc[1].split()[:5] == ["web", "ClusterIP", "10.96.0.20", "<none>", "80/TCP"]
    assert get(lab_dir, "ep").stdout.splitlines()[1].split()[:2] == ["web", "10.244.1.2:8080"]
    ep = json.loads(get(lab_dir, "endpoints", "web", "-o", "json").stdout)
    assert [a["ip"] for a in ep["subsets"][0]["notReadyAddresses"]] == ["10.244.1.3"]
    slices = get(lab_dir, "endpointslices").stdout.splitlines()
    assert slices[1].split()[:4] == ["web-node-a", "IPv4", "8080", "10.244.1.2,10.244.1.3"]
    assert get(lab_dir, "nodes", "-o", "name").stdout.split() == ["node/node-a", "node/node-b"]


def test_nothing_found_and_unknown_resources(lab_dir):
    none = get(lab_dir, "svc", "-n", "kube-public")
    assert none.returncode == 0 and none.stdout == "" and "No resources found in kube-public namespace." in none.stderr
    assert json.loads(get(lab_dir, "svc", "-n", "kube-public", "-o", "json").stdout)["items"] == []
    bad = get(lab_dir, "deployments")
    assert bad.returncode == 1 and "pods (pod, po)" in bad.stderr and "endpointslices" in bad.stderr


def doc_examples() -> list[str]:
    with open(os.path.join(ROOT, "docs", "cli.md")) as f:
        return [line.strip() for line in f if line.startswith("kube-netlab get ") and "| jq" in line]


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_the_jq_examples_in_docs_cli_md_work(lab_dir):
    examples = doc_examples()
    assert len(examples) >= 5
    env = {**os.environ, "NETLAB_STATE_DIR": lab_dir, "PYTHONPATH": ROOT}
    for example in examples:
        command = example.replace("kube-netlab ", f"{shlex.quote(sys.executable)} -m netlab.cli ", 1)
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, env=env,
                              timeout=60)
        assert proc.returncode == 0 and proc.stdout.strip(), f"{example}\n{proc.stdout}{proc.stderr}"


def test_several_resource_types_at_once(lab_dir):
    out = get(lab_dir, "svc,ep").stdout.split("\n\n")
    assert out[0].splitlines()[1].split()[0] == "service/web"
    assert out[1].splitlines()[0].split() == ["NAME", "ENDPOINTS", "AGE"]
    assert out[1].splitlines()[1].split()[:2] == ["endpoints/web", "10.244.1.2:8080"]
    both = json.loads(get(lab_dir, "svc,ep", "-o", "json").stdout)
    assert [(o["kind"], o["metadata"]["name"]) for o in both["items"]] == [("Service", "web"), ("Endpoints", "web")]
    assert get(lab_dir, "svc,ep", "web").returncode == 1
