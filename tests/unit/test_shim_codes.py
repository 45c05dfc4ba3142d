"""The shim's pure parts: exit codes as the kubelet reports them, and the echo container's
arguments (its ports by protocol)."""
from __future__ import annotations

import os
import signal

from netlab.pods import _echo_args
from netlab.shim import exit_code


def test_exit_codes_are_the_status_or_128_plus_the_signal():
    assert exit_code(os.CLD_EXITED, 0) == 0
    assert exit_code(os.CLD_EXITED, 3) == 3
    assert exit_code(os.CLD_KILLED, signal.SIGKILL) == 137
    assert exit_code(os.CLD_KILLED, signal.SIGTERM) == 143
    assert exit_code(os.CLD_DUMPED, signal.SIGSEGV) == 139


class Port:
    def __init__(self, port, protocol):
        self.container_port, self.protocol = port, protocol


class Container:
    def __init__(self, ports, echo=True):
        self.ports, self.runs_echo_server = ports, echo


def test_the_echo_container_gets_its_tcp_and_udp_ports_and_a_command_none():
    assert _echo_args(Container([Port(8080, "TCP"), Port(8080, "UDP"), Port(9090, "TCP")])) == {
        "tcp": [8080, 9090], "udp": [8080]}
    assert _echo_args(Container([Port(53, "UDP")], echo=False)) is None
