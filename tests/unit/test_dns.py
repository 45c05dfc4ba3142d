"""The cluster DNS's pure parts: records per the Kubernetes DNS specification 1.1.0,
the wire format (decoded by scapy, an independent implementation), the fast path
against the full path, and a fuzz of hostile packets."""
from __future__ import annotations

import random
import struct

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRROPT

from netlab.model.endpoints import EndpointPort, EndpointSlice, SliceEndpoint
from netlab.model.workloads import Service, ServicePort
from proxy.dns import wire
from proxy.dns.fastpath import AnswerTable
from proxy.dns.resolver import Forward, Resolver
from proxy.dns.zone import cluster_zone, static_zone


class ExternalNameService:
    """Until model.Service grows `external_name`: the attributes the zone reads."""

    def __init__(self, name, namespace, external_name):
        self.name, self.namespace, self.external_name = name, namespace, external_name
        self.type, self.cluster_ip, self.headless, self.ports = "ExternalName", None, False, ()


SERVICES = [
    Service("web", (ServicePort(80, 8080, "TCP", "http"), ServicePort(443, 8443, "TCP", "https")),
            cluster_ip="10.96.120.15"),
    Service("dnsu", (ServicePort(53, 53, "UDP", "dns"),), namespace="kube-system", cluster_ip="10.96.0.10"),
    Service("plain", (ServicePort(8080, 8080),), cluster_ip="10.96.33.7"),
    Service("db", (ServicePort(5432, 5432, "TCP", "pg"),), cluster_ip="None"),
    Service("empty", (ServicePort(80, 80),), cluster_ip="None"),
    ExternalNameService("ext", "default", "www.example.org"),
    ExternalNameService("alias", "default", "web.default.svc.cluster.local"),
]
SLICES = [
    EndpointSlice("db-a", "default", "db", "a", (EndpointPort("pg", 5432),),
                  (SliceEndpoint("10.244.1.5", "a", "db-0", hostname="db-0"),
                   SliceEndpoint("10.244.1.6", "a", "db-x"),
                   SliceEndpoint("10.244.1.7", "a", "db-2", ready=False, hostname="db-2"))),
    EndpointSlice("db-b", "default", "db", "b", (EndpointPort("pg", 5432),),
                  (SliceEndpoint("10.244.2.9", "b", "db-1", hostname="db-1"),)),
    EndpointSlice("empty-a", "default", "empty", "a", (EndpointPort("", 80),),
                  (SliceEndpoint("10.244.1.8", "a", "e", ready=False),)),
]


def make_resolver(upstream=False, ttl=30):
    return Resolver(cluster_zone(SERVICES, SLICES, ttl=ttl, dns_ip="10.96.0.10"), upstream=upstream)


def ask(resolver, name, qtype="A", *, edns=None, tcp=False, qid=4242, do=False):
    pkt = DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype=qtype))
    if edns is not None:
        pkt.ar = DNSRROPT(rclass=edns, z=0x8000 if do else 0)
        pkt.arcount = 1
    out = resolver.handle(bytes(pkt), tcp=tcp)
    return out if not isinstance(out, bytes) else DNS(out)


def records(msg, section="an"):
    rrs = getattr(msg, section)
    if rrs is None:
        return []
    return list(rrs)


def rdatas(msg, section="an"):
    out = []
    for rr in records(msg, section):
        r = rr.rdata if rr.type != 33 else (rr.priority, rr.weight, rr.port, rr.target)
        out.append(r.decode() if isinstance(r, bytes) else r)
    return out


RCODE_NXDOMAIN, RCODE_NOERROR, RCODE_REFUSED = 3, 0, 5


# --- records --------------------------------------------------------------------------------------

def test_clusterip_service_has_an_a_record_with_the_ttl_and_authority_bit():
    msg = ask(make_resolver(ttl=17), "web.default.svc.cluster.local")
    assert msg.qr == 1 and msg.aa == 1 and msg.rcode == RCODE_NOERROR and msg.id == 4242
    assert rdatas(msg) == ["10.96.120.15"]
    assert records(msg)[0].ttl == 17


