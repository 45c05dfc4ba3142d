"""The Vagrant lab without VMs: the Vagrantfile (ruby, `vagrant validate`, the
machines it defines) and scripts/vagrant-provision.sh (bash -n, shellcheck,
its interface choice and argument checks, run from a sourced copy of the
script so nothing on this machine is changed). This machine cannot boot
VirtualBox or libvirt guests; booting is what docs/vagrant.md walks through."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from netlab import state
from netlab.cli import build_parser
from netlab.model.lab import NFTABLES_LAYOUTS, PROXY_MODES

REPO = Path(__file__).resolve().parents[2]
VAGRANTFILE = REPO / "Vagrantfile"
PROVISION = REPO / "scripts" / "vagrant-provision.sh"
SETTINGS = ("NETLAB_NODES", "NETLAB_PROXY_MODE", "NETLAB_NFTABLES_LAYOUT", "NETLAB_BOX", "NETLAB_MEMORY", "NETLAB_CPUS")


def needs(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install {tool})")
    return path


def settings_env(**settings: str) -> dict[str, str]:
    """This process's environment without the Vagrantfile's settings, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(settings)
    return env


# --- the provisioning script ----------------------------------------------------------------

def run_sourced(snippet: str, stdin: str = "") -> subprocess.CompletedProcess:
    """Run snippet in bash after sourcing the provisioning script (which then defines functions only)."""
    return subprocess.run(["bash", "-c", f'source "{PROVISION}"\n{snippet}'], input=stdin,
                          capture_output=True, text=True, timeout=30)


