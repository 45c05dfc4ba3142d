"""The pod runtime's pure parts: exit codes as the kubelet reports them, the restart
backoff, the echo container's arguments (its ports by protocol)."""
from __future__ import annotations

import os
import signal
import subprocess
import time

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


def test_a_process_reads_its_code_from_the_shim_or_is_unknown_once_orphaned(tmp_path, monkeypatch):
    from netlab import pods
    from netlab.model import load_lab
    from netlab.state import LabPaths
    from test_events_agent import TWO_NODE

    rt = pods.PodRuntime(load_lab(TWO_NODE, name="unit"), "node-a", LabPaths("unit", root=str(tmp_path)), {})
    done = subprocess.Popen(["true"])
    done.wait()  # a real pid, dead and reaped: what the agent sees after the shim reaped it
    exit_file = tmp_path / "c.exit"
    p = pods.Proc("c", done.pid, ["true"], str(exit_file))
    assert not p.alive() and rt._exit_code(p) is None     # the shim has not written it yet
    exit_file.write_text("137\n")
    assert rt._exit_code(p) == 137
    orphan = pods.Proc("c", done.pid, ["true"], str(tmp_path / "never.exit"))
    monkeypatch.setattr(pods, "ORPHAN_EXIT_SECONDS", 0.0)
    assert rt._exit_code(orphan) is None                  # seen dead a first time
    time.sleep(0.01)
    assert rt._exit_code(orphan) == pods.UNKNOWN_EXIT     # its shim died: nobody will write it


def test_the_restart_backoff_doubles_with_crashes_and_forgets_them_after_ten_minutes_of_running():
    from netlab.pods import BACKOFF_RESET_SECONDS, CONTAINER_RESTART_BACKOFF, crashes_in_a_row
    crashes, delays = 0, []
    for ran in (0.5, 2.0, 1.0, 3.0, 0.1, 0.1, 0.1):      # quick crashes: 1, 2, 4, 8, 16, 30, 30 s
        crashes = crashes_in_a_row(crashes, ran)
        delays.append(CONTAINER_RESTART_BACKOFF.delay(crashes))
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    crashes = crashes_in_a_row(crashes, BACKOFF_RESET_SECONDS + 1)  # a long run, then an exit: from the start
    assert CONTAINER_RESTART_BACKOFF.delay(crashes) == 1.0
