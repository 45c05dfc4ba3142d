"""Kubernetes manifests: parsing as written for a real cluster, ignored
fields, Deployment expansion and stable names, apply/delete helpers, and
every manifest validation error."""
from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from netlab.model import (ContainerPort, Deployment, EnvVar, ModelError, Namespace, Pod, Service, ServicePort,
                          expand, load_manifests, merge_objects, parse_manifests,
                          remove_objects, replica_names)

SAFE = "[bcdfghjklmnpqrstvwxz2456789]"


def parse(text: str, source: str = "m.yaml"):
    return parse_manifests(textwrap.dedent(text).lstrip("\n"), source)


def problems_of(text: str, source: str = "m.yaml"):
    with pytest.raises(ModelError) as ei:
        parse(text, source)
    return ei.value.problems


def error(text: str, path: str, *fragments: str):
    probs = problems_of(text)
    found = [p for p in probs if p.path == path]
    assert found, f"no problem at {path!r}; got:\n" + "\n".join(map(str, probs))
    p = found[0]
    assert p.source == "m.yaml" and p.line is not None
    for frag in fragments:
        assert frag in p.message, f"{frag!r} not in {p.message!r}"
    return p


def deployment(replicas=3, extra_spec="", name="echo", labels="{app: echo}", container_extra=""):
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {labels}}}
    spec:
      {extra_spec}
      containers:
      - name: echo
        image: nginx:1.25
        ports: [{{containerPort: 8080}}]{container_extra}
"""


# --- parsing ------------------------------------------------------------------

REAL_WORLD_POD = """
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: default
  labels: {app: web, app.kubernetes.io/name: web}
  annotations: {note: "ignored"}
  uid: 1234
  creationTimestamp: "2024-01-01T00:00:00Z"
spec:
  nodeName: node-a
  hostname: www
  subdomain: sub
  restartPolicy: OnFailure
  serviceAccountName: default
  terminationGracePeriodSeconds: 5
  tolerations: [{operator: Exists}]
  affinity: {nodeAffinity: {}}
  securityContext: {runAsUser: 1000}
  volumes: [{name: data, emptyDir: {}}]
  initContainers: [{name: init, image: busybox}]
  containers:
  - name: app
    image: nginx:1.25
    imagePullPolicy: IfNotPresent
    command: [python3, -m, http.server]
    args: ["8080"]
    workingDir: /tmp
    resources: {limits: {cpu: 100m, memory: 64Mi}}
    livenessProbe: {httpGet: {path: /, port: 8080}}
    readinessProbe: {tcpSocket: {port: 8080}}
    volumeMounts: [{name: data, mountPath: /data}]
    securityContext: {privileged: false}
    env:
    - {name: GREETING, value: hello}
    - name: POD_IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    ports:
    - {name: http, containerPort: 8080, protocol: TCP}
    - {name: dns, containerPort: 53, protocol: UDP}
  - name: sidecar
    image: busybox
    args: [sleep, "3600"]
status:
  phase: Running
