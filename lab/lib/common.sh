# shellcheck shell=bash
# Settings and helpers of the dctap AD lab.  Sourced by lab.sh.
#
# Adapted from the team's reference lab (../shared/adlab) with its own names: every
# namespace and interface starts with "dt-" and the lab subnet is 10.78.0.0/24, so both
# labs can run side by side.  No namespace has a default route: nothing leaves the lab.

LAB=${LAB:?lab.sh sets LAB to this folder}
STATE=${DCTAP_LAB_DIR:-$(cd "$LAB/.." && pwd)/target/lab}   # everything the lab writes
OUT=$STATE/out                    # pcaps, labels
RUN=$STATE/run                    # pid files of the daemons the lab started
LOGS=$STATE/logs
DCDIR=$STATE/dc                   # samba provision --targetdir
CLDIR=$STATE/client               # krb5.conf, smb.conf, ccaches, loot (hashes stay here)
VENV=${DCTAP_LAB_VENV:-${HOME:-/root}/.cache/dctap/lab-venv}   # impacket from PyPI
IMPACKET_VERSION=${IMPACKET_VERSION:-0.13.1}
TAP_DIR=$STATE/tap                # tap-cloud database, certificates, sensor spool

# --- topology -------------------------------------------------------------------------
#   dt-dc   [dt-dc0 10.78.0.10] ---- [dt-swp-dc] \
#   dt-cl1  [dt-cl0 10.78.0.20] ---- [dt-swp-cl1] - dt-br0 (bridge in netns dt-sw)
#   dt-cl2  [dt-cl0 10.78.0.21] ---- [dt-swp-cl2] /
#   dt-dc2  [dt-dc0 10.78.0.11] ---- [dt-swp-dc2] (a second DC, joined by the promotion
#           scenario; its port is mirrored to a sensor of its own)
#   dt-sw: tc clsact on dt-swp-dc and dt-swp-dc2, ingress+egress "match all", mirred actions:
#          dt-swp-dc  -> dt-swp-span  ==veth==> dt-sen0 (netns dt-sensor): tap-sensor lab-sensor (XDP)
#          dt-swp-dc2 -> dt-swp-span2 ==veth==> dt-sen2 (netns dt-sensor): tap-sensor lab-sensor-dc2 (XDP)
#          both       -> dt-swp-rec   ==veth==> dt-rec0 (netns dt-sensor): tcpdump, one pcap per scenario
#   tap-cloud serve runs in dt-sensor on its loopback (127.0.0.1:7443); both sensors stream to it.
NS_DC=dt-dc; NS_CL=dt-cl1; NS_CL2=dt-cl2; NS_SEN=dt-sensor; NS_SW=dt-sw; NS_DC2=dt-dc2
BR=dt-br0
DC_IF=dt-dc0; DC_SWP=dt-swp-dc; DC2_SWP=dt-swp-dc2
CL_IF=dt-cl0; CL_SWP=dt-swp-cl1; CL2_SWP=dt-swp-cl2
SEN_IF=dt-sen0; SPAN_IF=dt-swp-span
SEN2_IF=dt-sen2; SPAN2_IF=dt-swp-span2
REC_IF=dt-rec0; RECSPAN_IF=dt-swp-rec
NET=10.78.0.0/24
DC_IP=10.78.0.10
DC2_IP=10.78.0.11
CL_IP=10.78.0.20
CL2_IP=10.78.0.21
CLOUD_ADDR=127.0.0.1:7443
SENSOR_ID=lab-sensor
SENSOR2_ID=lab-sensor-dc2

# --- AD domain ------------------------------------------------------------------------
REALM=DCTAP.TEST
DOMAIN=DCTAP
DNSDOMAIN=dctap.test
BASEDN=DC=dctap,DC=test
DC_NAME=dc1
DC_FQDN=dc1.dctap.test
DC2_NAME=dc2
DC2_FQDN=dc2.dctap.test
DC2DIR=$STATE/dc2                 # the second DC's samba-tool domain join --targetdir
# The lab's fixed test passwords (documented, only ever used inside the lab).
ADMINPASS='Adm1nistrat0r!Lab'