def test_named_ports_get_srv_records_pointing_at_the_service_and_unnamed_ones_none():
    msg = ask(make_resolver(), "_https._tcp.web.default.svc.cluster.local", "SRV")
    assert rdatas(msg) == [(0, 100, 443, b"web.default.svc.cluster.local.")]
    assert rdatas(msg, "ar") == ["10.96.120.15"]     # the target's address as glue
    assert rdatas(ask(make_resolver(), "_dns._udp.dnsu.kube-system.svc.cluster.local", "SRV"))[0][2] == 53
    assert ask(make_resolver(), "_http._udp.web.default.svc.cluster.local", "SRV").rcode == RCODE_NXDOMAIN


def test_service_ip_has_a_ptr_record():
    msg = ask(make_resolver(), "15.120.96.10.in-addr.arpa", "PTR")
    assert rdatas(msg) == ["web.default.svc.cluster.local."]


def test_headless_service_answers_its_ready_endpoints_and_per_pod_names():
    r = make_resolver()
    assert sorted(rdatas(ask(r, "db.default.svc.cluster.local"))) == ["10.244.1.5", "10.244.1.6", "10.244.2.9"]
    assert rdatas(ask(r, "db-0.db.default.svc.cluster.local")) == ["10.244.1.5"]
    # no hostname: a name made of the address (the spec's "unique, system-assigned identifier")
    assert rdatas(ask(r, "10-244-1-6.db.default.svc.cluster.local")) == ["10.244.1.6"]
    # a not-ready endpoint has no records
    assert ask(r, "db-2.db.default.svc.cluster.local").rcode == RCODE_NXDOMAIN


def test_headless_srv_has_one_record_per_ready_endpoint_at_its_hostname():
    msg = ask(make_resolver(), "_pg._tcp.db.default.svc.cluster.local", "SRV")
    targets = sorted(t for _p, _w, _port, t in rdatas(msg))
    assert targets == [b"10-244-1-6.db.default.svc.cluster.local.", b"db-0.db.default.svc.cluster.local.",
                       b"db-1.db.default.svc.cluster.local."]
    assert {port for _p, _w, port, _t in rdatas(msg)} == {5432}
    assert sorted(rdatas(msg, "ar")) == ["10.244.1.5", "10.244.1.6", "10.244.2.9"]


def test_headless_endpoints_have_ptr_records_to_their_hostname():
    assert rdatas(ask(make_resolver(), "5.1.244.10.in-addr.arpa", "PTR")) == ["db-0.db.default.svc.cluster.local."]


def test_headless_service_without_ready_endpoints_is_nxdomain():
    msg = ask(make_resolver(), "empty.default.svc.cluster.local")
    assert msg.rcode == RCODE_NXDOMAIN and records(msg, "ns")[0].type == 6


def test_external_name_is_a_cname_chased_inside_the_zone_and_forwarded_outside():
    msg = ask(make_resolver(), "alias.default.svc.cluster.local")
    assert rdatas(msg) == ["web.default.svc.cluster.local.", "10.96.120.15"]
    msg = ask(make_resolver(), "ext.default.svc.cluster.local", "CNAME")
    assert rdatas(msg) == ["www.example.org."]
    # with no upstream the CNAME alone; with one, the target is asked there and the answers joined
    assert rdatas(ask(make_resolver(), "ext.default.svc.cluster.local")) == ["www.example.org."]
    r = make_resolver(upstream=True)
    fwd = ask(r, "ext.default.svc.cluster.local")
    assert isinstance(fwd, Forward) and fwd.chased
    upstream = Resolver(static_zone({"www.example.org": "192.168.56.254"}))
    reply = upstream.handle(fwd.packet)
    msg = DNS(r.relay(fwd, reply))
    assert rdatas(msg) == ["www.example.org.", "192.168.56.254"] and msg.id == 4242


