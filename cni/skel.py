"""The plugin entry point every CNI plugin shares: read CNI_* and stdin, run
the command, write the result or the spec's error JSON, exit 0 or 1.

Standard library only, like libcni's pkg/skel.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Callable

from . import spec
from .spec import CniError

# A plugin is a table of command -> handler(conf, attachment) -> result dict or None.
Handlers = dict[str, Callable[[dict, spec.Attachment], "dict | None"]]


def execute(handlers: Handlers, env, stdin: bytes) -> tuple[int, str]:
    """Run one invocation; returns (exit code, stdout text). Never raises."""
    version = "1.1.0"
    try:
        att = spec.attachment_from_env(env)
        conf = spec.load_config(stdin, att.command)
        version = conf["cniVersion"]
        if att.command == "VERSION":
            return 0, json.dumps({"cniVersion": version, "supportedVersions": spec.SUPPORTED_VERSIONS})
        handler = handlers.get(att.command)
        if handler is None:  # GC and STATUS without a handler succeed as no-ops, as in skel
            return 0, ""
        result = handler(conf, att)
        if result is None:
            return 0, ""
        return 0, json.dumps(spec.convert_result(result, version))
    except CniError as e:
        return 1, json.dumps(e.to_dict(version))
    except Exception as e:  # an untyped error becomes code 999, as libcni's skel does
        return 1, json.dumps(CniError(spec.INTERNAL, str(e) or type(e).__name__,
                                      type(e).__name__).to_dict(version))


def run(handlers: Handlers) -> int:
    code, out = execute(handlers, os.environ, sys.stdin.buffer.read())
    if out:
        sys.stdout.write(out + "\n")
    return code
