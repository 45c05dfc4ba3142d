"""Calling the IPAM plugin named by `ipam.type`, as the spec says: exec it
from CNI_PATH with the same stdin and the command's environment. Our own
netlab-ipam is called in-process instead (same code, no exec).
"""
from __future__ import annotations

import json
import os
import subprocess

from . import spec
from .spec import CniError

IN_PROCESS = "netlab-ipam"


def ipam_type(conf: dict) -> str:
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict) or not isinstance(ipam.get("type"), str) or not ipam["type"]:
        raise CniError(spec.INVALID_CONFIG, "network config has no ipam.type",
                       'add "ipam": {"type": "netlab-ipam", "ranges": [[{"subnet": "10.244.1.0/24"}]]}')
    return ipam["type"]


def find_plugin(name: str, path: list[str]) -> str:
    if "/" in name:
        raise CniError(spec.INVALID_CONFIG, f"ipam.type {name!r} must be a plugin name, not a path",
                       "put the plugin in a CNI_PATH directory and name it")
    for d in path:
        candidate = os.path.join(d, name)
        if os.access(candidate, os.X_OK):
            return candidate
    raise CniError(spec.INVALID_CONFIG, f"IPAM plugin {name!r} not found in CNI_PATH {':'.join(path)!r}",
                   f"install {name} into one of the CNI_PATH directories or fix ipam.type")


def ipam(command: str, conf: dict, att: spec.Attachment) -> dict | None:
    """Run the IPAM plugin for command; returns its parsed result (ADD) or None."""
    name = ipam_type(conf)
    if name == IN_PROCESS:
        from .ipam import hostlocal
        return hostlocal.HANDLERS[command](conf, att)
    exe = find_plugin(name, att.path)
    env = dict(os.environ)
    env.update({"CNI_COMMAND": command, "CNI_CONTAINERID": att.container_id, "CNI_NETNS": att.netns,
                "CNI_IFNAME": att.ifname, "CNI_PATH": ":".join(att.path),
                "CNI_ARGS": ";".join(f"{k}={v}" for k, v in att.args.items())})
    proc = subprocess.run([exe], input=json.dumps(conf).encode(), env=env, capture_output=True)
    out = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0:
        try:
            err = json.loads(out)
            raise CniError(int(err.get("code", spec.INTERNAL)), f"{name}: {err.get('msg', '')}",
                           err.get("details", ""))
        except (ValueError, AttributeError):
            raise CniError(spec.INTERNAL, f"{name} {command} failed",
                           (out or proc.stderr.decode(errors="replace")).strip()) from None
    if command != "ADD":
        return None
    try:
        return json.loads(out)
    except ValueError:
        raise CniError(spec.DECODE_FAILURE, f"{name} returned a result that is not JSON", out) from None
