#!/usr/bin/env bash
# Provisions one VM of the Vagrant lab (see Vagrantfile, docs/vagrant.md):
# packages and the venv (scripts/bootstrap.sh), the kernel settings a node
# needs, then `kube-netlab control up` on the first VM and `kube-netlab node
# join` on every VM, on the private network's interface.
#
#   vagrant-provision.sh --name node-b --ip 192.168.56.12 --control-ip 192.168.56.11 \
#       [--control] [--proxy-mode iptables|nftables|ipvs] [--nftables-layout kube-proxy|maps]
#
# Safe to run again (Vagrant runs it on every `vagrant up`): every step converges.
# Sourcing it defines the functions only (tests/unit/test_vagrant.py does).
set -euo pipefail

REPO=${NETLAB_REPO:-/vagrant}
KUBE_NETLAB=${KUBE_NETLAB:-$REPO/.venv/bin/kube-netlab}
ETCD_PORT=2379
CLUSTER_KEY=/netlab/cluster   # netlab/state.py CLUSTER_KEY: control up writes it after flannel's config; join needs it
CONTROL_WAIT_SECONDS=${NETLAB_CONTROL_WAIT:-900}   # a first VM's bootstrap downloads packages for minutes
PROXY_MODES="iptables nftables ipvs"
NFTABLES_LAYOUTS="kube-proxy maps"

die() {
  echo "vagrant-provision: $*" >&2
  exit 2
}

say() {
  echo "vagrant-provision: $*"
}

# The interface that carries ADDRESS, from `ip -o -4 addr show` on stdin.
# Chosen by address, like flannel's --iface-regex/--public-ip, not by name:
# the first NIC (eth0) is the provider's management network (VirtualBox NAT,
# 10.0.2.15 on every VM; libvirt 192.168.121.0/24) and must never carry VXLAN,
# and the private NIC is eth1 or enp0s8 depending on the box.
iface_for_address() {
  local address=$1 line ifname family cidr found=""
  while read -r line || [ -n "$line" ]; do
    # "3: eth1    inet 192.168.56.12/24 brd ... scope global eth1\       valid_lft ..."
    read -r _ ifname family cidr _ <<<"$line"
    [ "$family" = inet ] || continue
    ifname=${ifname%%@*}
    if [ "${cidr%%/*}" = "$address" ]; then
      echo "$ifname"
      return 0
    fi
    found+=" $ifname=${cidr}"
  done
  echo "vagrant-provision: no interface has address $address (found:${found:- none});" \
    "check the private_network line of the Vagrantfile and run 'vagrant reload'" >&2
  return 1
}

is_one_of() {
  local value=$1 choice
  for choice in $2; do
    [ "$value" = "$choice" ] && return 0
  done
  return 1
}

is_ipv4() {
  local IFS=. octet
  local -a octets
  [[ $1 =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || return 1
  read -r -a octets <<<"$1"
  for octet in "${octets[@]}"; do
    [ "$((10#$octet))" -le 255 ] || return 1
  done
}

# Sets NODE_NAME, NODE_IP, CONTROL_IP, IS_CONTROL, PROXY_MODE, NFTABLES_LAYOUT;
# bad input stops here, before anything on the machine is changed.
parse_args() {
  NODE_NAME="" NODE_IP="" CONTROL_IP="" IS_CONTROL=no PROXY_MODE=iptables NFTABLES_LAYOUT=kube-proxy
  while [ $# -gt 0 ]; do
    case $1 in
      --name|--ip|--control-ip|--proxy-mode|--nftables-layout)
        [ $# -ge 2 ] || die "$1 needs a value"
        case $1 in
          --name) NODE_NAME=$2 ;;
          --ip) NODE_IP=$2 ;;
          --control-ip) CONTROL_IP=$2 ;;
          --proxy-mode) PROXY_MODE=$2 ;;
          --nftables-layout) NFTABLES_LAYOUT=$2 ;;
        esac
        shift 2 ;;
      --control) IS_CONTROL=yes; shift ;;
      *) die "unknown argument '$1' (see the usage at the top of this script)" ;;
    esac
  done
  [[ $NODE_NAME =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] \
    || die "--name '$NODE_NAME': a node name is lower-case letters, digits and '-' (e.g. node-a)"
  is_ipv4 "$NODE_IP" || die "--ip '$NODE_IP': give this VM's private network address (e.g. 192.168.56.11)"
  is_ipv4 "$CONTROL_IP" || die "--control-ip '$CONTROL_IP': give the first VM's address, where etcd listens"
  is_one_of "$PROXY_MODE" "$PROXY_MODES" \
    || die "--proxy-mode '$PROXY_MODE' (NETLAB_PROXY_MODE): use one of: $PROXY_MODES"
  is_one_of "$NFTABLES_LAYOUT" "$NFTABLES_LAYOUTS" \
    || die "--nftables-layout '$NFTABLES_LAYOUT' (NETLAB_NFTABLES_LAYOUT): use one of: $NFTABLES_LAYOUTS"
}