def test_pod_records_are_synthesized_from_the_dashed_address():
    r = make_resolver()
    assert rdatas(ask(r, "10-244-1-5.default.pod.cluster.local")) == ["10.244.1.5"]
    assert rdatas(ask(r, "172-17-0-3.other.pod.cluster.local")) == ["172.17.0.3"]
    assert ask(r, "10-244-1-256.default.pod.cluster.local").rcode == RCODE_NXDOMAIN
    assert ask(r, "x.10-244-1-5.default.pod.cluster.local").rcode == RCODE_NXDOMAIN
    aaaa = ask(r, "10-244-1-5.default.pod.cluster.local", "AAAA")
    assert aaaa.rcode == RCODE_NOERROR and aaaa.ancount == 0


def test_dns_version_txt():
    assert rdatas(ask(make_resolver(), "dns-version.cluster.local", "TXT")) == [[b"1.1.0"]]


def test_unknown_name_in_the_domain_is_nxdomain_with_the_zone_soa():
    msg = ask(make_resolver(), "nope.default.svc.cluster.local")
    assert msg.rcode == RCODE_NXDOMAIN and msg.aa == 1 and msg.ancount == 0
    soa = records(msg, "ns")[0]
    assert soa.type == 6 and soa.rrname == b"cluster.local." and soa.mname == b"ns.dns.cluster.local."
    assert soa.rname == b"hostmaster.cluster.local." and soa.minimum == 30


def test_existing_name_without_the_type_is_nodata_with_soa():
    # glibc asks AAAA beside A: NXDOMAIN there would make it give up on the A
    msg = ask(make_resolver(), "web.default.svc.cluster.local", "AAAA")
    assert msg.rcode == RCODE_NOERROR and msg.ancount == 0 and records(msg, "ns")[0].type == 6
    # empty non-terminals exist too
    for name in ("default.svc.cluster.local", "svc.cluster.local", "_tcp.web.default.svc.cluster.local"):
        m = ask(make_resolver(), name)
        assert (m.rcode, m.ancount, m.nscount) == (RCODE_NOERROR, 0, 1), name


def test_reverse_zone_nxdomain_inside_the_cidrs_and_not_ours_outside():
    r = make_resolver()
    msg = ask(r, "99.99.96.10.in-addr.arpa", "PTR")
    assert msg.rcode == RCODE_NXDOMAIN and records(msg, "ns")[0].rrname == b"10.in-addr.arpa."
    assert ask(r, "1.1.168.192.in-addr.arpa", "PTR").rcode == RCODE_REFUSED
    assert isinstance(ask(make_resolver(upstream=True), "1.1.168.192.in-addr.arpa", "PTR"), Forward)


def test_outside_names_are_refused_without_upstream_and_forwarded_with_one():
    msg = ask(make_resolver(), "www.example.org")
    assert msg.rcode == RCODE_REFUSED and msg.aa == 0
    fwd = ask(make_resolver(upstream=True), "www.example.org")
    assert isinstance(fwd, Forward) and not fwd.chased


def test_names_are_case_insensitive_and_the_answer_keeps_the_question_case():
    msg = ask(make_resolver(), "WeB.DeFault.SVC.cluster.LOCAL")
    assert rdatas(msg) == ["10.96.120.15"]
    assert msg.qd[0].qname == b"WeB.DeFault.SVC.cluster.LOCAL." and records(msg)[0].rrname == msg.qd[0].qname


def test_edns_opt_is_echoed_with_our_buffer_size_and_the_do_bit():
    msg = ask(make_resolver(), "web.default.svc.cluster.local", edns=4096, do=True)
    opt = [rr for rr in records(msg, "ar") if rr.type == 41]
    assert len(opt) == 1 and opt[0].rclass == wire.SERVER_UDP_SIZE and opt[0].z & 0x8000
    assert ask(make_resolver(), "web.default.svc.cluster.local").arcount == 0


