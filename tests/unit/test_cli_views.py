"""netlab.views: typed records -> kubectl-shaped JSON and table rows, pinned to
what kubectl prints for the same objects (pkg/printers/internalversion)."""
from __future__ import annotations

import json
from ipaddress import IPv4Address

import pytest

from netlab import views
from netlab.model import Container, ContainerPort, Node, Pod, PodSpec, Service, ServicePort
from netlab.model.endpoints import EndpointPort, EndpointSlice, SliceEndpoint
from netlab.model.lab import VXLAN
from netlab.state import ContainerStatus, NodeCondition, NodeStatus, PodStatus

NOW = 1_800_000_000.0
ECHO = Container("echo", ports=(ContainerPort(8080, name="http"),))


def svc(name="web", ports=(ServicePort(80, 8080),), **kw) -> dict:
    return views.service_object(Service(name, tuple(ports), **kw), created=NOW - 42)


def pod(name="web-1", node="node-a", containers=(ECHO,), ns="default") -> Pod:
    return Pod(name, PodSpec(tuple(containers), node_name=node), ns, {"app": "web"})


def running(name="echo", restarts=0) -> ContainerStatus:
    return ContainerStatus(name, 42, "running", restart_count=restarts, started_at=NOW - 60)


def status(*containers, phase="Running", ip="10.244.1.5") -> PodStatus:
    return PodStatus("node-a", "lab-default.web-1", phase, ip, "web-1", 7, tuple(containers), start_time=NOW - 90)


# --- formatting rules -------------------------------------------------------------------

@pytest.mark.parametrize("seconds, text", [
    (-5, "<invalid>"), (-1, "0s"), (0, "0s"), (119, "119s"), (120, "2m"), (303, "5m3s"), (600, "10m"),
    (179 * 60, "179m"), (3 * 3600 + 600, "3h10m"), (8 * 3600, "8h"), (47 * 3600, "47h"), (3 * 86400 + 4 * 3600, "3d4h"),
    (8 * 86400, "8d"), (2 * 365 * 86400 + 30 * 86400, "2y30d"), (9 * 365 * 86400, "9y")])
def test_age_is_kubectls_human_duration(seconds, text):
    assert views.human_duration(seconds) == text


def test_timestamps_are_rfc3339_utc_and_age_without_one_is_unknown():
    assert views.rfc3339(0) == "1970-01-01T00:00:00Z"
    assert views.parse_rfc3339(views.rfc3339(NOW)) == NOW
    assert views.age({"metadata": {}}, NOW) == "<unknown>"


def test_table_columns_are_kubectls_tabwriter():
    out = views.table(["NAME", "STATUS"], [["a-long-pod-name", "Running"]]).splitlines()
    assert out == ["NAME" + " " * 14 + "STATUS", "a-long-pod-name" + " " * 3 + "Running"]  # max(10, longest + 3)
    assert views.table(["NAME", "AGE"], [["a", "5s"]]).splitlines()[1] == "a" + " " * 9 + "5s"  # at least 10


# --- services -----------------------------------------------------------------------------

@pytest.mark.parametrize("ports, text", [
    ([ServicePort(80, 8080)], "80/TCP"),
    ([ServicePort(80, 8080, node_port=30080)], "80:30080/TCP"),
    ([ServicePort(53, 53, "UDP", "dns"), ServicePort(53, 53, "TCP", "dns-tcp"),
      ServicePort(9153, 9153, "TCP", "metrics")], "53/UDP,53/TCP,9153/TCP"),
])
def test_service_ports_column(ports, text):
    assert views.service_ports_text([p.to_dict() for p in ports]) == text


def test_service_rows_clusterip_nodeport_headless_externalname():
    web = svc(cluster_ip="10.96.0.20", selector={"tier": "fe", "app": "web"})
    np = svc("np", (ServicePort(80, 8080, node_port=30080),), type="NodePort", cluster_ip="10.96.0.21",
             external_ips=("192.168.56.200",))
    headless = svc("db", cluster_ip="None")
    ext = {"metadata": {"name": "mail"}, "spec": {"type": "ExternalName", "externalName": "mail.example.org"}}
    assert views.service_row(web, NOW, wide=True) == ["web", "ClusterIP", "10.96.0.20", "<none>", "80/TCP", "42s",
                                                      "app=web,tier=fe"]
    assert views.service_row(np, NOW, wide=False) == ["np", "NodePort", "10.96.0.21", "192.168.56.200",
                                                      "80:30080/TCP", "42s"]
    assert views.service_row(headless, NOW, wide=True)[2:] == ["None", "<none>", "80/TCP", "42s", "<none>"]
    assert views.service_row(ext, NOW, wide=False) == ["mail", "ExternalName", "<none>", "mail.example.org", "<none>",
                                                       "<unknown>"]


