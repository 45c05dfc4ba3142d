"""Pure pieces of the lab engine: state layout, the node's CNI config, container command lines."""
import io
import os

from netlab import pods, state
from netlab.model import parse_lab
from netlab.progress import Progress

LAB = """
apiVersion: netlab.dev/v1alpha1
kind: Lab
metadata: {name: demo}
spec:
  nodes: [{name: node-a}, {name: node-b}]
  manifests:
    - apiVersion: v1
      kind: Pod
      metadata: {name: web, namespace: shop}
      spec:
        containers:
          - name: web
            ports: [{containerPort: 8080}, {containerPort: 53, protocol: UDP}]
          - name: tool
            command: [sleep]
            args: ["600"]
            env:
              - {name: MODE, value: test}
              - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
              - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
"""


def test_lab_paths_layout(tmp_path):
    p = state.LabPaths("demo", root=str(tmp_path))
    assert p.store == f"{tmp_path}/demo/state.db"
    assert p.subnet_env("node-a") == f"{tmp_path}/demo/nodes/node-a/subnet.env"
    assert p.pod_dir("demo-shop.web") == f"{tmp_path}/demo/pods/shop.web"
    os.makedirs(p.dir)
    open(p.store, "w").close()
    assert state.list_labs(str(tmp_path)) == ["demo"]
    p.remove()
    assert not os.path.exists(tmp_path)  # the last lab out removes the root too


def test_write_file_is_atomic_and_complete(tmp_path):
    path = tmp_path / "nodes" / "a" / "subnet.env"
    state.write_file(str(path), "FLANNEL_SUBNET=10.244.1.1/24\n")
    assert path.read_text() == "FLANNEL_SUBNET=10.244.1.1/24\n"
    assert [f.name for f in path.parent.iterdir()] == ["subnet.env"]


def test_node_cni_config_is_flannels_bridge_delegate():
    lab = parse_lab(LAB)
    conf = pods.cni_conf(lab, "node-a", "10.244.1.0/24", 1450)
    assert conf["name"] == "demo-node-a" and conf["type"] == "netlab-bridge" and conf["bridge"] == "cni0"
    assert conf["isDefaultGateway"] and conf["hairpinMode"] and not conf["ipMasq"] and conf["mtu"] == 1450
    assert conf["ipam"] == {"type": "netlab-ipam", "ranges": [[{"subnet": "10.244.1.0/24"}]]}


def test_container_command_lines_and_env():
    lab = parse_lab(LAB)
    web = next(p for p in lab.pods() if p.name == "web")
    echo, tool = web.containers
    argv = pods._container_argv(web, echo)
    assert argv[1:] == ["-m", "netlab.workload.echo", "--pod", "web", "--tcp", "8080", "--udp", "53"]
    assert pods._container_argv(web, tool) == ["sleep", "600"]
    env = pods._container_env(lab, web.bind("node-b"), tool, "10.244.2.7", "192.168.56.12")
    assert env["MODE"] == "test" and env["HOSTNAME"] == "web" and env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert env["POD_IP"] == "10.244.2.7" and env["NODE"] == "node-b"
    assert pods.container_id(web) == "shop_web"


def test_progress_prints_lines_when_not_a_terminal():
    out = io.StringIO()
    p = Progress(stream=out)
    p.start("pods", 4)
    p.update(2, "2/4 running")
    p.update(2, "2/4 running")  # unchanged: no new line
    p.advance(2)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "[##############..............] 2/4 2/4 running" in lines[1]
    assert "4/4" in lines[2]
