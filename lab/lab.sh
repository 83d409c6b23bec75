#!/usr/bin/env bash
# lab.sh - dctap's own Active Directory lab: a Samba AD DC and two workstations in network
# namespaces, the DC's switch port mirrored (tc mirred) to the sensor namespace, where
# tap-sensor captures with XDP and streams to tap-cloud on that namespace's loopback, and
# real tools (MIT krb5, smbclient, rpcclient, ldapsearch, dig, impacket) run the scenarios,
# each recorded to its own labelled pcap.  `cargo xtask lab up|scenarios|down` drives it.
#
#   lab.sh install            check the Debian packages and impacket venv (xtask installs them)
#   lab.sh up                 namespaces + SPAN + provision DC + users + start samba
#   lab.sh tap-up [--fresh]   start tap-cloud and tap-sensor (TAP_BIN_DIR=<dir of the binaries>)
#   lab.sh tap-down           stop them (the sensor detaches XDP and prints its counters)
#   lab.sh scenarios [k..]    run all scenarios (or those whose key contains k), one pcap each
#   lab.sh list               the scenarios
#   lab.sh status             what is running
#   lab.sh down [--purge]     stop everything, delete the namespaces (--purge: also the state)
#
# DCTAP_LAB_CPU=N pins everything the lab starts to CPU N (see below).
# State (DC database, client files, pcaps, logs, tap-cloud database) lives in
# $DCTAP_LAB_DIR (default <repo>/target/lab); impacket in $DCTAP_LAB_VENV
# (default ~/.cache/dctap/lab-venv).  Nothing is written into the source tree.
set -u
LAB=$(cd "$(dirname "$0")" && pwd)
export LAB
. "$LAB/lib/common.sh"
. "$LAB/lib/net.sh"
. "$LAB/lib/dc.sh"
. "$LAB/lib/dc2.sh"
. "$LAB/lib/client.sh"
. "$LAB/lib/tap.sh"
. "$LAB/lib/scenarios.sh"

[ "$(id -u)" = 0 ] || die "run as root (network namespaces)"

# DCTAP_LAB_CPU=N pins the lab (Samba, the clients' tools, dctap) to one CPU.  The mirror
# delivers a frame on the CPU that sent it, so with the DC and the clients on different
# CPUs the two directions of a conversation reach the sensor through different per-CPU
# rings and can be read out of order (a reply before its request); the end-to-end suite
# pins the lab until the sensor orders frames across its rings.  Unset: not pinned.
if [ -n "${DCTAP_LAB_CPU:-}" ]; then
  taskset -p -c "$DCTAP_LAB_CPU" $$ >/dev/null || die "taskset -c $DCTAP_LAB_CPU failed"
fi

do_check_install() {
  command -v samba >/dev/null && command -v samba-tool >/dev/null && command -v kinit >/dev/null &&
    command -v smbclient >/dev/null && command -v ldapsearch >/dev/null && command -v dig >/dev/null &&
    command -v tcpdump >/dev/null || die "Debian packages missing (cargo xtask lab up installs them)"
  [ -x "$VENV/bin/GetUserSPNs.py" ] || die "no impacket in $VENV (cargo xtask lab up installs it)"
  log "packages and impacket present"
}

do_up() {
  mkdir -p "$LOGS" "$OUT" "$RUN"
  timed "check install"   do_check_install || exit 1
  timed "network+SPAN"    net_up       || exit 1
  timed "provision DC"    dc_provision || exit 1
  timed "users"           dc_users     || exit 1
  timed "start samba"     dc_start     || exit 1
  timed "client config"   client_setup || exit 1
  # smoke test: a real AS exchange from each workstation
  local ns
  for ns in $NS_CL $NS_CL2; do
    printf '%s\n' "$(pw alice)" | CL_NS=$ns KRB5CCNAME=$CLDIR/ccache.smoke client kinit alice@$REALM >/dev/null 2>&1 \
      || die "smoke test: kinit alice@$REALM from $ns failed"
  done
  rm -f "$CLDIR/ccache.smoke"
  log "lab is up: kinit alice@$REALM works from $CL_IP and $CL2_IP"
}

do_status() {
  ip netns list | grep -E '^dt-' || echo "no dt-* namespaces"
  if dc_running; then echo "samba pid $(cat "$RUN/samba.pid")"; else echo "samba not running"; fi
  tap_running cloud && echo "tap-cloud pid $(cat "$RUN/cloud.pid")"
  tap_running sensor && echo "tap-sensor pid $(cat "$RUN/sensor.pid")"
  tap_running sensor2 && echo "tap-sensor (DC2) pid $(cat "$RUN/sensor2.pid")"
  ls -la "$OUT/pcaps" 2>/dev/null
  return 0
}

do_down() {
  cap_stop 2>/dev/null
  tap_down
  dc2_stop
  dc_stop
  net_down
  if [ "${1:-}" = "--purge" ]; then rm -rf "$STATE"; log "purged $STATE"; fi
  log "lab down"
}

cmd=${1:-}; shift || true
case $cmd in
  install)   mkdir -p "$LOGS"; do_check_install ;;
  up)        do_up ;;
  tap-up)    tap_up "$@" ;;
  tap-down)  tap_down ;;
  scenarios) dc_running || die "lab not up (cargo xtask lab up)"; scenarios_run "$@" ;;
  list)      scenarios_list ;;
  status)    do_status ;;
  down)      do_down "$@" ;;
  *)         sed -n '2,22p' "$0"; exit 1 ;;
esac
