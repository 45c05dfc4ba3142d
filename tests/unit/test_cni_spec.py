"""Pure CNI logic: environment and config validation, result conversion, names."""
import json

import pytest

from cni import iptables, skel, spec
from cni.main import bridge
from cni.spec import CniError


@pytest.mark.parametrize("ifname", ["", "a" * 16, ".", "..", "a/b", "a:b", "a b", "a\tb"])
def test_bad_ifnames(ifname):
    with pytest.raises(CniError) as e:
        spec.validate_ifname(ifname)
    assert e.value.code == 4 and "CNI_IFNAME" in e.value.msg


@pytest.mark.parametrize("ifname", ["eth0", "a" * 15, "net1.100", "x-y_z"])
def test_good_ifnames(ifname):
    spec.validate_ifname(ifname)


@pytest.mark.parametrize("cid", ["", "../x", "-x", ".x", "a/b", "a b", "é"])
def test_bad_container_ids(cid):
    with pytest.raises(CniError) as e:
        spec.validate_container_id(cid)
    assert e.value.code == 4 and "CNI_CONTAINERID" in e.value.msg


def test_env_requires_netns_for_add_but_not_del():
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"}
    with pytest.raises(CniError) as e:
        spec.attachment_from_env(env)
    assert "CNI_NETNS" in e.value.msg
    att = spec.attachment_from_env(dict(env, CNI_COMMAND="DEL", CNI_ARGS="IP=10.0.0.5;K8S_POD_NAME=web",
                                        CNI_PATH="/a::/b"))
    assert att.args == {"IP": "10.0.0.5", "K8S_POD_NAME": "web"} and att.path == ["/a", "/b"]


def test_unknown_command():
    with pytest.raises(CniError) as e:
        spec.attachment_from_env({"CNI_COMMAND": "ATTACH"})
    assert e.value.code == 4 and "CNI_COMMAND" in e.value.msg


def test_gc_needs_1_1_0():
    with pytest.raises(CniError) as e:
        spec.load_config({"cniVersion": "1.0.0", "name": "n", "type": "t"}, "GC")
    assert e.value.code == 1


def test_valid_attachments_accepts_both_keys():
    a = [{"containerID": "c1", "ifname": "eth0"}]
    assert spec.valid_attachments({"cni.dev/valid-attachments": a}) == {("c1", "eth0")}
    assert spec.valid_attachments({"cni.dev/attachments": a}) == {("c1", "eth0")}
    with pytest.raises(CniError):
        spec.valid_attachments({"cni.dev/valid-attachments": [{"containerID": "c1"}]})


def test_result_for_old_versions_gets_ip_version():
    r = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}, {"address": "fd00::2/64"}]}
    old = spec.convert_result(r, "0.4.0")
    assert [ip["version"] for ip in old["ips"]] == ["4", "6"] and old["cniVersion"] == "0.4.0"
    assert "version" not in spec.convert_result(r, "1.1.0")["ips"][0]


def test_skel_version_and_error_json():
    code, out = skel.execute({}, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"0.4.0"}')
    assert code == 0 and json.loads(out) == {"cniVersion": "0.4.0", "supportedVersions": spec.SUPPORTED_VERSIONS}
    code, out = skel.execute({}, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"2.0.0"}')
    assert code == 1 and json.loads(out)["code"] == 1


def test_skel_untyped_exception_is_code_999():
    def boom(conf, att):
        raise RuntimeError("kaput")
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"}
    code, out = skel.execute({"ADD": boom}, env, b'{"cniVersion":"1.0.0","name":"n","type":"t"}')
    err = json.loads(out)
    assert code == 1 and err["code"] == 999 and err["msg"] == "kaput"


def test_skel_gc_without_handler_is_a_no_op():
    code, out = skel.execute({}, {"CNI_COMMAND": "GC"}, b'{"cniVersion":"1.1.0","name":"n","type":"t"}')
    assert code == 0 and out == ""


def base_conf(**kw):
    c = {"cniVersion": "1.0.0", "name": "net", "type": "netlab-bridge",
         "ipam": {"type": "netlab-ipam", "ranges": [[{"subnet": "10.0.0.0/24"}]]}}
    c.update(kw)
    return c


