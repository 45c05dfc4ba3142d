"""A minimal CNI runtime for tests, like libcni/cnitool: exec a plugin (or a
conflist's chain) inside a node namespace with the CNI_* environment."""
from __future__ import annotations

import json
import os
import subprocess
import sys

VENV_BIN = os.path.dirname(sys.executable)
REFERENCE_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
CNI_PATH = f"{VENV_BIN}:{REFERENCE_DIR}"


def exec_plugin(plugin: str, command: str, conf: dict | str, node: str, container_id: str = "",
                netns: str = "", ifname: str = "eth0", extra_env: dict | None = None) -> tuple[int, dict | None]:
    """Run one plugin in the node's namespace; returns (exit code, parsed stdout or None)."""
    exe = plugin if "/" in plugin else next(
        os.path.join(d, plugin) for d in CNI_PATH.split(":") if os.path.exists(os.path.join(d, plugin)))
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
           "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_PATH": CNI_PATH,
           "NETLAB_CNI_SOCKET_DIR": "/nonexistent"}  # no daemon unless a test asks for one
    env.update(extra_env or {})
    stdin = conf if isinstance(conf, str) else json.dumps(conf)
    proc = subprocess.run(["ip", "netns", "exec", node, exe], input=stdin.encode(), env=env,
                          capture_output=True, timeout=60)
    out = proc.stdout.decode().strip()
    return proc.returncode, (json.loads(out) if out else None)


def exec_conflist(command: str, conflist: dict, node: str, container_id: str, netns: str,
                  ifname: str = "eth0", runtime_config: dict | None = None,
                  prev_result: dict | None = None) -> tuple[int, dict | None]:
    """Run a conflist's chain as a runtime does: ADD in order passing prevResult, DEL in reverse."""
    plugins = conflist["plugins"] if command != "DEL" else list(reversed(conflist["plugins"]))
    result = prev_result
    for p in plugins:
        conf = dict(p, cniVersion=conflist["cniVersion"], name=conflist["name"])
        caps = p.get("capabilities", {})
        rc = {k: v for k, v in (runtime_config or {}).items() if caps.get(k)}
        if rc:
            conf["runtimeConfig"] = rc
        conf.pop("capabilities", None)
        if result is not None:
            conf["prevResult"] = result
        code, out = exec_plugin(p["type"], command, conf, node, container_id, netns, ifname)
        if code != 0:
            return code, out
        if command == "ADD":
            result = out
    return 0, result
