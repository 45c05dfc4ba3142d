"""Name and value checks shared by the lab and manifest parsers.

Each check returns None when the value is fine, or a message that shows the
bad value and says how to fix it (Kubernetes' own rules, worded for people).
"""
from __future__ import annotations

import ipaddress
import re

from .errors import show

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")

LABEL_HINT = "use lowercase letters, digits and '-', starting and ending with a letter or digit (RFC 1123 label)"
SUBDOMAIN_HINT = ("use lowercase letters, digits, '-' and '.', each part starting and ending with a letter "
                  "or digit (RFC 1123 subdomain)")


def dns_label(value: str, *, max_len: int = 63, why: str = "") -> str | None:
    """RFC 1123 label: Namespace, container and node names."""
    if not _LABEL.match(value):
        return f"{show(value)} is not a valid name; {LABEL_HINT}"
    if len(value) > max_len:
        return f"{show(value)} is {len(value)} characters; use at most {max_len}{why}"
    return None


def dns_subdomain(value: str, *, max_len: int = 253) -> str | None:
    """RFC 1123 subdomain: Pod, Deployment and Service-less object names, domains."""
    if not _SUBDOMAIN.match(value):
        return f"{show(value)} is not a valid name; {SUBDOMAIN_HINT}"
    if len(value) > max_len:
        return f"{show(value)} is {len(value)} characters; use at most {max_len}"
    return None


def service_name(value: str) -> str | None:
    """Services are RFC 1035 labels (they become DNS names): start with a letter."""
    msg = dns_label(value)
    if msg:
        return msg
    if not value[0].isalpha():
        return f"{show(value)} must start with a letter (Service names are RFC 1035 labels, they become DNS names)"
    return None


def label_key(key: str) -> str | None:
    """Kubernetes label key: optional DNS-subdomain prefix and '/', then a name of at most 63."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or dns_subdomain(prefix)):
        return f"label key {show(key)} has an invalid prefix; the part before '/' must be a DNS subdomain like example.com"
    if not name or len(name) > 63 or not _QUALIFIED.match(name):
        return (f"label key {show(key)} is invalid; use at most 63 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit (optionally prefixed by example.com/)")
    return None


def label_value(value: str) -> str | None:
    if value and (len(value) > 63 or not _QUALIFIED.match(value)):
        return (f"label value {show(value)} is invalid; use at most 63 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit (or an empty string)")
    return None


def port_name(value: str) -> str | None:
    """IANA service name, as Kubernetes requires for named ports."""
    if (len(value) > 15 or not _PORT_NAME.match(value) or "--" in value
            or not any(c.isalpha() for c in value)):
        return (f"{show(value)} is not a valid port name; use at most 15 lowercase letters, digits and '-', "
                "with at least one letter and no '--' (IANA service name)")
    return None


def env_name(value: str) -> str | None:
    if not _ENV_NAME.match(value):
        return (f"{show(value)} is not a valid environment variable name; use letters, digits, '_', '-' "
                "and '.', not starting with a digit")
    return None


def ipv4_address(value: str) -> str | None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        if ":" in value:
            return f"{show(value)} is an IPv6 address; only IPv4 is supported, use an address like 10.0.0.1"
        return f"{show(value)} is not an IPv4 address; write it like 192.168.56.11"
    return None


def ipv4_network(value: str) -> str | None:
    """A CIDR with no host bits set; the message suggests the network meant."""
    if "/" not in value:
        return f"{show(value)} is not a CIDR; add the prefix length, e.g. {value}/24"
    try:
        ipaddress.IPv4Network(value, strict=True)
    except ValueError:
        if ":" in value:
            return f"{show(value)} is an IPv6 CIDR; only IPv4 is supported, use a CIDR like 10.244.0.0/16"
        try:
            net = ipaddress.IPv4Network(value, strict=False)
        except ValueError:
            return f"{show(value)} is not an IPv4 CIDR; write it like 10.244.0.0/16"
        return f"{show(value)} has host bits set; use {net}"
    return None