# name:password:role
#   user | kerberoast (gets an SPN) | asrep (DONT_REQ_PREAUTH) | admin (Domain Admins)
#   honeytoken (nobody uses it; the cloud config names it)
LAB_USERS=(
  "alice:Alice#Pass2024:user"
  "bob:Bob#Pass2024:user"
  "carol:Carol#Pass2024:user"
  "svc_sql:Sql#Service2024:kerberoast"
  "dave:Dave#Pass2024:asrep"
  "eve.admin:EveAdm1n#2024:admin"
  "hr.backup:HrBackup#2024:honeytoken"
  "frank:Winter2024!:user"
)
SPN_SVC="MSSQLSvc/sql01.dctap.test:1433"
HONEYTOKEN=hr.backup

# --- helpers --------------------------------------------------------------------------
log()  { printf '[lab %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die()  { log "ERROR: $*"; exit 1; }
in_dc()  { ip netns exec "$NS_DC"  "$@"; }
in_dc2() { ip netns exec "$NS_DC2" "$@"; }
in_cl()  { ip netns exec "$NS_CL"  "$@"; }
in_cl2() { ip netns exec "$NS_CL2" "$@"; }
in_sen() { ip netns exec "$NS_SEN" "$@"; }
in_sw()  { ip netns exec "$NS_SW"  "$@"; }
ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"; }

# A command in client 1's (or, with CL_NS=dt-cl2, client 2's) namespace with the lab's
# Kerberos config (MIT krb5, OpenLDAP, Samba client tools, dig).  The default ccache lives
# in $CLDIR, never in /tmp.
client() {
  ip netns exec "${CL_NS:-$NS_CL}" env \
    KRB5_CONFIG="${KRB5_CONFIG_OVERRIDE:-$CLDIR/krb5.conf}" \
    KRB5CCNAME="${KRB5CCNAME:-$CLDIR/ccache}" \
    LDAPSASL_NOCANON=on LDAPTLS_REQCERT=never \
    PATH="$VENV/bin:$PATH" "$@"
}
client2() { CL_NS=$NS_CL2 client "$@"; }
# impacket examples: KRB5CCNAME is unset unless IMP_CC is given (impacket tries a ccache
# whenever KRB5CCNAME is set).
imp() {
  ip netns exec "${CL_NS:-$NS_CL}" env -u KRB5CCNAME ${IMP_CC:+KRB5CCNAME=$IMP_CC} \
    KRB5_CONFIG="$CLDIR/krb5.conf" PATH="$VENV/bin:$PATH" "$@"
}
imp2() { CL_NS=$NS_CL2 imp "$@"; }
# the same through the Samba-compatibility shim (tools/impacket_samba.py)
impfix()  { imp "$VENV/bin/python3" "$LAB/tools/impacket_samba.py" "$@"; }
impfix2() { CL_NS=$NS_CL2 impfix "$@"; }
# the lab's own small impacket scripts (tools/*.py)
imptool()  { imp "$VENV/bin/python3" "$LAB/tools/$1" "${@:2}"; }
# Samba client tools with the client's own smb.conf
smbc()  { client "$@" --configfile="$CLDIR/smb.conf"; }
smbc2() { CL_NS=$NS_CL2 client "$@" --configfile="$CLDIR/smb2.conf"; }

timed() {
  local label=$1; shift
  local t0 t1 rc
  t0=$(date +%s.%N)
  "$@"; rc=$?
  t1=$(date +%s.%N)
  mkdir -p "$LOGS"
  printf '[lab] %-30s %6.1fs rc=%s\n' "$label" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" "$rc" | tee -a "$LOGS/timings.txt" >&2
  return $rc
}

# End a process the lab started, by the PID in its pid file, then its descendants (by PID).
kill_pidfile() {
  local f=$1 pid kids k sig=${2:-TERM}
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kids=$(descendants "$pid")
    kill -"$sig" "$pid" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    for k in $kids; do kill -0 "$k" 2>/dev/null && kill -TERM "$k" 2>/dev/null; done
    sleep 0.3
    for k in $kids; do kill -0 "$k" 2>/dev/null && kill -KILL "$k" 2>/dev/null; done
  fi
  rm -f "$f"
}
# End every process still inside one of the lab's own namespaces (only the lab starts
# processes there), by PID.
ns_kill_all() {
  ns_exists "$1" || return 0
  local pids; pids=$(ip netns pids "$1" 2>/dev/null)
  [ -n "$pids" ] || return 0
  kill -TERM $pids 2>/dev/null; sleep 1
  pids=$(ip netns pids "$1" 2>/dev/null)
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  for _ in $(seq 1 50); do [ -z "$(ip netns pids "$1" 2>/dev/null)" ] && break; sleep 0.1; done
  return 0
}
descendants() {
  local c
  for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    echo "$c"; descendants "$c"
  done
}