def test_bridge_defaults_and_default_gateway_implies_gateway():
    bc = bridge.parse_conf(base_conf(isDefaultGateway=True))
    assert bc.bridge == "cni0" and bc.is_gateway and not bc.ip_masq


@pytest.mark.parametrize("kw,word", [
    ({"bridge": "x" * 16}, "longer than 15"),
    ({"bridge": "a/b"}, "not a valid interface name"),
    ({"hairpinMode": True, "promiscMode": True}, "hairpinMode"),
    ({"mtu": 20}, "mtu"),
    ({"ipMasq": "yes"}, "ipMasq"),
    ({"ipam": {}}, "ipam.type"),
])
def test_bridge_config_errors_name_the_field(kw, word):
    with pytest.raises(CniError) as e:
        bridge.parse_conf(base_conf(**kw))
    assert e.value.code == 7 and word in e.value.msg and e.value.details


def test_host_veth_name_is_deterministic_and_fits():
    a = bridge.host_veth_name("abc", "eth0")
    assert a == bridge.host_veth_name("abc", "eth0") != bridge.host_veth_name("abc", "eth1")
    assert a.startswith("veth") and len(a) <= 15


def test_veth_alias_round_trip():
    alias = bridge.veth_alias("net", "c1", "eth0")
    assert bridge._parse_alias(alias) == ("net", "c1", "eth0")
    assert bridge._parse_alias("something else") is None


def test_masquerade_chain_name_is_the_reference_hash():
    # CNI- + sha512("mynet" + "abc123")[:24], as plugins/pkg/utils FormatChainName
    assert iptables.chain_name("mynet", "abc123") == "CNI-70a29d9dc18bc4d652ea5d59"


def test_masquerade_owners_parses_saved_rules():
    saved = ('-A POSTROUTING -s 10.1.0.2/32 -m comment --comment "name: \\"mynet\\" id: \\"abc123\\"" '
             '-j CNI-70a29d9dc18bc4d652ea5d59\n'
             '-A POSTROUTING -s 10.1.0.3/32 -m comment --comment "name: \\"other\\" id: \\"x\\"" '
             '-j CNI-000000000000000000000000\n')
    assert iptables.masquerade_owners("mynet", saved) == {"CNI-70a29d9dc18bc4d652ea5d59": "abc123"}


def test_masquerade_text_is_the_reference_plugins_chain_in_one_restore():
    text = iptables.masquerade_text("mynet", "abc123", [("10.1.0.2/32", "10.1.0.0/24")])
    c = '-m comment --comment "name: \\"mynet\\" id: \\"abc123\\""'
    assert text.splitlines() == [
        "*nat", ":CNI-70a29d9dc18bc4d652ea5d59 - [0:0]",
        f"-A POSTROUTING -s 10.1.0.2/32 {c} -j CNI-70a29d9dc18bc4d652ea5d59",
        f"-A CNI-70a29d9dc18bc4d652ea5d59 -d 10.1.0.0/24 {c} -j ACCEPT",
        f"-A CNI-70a29d9dc18bc4d652ea5d59 ! -d 224.0.0.0/4 {c} -j MASQUERADE",
        "COMMIT"]
    # the masquerade_owners parser reads back what it writes
    assert iptables.masquerade_owners("mynet", text) == {"CNI-70a29d9dc18bc4d652ea5d59": "abc123"}


def test_no_ipv4_address_starts_no_restore():
    assert iptables.start_masquerade("mynet", "abc123", []) is None


def test_error_codes_are_the_spec_numbers():
    """SPEC.md "Error" section (1-7, 11, 50, 51 reserved), ours from 100; 999 as libcni's skel."""
    assert (spec.INCOMPATIBLE_VERSION, spec.UNSUPPORTED_FIELD, spec.CONTAINER_UNKNOWN, spec.INVALID_ENV,
            spec.IO_FAILURE, spec.DECODE_FAILURE, spec.INVALID_CONFIG) == (1, 2, 3, 4, 5, 6, 7)
    assert (spec.TRY_AGAIN_LATER, spec.NOT_AVAILABLE, spec.NOT_AVAILABLE_LIMITED) == (11, 50, 51)
    assert (spec.CHECK_MISMATCH, spec.DUPLICATE_ALLOCATION, spec.INTERNAL) == (100, 101, 999)