def test_provision_script_parses():
    result = subprocess.run(["bash", "-n", str(PROVISION)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_provision_script_passes_shellcheck():
    result = subprocess.run([needs("shellcheck"), str(PROVISION)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def ip_addr_lines(*interfaces: tuple[str, str]) -> str:
    """`ip -o -4 addr show` as iproute2 prints it, for (ifname, address/prefix) pairs."""
    lines = ["1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever"]
    for index, (ifname, cidr) in enumerate(interfaces, start=2):
        lines.append(f"{index}: {ifname}    inet {cidr} brd 255.255.255.255 scope global {ifname}\\"
                     "       valid_lft forever preferred_lft forever")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("interfaces, address, expected", [
    # VirtualBox: the NAT NIC has the same address on every VM
    ([("eth0", "10.0.2.15/24"), ("eth1", "192.168.56.12/24")], "192.168.56.12", "eth1"),
    # libvirt: management network 192.168.121.0/24 first
    ([("eth0", "192.168.121.87/24"), ("eth1", "192.168.56.11/24")], "192.168.56.11", "eth1"),
    # predictable interface names (a box without net.ifnames=0)
    ([("enp0s3", "10.0.2.15/24"), ("enp0s8", "192.168.56.13/24")], "192.168.56.13", "enp0s8"),
    # .1 is a prefix of .11 as text: only the whole address matches
    ([("eth0", "10.0.2.15/24"), ("eth1", "192.168.56.11/24"), ("eth2", "192.168.56.1/24")], "192.168.56.1", "eth2"),
    # a veth shows as name@peer
    ([("eth0", "10.0.2.15/24"), ("veth1@if7", "192.168.56.12/24")], "192.168.56.12", "veth1"),
])
def test_iface_for_address_picks_the_private_network(interfaces, address, expected):
    result = run_sourced(f"iface_for_address {address}", ip_addr_lines(*interfaces))
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"


def test_iface_for_address_reads_a_last_line_without_newline():
    result = run_sourced("iface_for_address 192.168.56.11", ip_addr_lines(("eth1", "192.168.56.11/24")).rstrip("\n"))
    assert result.stdout == "eth1\n"


def test_iface_for_address_without_the_address_says_what_it_found():
    result = run_sourced("iface_for_address 192.168.56.11", ip_addr_lines(("eth0", "10.0.2.15/24")))
    assert result.returncode != 0
    assert result.stdout == ""
    assert "no interface has address 192.168.56.11" in result.stderr
    assert "eth0=10.0.2.15/24" in result.stderr
    assert "vagrant reload" in result.stderr


def test_provision_script_agrees_with_the_project():
    """Its choices are the lab file's, and it waits for the key control up writes."""
    result = run_sourced('echo "$PROXY_MODES"; echo "$NFTABLES_LAYOUTS"; echo "$CLUSTER_KEY"')
    modes, layouts, key = result.stdout.splitlines()
    assert tuple(modes.split()) == PROXY_MODES
    assert tuple(layouts.split()) == NFTABLES_LAYOUTS
    assert key == state.CLUSTER_KEY


GOOD_ARGS = "--name node-b --ip 192.168.56.12 --control-ip 192.168.56.11"


def test_parse_args_reads_every_setting():
    result = run_sourced(f"parse_args {GOOD_ARGS} --control --proxy-mode nftables --nftables-layout maps\n"
                         'echo "$NODE_NAME $NODE_IP $CONTROL_IP $IS_CONTROL $PROXY_MODE $NFTABLES_LAYOUT"')
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["node-b", "192.168.56.12", "192.168.56.11", "yes", "nftables", "maps"]


def test_parse_args_defaults_follow_the_lab_file():
    result = run_sourced(f'parse_args {GOOD_ARGS}\necho "$IS_CONTROL $PROXY_MODE $NFTABLES_LAYOUT"')
    assert result.stdout.split() == ["no", "iptables", "kube-proxy"]


@pytest.mark.parametrize("extra, named, fix", [
    ("--proxy-mode IPVS", "--proxy-mode 'IPVS' (NETLAB_PROXY_MODE)", "iptables nftables ipvs"),
    ("--nftables-layout flat", "--nftables-layout 'flat' (NETLAB_NFTABLES_LAYOUT)", "kube-proxy maps"),
    ("--ip 192.168.56.300", "--ip '192.168.56.300'", "private network address"),
    ("--name Node_B", "--name 'Node_B'", "lower-case letters"),
    ("--iface eth1", "unknown argument '--iface'", "usage"),
    ("--proxy-mode", "--proxy-mode needs a value", ""),
])
def test_parse_args_names_the_bad_field_and_the_fix(extra, named, fix):
    result = run_sourced(f"parse_args {GOOD_ARGS} {extra}\necho parsed")
    assert result.returncode == 2
    assert "parsed" not in result.stdout
    assert named in result.stderr and fix in result.stderr


def commands_run(args: str, *steps: str) -> list[list[str]]:
    """The kube-netlab command lines the script's steps run after parse_args ARGS (one list a run)."""
    snippet = "\n".join([f"parse_args {args}", "KUBE_NETLAB=record",
                         'record() { printf "%s\\n" "$@"; echo --end--; }', *steps])
    result = run_sourced(snippet)
    assert result.returncode == 0, result.stderr
    return [run.strip("\n").split("\n") for run in result.stdout.split("--end--\n") if run.strip()]


def test_first_vm_commands_are_what_the_cli_takes():
    control, join = commands_run(GOOD_ARGS.replace("node-b", "node-a") + " --control --proxy-mode ipvs",
                                 "control_up", "node_join eth1")
    parsed = build_parser().parse_args(control)
    assert (parsed.store, parsed.listen) == ("etcd://192.168.56.11:2379", "192.168.56.11")
    assert (parsed.proxy_mode, parsed.nftables_layout) == ("ipvs", "kube-proxy")
    parsed = build_parser().parse_args(join)
    assert (parsed.store, parsed.name, parsed.iface, parsed.public_ip) == (
        "etcd://192.168.56.11:2379", "node-a", "eth1", None)


def test_other_vms_join_the_first_ones_etcd():
    (join,) = commands_run(GOOD_ARGS, "node_join enp0s8")
    parsed = build_parser().parse_args(join)
    assert (parsed.store, parsed.name, parsed.iface) == ("etcd://192.168.56.11:2379", "node-b", "enp0s8")


# --- the Vagrantfile ------------------------------------------------------------------------

# Loads the Vagrantfile with a Vagrant that records each configuration call
# (path of receivers, arguments), so its plan can be read without vagrant.
RECORDER = r"""
require "json"
class Recorder
  def initialize(calls, path)
    @calls, @path = calls, path
  end
  def respond_to_missing?(*) = true
  def method_missing(name, *args, **kw, &block)
    path = @path + [name.to_s]
    return Recorder.new(@calls, path) if args.empty? && kw.empty? && block.nil?
    @calls << {"path" => path.join("."), "args" => args, "kw" => kw}
    block.call(Recorder.new(@calls, path + args.map(&:to_s))) if block
    nil
  end
end
CALLS = []
module Vagrant
  def self.configure(_version) = yield(Recorder.new(CALLS, []))
end
load ARGV[0]
puts JSON.generate(CALLS)
"""


def vagrant_plan(**settings: str) -> subprocess.CompletedProcess:
    return subprocess.run([needs("ruby"), "-e", RECORDER, str(VAGRANTFILE)], capture_output=True, text=True,
                          env=settings_env(**settings), timeout=60)


def machines(**settings: str) -> dict[str, dict]:
    """{name: {"ip":..., "hostname":..., "provision": {"path":..., "args": [...], "run":...}}} in definition order."""
    result = vagrant_plan(**settings)
    assert result.returncode == 0, result.stderr
    out: dict[str, dict] = {}
    for call in json.loads(result.stdout):
        parts = call["path"].split(".")
        if parts[:2] != ["vm", "define"] or len(parts) < 4:
            continue
        machine = out.setdefault(parts[2], {})
        what = ".".join(parts[3:])
        if what == "vm.hostname=":
            machine["hostname"] = call["args"][0]
        elif what == "vm.network" and call["args"][0] == "private_network":
            machine["ip"] = call["kw"]["ip"]
        elif what == "vm.provision":
            machine["provision"] = call["kw"]
    return out


def test_vagrantfile_parses():
    result = subprocess.run([needs("ruby"), "-c", str(VAGRANTFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_vagrantfile_defines_three_nodes_like_the_emulated_lab():
    plan = machines()
    assert list(plan) == ["node-a", "node-b", "node-c"]
    assert [m["ip"] for m in plan.values()] == ["192.168.56.11", "192.168.56.12", "192.168.56.13"]
    assert [m["hostname"] for m in plan.values()] == list(plan)
    for name, machine in plan.items():
        provision = machine["provision"]
        assert provision["path"] == "scripts/vagrant-provision.sh"
        assert provision["run"] == "always"
        args = provision["args"]
        assert args[args.index("--name") + 1] == name
        assert args[args.index("--ip") + 1] == machine["ip"]
        assert args[args.index("--control-ip") + 1] == "192.168.56.11"
        assert args[args.index("--proxy-mode") + 1] == "iptables"
        assert args[args.index("--nftables-layout") + 1] == "kube-proxy"
        assert ("--control" in args) == (name == "node-a")


def test_vagrantfile_settings_come_from_the_environment():
    plan = machines(NETLAB_NODES="2", NETLAB_PROXY_MODE="nftables", NETLAB_NFTABLES_LAYOUT="maps")
    assert list(plan) == ["node-a", "node-b"]
    for machine in plan.values():
        args = machine["provision"]["args"]
        assert args[args.index("--proxy-mode") + 1] == "nftables"
        assert args[args.index("--nftables-layout") + 1] == "maps"


def test_vagrantfile_configures_both_providers_and_a_synced_repo():
    result = vagrant_plan()
    calls = json.loads(result.stdout)
    providers = {c["args"][0] for c in calls if c["path"] == "vm.provider"}
    assert providers == {"virtualbox", "libvirt"}
    for provider in providers:
        assert {c["path"] for c in calls if c["path"].startswith(f"vm.provider.{provider}.")} >= {
            f"vm.provider.{provider}.memory=", f"vm.provider.{provider}.cpus="}
    synced = [c for c in calls if c["path"] == "vm.synced_folder"]
    assert synced[0]["args"] == [".", "/vagrant"]
    assert synced[0]["kw"]["type"] == "rsync" and synced[0]["kw"]["disabled"] is False
    assert ".venv/" in synced[0]["kw"]["rsync__exclude"]


@pytest.mark.parametrize("setting, choices", [("NETLAB_PROXY_MODE", PROXY_MODES),
                                              ("NETLAB_NFTABLES_LAYOUT", NFTABLES_LAYOUTS)])
def test_vagrantfile_accepts_exactly_the_lab_files_choices(setting, choices):
    for choice in choices:
        assert vagrant_plan(**{setting: choice}).returncode == 0
    result = vagrant_plan(**{setting: "none"})
    assert f"use one of: {', '.join(choices)}" in result.stderr


@pytest.mark.parametrize("setting, value, fix", [
    ("NETLAB_NODES", "0", "give a whole number from 1 to 26"),
    ("NETLAB_NODES", "three", "give a whole number from 1 to 26"),
    ("NETLAB_PROXY_MODE", "IPVS", "use one of: iptables, nftables, ipvs"),
    ("NETLAB_NFTABLES_LAYOUT", "flat", "use one of: kube-proxy, maps"),
    ("NETLAB_MEMORY", "1G", "give a whole number from 512 to 65536"),
])
def test_vagrantfile_names_a_bad_setting_and_the_fix(setting, value, fix):
    result = vagrant_plan(**{setting: value})
    assert result.returncode != 0
    assert f'{setting}="{value}": {fix}' in result.stderr


def vagrant_validate(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess:
    # VAGRANT_HOME and the dot directory in tmp_path: nothing is written to the repo or ~/.vagrant.d
    env = settings_env(VAGRANT_HOME=str(tmp_path / "home"), VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"),
                       VAGRANT_CHECKPOINT_DISABLE="1", **settings)
    return subprocess.run([needs("vagrant"), "validate", "--ignore-provider"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("settings", [{}, {"NETLAB_NODES": "1", "NETLAB_PROXY_MODE": "ipvs"}])
def test_vagrant_validate(tmp_path, settings):
    result = vagrant_validate(tmp_path, **settings)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Vagrantfile validated successfully" in result.stdout


def test_vagrant_validate_refuses_a_bad_proxy_mode(tmp_path):
    result = vagrant_validate(tmp_path, NETLAB_PROXY_MODE="userspace")
    assert result.returncode != 0
    assert 'NETLAB_PROXY_MODE="userspace": use one of: iptables, nftables, ipvs' in result.stderr