# What kube-proxy and flannel expect of a node: bridged pod traffic seen by
# iptables (br_netfilter) and forwarding on; the IPVS modules in ipvs mode.
# Written to modules-load.d and sysctl.d so a reboot keeps them.
configure_kernel() {
  local -a modules=(br_netfilter)
  if [ "$PROXY_MODE" = ipvs ]; then
    modules+=(ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh nf_conntrack)
  fi
  printf '%s\n' "${modules[@]}" >/etc/modules-load.d/kube-netlab.conf
  modprobe -a "${modules[@]}"
  cat >/etc/sysctl.d/90-kube-netlab.conf <<'EOF'
net.ipv4.ip_forward = 1
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
EOF
  sysctl -q -p /etc/sysctl.d/90-kube-netlab.conf
}

# Debian's etcd-server package starts its own etcd on 127.0.0.1:2379; the lab's
# etcd is the one `control up --listen` runs on the first VM. Two would leave
# etcdctl and students reading the wrong one.
stop_packaged_etcd() {
  if systemctl list-unit-files etcd.service >/dev/null 2>&1; then
    systemctl disable --now etcd.service >/dev/null 2>&1 || true
  fi
}

# A login shell (`vagrant ssh`, then `sudo -i`) finds the CLI and the cluster.
write_profile() {
  cat >/etc/profile.d/kube-netlab.sh <<EOF
# kube-netlab Vagrant lab (scripts/vagrant-provision.sh)
export NETLAB_STORE=$(store_url)
export ETCDCTL_API=3
export ETCDCTL_ENDPOINTS=http://$CONTROL_IP:$ETCD_PORT
case ":\$PATH:" in *":$REPO/.venv/bin:"*) ;; *) PATH=$REPO/.venv/bin:\$PATH ;; esac
EOF
}

# The other VMs may boot first (vagrant-libvirt brings machines up in
# parallel): wait until the first VM's etcd holds the cluster (control up done).
wait_for_control_plane() {
  local waited=0
  until [ -n "$(etcdctl --endpoints "http://$CONTROL_IP:$ETCD_PORT" --dial-timeout 2s \
                 get --print-value-only "$CLUSTER_KEY" 2>/dev/null)" ]; do
    if [ "$waited" -ge "$CONTROL_WAIT_SECONDS" ]; then
      die "no cluster at $(store_url) (key $CLUSTER_KEY) after ${waited}s;" \
        "is the first VM up? (vagrant up node-a; vagrant provision node-a)"
    fi
    [ "$waited" -eq 0 ] && say "waiting for the control plane on $CONTROL_IP"
    sleep 5
    waited=$((waited + 5))
  done
}

main() {
  parse_args "$@"
  [ "$(id -u)" -eq 0 ] || die "run as root (Vagrant's shell provisioner does)"
  [ -x "$REPO/scripts/bootstrap.sh" ] || die "no $REPO/scripts/bootstrap.sh: is the repo synced to $REPO? (vagrant rsync)"

  NETLAB_BOOTSTRAP=runtime "$REPO/scripts/bootstrap.sh"   # what a node runs, not the test tools
  configure_kernel
  stop_packaged_etcd
  write_profile

  local iface
  iface=$(ip -o -4 addr show | iface_for_address "$NODE_IP")
  say "$NODE_NAME: underlay $iface ($NODE_IP), the private network; not the management NIC"

  if [ "$IS_CONTROL" = yes ]; then
    control_up
  else
    wait_for_control_plane
  fi
  node_join "$iface"
}

# The first VM: etcd on the private network, the cluster's settings and system objects.
control_up() {
  "$KUBE_NETLAB" control up --store "$(store_url)" --listen "$CONTROL_IP" \
    --proxy-mode "$PROXY_MODE" --nftables-layout "$NFTABLES_LAYOUT"
}

# Every VM: this node's agent in the VM's own network namespace, VXLAN over IFACE.
node_join() {
  "$KUBE_NETLAB" node join --store "$(store_url)" --name "$NODE_NAME" --iface "$1"
}

store_url() {
  echo "etcd://$CONTROL_IP:$ETCD_PORT"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
