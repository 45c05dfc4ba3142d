"""netlab-dns for real: the server in a namespace of the test's own, fed by a store
file written with the LabState writers, asked with dig and getent (through a
kubelet-shaped resolv.conf) from that namespace, forwarding to `netlab-dns upstream`
in a second namespace, and kept answering while hostile packets arrive."""
from __future__ import annotations

import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from cni import netns
from netlab.model.endpoints import EndpointPort, EndpointSlice, SliceEndpoint
from netlab.model.workloads import Service, ServicePort
from netlab.state import NETNS_ETC, LabState
from netlab.store import open_store

VENV_BIN = os.path.dirname(sys.executable)
UPSTREAM_IP = "10.53.0.2"
RESOLV_CONF = ("search default.svc.cluster.local svc.cluster.local cluster.local\n"
               "nameserver 127.0.0.1\noptions ndots:5\n")


def fill(store_path: str, big: int = 60) -> None:
    with open_store(store_path) as store:
        st = LabState(store)
        st.put_service(Service("web", (ServicePort(80, 8080, "TCP", "http"),), cluster_ip="10.96.120.15"))
        st.put_service(Service("db", (ServicePort(5432, 5432, "TCP", "pg"),), cluster_ip="None"))
        st.put_service(Service("big", (ServicePort(80, 80, "TCP", "http"),), cluster_ip="None"))
        st.put_endpoint_slice(EndpointSlice("db-a", "default", "db", "a", (EndpointPort("pg", 5432),),
                                            (SliceEndpoint("10.244.1.5", "a", "db-0", hostname="db-0"),
                                             SliceEndpoint("10.244.1.6", "a", "db-1", hostname="db-1"))))
        eps = tuple(SliceEndpoint(f"10.244.3.{i}", "a", f"big-{i}") for i in range(1, big))
        st.put_endpoint_slice(EndpointSlice("big-a", "default", "big", "a", (EndpointPort("http", 80),), eps))


class Server:
    def __init__(self, ns: str, *args: str):
        self.ns = ns
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, os.path.join(VENV_BIN, "netlab-dns"), *args],
                                     stderr=subprocess.PIPE, start_new_session=True)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def dig(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "dig", "+time=2", "+tries=2", "@127.0.0.1", *args],
                          capture_output=True, text=True, timeout=30).stdout


def short(ns: str, *args: str) -> list[str]:
    return sorted(dig(ns, "+short", *args).split("\n")[:-1])


def status(ns: str, *args: str) -> str:
    m = re.search(r"status: (\w+)", dig(ns, *args))
    return m.group(1) if m else "no answer"


def getent_hosts(ns: str, name: str) -> list[str]:
    """glibc's answer through the namespace's resolv.conf (`ip netns exec` mounts /etc/netns/<ns>/ over /etc)."""
    return subprocess.run(["ip", "netns", "exec", ns, "getent", "hosts", name], capture_output=True,
                          text=True).stdout.split()


