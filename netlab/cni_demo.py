"""Step-by-step: two pods on one bridge through the netlab-bridge CNI plugin.

Creates a node namespace and two pod namespaces, runs the exec'd plugin as a
container runtime would (CNI_* environment, JSON on stdin), shows what it
built with ordinary tools, pings across the bridge, then DELs and cleans up.
Nothing touches the host's own network namespace.

    sudo .venv/bin/python -m netlab.cni_demo
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

BIN = os.path.dirname(sys.executable)


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def sh(*cmd: str, show: bool = True, check: bool = True, **kw) -> subprocess.CompletedProcess:
    if show:
        print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if show and (proc.stdout or proc.stderr):
        print((proc.stdout + proc.stderr).rstrip(), flush=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return proc


def cni(command: str, node: str, pod: str, conf: dict) -> dict | None:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": pod, "CNI_NETNS": f"/run/netns/{pod}", "CNI_IFNAME": "eth0",
           "CNI_PATH": f"{BIN}:/usr/lib/cni"}
    print(f"$ echo '<conf>' | CNI_COMMAND={command} CNI_CONTAINERID={pod} CNI_NETNS=/run/netns/{pod} "
          f"CNI_IFNAME=eth0 ip netns exec {node} netlab-bridge", flush=True)
    proc = subprocess.run(["ip", "netns", "exec", node, os.path.join(BIN, "netlab-bridge")],
                          input=json.dumps(conf), env=env, text=True, capture_output=True)
    if proc.stdout.strip():
        print(json.dumps(json.loads(proc.stdout), indent=2), flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"netlab-bridge {command} failed: {proc.stderr}")
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def main() -> int:
    if os.geteuid() != 0:
        raise SystemExit("run as root: the demo creates network namespaces")
    tag = f"demo{os.getpid() % 10000}"
    node, pods = f"{tag}-node", [f"{tag}-pod-a", f"{tag}-pod-b"]
    data_dir = tempfile.mkdtemp(prefix="netlab-demo-")
    conf = {"cniVersion": "1.1.0", "name": f"{tag}-net", "type": "netlab-bridge", "bridge": "cni0",
            "isGateway": True, "isDefaultGateway": True, "ipMasq": True, "hairpinMode": True,
            "ipam": {"type": "netlab-ipam", "dataDir": data_dir, "ranges": [[{"subnet": "10.244.1.0/24"}]]}}
    created: list[str] = []
    try:
        step("1. a node and two pods, each its own network namespace")
        for ns in [node, *pods]:
            sh("ip", "netns", "add", ns)
            created.append(ns)
        print("network config on stdin:\n" + json.dumps(conf, indent=2))
        results = []
        for i, pod in enumerate(pods):
            step(f"{2 + i}. CNI ADD for {pod}")
            results.append(cni("ADD", node, pod, conf))
        ips = [r["ips"][0]["address"].split("/")[0] for r in results]

        step("4. what the plugin built (ordinary tools see it)")
        sh("ip", "-n", node, "-br", "link", "show", "master", "cni0")
        sh("ip", "-n", node, "-br", "addr", "show", "cni0")
        sh("ip", "-n", pods[0], "-br", "addr", "show", "eth0")
        sh("ip", "-n", pods[0], "route")
        sh("ip", "netns", "exec", node, "iptables", "-t", "nat", "-S", "POSTROUTING")
        sh("ls", os.path.join(data_dir, conf["name"]))

        step(f"5. {pods[0]} pings {pods[1]} across cni0")
        ok = sh("ip", "netns", "exec", pods[0], "ping", "-c", "3", "-i", "0.2", ips[1], check=False).returncode == 0

        step("6. CNI DEL for both pods: veths, leases and chains go")
        for pod in pods:
            cni("DEL", node, pod, conf)
        sh("ls", os.path.join(data_dir, conf["name"]))
        print("\n" + ("RESULT: two pods on one bridge reached each other" if ok else "RESULT: ping FAILED"))
        return 0 if ok else 1
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