def test_edns_version_above_zero_is_badvers():
    pkt = bytearray(wire.query_packet(1, wire.encode_name("web.default.svc.cluster.local"), wire.A, edns_size=1232))
    pkt[-5] = 1    # the OPT TTL's version byte
    msg = DNS(make_resolver().handle(bytes(pkt)))
    assert msg.rcode == 0 and msg.ar[0].version == 0 and msg.ar[0].extrcode == 1   # 16 = BADVERS


def big_resolver(n_endpoints=60):
    eps = tuple(SliceEndpoint(f"10.244.3.{i}", "a", f"p{i}", hostname=f"big-host-name-{i}") for i in range(1, n_endpoints))
    svc = Service("big", (ServicePort(80, 80, "TCP", "http"),), cluster_ip="None")
    return Resolver(cluster_zone([svc], [EndpointSlice("big-a", "default", "big", "a", (EndpointPort("http", 80),), eps)]))


def test_answer_too_big_for_udp_is_truncated_with_tc_and_whole_over_tcp():
    r = big_resolver()
    udp = ask(r, "_http._tcp.big.default.svc.cluster.local", "SRV")
    assert udp.tc == 1 and udp.ancount == 0
    assert len(r.handle(bytes(DNS(rd=1, qd=DNSQR(qname="big.default.svc.cluster.local"))))) <= 512
    tcp = ask(r, "_http._tcp.big.default.svc.cluster.local", "SRV", tcp=True)
    assert tcp.tc == 0 and tcp.ancount == 59
    # a bigger EDNS buffer takes more before truncating: 59 A records (16 bytes each) fit 1232, not 512
    assert ask(r, "big.default.svc.cluster.local").tc == 1
    assert ask(r, "big.default.svc.cluster.local", edns=1232).ancount == 59


def test_glue_is_dropped_before_the_answer_is_truncated():
    r = big_resolver(16)
    msg = ask(r, "_http._tcp.big.default.svc.cluster.local", "SRV", edns=1232)
    assert msg.tc == 0 and msg.ancount == 15 and msg.arcount == 1   # only the OPT left in additional


def test_not_a_query_or_no_header_is_dropped_and_other_opcodes_notimp():
    r = make_resolver()
    assert r.handle(b"\x01\x02") is None
    answer_packet = bytes(DNS(id=1, qr=1, qd=DNSQR(qname="web.default.svc.cluster.local")))
    assert r.handle(answer_packet) is None
    assert DNS(r.handle(bytes(DNS(id=1, opcode=2, qd=DNSQR(qname="x"))))).rcode == 4


def test_zone_transfer_and_other_classes_are_refused():
    assert ask(make_resolver(), "cluster.local", "AXFR").rcode == RCODE_REFUSED
    msg = DNS(make_resolver().handle(bytes(DNS(rd=1, qd=DNSQR(qname="version.bind", qtype="TXT", qclass="CH")))))
    assert msg.rcode == RCODE_REFUSED


def test_upstream_static_zone_answers_its_names_and_nxdomain_for_the_rest():
    r = Resolver(static_zone({"www.example.org": "192.168.56.254", "example.org": "192.168.56.254"}))
    assert rdatas(ask(r, "WWW.example.org")) == ["192.168.56.254"]
    assert ask(r, "example.org", "AAAA").rcode == RCODE_NOERROR
    assert ask(r, "other.example.com").rcode == RCODE_NXDOMAIN


def test_relay_ignores_replies_to_other_questions_and_patches_the_id():
    r = make_resolver(upstream=True)
    fwd = ask(r, "www.example.org", qid=777)
    upstream = Resolver(static_zone({"www.example.org": "1.2.3.4", "evil.example.org": "6.6.6.6"}))
    assert r.relay(fwd, upstream.handle(bytes(DNS(id=5, rd=1, qd=DNSQR(qname="evil.example.org"))))) is None
    out = DNS(r.relay(fwd, upstream.handle(bytes(DNS(id=5, rd=1, qd=DNSQR(qname="www.example.org"))))))
    assert out.id == 777 and rdatas(out) == ["1.2.3.4"]
    assert DNS(r.servfail(fwd)).rcode == 2