def wait_until(predicate, what: str, timeout: float = 10.0) -> None:
    """Polls a condition (waiting is not what is tested; the condition is)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.1)


@pytest.fixture
def cluster_dns(namespaces, tmp_path):
    """(namespace, store path, upstream namespace): netlab-dns on 127.0.0.1:53 forwarding to
    `netlab-dns upstream` at 10.53.0.2 in a second namespace linked by a veth pair."""
    ns, up = namespaces.new("dns"), namespaces.new("up")
    veth = f"{ns[-8:]}v"
    subprocess.run(["ip", "-n", ns, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", up],
                   check=True)
    subprocess.run(["ip", "-n", ns, "addr", "add", "10.53.0.1/24", "dev", veth], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", veth, "up"], check=True)
    subprocess.run(["ip", "-n", up, "addr", "add", f"{UPSTREAM_IP}/24", "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", up, "link", "set", "eth0", "up"], check=True)
    store = str(tmp_path / "state.db")
    fill(store)
    conf_dir = os.path.join(NETNS_ETC, ns)
    os.makedirs(conf_dir)
    with open(os.path.join(conf_dir, "resolv.conf"), "w") as f:
        f.write(RESOLV_CONF)
    servers = [Server(up, "upstream", "--listen", f"{UPSTREAM_IP}:53", "--answer", f"www.example.org={UPSTREAM_IP}",
                      "--answer", f"example.org={UPSTREAM_IP}"),
               Server(ns, "serve", "--lab", "test", "--store", store, "--listen", "127.0.0.1:53",
                      "--upstream", UPSTREAM_IP, "--ttl", "30")]
    try:
        wait_until(lambda: short(ns, "web.default.svc.cluster.local") == ["10.96.120.15"], "netlab-dns answering")
        yield ns, store, up
    finally:
        for s in servers:
            s.stop()
        subprocess.run(["rm", "-rf", conf_dir])


def test_dig_gets_the_specified_records(cluster_dns):
    ns, _store, _ = cluster_dns
    assert short(ns, "web.default.svc.cluster.local") == ["10.96.120.15"]
    assert short(ns, "_http._tcp.web.default.svc.cluster.local", "SRV") == ["0 100 80 web.default.svc.cluster.local."]
    assert short(ns, "-x", "10.96.120.15") == ["web.default.svc.cluster.local."]
    assert short(ns, "db.default.svc.cluster.local") == ["10.244.1.5", "10.244.1.6"]
    assert short(ns, "db-1.db.default.svc.cluster.local") == ["10.244.1.6"]
    assert short(ns, "-x", "10.244.1.5") == ["db-0.db.default.svc.cluster.local."]
    assert short(ns, "dns-version.cluster.local", "TXT") == ['"1.1.0"']
    assert short(ns, "10-244-9-9.default.pod.cluster.local") == ["10.244.9.9"]
    out = dig(ns, "nope.default.svc.cluster.local")
    assert "status: NXDOMAIN" in out and re.search(r"cluster\.local\.\s+30\s+IN\s+SOA", out)
    assert status(ns, "web.default.svc.cluster.local", "AAAA") == "NOERROR"
    assert short(ns, "WEB.Default.svc.cluster.local") == ["10.96.120.15"]


def test_getent_resolves_short_names_through_the_kubelet_search_path(cluster_dns):
    ns = cluster_dns[0]

    def getent(name):
        return getent_hosts(ns, name)
    assert getent("web")[:2] == ["10.96.120.15", "web.default.svc.cluster.local"]
    assert getent("web.default")[0] == "10.96.120.15"
    assert getent("db-0.db")[0] == "10.244.1.5"
    assert getent("www.example.org")[0] == UPSTREAM_IP      # through the search list's NXDOMAINs to the upstream
    assert getent("missing") == []


def test_store_changes_show_up_in_answers(cluster_dns):
    ns, store_path, _ = cluster_dns
    with open_store(store_path) as store:
        st = LabState(store)
        st.put_service(Service("late", (ServicePort(80, 80),), cluster_ip="10.96.7.7"))
        wait_until(lambda: short(ns, "late.default.svc.cluster.local") == ["10.96.7.7"], "the new Service answering")
        st.delete_service("default/late")
        wait_until(lambda: status(ns, "late.default.svc.cluster.local") == "NXDOMAIN", "the deleted Service gone")
        st.delete_endpoint_slice(st.endpoint_slices("default/db")[0])
        wait_until(lambda: status(ns, "db.default.svc.cluster.local") == "NXDOMAIN", "headless without endpoints")


def test_big_answers_truncate_over_udp_and_come_whole_over_tcp(cluster_dns):
    ns = cluster_dns[0]
    udp = dig(ns, "+ignore", "+noedns", "big.default.svc.cluster.local")
    assert re.search(r"flags: [^;]*\btc\b", udp) and "ANSWER: 0" in udp
    assert len(short(ns, "big.default.svc.cluster.local")) == 59      # dig retries over TCP by itself
    assert len(short(ns, "+tcp", "_http._tcp.big.default.svc.cluster.local", "SRV")) == 59
    # several queries on one TCP connection
    with netns.entered(ns):
        conn = socket.create_connection(("127.0.0.1", 53), timeout=5)
    with conn:
        for qid in (1, 2, 3):
            q = query(qid, "web.default.svc.cluster.local")
            conn.sendall(struct.pack("!H", len(q)) + q)
            (length,) = struct.unpack("!H", recv_exactly(conn, 2))
            assert recv_exactly(conn, length)[:2] == struct.pack("!H", qid)


def test_forwarding_to_the_upstream_and_external_name(cluster_dns):
    ns, store_path, _up = cluster_dns
    assert short(ns, "www.example.org") == [UPSTREAM_IP]
    assert short(ns, "+tcp", "example.org") == [UPSTREAM_IP]
    assert status(ns, "nowhere.example.com") == "NXDOMAIN"
    with open_store(store_path) as store:
        LabState(store).put_service(Service("ext", (), type="ExternalName", external_name="www.example.org"))
    # the CNAME, and the target's address asked of the upstream (CoreDNS's kubernetes plugin does the same)
    wait_until(lambda: short(ns, "ext.default.svc.cluster.local") == [UPSTREAM_IP, "www.example.org."],
               "the ExternalName answering")
    assert getent_hosts(ns, "ext")[0] == UPSTREAM_IP


def test_no_upstream_refuses_outside_names(namespaces, tmp_path):
    ns = namespaces.new("dns")
    store = str(tmp_path / "state.db")
    fill(store, big=2)
    server = Server(ns, "serve", "--lab", "test", "--store", store, "--listen", "127.0.0.1:53", "--no-upstream",
                    "--workers", "1")
    try:
        wait_until(lambda: short(ns, "web.default.svc.cluster.local") == ["10.96.120.15"], "netlab-dns answering")
        assert status(ns, "www.example.org") == "REFUSED"
        assert status(ns, "+tcp", "www.example.org") == "REFUSED"
    finally:
        server.stop()


def query(qid: int, name: str, qtype: int = 1) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", qtype, 1)


def recv_exactly(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        assert chunk, "connection closed"
        buf += chunk
    return buf


def hostile_packets(rng: random.Random, count: int):
    good = query(1, "web.default.svc.cluster.local")
    header = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0)
    fixed = [b"", b"\0", header, header + b"\xc0\x0c\0\1\0\1", header + b"\x01a\xc0\x0c\0\1\0\1",
             struct.pack("!HHHHHH", 7, 0x0100, 65535, 65535, 65535, 65535) + good[12:],
             struct.pack("!HHHHHH", 7, 0x8100, 1, 0, 0, 0) + good[12:],       # an answer: dropped
             good + b"\0" * 3000]
    for i in range(count):
        if i < len(fixed):
            yield fixed[i]
            continue
        p = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            p[rng.randrange(len(p))] = rng.randrange(256)
        yield bytes(p) if rng.random() < 0.7 else rng.randbytes(rng.randint(0, 600))


def test_hostile_packets_never_stop_answers_for_others(cluster_dns):
    ns = cluster_dns[0]
    rng = random.Random(53)
    with netns.entered(ns):
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        zero = socket.create_connection(("127.0.0.1", 53), timeout=5)
        garbage = socket.create_connection(("127.0.0.1", 53), timeout=5)
    client.settimeout(2)
    answered = 0
    try:
        zero.sendall(b"\0\0")                        # a zero-length TCP message
        garbage.sendall(b"\x00\x20" + rng.randbytes(32))
        for i, pkt in enumerate(hostile_packets(rng, 5000)):
            attacker.sendto(pkt, ("127.0.0.1", 53))
            if i % 250 == 0:                         # a normal client in the middle of it all
                client.sendto(query(i & 0xFFFF, "web.default.svc.cluster.local"), ("127.0.0.1", 53))
                while True:
                    reply = client.recv(4096)
                    if reply[:2] == struct.pack("!H", i & 0xFFFF):
                        break
                assert reply[-4:] == bytes([10, 96, 120, 15]), reply.hex()
                answered += 1
        assert answered == 20
        assert short(ns, "+tcp", "web.default.svc.cluster.local") == ["10.96.120.15"]
    finally:
        for s in (attacker, client, zero, garbage):
            s.close()


# --- the batched UDP loop, driven in-process: queries are queued first, then one wake-up answers them ---

WEB = "web.default.svc.cluster.local"


def edns_query(qid: int, name: str) -> bytes:
    q = bytearray(query(qid, name))
    q[11] = 1                                             # ARCOUNT 1: a bare OPT follows
    return bytes(q) + b"\x00\x00\x29\x04\xd0" + b"\x00" * 6


def udp_from_port_zero(payload: bytes, port: int) -> bytes:
    """A UDP datagram with source port 0: received fine, but no reply can be sent to it (EINVAL)."""
    return struct.pack("!HHHH", 0, port, 8 + len(payload), 0) + payload


@pytest.fixture(params=["recvmmsg", "recvfrom"])
def batch_worker(request, namespaces):
    """(worker bound to 127.0.0.1 in a fresh namespace, client socket there): the worker's zone has
    WEB's A record precomputed; 'recvfrom' swaps in the fallback for a libc without recvmmsg."""
    from proxy.dns.batch import PlainBatch, UdpBatch
    from proxy.dns.server import MAX_UDP_QUERY, MAX_UDP_REPLY, UDP_BATCH, Worker
    from proxy.dns.zone import static_zone

    ns = namespaces.new("dnsb")
    with netns.entered(ns):
        worker = Worker(("127.0.0.1", 5353), None)
        worker.set_zone(static_zone({WEB: "10.96.120.15", "db.default.svc.cluster.local": "10.96.7.7"}))
        worker.bind()
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    kind = UdpBatch if request.param == "recvmmsg" else PlainBatch
    worker.batch = kind(worker.udp, UDP_BATCH, MAX_UDP_QUERY, MAX_UDP_REPLY)
    client.bind(("127.0.0.1", 0))
    client.settimeout(2)
    try:
        yield worker, client, raw
    finally:
        for s in (worker.udp, worker.tcp, worker.fwd, client, raw):
            s.close()


