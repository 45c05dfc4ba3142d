"""The exec'd client's pure parts: the wire format to the daemon and the launcher install-cni writes."""
from __future__ import annotations

import os

import pytest

from cni import client


def test_request_round_trips_the_cni_variables_and_stdin():
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/p", "CNI_IFNAME": "eth0",
           "CNI_ARGS": "IP=10.1.0.5;K8S_POD_NAME=a=b", "CNI_PATH": "/opt/cni/bin", "HOME": "/root"}
    stdin = b'{"cniVersion": "1.0.0", "name": "n"}'
    decoded_env, decoded_stdin = client.decode_request(client.encode_request(env, stdin))
    assert decoded_stdin == stdin
    assert decoded_env == {k: v for k, v in env.items() if k != "HOME"}  # only CNI_* crosses


def test_launcher_starts_python_without_site_and_finds_this_package():
    text = client.launcher_text("/venv/bin/python3", "/srv/kube-netlab")
    lines = text.splitlines()
    assert lines[0] == "#!/venv/bin/python3 -IS"
    assert "sys.path.insert(0, '/srv/kube-netlab')" in lines and "from cni.client import main" in lines
    default = client.launcher_text()
    assert os.path.isfile(os.path.join(default.split("sys.path.insert(0, '")[1].split("'")[0], "cni", "client.py"))


def test_launcher_refuses_a_path_a_shebang_cannot_hold():
    with pytest.raises(ValueError) as e:
        client.launcher_text("/opt/my venv/bin/python3", "/srv/kube-netlab")
    assert "interpreter" in str(e.value) and "without spaces" in str(e.value)
