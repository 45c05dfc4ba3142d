"""Facts of the CNI specification (1.0.0 and 1.1.0): versions, error codes,
environment variables and the validation rules libcni applies.

Standard library only: this module is on every exec'd plugin's path.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
# GC and STATUS exist from 1.1.0 on (libcni's skel runs them only then).
GC_STATUS_MIN_VERSION = "1.1.0"

# Error codes, SPEC.md "Error" section.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
CONTAINER_UNKNOWN = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
NOT_AVAILABLE_LIMITED = 51
# 100+ are free for plugins; ours:
CHECK_MISMATCH = 100
DUPLICATE_ALLOCATION = 101  # a second ADD for the same (containerID, ifname)
INTERNAL = 999  # what libcni's skel reports for an untyped error

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")

# libcni pkg/utils: container IDs and network names.
_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
IFNAME_MAX = 15  # IFNAMSIZ - 1


class CniError(Exception):
    """An error the plugin reports as the spec's error JSON."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str = "1.1.0") -> dict:
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in v.split("."))
    except (AttributeError, ValueError):
        raise CniError(INCOMPATIBLE_VERSION, f"invalid cniVersion {v!r}",
                       f"use one of {', '.join(SUPPORTED_VERSIONS)}") from None


def check_version(v) -> str:
    if not isinstance(v, str) or not v:
        raise CniError(INVALID_CONFIG, "cniVersion is missing",
                       f'add "cniVersion": "1.0.0" (supported: {", ".join(SUPPORTED_VERSIONS)})')
    if v not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"incompatible CNI version {v!r}",
                       f"this plugin supports {', '.join(SUPPORTED_VERSIONS)}")
    return v


def validate_container_id(cid: str) -> None:
    if not cid:
        raise CniError(INVALID_ENV, "CNI_CONTAINERID is empty", "set CNI_CONTAINERID to the container's ID")
    if not _ID_RE.match(cid):
        raise CniError(INVALID_ENV, f"CNI_CONTAINERID {cid!r} is invalid",
                       "it must start with a letter or digit, followed by letters, digits, '_', '.' or '-'")


def validate_network_name(name) -> None:
    if not isinstance(name, str) or not name:
        raise CniError(INVALID_CONFIG, "network config has no 'name'", 'add "name": "<network name>"')
    if not _ID_RE.match(name):
        raise CniError(INVALID_CONFIG, f"network name {name!r} is invalid",
                       "it must start with a letter or digit, followed by letters, digits, '_', '.' or '-'")


def validate_ifname(ifname: str) -> None:
    if not ifname:
        raise CniError(INVALID_ENV, "CNI_IFNAME is empty", "set CNI_IFNAME, e.g. eth0")
    if len(ifname) > IFNAME_MAX:
        raise CniError(INVALID_ENV, f"CNI_IFNAME {ifname!r} is longer than {IFNAME_MAX} characters",
                       "use a shorter interface name")
    if ifname in (".", "..") or any(c in ifname for c in "/:") or any(c.isspace() for c in ifname):
        raise CniError(INVALID_ENV, f"CNI_IFNAME {ifname!r} is not a valid interface name",
                       "it must not be '.' or '..' nor contain '/', ':' or whitespace")


@dataclass
class Attachment:
    """Who the call is about: the CNI_* environment of one invocation."""
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict = field(default_factory=dict)   # CNI_ARGS, parsed
    path: list = field(default_factory=list)   # CNI_PATH, split


def parse_cni_args(raw: str) -> dict:
    out = {}
    for pair in filter(None, raw.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS has a malformed pair {pair!r}", "use KEY=VALUE;KEY2=VALUE2")
        out[key] = value
    return out


def attachment_from_env(env=None) -> Attachment:
    """Read and validate the CNI_* variables the spec requires for the command."""
    env = os.environ if env is None else env
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND {command!r} is not a CNI operation",
                       f"set CNI_COMMAND to one of {', '.join(COMMANDS)}")
    att = Attachment(command=command,
                     container_id=env.get("CNI_CONTAINERID", ""),
                     netns=env.get("CNI_NETNS", ""),
                     ifname=env.get("CNI_IFNAME", ""),
                     args=parse_cni_args(env.get("CNI_ARGS", "")),
                     path=[p for p in env.get("CNI_PATH", "").split(":") if p])
    if command in ("ADD", "DEL", "CHECK"):
        validate_container_id(att.container_id)
        validate_ifname(att.ifname)
    if command in ("ADD", "CHECK") and not att.netns:
        raise CniError(INVALID_ENV, f"CNI_NETNS is required for {command}",
                       "set CNI_NETNS to the container's network namespace path, e.g. /run/netns/<name>")
    return att


def load_config(raw: bytes | str | dict, command: str = "ADD") -> dict:
    """Decode and validate the stdin network configuration."""
    if isinstance(raw, dict):
        conf = raw
    else:
        try:
            conf = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise CniError(DECODE_FAILURE, "failed to decode the network configuration on stdin",
                           f"stdin must be one JSON object: {e}") from None
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, "network configuration must be a JSON object",
                       f"got {type(conf).__name__}")
    version = check_version(conf.get("cniVersion"))
    if command == "VERSION":
        return conf
    validate_network_name(conf.get("name"))
    if not isinstance(conf.get("type"), str) or not conf["type"]:
        raise CniError(INVALID_CONFIG, "network config has no 'type'", 'add "type": "<plugin name>"')
    if command in ("GC", "STATUS") and version_tuple(version) < version_tuple(GC_STATUS_MIN_VERSION):
        raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion {GC_STATUS_MIN_VERSION} or later",
                       f"the config says {version}")
    return conf


def valid_attachments(conf: dict) -> set[tuple[str, str]]:
    """The GC input: cni.dev/valid-attachments (spec main) or cni.dev/attachments (tag v1.1.0)."""
    items = conf.get("cni.dev/valid-attachments")
    if items is None:
        items = conf.get("cni.dev/attachments", [])
    if not isinstance(items, list):
        raise CniError(INVALID_CONFIG, "cni.dev/valid-attachments must be a list",
                       'use [{"containerID": "...", "ifname": "..."}]')
    out = set()
    for it in items:
        if not isinstance(it, dict) or "containerID" not in it or "ifname" not in it:
            raise CniError(INVALID_CONFIG, f"invalid entry in cni.dev/valid-attachments: {it!r}",
                           'each entry needs "containerID" and "ifname"')
        out.add((it["containerID"], it["ifname"]))
    return out


def convert_result(result: dict, version: str) -> dict:
    """Render a 1.x-shaped result for the requested cniVersion (0.3.x/0.4.0 add ips[].version)."""
    out = dict(result)
    out["cniVersion"] = version
    if version_tuple(version) < (1, 0, 0):
        ips = []
        for ip in result.get("ips", []):
            ip = dict(ip)
            ip["version"] = "6" if ":" in ip["address"] else "4"
            ips.append(ip)
        out["ips"] = ips
    return out