def replies(client: socket.socket, count: int) -> dict[int, bytes]:
    out = {}
    for _ in range(count):
        reply = client.recv(4096)
        out[struct.unpack("!H", reply[:2])[0]] = reply
    client.settimeout(0.2)     # and nothing more is on its way
    with pytest.raises(socket.timeout):
        client.recv(4096)
    return out


def rcode(reply: bytes) -> int:
    return reply[3] & 0xF


def test_one_wake_up_answers_every_queued_query_fast_full_path_and_malformed_mixed(batch_worker):
    worker, client, _ = batch_worker
    server = ("127.0.0.1", 5353)
    sent = [query(1, WEB), edns_query(2, WEB.upper()), query(3, WEB, qtype=16),   # TXT: the full path
            query(4, "nope.default.svc.cluster.local"),
            struct.pack("!HHHHHH", 5, 0x0100, 1, 0, 0, 0) + b"\x05junk",          # malformed: FORMERR
            struct.pack("!HHHHHH", 6, 0x8100, 1, 0, 0, 0),                        # an answer: dropped
            query(7, "db.default.svc.cluster.local")]
    for packet in sent:
        client.sendto(packet, server)
    worker.answer_queued({})
    got = replies(client, 6)
    assert sorted(got) == [1, 2, 3, 4, 5, 7]
    assert got[1][-4:] == bytes([10, 96, 120, 15]) and rcode(got[1]) == 0
    assert WEB.upper().split(".")[0].encode() in got[2] and got[2][-11:-8] == b"\x00\x00\x29"   # case kept, OPT echoed
    assert rcode(got[3]) == 0 and struct.unpack("!H", got[3][6:8])[0] == 0                      # NODATA
    assert rcode(got[4]) == 3                                                                     # NXDOMAIN
    assert rcode(got[5]) == 1                                                                     # FORMERR
    assert got[7][-4:] == bytes([10, 96, 7, 7])
    # the full path's answer to a plain query is remembered: the same question now takes the fast path
    assert query(3, WEB, qtype=16)[12:] in worker.table.plain