"""


def test_real_world_pod_with_ignored_fields():
    [pod] = parse(REAL_WORLD_POD)
    assert isinstance(pod, Pod)
    assert (pod.name, pod.namespace, pod.key) == ("web", "default", "default/web")
    assert pod.labels == {"app": "web", "app.kubernetes.io/name": "web"}
    assert pod.node_name == "node-a"
    assert pod.hostname == "www"
    assert pod.spec.subdomain == "sub" and pod.spec.restart_policy == "OnFailure"
    app, sidecar = pod.containers
    assert app.command == ("python3", "-m", "http.server") and app.args == ("8080",)
    assert app.argv == ("python3", "-m", "http.server", "8080")
    assert app.working_dir == "/tmp"
    assert app.env == (EnvVar("GREETING", "hello"), EnvVar("POD_IP", None, "status.podIP"))
    assert app.ports == (ContainerPort(8080, "TCP", "http"), ContainerPort(53, "UDP", "dns"))
    assert not app.runs_echo_server
    assert sidecar.argv == ("sleep", "3600")   # args alone are the command: there is no image entrypoint
    assert pod.netns("demo") == "demo-default.web"


def test_defaults_of_a_minimal_pod():
    [pod] = parse("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, "
                  "ports: [{containerPort: 80}]}]}\n")
    assert pod.namespace == "default" and pod.labels == {}
    assert pod.node_name is None and pod.spec.node_selector == {}
    assert pod.spec.dns_policy == "ClusterFirst" and pod.spec.restart_policy == "Always"
    assert pod.containers[0].ports == (ContainerPort(80, "TCP", None),)
    assert pod.containers[0].runs_echo_server
    assert pod.hostname == "p"


def test_multi_document_files_skip_empty_documents_and_read_lists():
    text = """
    ---
    apiVersion: v1
    kind: Namespace
    metadata: {name: web}
    ---
    ---
    # just a comment
    ---
    apiVersion: v1
    kind: List
    items:
    - apiVersion: v1
      kind: Pod
      metadata: {name: a, namespace: web}
      spec: {containers: [{name: c}]}
    - apiVersion: v1
      kind: Pod
      metadata: {name: b, namespace: web}
      spec: {containers: [{name: c}]}
    """
    objs = parse(text)
    assert [(o.kind, o.name) for o in objs] == [("Namespace", "web"), ("Pod", "a"), ("Pod", "b")]
    assert isinstance(objs[0], Namespace) and objs[0].namespace is None


def test_json_manifests_parse():
    objs = parse(json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "j"},
                             "spec": {"containers": [{"name": "c"}]}}))
    assert objs[0].name == "j"


def test_services_parse():
    objs = parse("""
    apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: default}
    spec:
      selector: {app: web}
      clusterIP: 10.96.100.1
      clusterIPs: [10.96.100.1]
      ipFamilies: [IPv4]
      sessionAffinity: ClientIP
      sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
      internalTrafficPolicy: Local
      externalIPs: [192.168.56.100]
      ports:
      - {name: http, port: 80, targetPort: http}
      - {name: dns, port: 53, targetPort: "5353", protocol: UDP, appProtocol: dns}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: np}
    spec:
      type: NodePort
      externalTrafficPolicy: Local
      selector: {app: web}
      ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: headless}
    spec: {clusterIP: None, selector: {app: web}}
    """)
    web, np_, headless = objs
    assert isinstance(web, Service)
    assert web.type == "ClusterIP" and web.cluster_ip == "10.96.100.1"
    assert web.ports == (ServicePort(80, "http", "TCP", "http"), ServicePort(53, 5353, "UDP", "dns"))
    assert web.session_affinity == "ClientIP" and web.session_affinity_timeout == 60
    assert web.internal_traffic_policy == "Local" and web.external_ips == ("192.168.56.100",)
    assert np_.type == "NodePort" and np_.ports[0].node_port == 30080 and np_.external_traffic_policy == "Local"
    assert np_.ports[0].target_port == 8080 and np_.cluster_ip is None
    assert np_.session_affinity == "None" and np_.session_affinity_timeout == 10800
    assert headless.headless and headless.ports == ()


def test_service_target_port_defaults_to_port():
    [svc] = parse("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n")
    assert svc.ports[0].target_port == 80 and svc.ports[0].protocol == "TCP"


def test_to_dict_round_trips_every_kind():
    objs = parse(REAL_WORLD_POD) + parse(deployment(extra_spec="nodeSelector: {zone: a}")) + parse("""
    apiVersion: v1
    kind: Service
    metadata: {name: np, labels: {tier: x}}
    spec:
      type: NodePort
      selector: {app: web}
      sessionAffinity: ClientIP
      ports: [{name: a, port: 80, targetPort: 8080, nodePort: 30080}, {name: b, port: 81, protocol: UDP}]
    ---
    apiVersion: v1
    kind: Namespace
    metadata: {name: web, labels: {team: x}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: d}
    spec:
      dnsPolicy: None
      dnsConfig: {nameservers: [1.1.1.1], searches: [a.example], options: [{name: ndots, value: "2"}, {name: edns0}]}
      containers: [{name: c}]
    """)
    for obj in objs:
        d = json.loads(json.dumps(obj.to_dict()))
        [again] = parse_manifests(yaml.safe_dump(d))
        assert again == obj, obj.kind


def test_generated_pods_round_trip_with_their_owner():
    dep = parse(deployment())[0]
    pod = dep.pods()[0].bind("node-a")
    [again] = parse_manifests(json.dumps(pod.to_dict()))
    assert again == pod and again.owner.name == "echo" and again.node_name == "node-a"


# --- Deployments ----------------------------------------------------------------

def test_deployment_expands_into_kubernetes_style_names():
    dep = parse(deployment(replicas=3))[0]
    assert isinstance(dep, Deployment)
    assert dep.replicas == 3 and dep.selector.match_labels == {"app": "echo"}
    pods = dep.pods()
    assert len(pods) == 3 and len({p.name for p in pods}) == 3
    thash = dep.template_hash
    assert re.fullmatch(f"{SAFE}{{10}}", thash)
    assert dep.replica_set_name == f"echo-{thash}"
    for p in pods:
        assert re.fullmatch(f"echo-{thash}-{SAFE}{{5}}", p.name), p.name
        assert p.labels == {"app": "echo", "pod-template-hash": thash}
        assert p.owner.kind == "Deployment" and p.owner.name == "echo"
        assert p.namespace == "default" and p.node_name is None


def test_names_are_stable_across_reparsing_and_formatting():
    a = parse(deployment()).pop().pods()
    b = parse(deployment()).pop().pods()
    assert [p.name for p in a] == [p.name for p in b]
    # block style, other key order, another image, ignored fields: same template as far as we care
    other = parse("""
    kind: Deployment
    apiVersion: apps/v1
    metadata:
      name: echo
      annotations: {x: y}
    spec:
      strategy: {type: RollingUpdate}
      template:
        spec:
          containers:
          - image: httpd
            ports:
            - containerPort: 8080
              protocol: TCP
            resources: {}
            name: echo
        metadata:
          labels:
            app: echo
      selector:
        matchLabels:
          app: echo
      replicas: 3
    """)[0].pods()
    assert [p.name for p in other] == [p.name for p in a]


def test_template_changes_rename_pods_but_replicas_do_not():
    base = parse(deployment(replicas=2))[0]
    assert parse(deployment(replicas=5))[0].template_hash == base.template_hash
    changed = [deployment(labels="{app: echo, v: '2'}"), deployment(extra_spec="nodeName: n1"),
               deployment(container_extra="\n        command: [sleep, '1']")]
    for text in changed:
        assert parse(text)[0].template_hash != base.template_hash


def test_scaling_up_appends_and_scaling_down_drops_the_last():
    names3 = [p.name for p in parse(deployment(replicas=3))[0].pods()]
    names5 = [p.name for p in parse(deployment(replicas=5))[0].pods()]
    names1 = [p.name for p in parse(deployment(replicas=1))[0].pods()]
    assert names5[:3] == names3
    assert names1 == names3[:1]
    assert parse(deployment(replicas=0))[0].pods() == []


def test_default_replicas_is_one():
    text = deployment().replace("  replicas: 3\n", "")
    assert parse(text)[0].replicas == 1


def test_replica_names_are_unique_at_scale():
    names = replica_names("web-bcdfghjklm", 3000)
    assert len(set(names)) == 3000
    assert names[:10] == replica_names("web-bcdfghjklm", 10)


def test_long_deployment_names_are_cut_like_generate_name():
    long = "a" * 60
    dep = parse(deployment(name=long))[0]
    for p in dep.pods():
        assert len(p.name) == 63 and len(p.hostname) == 63


def test_match_expressions():
    dep = parse(deployment().replace("selector: {matchLabels: {app: echo}}", textwrap.dedent("""\
        selector:
            matchExpressions:
            - {key: app, operator: In, values: [echo, web]}
            - {key: tier, operator: DoesNotExist}""").replace("\n", "\n  ")))[0]
    sel = dep.selector
    assert sel.matches({"app": "echo"}) and not sel.matches({"app": "db"})
    assert not sel.matches({"app": "echo", "tier": "x"})


def test_expand_keeps_declaration_order():
    objs = parse(deployment(replicas=2) + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: solo}\n"
                 "spec: {containers: [{name: c}]}\n")
    pods = expand(objs)
    assert [p.name for p in pods][2] == "solo" and len(pods) == 3


# --- apply / delete -------------------------------------------------------------

def test_merge_and_remove_objects():
    ns = parse("apiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n")
    d3 = parse(deployment(replicas=3))
    d5 = parse(deployment(replicas=5))
    pod = parse("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: web}\nspec: {containers: [{name: c}]}\n")
    cur = merge_objects([], ns + d3 + pod)
    assert [o.name for o in cur] == ["web", "echo", "p"]
    cur = merge_objects(cur, d5)
    assert len(cur) == 3 and cur[1].replicas == 5      # replaced in place
    assert [o.name for o in remove_objects(cur, d3)] == ["web", "p"]   # contents do not matter
    assert [o.name for o in remove_objects(cur, ns)] == ["echo"]      # a namespace takes its objects along


# --- loading --------------------------------------------------------------------

def test_load_manifests_from_path_text_and_directory(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text(deployment())
    assert load_manifests(f)[0].name == "echo"
    assert load_manifests(str(f))[0].name == "echo"
    assert load_manifests(deployment())[0].name == "echo"
    (tmp_path / "e.yml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
    assert [o.kind for o in load_manifests(tmp_path)] == ["Deployment", "Namespace"]
    with pytest.raises(ModelError, match="no such file"):
        load_manifests(str(tmp_path / "missing.yaml"))
    with pytest.raises(ModelError, match="no such file"):
        load_manifests(tmp_path / "missing.yaml")


def test_problems_from_several_files_are_reported_together(tmp_path):
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: A}\nspec: {containers: [{name: c}]}\n")
    (tmp_path / "b.yaml").write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n")
    with pytest.raises(ModelError) as ei:
        load_manifests(tmp_path)
    sources = [Path(p.source).name for p in ei.value.problems]
    assert sources == ["a.yaml", "b.yaml"]


def test_duplicate_objects_in_one_file():
    p = error(deployment() + "---\n" + deployment(), "metadata.name", 'Deployment "echo" is already defined at m.yaml')
    assert p.line == 19


# --- validation errors ------------------------------------------------------------

POD = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n"


def test_unknown_kind_and_wrong_api_version():
    error("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "kind", '"ConfigMap" is not supported',
          "Namespace, Pod, Deployment, Service")
    error(deployment().replace("apps/v1", "extensions/v1beta1"), "apiVersion", '"extensions/v1beta1"',
          "use apiVersion: apps/v1")
    error("metadata: {name: x}\n", "kind", "missing", "kind: Deployment")
    error("kind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: c}]}\n", "apiVersion", "missing")


def test_documents_must_be_mappings():
    p = problems_of("- a\n- b\n")[0]
    assert "is a list" in p.message and "separate objects with ---" in p.message


def test_yaml_errors_have_lines():
    p = problems_of("apiVersion: v1\nkind: Pod\nmetadata:\n  name: [p\n")[0]
    assert p.line is not None and "YAML syntax error" in p.message


@pytest.mark.parametrize("text, path, fragments", [
    (POD.replace("name: p", "name: P_1"), "metadata.name", ['"P_1"', "RFC 1123 subdomain"]),
    (POD.replace("{name: p}", "{}"), "metadata.name", ["missing", "metadata.name"]),
    (POD.replace("{name: p}", "{name: p, namespace: Web}"), "metadata.namespace", ["RFC 1123 label"]),
    (POD.replace("{name: p}", "{name: p, labels: {app: 'a b'}}"), "metadata.labels.app", ["label value"]),
    (POD.replace("{name: p}", "{name: p, labels: {'-x': a}}"), 'metadata.labels["-x"]', ["label key"]),
    (POD.replace("{name: p}", "{name: p, labels: {v: 1}}"), "metadata.labels.v", ["quote it", 'v: "1"']),
    (POD.replace("spec:\n  containers:\n  - name: c\n", "spec: {}\n"), "spec.containers",
     ["missing", "at least one container"]),
    (POD.replace("  containers:\n  - name: c\n", "  containers: []\n"), "spec.containers", ["is empty"]),
    (POD.replace("- name: c", "- name: C"), "spec.containers[0].name", ["RFC 1123 label"]),
    (POD.replace("- name: c", "- image: x"), "spec.containers[0].name", ["missing"]),
    (POD + "  - name: c\n", "spec.containers[1].name", ["used by another container"]),
    (POD + "    ports: [{containerPort: 0}]\n", "spec.containers[0].ports[0].containerPort",
     ["0 is out of range", "from 1 to 65535"]),
    (POD + "    ports: [{containerPort: 65536}]\n", "spec.containers[0].ports[0].containerPort", ["out of range"]),
    (POD + "    ports: [{containerPort: '80'}]\n", "spec.containers[0].ports[0].containerPort",
     ["is a string, expected an integer"]),
    (POD + "    ports: [{protocol: TCP}]\n", "spec.containers[0].ports[0].containerPort", ["missing"]),
    (POD + "    ports: [{containerPort: 80, protocol: tcp}]\n", "spec.containers[0].ports[0].protocol",
     ['"tcp"', "use TCP"]),
    (POD + "    ports: [{containerPort: 80, protocol: SCTP}]\n", "spec.containers[0].ports[0].protocol",
     ['"SCTP" is not supported', "TCP or UDP"]),
    (POD + "    ports: [{containerPort: 80, name: HTTP}]\n", "spec.containers[0].ports[0].name", ["IANA"]),
    (POD + "    ports: [{containerPort: 80, name: a-very-long-port-name}]\n", "spec.containers[0].ports[0].name",
     ["at most 15"]),
    (POD + "    ports: [{containerPort: 80, name: web}, {containerPort: 81, name: web}]\n",
     "spec.containers[0].ports[1].name", ["used twice"]),
    (POD + "    ports: [{containerPort: 80, hostPort: 80}]\n", "spec.containers[0].ports[0].hostPort",
     ["not supported", "NodePort Service"]),
    (POD + "    ports: [{containerPort: 80, contanerPort: 81}]\n", "spec.containers[0].ports[0].contanerPort",
     ["did you mean containerPort?"]),
    (POD + "    comand: [sh]\n", "spec.containers[0].comand", ["did you mean command?"]),
    (POD + "    command: [{a: b}]\n", "spec.containers[0].command[0]", ["expected a string"]),
    (POD + "    env: [{name: 1X, value: a}]\n", "spec.containers[0].env[0].name", ["environment variable"]),
    (POD + "    env: [{name: X, value: 1}]\n", "spec.containers[0].env[0].value", ["quote it"]),
    (POD + "    env: [{name: X, valueFrom: {secretKeyRef: {name: s, key: k}}}]\n",
     "spec.containers[0].env[0].valueFrom", ["only valueFrom.fieldRef"]),
    (POD + "    env: [{name: X, valueFrom: {fieldRef: {fieldPath: spec.foo}}}]\n",
     "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath", ["not a supported field", "status.podIP"]),
    (POD + "  hostNetwork: true\n", "spec.hostNetwork", ["not supported", "remove hostNetwork"]),
    (POD + "  restartPolicy: Sometimes\n", "spec.restartPolicy", ["Always, OnFailure, Never"]),
    (POD + "  dnsPolicy: Custom\n", "spec.dnsPolicy", ['"Custom"', "ClusterFirst"]),
    (POD + "  dnsPolicy: None\n", "spec.dnsConfig", ["needs dnsConfig.nameservers"]),
    (POD + "  dnsConfig: {nameservers: [dns.example]}\n", "spec.dnsConfig.nameservers[0]", ["not an IPv4 address"]),
    (POD + "  nodeName: Node_A\n", "spec.nodeName", ["RFC 1123 label"]),
    (POD + "  nodeSelector: {zone: 'a b'}\n", "spec.nodeSelector.zone", ["label value"]),
    (POD + "  contianers: []\n", "spec.contianers", ["did you mean containers?"]),
    (POD.replace("{name: p}", "{name: p, namspace: x}"), "metadata.namspace", ["did you mean namespace?"]),
])
def test_pod_errors(text, path, fragments):
    error(text, path, *fragments)


def test_pod_name_too_long_for_a_namespace_file_name():
    name = ".".join(["a" * 60] * 4)   # a valid 243-character subdomain
    error(POD.replace("{name: p}", f"{{name: {name}, namespace: {'n' * 20}}}"), "metadata.name",
          "at most 243", "file name")


@pytest.mark.parametrize("text, path, fragments", [
    (deployment(replicas=-1), "spec.replicas", ["-1 is out of range", "0 or more"]),
    (deployment(replicas="'3'"), "spec.replicas", ['"3" is a string, expected an integer']),
    (deployment().replace("  replicas: 3\n", "  replica: 3\n"), "spec.replica", ["did you mean replicas?"]),
    (deployment().replace("  selector: {matchLabels: {app: echo}}\n", ""), "spec.selector",
     ["missing", "matchLabels"]),
    (deployment().replace("{matchLabels: {app: echo}}", "{}"), "spec.selector", ["is empty"]),
    (deployment(labels="{app: other}"), "spec.selector", ["does not match the template's labels",
                                                          "spec.template.metadata.labels"]),
    (deployment().replace("{matchLabels: {app: echo}}", "{matchExpressions: [{key: app, operator: Has}]}"),
     "spec.selector.matchExpressions[0].operator", ['"Has"', "In, NotIn, Exists or DoesNotExist"]),
    (deployment(extra_spec="restartPolicy: Never"), "spec.template.spec.restartPolicy",
     ["must use Always"]),
    (deployment().replace("  template:", "  tmplate:"), "spec.template", ["missing"]),
    (deployment(container_extra="\n        ports: [{containerPort: 99999}]"),
     "spec.template.spec.containers[0].ports", ["duplicate key"]),
])
def test_deployment_errors(text, path, fragments):
    if path.endswith(".ports") and "duplicate key" in fragments:
        p = problems_of(text)[0]   # a YAML-level error: no field path, but the line
        assert "duplicate key" in p.message and p.line == 15
        return
    p = error(text, path, *fragments)
    assert p.subject == 'Deployment "echo"' or path.startswith("metadata")


SVC = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n"


@pytest.mark.parametrize("text, path, fragments", [
    (SVC + "  type: LoadBalancer\n  ports: [{port: 80}]\n", "spec.type", ['"LoadBalancer" is not supported',
                                                                         "ClusterIP, NodePort or ExternalName"]),
    (SVC + "  selector: {app: x}\n", "spec.ports", ["missing", "at least one port"]),
    (SVC + "  ports: [{port: 80}, {port: 81}]\n", "spec.ports[0].name", ["must name each one"]),
    (SVC + "  ports: [{name: a, port: 80}, {name: a, port: 81}]\n", "spec.ports[1].name", ["names two ports"]),
    (SVC + "  ports: [{name: a, port: 80}, {name: b, port: 80}]\n", "spec.ports[1].port", ["80/TCP is listed twice"]),
    (SVC + "  ports: [{port: 0}]\n", "spec.ports[0].port", ["out of range"]),
    (SVC + "  ports: [{port: 80, targetPort: 70000}]\n", "spec.ports[0].targetPort", ["out of range"]),
    (SVC + "  ports: [{port: 80, targetPort: Web_Port}]\n", "spec.ports[0].targetPort", ["IANA"]),
    (SVC + "  ports: [{port: 80, targetPort: [1]}]\n", "spec.ports[0].targetPort", ["not a port"]),
    (SVC + "  ports: [{port: 80, nodePort: 30080}]\n", "spec.ports[0].nodePort", ["only NodePort Services",
                                                                                 "type: NodePort"]),
    (SVC + "  ports: [{port: 80, protocol: ICMP}]\n", "spec.ports[0].protocol", ["TCP or UDP"]),
    (SVC + "  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n", "spec.clusterIP", ["not an IPv4 address",
                                                                                  "remove it"]),
    (SVC + "  type: NodePort\n  clusterIP: None\n  ports: [{port: 80}]\n", "spec.clusterIP", ["headless"]),
    (SVC + "  sessionAffinity: Cookie\n  ports: [{port: 80}]\n", "spec.sessionAffinity", ["None or ClientIP"]),
    (SVC + "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n  ports: [{port: 80}]\n",
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds", ["from 1 to 86400"]),
    (SVC + "  externalTrafficPolicy: Local\n  ports: [{port: 80}]\n", "spec.externalTrafficPolicy",
     ["only to NodePort"]),
    (SVC + "  internalTrafficPolicy: Nearest\n  ports: [{port: 80}]\n", "spec.internalTrafficPolicy",
     ["Cluster or Local"]),
    (SVC + "  externalIPs: [a.b.c.d]\n  ports: [{port: 80}]\n", "spec.externalIPs[0]", ["not an IPv4 address"]),
    (SVC.replace("{name: s}", "{name: 1svc}") + "  ports: [{port: 80}]\n", "metadata.name",
     ["must start with a letter"]),
])
def test_service_errors(text, path, fragments):
    error(text, path, *fragments)


def test_namespace_errors():
    error("apiVersion: v1\nkind: Namespace\nmetadata: {name: web, namespace: x}\n", "metadata.namespace",
          "not namespaced")
    error("apiVersion: v1\nkind: Namespace\nmetadata: {name: web.x}\n", "metadata.name", "RFC 1123 label")


def test_every_problem_of_a_file_at_once():
    probs = problems_of(POD.replace("- name: c", "- name: C") + "    ports: [{containerPort: 0}]\n"
                        "---\n" + deployment(replicas=-1))
    assert len(probs) == 3
    assert [p.line for p in probs] == sorted(p.line for p in probs)
