"""The heartbeat controller: the kubelet's node Lease. Every HEARTBEAT_SECONDS it rewrites
/netlab/heartbeats/<node> with a TTL of HEARTBEAT_TTL; while the key exists the node's
agent is alive, for the CLI and the engine on any machine and with either store backend
(no pid file needed). A write that fails (the store unreachable) is retried by the runner
and shows as the node's failure; the key expires on its own when the agent is gone.
"""
from __future__ import annotations

import os
import socket

from ..state import HEARTBEAT_SECONDS, HEARTBEAT_TTL, NodeHeartbeat
from .controller import Controller


class HeartbeatController(Controller):
    name = "heartbeat"
    prefixes = ()
    resync_seconds = HEARTBEAT_SECONDS

    def __init__(self, agent, *, ttl: float = HEARTBEAT_TTL):
        super().__init__(agent)
        self.ttl = ttl

    def sync(self, full: bool) -> None:
        self.state.put_heartbeat(NodeHeartbeat(self.node.name, socket.gethostname(), os.getpid(), self.clock(),
                                               self.ttl, host_mode=getattr(self.agent, "host_mode", False)))