def test_service_json_has_kubernetes_fields():
    obj = svc("np", (ServicePort(80, "http", name="http", node_port=30080),), type="NodePort", cluster_ip="10.96.0.21")
    assert obj["apiVersion"] == "v1" and obj["kind"] == "Service"
    assert obj["metadata"] == {"name": "np", "namespace": "default", "labels": {},
                               "creationTimestamp": views.rfc3339(NOW - 42)}
    spec = obj["spec"]
    assert spec["type"] == "NodePort" and spec["clusterIP"] == "10.96.0.21" and spec["clusterIPs"] == ["10.96.0.21"]
    assert spec["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "nodePort": 30080}]
    assert obj["status"] == {"loadBalancer": {}}


def test_all_namespaces_puts_namespace_first_and_only_for_namespaced_kinds():
    services = views.resource("svc")
    objs = [svc(cluster_ip="10.96.0.20"), svc("dns", namespace="kube-system", cluster_ip="10.96.0.10")]
    text = views.render(services, objs, None, now=NOW, all_namespaces=True).splitlines()
    assert text[0].split() == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert text[2].split()[:2] == ["kube-system", "dns"]
    assert views.resource("no").columns(False, True) == ["NAME", "STATUS", "ROLES", "AGE", "POD-CIDR"]


# --- endpoints and slices -----------------------------------------------------------------

def slice_(node, addresses, ready=True, ports=(EndpointPort("", 8080),), service="web"):
    eps = tuple(SliceEndpoint(a, node, f"pod-{a}", ready=ready) for a in addresses)
    return EndpointSlice(f"{service}-{node}", "default", service, node, tuple(ports), eps)


def test_endpoints_are_built_from_slices_ready_and_not_ready_apart():
    slices = [slice_("node-b", ["10.244.2.4"]), slice_("node-a", ["10.244.1.9", "10.244.1.10"]),
              slice_("node-c", ["10.244.3.2"], ready=False)]
    obj = views.endpoints_object("default", "web", slices, labels={"app": "web"})
    assert obj["apiVersion"] == "v1" and obj["kind"] == "Endpoints" and obj["metadata"]["labels"] == {"app": "web"}
    [subset] = obj["subsets"]
    assert [a["ip"] for a in subset["addresses"]] == ["10.244.1.10", "10.244.1.9", "10.244.2.4"]  # string order
    assert subset["addresses"][0] == {"ip": "10.244.1.10", "nodeName": "node-a",
                                      "targetRef": {"kind": "Pod", "name": "pod-10.244.1.10", "namespace": "default"}}
    assert [a["ip"] for a in subset["notReadyAddresses"]] == ["10.244.3.2"]
    assert subset["ports"] == [{"port": 8080, "protocol": "TCP"}]  # no name for a single unnamed port
    assert views.endpoints_text(obj) == "10.244.1.10:8080,10.244.1.9:8080,10.244.2.4:8080"


def test_endpoints_column_truncates_like_kubectl_and_shows_none_without_subsets():
    many = views.endpoints_object("default", "web", [slice_("node-a", [f"10.244.1.{i}" for i in range(2, 7)])])
    assert views.endpoints_text(many) == "10.244.1.2:8080,10.244.1.3:8080,10.244.1.4:8080 + 2 more..."
    two_ports = views.endpoints_object("default", "dns", [slice_("node-a", ["10.244.1.2", "10.244.1.3"], ports=(
        EndpointPort("dns", 53, "UDP"), EndpointPort("dns-tcp", 53, "TCP")))])
    assert views.endpoints_text(two_ports) == "10.244.1.2:53,10.244.1.3:53,10.244.1.2:53 + 1 more..."
    empty = views.endpoints_object("default", "kubernetes", [])
    assert "subsets" not in empty and views.endpoints_row(empty, NOW, False)[1] == "<none>"
    not_ready = views.endpoints_object("default", "web", [slice_("node-a", ["10.244.1.2"], ready=False)])
    assert views.endpoints_text(not_ready) == ""  # kubectl prints an empty cell


def test_endpointslice_json_and_columns():
    s = slice_("node-a", [f"10.244.1.{i}" for i in range(2, 6)], ports=(EndpointPort("http", 8080),))
    obj = views.endpoint_slice_object(s, created=NOW - 5)
    assert obj["apiVersion"] == "discovery.k8s.io/v1" and obj["kind"] == "EndpointSlice"
    assert obj["metadata"]["labels"]["kubernetes.io/service-name"] == "web"
    assert obj["metadata"]["ownerReferences"][0]["kind"] == "Service"
    assert obj["endpoints"][0]["conditions"] == {"ready": True, "serving": True, "terminating": False}
    assert views.endpoint_slice_row(obj, NOW, False) == [
        "web-node-a", "IPv4", "8080", "10.244.1.2,10.244.1.3,10.244.1.4 + 1 more...", "5s"]
    empty = views.endpoint_slice_object(EndpointSlice("x-node-a", "default", "x", "node-a"))
    assert views.endpoint_slice_row(empty, NOW, False)[2:4] == ["<unset>", "<unset>"]


# --- pods -----------------------------------------------------------------------------------

def test_pod_json_is_kubernetes_shaped():
    obj = views.pod_object(pod(), status(running()), lab="lab", host_ip="192.168.56.11")
    assert obj["metadata"]["name"] == "web-1" and obj["metadata"]["namespace"] == "default"
    assert obj["metadata"]["labels"] == {"app": "web"}
    assert obj["spec"]["nodeName"] == "node-a" and obj["spec"]["containers"][0]["name"] == "echo"
    st = obj["status"]
    assert st["phase"] == "Running" and st["podIP"] == "10.244.1.5" and st["podIPs"] == [{"ip": "10.244.1.5"}]
    assert st["hostIP"] == "192.168.56.11" and st["hostIPs"] == [{"ip": "192.168.56.11"}]
    assert st["startTime"] == views.rfc3339(NOW - 90) == obj["metadata"]["creationTimestamp"]
    assert {c["type"]: c["status"] for c in st["conditions"]} == {
        "PodScheduled": "True", "Initialized": "True", "ContainersReady": "True", "Ready": "True"}
    assert st["containerStatuses"] == [{"name": "echo", "ready": True, "restartCount": 0, "started": True,
                                        "lastState": {}, "state": {"running": {"startedAt": views.rfc3339(NOW - 60)}}}]
    assert st["netlab"] == {"netns": "lab-default.web-1", "pausePid": 7, "hostname": "web-1",
                            "containerPids": {"echo": 42}}
    assert views.pod_row(obj, NOW, wide=True) == ["web-1", "1/1", "Running", "0", "90s", "10.244.1.5", "node-a",
                                                  "lab-default.web-1", "web-1"]


def test_pod_without_status_is_pending_with_our_netns():
    obj = views.pod_object(pod(node=None), None, lab="lab")
    assert obj["status"]["phase"] == "Pending" and obj["status"]["conditions"] == [
        {"type": "PodScheduled", "status": "False", "lastProbeTime": None}]
    assert obj["status"]["netlab"]["netns"] == "lab-default.web-1"
    assert views.pod_row(obj, NOW, wide=False) == ["web-1", "0/1", "Pending", "0", "<unknown>"]


@pytest.mark.parametrize("containers, phase, text", [
    ((ContainerStatus("echo", state="waiting", reason="CrashLoopBackOff", restart_count=3),), "Running",
     "CrashLoopBackOff"),
    ((ContainerStatus("echo", state="terminated", exit_code=0),), "Succeeded", "Completed"),
    ((ContainerStatus("echo", state="terminated", exit_code=2),), "Failed", "Error"),
    ((ContainerStatus("echo", state="waiting"),), "Pending", "ContainerCreating"),
])
def test_pod_status_column_follows_container_reasons(containers, phase, text):
    obj = views.pod_object(pod(), status(*containers, phase=phase), lab="lab")
    assert views.pod_status_text(obj) == text
    ready = {c["type"]: c for c in obj["status"]["conditions"]}["Ready"]
    assert ready["status"] == "False"
    assert views.pod_restarts(obj) == containers[0].restart_count


def test_terminated_container_state_carries_exit_code_and_reason():
    obj = views.pod_object(pod(), status(ContainerStatus("echo", state="terminated", exit_code=2), phase="Failed"),
                           lab="lab")
    assert obj["status"]["containerStatuses"][0]["state"] == {"terminated": {"exitCode": 2, "reason": "Error"}}
    assert {c["type"]: c.get("reason") for c in obj["status"]["conditions"]}["Ready"] == "ContainersNotReady"


def test_one_of_two_containers_completed_while_the_other_runs_shows_running():
    two = pod(containers=(ECHO, Container("side", command=("true",))))
    st = status(running(), ContainerStatus("side", state="terminated", exit_code=0))
    obj = views.pod_object(two, st, lab="lab")
    assert views.pod_ready_text(obj) == "1/2" and views.pod_status_text(obj) == "NotReady"


# --- nodes ----------------------------------------------------------------------------------

NODE = Node("node-a", IPv4Address("192.168.56.11"), {"node-role.kubernetes.io/worker": ""})


def node_status(**kw) -> NodeStatus:
    return NodeStatus(ready=True, agent_pid=99, pod_cidr="10.244.1.0/24", vtep_mac="0e:00:00:00:00:01",
                      underlay_ip="192.168.56.11", peers=("10.244.2.0/24",), **kw)


def test_node_json_has_flannels_annotations_addresses_and_our_facts():
    obj = views.node_object(NODE, node_status(), agent_pid=99, netns="lab-node-a", vxlan=VXLAN(), created=NOW - 7200)
    meta = obj["metadata"]
    assert meta["labels"]["kubernetes.io/hostname"] == "node-a" and meta["labels"]["kubernetes.io/os"] == "linux"
    ann = meta["annotations"]
    assert ann["flannel.alpha.coreos.com/backend-type"] == "vxlan"
    assert json.loads(ann["flannel.alpha.coreos.com/backend-data"]) == {"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"}
    assert ann["flannel.alpha.coreos.com/backend-data"] == '{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}'
    assert ann["flannel.alpha.coreos.com/public-ip"] == "192.168.56.11"
    assert ann["flannel.alpha.coreos.com/kube-subnet-manager"] == "true"
    assert obj["spec"] == {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}
    assert obj["status"]["addresses"] == [{"type": "InternalIP", "address": "192.168.56.11"},
                                          {"type": "Hostname", "address": "node-a"}]
    assert [(c["type"], c["status"]) for c in obj["status"]["conditions"]] == [("Ready", "True")]
    assert obj["status"]["netlab"]["peers"] == ["10.244.2.0/24"] and obj["status"]["netlab"]["agentPid"] == 99
    assert obj["status"]["netlab"]["vxlanDevice"] == "flannel.1"
    assert views.node_row(obj, NOW, wide=True) == ["node-a", "Ready", "worker", "120m", "10.244.1.0/24",
                                                   "192.168.56.11", "0e:00:00:00:00:01", "lab-node-a", "99"]


def test_node_conditions_come_from_the_agent_and_a_dead_agent_makes_ready_unknown():
    conds = (NodeCondition("Ready", False, "ProxyFailing", "iptables-restore failed", since=NOW - 3),)
    obj = views.node_object(NODE, node_status(conditions=conds), agent_pid=99, netns="n", vxlan=VXLAN())
    [ready] = obj["status"]["conditions"]
    assert ready == {"type": "Ready", "status": "False", "reason": "ProxyFailing",
                     "message": "iptables-restore failed", "lastTransitionTime": views.rfc3339(NOW - 3)}
    dead = views.node_object(NODE, node_status(), agent_pid=None, netns="n", vxlan=VXLAN())
    assert {c["type"]: c["status"] for c in dead["status"]["conditions"]} == {"Ready": "Unknown"}
    assert views.node_row(dead, NOW, wide=True)[1] == "NotReady" and views.node_row(dead, NOW, True)[-1] == "<dead>"
    leaseless = views.node_object(NODE, None, agent_pid=None, netns="n", vxlan=VXLAN())
    assert leaseless["spec"] == {} and leaseless["metadata"]["annotations"] == {}


# --- resources and rendering --------------------------------------------------------------

@pytest.mark.parametrize("word, name", [("po", "pods"), ("pod", "pods"), ("PODS", "pods"), ("no", "nodes"),
                                        ("svc", "services"), ("service", "services"), ("ep", "endpoints"),
                                        ("endpoints", "endpoints"), ("endpointslice", "endpointslices"),
                                        ("endpointslices", "endpointslices")])
def test_kubectl_resource_aliases(word, name):
    assert views.resource(word).name == name


def test_unknown_resource_lists_the_known_ones():
    with pytest.raises(views.UnknownResource) as e:
        views.resource("deploy")
    assert '"deploy"' in str(e.value) and "services (service, svc)" in str(e.value)


def test_render_json_list_single_object_and_names():
    res = views.resource("svc")
    objs = [svc(cluster_ip="10.96.0.20")]
    assert json.loads(views.render(res, objs, "json", now=NOW)) == {
        "apiVersion": "v1", "kind": "List", "items": objs, "metadata": {"resourceVersion": ""}}
    assert json.loads(views.render(res, objs, "json", now=NOW, single=True)) == objs[0]
    assert views.render(res, objs, "name", now=NOW) == "service/web"
    assert views.render(views.resource("endpointslices"), [{"metadata": {"name": "a"}}], "name", now=NOW) \
        == "endpointslice.discovery.k8s.io/a"