# --- wire details ---------------------------------------------------------------------------------

def test_compression_pointer_loops_and_forward_pointers_are_format_errors():
    header = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0)
    for body in (b"\xc0\x0c", b"\x01a\xc0\x0c", b"\xc0\x20" + b"\0" * 40, b"\x3f" + b"a" * 10, b"\x80\x00"):
        with pytest.raises(wire.FormatError):
            wire.parse_query(header + body + b"\x00\x01\x00\x01")
    long_name = b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\0"
    with pytest.raises(wire.FormatError):
        wire.parse_query(header + long_name + b"\x00\x01\x00\x01")


def test_lying_counts_answer_formerr_with_the_question():
    pkt = bytearray(bytes(DNS(id=9, rd=1, qd=DNSQR(qname="web.default.svc.cluster.local"))))
    pkt[11] = 3    # three additional records that are not there
    msg = DNS(make_resolver().handle(bytes(pkt)))
    assert msg.rcode == 1 and msg.id == 9 and msg.qd[0].qname == b"web.default.svc.cluster.local."


def test_labels_holding_dots_do_not_match_other_names():
    name = b"\x0bweb.default\x03svc\x07cluster\x05local\x00"
    msg = DNS(make_resolver().handle(struct.pack("!HHHHHH", 1, 0x100, 1, 0, 0, 0) + name + b"\0\1\0\1"))
    assert msg.rcode == RCODE_NXDOMAIN


# --- fast path ------------------------------------------------------------------------------------

QUESTIONS = [("web.default.svc.cluster.local", "A"), ("web.default.svc.cluster.local", "AAAA"),
             ("_http._tcp.web.default.svc.cluster.local", "SRV"), ("db.default.svc.cluster.local", "A"),
             ("nope.default.svc.cluster.local", "A"), ("15.120.96.10.in-addr.arpa", "PTR"),
             ("dns-version.cluster.local", "TXT"), ("10-244-1-5.default.pod.cluster.local", "A"),
             ("www.example.org", "A"), ("alias.default.svc.cluster.local", "A")]


@pytest.mark.parametrize("edns", [None, 1232, 4096, 300])
def test_fast_path_gives_the_full_paths_bytes_but_for_id_and_case(edns):
    resolver = make_resolver()
    table = AnswerTable(resolver, [(wire.encode_name("web.default.svc.cluster.local"), wire.A)])
    assert len(table) == 2
    for name, qtype in QUESTIONS:
        first = DNS(id=1, rd=1, qd=DNSQR(qname=name, qtype=qtype))
        if edns:
            first.ar, first.arcount = DNSRROPT(rclass=edns, z=0), 1
        full = resolver.handle(bytes(first))
        table.remember(bytes(first), full)
        for qid, case in ((2, name.upper()), (0xBEEF, name.title()), (3, name)):
            q = DNS(id=qid, rd=1, ad=1, qd=DNSQR(qname=case, qtype=qtype))
            if edns:
                q.ar, q.arcount = DNSRROPT(rclass=edns, z=0), 1
            fast = table.answer(bytes(q))
            assert fast is not None, (name, qtype)
            assert fast == resolver.handle(bytes(q)), (name, qtype, case)


