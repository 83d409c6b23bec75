# shellcheck shell=bash
# Namespaces, a software switch (bridge in netns dt-sw) and a SPAN port built with tc
# mirred, mirrored to two sensor-side ports.  Sourced by lab.sh.

# A veth that behaves like a physical NIC seen from a SPAN port: no TSO/GSO/GRO (else the
# mirror sees 64 KiB super-frames) and no checksum offload (else mirrored frames carry
# partial checksums).
nic_like() {  # nic_like <netns> <ifname>
  ip netns exec "$1" ethtool -K "$2" tx off rx off tso off gso off gro off >/dev/null 2>&1 || true
}

# No IPv6 (keeps the SPAN free of ND/MLD chatter), loopback up.
ns_basics() {
  ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip netns exec "$1" ip link set lo up
}

net_is_up() {
  ns_exists $NS_SW && ns_exists $NS_DC && ns_exists $NS_CL && ns_exists $NS_CL2 && ns_exists $NS_SEN &&
  ns_exists $NS_DC2 && in_sen ip link show $SEN2_IF >/dev/null 2>&1 &&
  in_sw tc filter show dev $DC_SWP ingress 2>/dev/null | grep -q mirred &&
  in_sw tc filter show dev $DC_SWP egress  2>/dev/null | grep -q mirred
}

net_up() {
  if net_is_up; then log "network already up"; return 0; fi
  net_down   # clear half-built state from an earlier failed run
  log "creating namespaces $NS_SW $NS_DC $NS_DC2 $NS_CL $NS_CL2 $NS_SEN"
  local ns
  for ns in $NS_SW $NS_DC $NS_DC2 $NS_CL $NS_CL2 $NS_SEN; do
    ip netns add $ns || die "ip netns add $ns"
    ns_basics $ns
  done
  in_sw ip link add $BR type bridge stp_state 0 forward_delay 0
  in_sw ip link set $BR up

  ip link add $DC_IF netns $NS_DC type veth peer name $DC_SWP netns $NS_SW
  ip link add $DC_IF netns $NS_DC2 type veth peer name $DC2_SWP netns $NS_SW
  ip link add $CL_IF netns $NS_CL type veth peer name $CL_SWP netns $NS_SW
  ip link add $CL_IF netns $NS_CL2 type veth peer name $CL2_SWP netns $NS_SW
  # SPAN destinations (not bridge members): each DC's sensor port and the recorder's port
  ip link add $SPAN_IF netns $NS_SW type veth peer name $SEN_IF netns $NS_SEN
  ip link add $SPAN2_IF netns $NS_SW type veth peer name $SEN2_IF netns $NS_SEN
  ip link add $RECSPAN_IF netns $NS_SW type veth peer name $REC_IF netns $NS_SEN

  local p
  for p in $DC_SWP $DC2_SWP $CL_SWP $CL2_SWP; do
    in_sw ip link set $p master $BR
    nic_like $NS_SW $p
    in_sw ip link set $p up
  done
  for p in $SPAN_IF $SPAN2_IF $RECSPAN_IF; do nic_like $NS_SW $p; in_sw ip link set $p up; done

  nic_like $NS_DC $DC_IF
  in_dc ip addr add $DC_IP/24 dev $DC_IF
  in_dc ip link set $DC_IF up
  nic_like $NS_DC2 $DC_IF
  in_dc2 ip addr add $DC2_IP/24 dev $DC_IF
  in_dc2 ip link set $DC_IF up
  nic_like $NS_CL $CL_IF
  in_cl ip addr add $CL_IP/24 dev $CL_IF
  in_cl ip link set $CL_IF up
  nic_like $NS_CL2 $CL_IF
  in_cl2 ip addr add $CL2_IP/24 dev $CL_IF
  in_cl2 ip link set $CL_IF up

  # sensor side: no addresses, promiscuous, receive only
  for p in $SEN_IF $SEN2_IF $REC_IF; do nic_like $NS_SEN $p; in_sen ip link set $p promisc on up; done

  # SPAN: everything entering (from a DC) or leaving (to a DC) a DC's switch port is copied
  # to that DC's sensor port (one monitor session per DC, as a site with a sensor per DC
  # has) and to the recorder's port; what goes from one DC to the other reaches both
  # sensors, and the recorder twice, as a real SPAN does.
  # u32 "match anything" with protocol all (also ARP); cls_matchall may be absent.
  local dir swp span
  for swp in $DC_SWP $DC2_SWP; do
    span=$SPAN_IF; [ $swp = $DC2_SWP ] && span=$SPAN2_IF
    in_sw tc qdisc add dev $swp clsact
    for dir in ingress egress; do
      in_sw tc filter add dev $swp $dir protocol all prio 1 u32 match u32 0 0 \
          action mirred egress mirror dev $span \
          action mirred egress mirror dev $RECSPAN_IF || die "tc mirred on $swp $dir"
    done
  done

  # per-namespace resolv.conf (ip netns exec bind-mounts /etc/netns/<ns>/*)
  for ns in $NS_CL $NS_CL2 $NS_DC $NS_DC2; do
    mkdir -p /etc/netns/$ns
    printf 'search %s\nnameserver %s\n' $DNSDOMAIN $DC_IP > /etc/netns/$ns/resolv.conf
  done
  in_cl ping -c1 -W2 $DC_IP >/dev/null || die "client 1 cannot reach the DC"
  in_cl2 ping -c1 -W2 $DC_IP >/dev/null || die "client 2 cannot reach the DC"
  log "network up: DC $DC_IP, clients $CL_IP and $CL2_IP, SPAN -> $NS_SEN:$SEN_IF (DC1's sensor), $NS_SEN:$SEN2_IF (DC2's) and $NS_SEN:$REC_IF (recorder)"
}

net_down() {
  local ns
  for ns in $NS_SEN $NS_CL2 $NS_CL $NS_DC2 $NS_DC $NS_SW; do
    ns_kill_all $ns
    ns_exists $ns && ip netns del $ns
  done
  rm -rf /etc/netns/$NS_CL /etc/netns/$NS_CL2 /etc/netns/$NS_DC /etc/netns/$NS_DC2
  return 0
}