def test_a_reply_the_kernel_refuses_does_not_stop_the_rest_of_the_batch(batch_worker):
    worker, client, raw = batch_worker
    for qid in (1, 2):
        client.sendto(query(qid, WEB), ("127.0.0.1", 5353))
    raw.sendto(udp_from_port_zero(query(3, WEB), 5353), ("127.0.0.1", 0))
    for qid in (4, 5):
        client.sendto(query(qid, WEB), ("127.0.0.1", 5353))
    worker.answer_queued({})
    assert sorted(replies(client, 4)) == [1, 2, 4, 5]


def test_more_queries_than_a_batch_are_all_answered_in_one_wake_up(batch_worker):
    from proxy.dns.server import UDP_BATCH

    worker, client, _ = batch_worker
    count = UDP_BATCH * 2 + 3
    for qid in range(count):
        client.sendto(query(qid, WEB), ("127.0.0.1", 5353))
    worker.answer_queued({})
    assert sorted(replies(client, count)) == list(range(count))


def test_udp_batch_takes_all_queued_datagrams_in_one_call_and_skips_a_refused_reply(namespaces):
    from proxy.dns.batch import UdpBatch

    with netns.entered(namespaces.new("dnsb")):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    try:
        server.bind(("127.0.0.1", 5353))
        server.setblocking(False)
        client.bind(("127.0.0.1", 0))
        client.settimeout(2)
        batch = UdpBatch(server, size=8, recv_size=16, send_size=8)
        assert batch.recv() == 0                          # nothing queued: no wait, no error
        for i in range(3):
            client.sendto(b"q%d" % i, ("127.0.0.1", 5353))
        raw.sendto(udp_from_port_zero(b"q3", 5353), ("127.0.0.1", 0))
        client.sendto(b"q4" + b"x" * 30, ("127.0.0.1", 5353))
        assert batch.recv() == 5
        assert [batch.datagram(i) for i in range(5)] == [b"q0", b"q1", b"q2", b"q3", b"q4" + b"x" * 14]
        assert batch.address(0) == client.getsockname() and batch.address(3) == ("127.0.0.1", 0)
        assert not batch.reply(0, 0, b"too long for 8")
        for k, i in enumerate((2, 3, 0, 4)):              # any order; slot 1 goes to port 0: refused
            assert batch.reply(k, i, b"r%d" % i)
        assert batch.send(4) == 3
        assert [client.recv(16) for _ in range(3)] == [b"r2", b"r0", b"r4"]
    finally:
        for s in (server, client, raw):
            s.close()


def test_without_recvmmsg_in_libc_the_worker_answers_by_recvfrom(namespaces, monkeypatch):
    from proxy.dns import batch
    from proxy.dns.server import Worker
    from proxy.dns.zone import static_zone

    monkeypatch.setattr(batch, "_CALLS", None)        # what _libc_calls() gives on a libc without them
    with netns.entered(namespaces.new("dnsb")):
        worker = Worker(("127.0.0.1", 5353), None)
        worker.set_zone(static_zone({WEB: "10.96.120.15"}))
        worker.bind()
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert isinstance(worker.batch, batch.PlainBatch)
        client.settimeout(2)
        client.sendto(query(9, WEB), ("127.0.0.1", 5353))
        worker.answer_queued({})
        assert replies(client, 1)[9][-4:] == bytes([10, 96, 120, 15])
    finally:
        for s in (worker.udp, worker.tcp, worker.fwd, client):
            s.close()