def test_fast_path_leaves_odd_queries_to_the_full_path():
    table = AnswerTable(make_resolver(), [(wire.encode_name("web.default.svc.cluster.local"), wire.A)])
    good = bytes(DNS(id=1, rd=1, qd=DNSQR(qname="web.default.svc.cluster.local")))
    assert table.answer(good) is not None
    assert table.answer(good + b"junk") is None
    no_rd = bytearray(good)
    no_rd[2] = 0
    assert table.answer(bytes(no_rd)) is None
    do = DNS(id=1, rd=1, qd=DNSQR(qname="web.default.svc.cluster.local"), ar=DNSRROPT(rclass=1232, z=0x8000))
    assert table.answer(bytes(do)) is None
    # a truncated or oversized answer is never remembered
    r = big_resolver()
    big = AnswerTable(r)
    q = bytes(DNS(id=1, rd=1, qd=DNSQR(qname="_http._tcp.big.default.svc.cluster.local", qtype="SRV")))
    big.remember(q, r.handle(q))
    assert len(big) == 0


# --- fuzz -----------------------------------------------------------------------------------------

def check_response(out):
    """Nothing, a Forward, or a message a strict parser reads back whole."""
    if out is None or isinstance(out, Forward):
        return
    assert isinstance(out, bytes) and len(out) >= 12
    qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", out)
    assert flags & wire.QR
    pos = 12
    for _ in range(qd):
        pos = wire.read_name(out, pos)[1] + 4
    for _ in range(an + ns + ar):
        pos = wire.skip_rr(out, pos)[5]
    assert pos == len(out)


def mutations(rng, seeds):
    for _ in range(4000):
        base = bytearray(rng.choice(seeds))
        kind = rng.randrange(5)
        if kind == 0:
            for _ in range(rng.randint(1, 6)):
                base[rng.randrange(len(base))] = rng.randrange(256)
        elif kind == 1:
            del base[rng.randrange(len(base)):]
        elif kind == 2:
            base += bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
        elif kind == 3:
            base = bytearray(rng.randbytes(rng.randint(0, 80)))
        else:
            struct.pack_into("!HHHH", base, 4, *(rng.choice((0, 1, 2, 255, 65535)) for _ in range(4)))
        yield bytes(base)


def hostile_seeds():
    from scapy.layers.dns import DNSRR
    yield bytes(DNS(rd=1, qd=DNSQR(qname="web.default.svc.cluster.local")))
    yield bytes(DNS(rd=1, qd=DNSQR(qname="_pg._tcp.db.default.svc.cluster.local", qtype="SRV"), ar=DNSRROPT(rclass=4096)))
    yield bytes(DNS(rd=1, qd=DNSQR(qname="5.1.244.10.in-addr.arpa", qtype="PTR")))
    yield bytes(DNS(rd=1, qd=DNSQR(qname="www.example.org", qtype=255), an=DNSRR(rrname="x", rdata="1.2.3.4")))
    yield struct.pack("!HHHHHH", 7, 0x100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"      # self pointer
    yield struct.pack("!HHHHHH", 7, 0x100, 1, 0, 0, 0) + b"\x01a\xc0\x0c\x00\x01\x00\x01"  # loop via the label
    yield struct.pack("!HHHHHH", 7, 0x100, 1, 0, 0, 2) + b"\x00\x00\x01\x00\x01" + bytes(DNSRROPT()) * 2


def test_fuzz_thousands_of_malformed_packets_never_raise_and_answer_valid_messages():
    rng = random.Random(6)
    seeds = list(hostile_seeds())
    resolvers = [make_resolver(), make_resolver(upstream=True), big_resolver()]
    table = AnswerTable(resolvers[0], [(wire.encode_name("web.default.svc.cluster.local"), wire.A)])
    answered = 0
    for pkt in mutations(rng, seeds):
        for r in resolvers:
            for tcp in (False, True):
                out = r.handle(pkt, tcp=tcp)
                check_response(out)
                if isinstance(out, bytes):
                    answered += 1
                    if not tcp:
                        table.remember(pkt, out)
                        assert len(out) <= max(512, 65535 if tcp else 4096)
        check_response(table.answer(pkt))
    assert answered > 1000   # most packets have a readable header and get FORMERR or an answer
