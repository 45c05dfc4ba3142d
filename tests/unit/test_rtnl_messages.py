"""cni.rtnl's packing and parsing against the kernel's layouts (rtattr padding, nesting,
ifinfomsg/ifaddrmsg/rtmsg), without a socket."""
from __future__ import annotations

import struct

from cni import rtnl


def test_attributes_are_padded_to_four_bytes_and_nested_ones_flagged():
    a = rtnl.string(3, "eth0")                      # IFLA_IFNAME "eth0\0": 4 + 5 = 9, padded to 12
    assert a == struct.pack("=HH", 9, 3) + b"eth0\0" + b"\0\0\0"
    n = rtnl.nested(18, rtnl.string(1, "veth"))
    length, kind = struct.unpack_from("=HH", n)
    assert kind == 18 | rtnl.NLA_F_NESTED and length == 4 + len(rtnl.string(1, "veth"))
    assert rtnl.parse_attrs(a + rtnl.u32(4, 1450)) == [(3, b"eth0\0"), (4, struct.pack("=I", 1450))]


def test_a_link_reply_reads_like_pyroute2s():
    body = (struct.pack("=BxHiII", 0, 1, 7, 0x1003, 0) + rtnl.string(3, "veth1") + rtnl.u32(4, 1450)
            + rtnl.attr(1, bytes.fromhex("02aabbccddee")) + rtnl.u32(5, 2) + rtnl.u32(10, 4)
            + rtnl.nested(18, rtnl.string(1, "veth")))
    m = rtnl.parse_link(body)
    assert (m["index"], m["flags"], m.get("IFLA_IFNAME"), m.get("IFLA_MTU")) == (7, 0x1003, "veth1", 1450)
    assert m.get("IFLA_ADDRESS") == "02:aa:bb:cc:dd:ee" and m.get("IFLA_LINK") == 2 and m.get("IFLA_MASTER") == 4
    assert m.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) == "veth" and m.get("IFLA_IFALIAS") is None


def test_address_and_route_replies():
    a = rtnl.parse_addr(struct.pack("=BBBBI", 2, 24, 0, 0, 7) + rtnl.attr(1, bytes([10, 244, 1, 5])))
    assert (a["index"], a["prefixlen"], a.get("IFA_ADDRESS")) == (7, 24, "10.244.1.5")
    r = rtnl.parse_route(struct.pack("=BBBBBBBBI", 2, 0, 0, 0, 254, 4, 0, 1, 0)
                         + rtnl.attr(5, bytes([10, 244, 1, 1])) + rtnl.u32(4, 7) + rtnl.u32(15, 254))
    assert (r["dst_len"], r.get("RTA_DST"), r.get("RTA_GATEWAY"), r.get("RTA_OIF"), r.get("RTA_TABLE")) == (
        0, None, "10.244.1.1", 7, 254)


def test_link_attributes_carry_what_was_asked():
    out = rtnl._link_attrs(ifname="cni0", address="02:00:00:00:00:01", mtu=1450, master=3, ifalias="a b")
    got = dict(rtnl.parse_attrs(out))
    assert got[3] == b"cni0\0" and got[1] == bytes.fromhex("020000000001") and got[20] == b"a b"
    assert struct.unpack("=I", got[4])[0] == 1450 and struct.unpack("=I", got[10])[0] == 3
