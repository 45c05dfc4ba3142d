"""Stale UDP conntrack flushing: the listed table parsed, and filters matched against it so
that `conntrack -D` runs only where an entry would be deleted."""
from __future__ import annotations

from proxy.conntrack import Filter, UdpFlow, parse_udp_flows

LISTING = """\
udp      17 29 src=10.244.1.2 dst=10.96.0.10 sport=45678 dport=53 src=10.244.2.3 dst=10.244.1.2 sport=53 dport=45678 mark=0 use=1
udp      17 12 src=192.168.56.254 dst=192.168.56.11 sport=5000 dport=30053 [UNREPLIED] src=10.244.1.7 dst=10.244.1.1 sport=53 dport=5000 mark=0 use=1
tcp      6 117 TIME_WAIT src=10.244.1.2 dst=10.96.0.1 sport=1 dport=443 src=10.244.2.3 dst=10.244.1.2 sport=443 dport=1 [ASSURED]
"""


def test_the_listing_gives_original_destination_and_reply_source():
    assert parse_udp_flows(LISTING) == [UdpFlow("10.96.0.10", 53, "10.244.2.3"),
                                            UdpFlow("192.168.56.11", 30053, "10.244.1.7")]


def test_filters_match_like_conntrack_d_and_print_its_arguments():
    dns = UdpFlow("10.96.0.10", 53, "10.244.2.3")
    assert Filter(53, "10.96.0.10", "10.244.2.3").matches(dns)
    assert not Filter(53, "10.96.0.10", "10.244.2.4").matches(dns)       # another endpoint's
    assert not Filter(5353, "10.96.0.10").matches(dns)
    assert Filter(53).matches(dns)                                         # the NodePort form: port only
    assert Filter(30053, None, "10.244.1.7").args() == ["--orig-port-dst", "30053", "--reply-src", "10.244.1.7"]
    assert Filter(53, "10.96.0.10").args() == ["--orig-dst", "10.96.0.10", "--orig-port-dst", "53"]
