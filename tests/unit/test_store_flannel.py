"""flannel's etcd layout through the etcd backend, byte for byte: what a real flanneld
pointed at the same etcd (--etcd-prefix=/coreos.com/network) reads and writes
(pkg/lease LeaseAttrs, pkg/backend/vxlan vxlanLeaseAttrs, the subnet key's form, the 24 h TTL)."""
from __future__ import annotations

import shutil

import pytest

from netlab.cluster.etcd_server import EtcdServer, free_port
from netlab.store import open_store
from netlab.store.subnets import DEFAULT_TTL, NetworkConfig, acquire_lease, renew_lease, set_network_config


@pytest.fixture
def etcd_store(tmp_path):
    if shutil.which("etcd") is None:
        pytest.skip("no etcd binary (Debian's etcd-server)")
    server = EtcdServer(str(tmp_path / "data"), client_port=free_port(), peer_port=free_port()).start()
    store = open_store(server.store_url)
    yield store
    store.close()
    server.destroy()


def test_flannels_keys_and_values_in_etcd(etcd_store):
    cfg = NetworkConfig.make("10.244.0.0/16", backend={"Type": "vxlan", "VNI": 1, "Port": 8472})
    set_network_config(etcd_store, cfg)
    assert etcd_store.get("/coreos.com/network/config").value == (
        '{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}')
    lease = acquire_lease(etcd_store, "192.168.56.11", {"VNI": 1, "VtepMAC": "0a:58:0a:f4:01:00"}, config=cfg)
    kv = etcd_store.get("/coreos.com/network/subnets/10.244.1.0-24")
    # LeaseAttrs: PublicIP, PublicIPv6 (a nil pointer: null), BackendType and BackendData (omitempty)
    assert kv.value == ('{"PublicIP":"192.168.56.11","PublicIPv6":null,"BackendType":"vxlan",'
                        '"BackendData":{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}}')
    # flannel's subnetTTL: an etcd lease of 24 h on the key, renewed by a new lease
    assert DEFAULT_TTL - 60 < kv.ttl() <= DEFAULT_TTL
    renewed = renew_lease(etcd_store, lease)
    assert renewed.subnet == lease.subnet and renewed.mod_revision > lease.mod_revision
    # a restarted node (same PublicIP) gets the same subnet back, not a second lease
    again = acquire_lease(etcd_store, "192.168.56.11", {"VNI": 1, "VtepMAC": "0a:58:0a:f4:01:01"}, config=cfg)
    assert again.subnet == lease.subnet
    assert [k.key for k in etcd_store.list("/coreos.com/network/subnets/")] == [
        "/coreos.com/network/subnets/10.244.1.0-24"]
