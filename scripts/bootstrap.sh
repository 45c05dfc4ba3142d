#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine: system packages, then a
# virtual environment with kube-netlab installed in editable mode.
# NETLAB_BOOTSTRAP=runtime installs only what a node runs (a Vagrant VM), not
# the tools the tests and benchmarks use.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  iproute2 iptables nftables iputils-ping curl dnsutils tcpdump conntrack
  procps psmisc python3 python3-venv python3-pip
  ipvsadm graphviz tshark               # IPVS mode; graph pictures; capture's pcaps read back
  etcd-server etcd-client               # the multi-machine store
)
if [ "${NETLAB_BOOTSTRAP:-all}" != runtime ]; then
  APT_PACKAGES+=(
    containernetworking-plugins iperf3 dnsmasq-base dnsperf   # benchmark anchors (reference plugins, dnsmasq)
    qemu-system-x86 busybox-static cpio   # the kernel-test harness (tests/kernel): IPVS and dummy need Debian's kernel
    chromium                              # the graph's HTML page screenshotted
    vagrant ruby shellcheck               # the Vagrantfile validated, the provisioning script checked
  )
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "bootstrap: run as root (the lab creates network namespaces)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# br_netfilter makes bridged pod traffic visible to iptables (kube-proxy needs it);
# a kernel with it built in, or without modules, is fine too.
modprobe br_netfilter 2>/dev/null || true

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ] || [ ! -x .venv/bin/netlab-bridge ]; then
  .venv/bin/pip install -q --upgrade pip
  # compat mode: a plain path entry; the default editable finder adds ~10 ms to every exec'd plugin start
  .venv/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat
  rm -f .venv/.installed-*
  touch "$stamp"
fi
