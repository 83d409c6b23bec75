# shellcheck shell=bash
# dctap itself in the lab: tap-cloud on the sensor namespace's loopback, one tap-sensor per
# DC with its XDP program on that DC's SPAN port (dt-sen0, dt-sen2), events over mTLS gRPC.  The binaries come from
# $TAP_BIN_DIR (cargo xtask lab passes target/release).  Sourced by lab.sh.

tap_running() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

# Waits until FILE contains TEXT or the process of PIDFILE dies.
wait_log() {  # wait_log <file> <text> <pidfile> <seconds>
  local i
  for i in $(seq 1 $(( $4 * 10 ))); do
    grep -q -- "$2" "$1" 2>/dev/null && return 0
    kill -0 "$(cat "$3" 2>/dev/null)" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

tap_up() {  # tap_up [--fresh]
  local bin=${TAP_BIN_DIR:?set TAP_BIN_DIR to the folder of tap-sensor and tap-cloud}
  [ -x "$bin/tap-sensor" ] && [ -x "$bin/tap-cloud" ] || die "no tap-sensor/tap-cloud in $bin"
  net_is_up || die "lab network not up"
  if [ "${1:-}" = --fresh ]; then tap_down; rm -rf "$TAP_DIR"; fi
  mkdir -p "$TAP_DIR" "$RUN" "$LOGS"
  if tap_running cloud && tap_running sensor && tap_running sensor2; then log "tap-cloud and the tap-sensors already running"; return 0; fi
  tap_down
  if [ ! -f "$TAP_DIR/pki/ca.pem" ]; then
    "$bin/tap-cloud" certs init --sensor $SENSOR_ID --sensor $SENSOR2_ID --dir "$TAP_DIR/pki" > "$LOGS/tap-certs.log" 2>&1 || die "certs init, see $LOGS/tap-certs.log"
    "$bin/tap-cloud" sensors add $SENSOR_ID --db "$TAP_DIR/cloud.db" --key-file "$TAP_DIR/sensor.key" >> "$LOGS/tap-certs.log" 2>&1 \
        || die "sensors add, see $LOGS/tap-certs.log"
    "$bin/tap-cloud" sensors add $SENSOR2_ID --db "$TAP_DIR/cloud.db" --key-file "$TAP_DIR/sensor2.key" >> "$LOGS/tap-certs.log" 2>&1 \
        || die "sensors add, see $LOGS/tap-certs.log"
  fi
  # The lab's detection settings.  max_ticket_lifetime_hours = 0: the sensor watches the
  # lab DC before any scenario obtains a ticket (every scenario starts with no cached
  # tickets), so a TGT it never saw issued is forged at once, not only after 10 hours.
  cat > "$TAP_DIR/cloud.toml" <<EOC
[detect]
dcs = ["$DC_IP"]
honeytokens = ["$HONEYTOKEN"]
max_ticket_lifetime_hours = 0
# Scenarios end seconds apart and the suite reads the alerts between them: examine an event
# a second after the sensor delivered later ones, and stop waiting after 3 s of silence.
allowed_lateness_secs = 1
sensor_idle_secs = 3
EOC
  # DCTAP_LAB_LEARNING_SECONDS=N: profiles learn for N seconds instead of days, so a
  # learned detection (pass-the-hash: a host new to the account) can fire within a scenario.
  if [ -n "${DCTAP_LAB_LEARNING_SECONDS:-}" ]; then
    echo "learning_seconds = $DCTAP_LAB_LEARNING_SECONDS" >> "$TAP_DIR/cloud.toml"
  fi
  # DCTAP_LAB_ALL_DCS_WATCHED=1: every DC of the lab is watched (true until the second DC
  # joins), so a service ticket no DC issued is forged.
  if [ -n "${DCTAP_LAB_ALL_DCS_WATCHED:-}" ]; then
    echo "all_dcs_watched = true" >> "$TAP_DIR/cloud.toml"
  fi
  nohup ip netns exec $NS_SEN "$bin/tap-cloud" serve --listen $CLOUD_ADDR --http 127.0.0.1:0 \
      --db "$TAP_DIR/cloud.db" --tls-dir "$TAP_DIR/pki" --config "$TAP_DIR/cloud.toml" \
      > "$LOGS/tap-cloud.log" 2>&1 < /dev/null &
  echo $! > "$RUN/cloud.pid"
  wait_log "$LOGS/tap-cloud.log" "ingest listening" "$RUN/cloud.pid" 30 || die "tap-cloud did not start: $(tail -5 "$LOGS/tap-cloud.log")"
  log "tap-cloud serving on $CLOUD_ADDR in $NS_SEN (database $TAP_DIR/cloud.db)"
  # --evidence-dir: the portal's alerts get their pcap excerpts, as on an appliance.
  tap_sensor sensor $SEN_IF $DC_IP $SENSOR_ID sensor.key "" --write "$TAP_DIR/kept.pcap"
  # The second DC's own sensor, on its own mirror port (watching before the DC joins).
  tap_sensor sensor2 $SEN2_IF $DC2_IP $SENSOR2_ID sensor2.key 2
}

# Starts one tap-sensor capturing with XDP on a mirror port and streaming to the cloud.
tap_sensor() {  # tap_sensor <name> <iface> <dc> <sensor id> <key file> <state suffix> [more args]
  local name=$1 iface=$2 dc=$3 id=$4 key=$5 n=$6; shift 6
  nohup ip netns exec $NS_SEN "$bin/tap-sensor" capture --iface $iface --dc $dc \
      --sensor-id $id --cloud https://$CLOUD_ADDR \
      --tls-ca "$TAP_DIR/pki/ca.pem" --tls-cert "$TAP_DIR/pki/sensor-$id.pem" \
      --tls-key "$TAP_DIR/pki/sensor-$id.key" --access-key-file "$TAP_DIR/$key" \
      --spool-dir "$TAP_DIR/spool$n" --evidence-dir "$TAP_DIR/evidence$n" --evidence-max-mb 64 "$@" \
      > "$LOGS/tap-$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN/$name.pid"
  wait_log "$LOGS/tap-$name.log" "^ready:" "$RUN/$name.pid" 30 || die "tap-sensor $id did not start: $(tail -5 "$LOGS/tap-$name.log")"
  log "tap-sensor $id: $(grep -m1 '^ready:' "$LOGS/tap-$name.log")"
}

tap_down() {
  # SIGTERM: the sensor detaches its XDP program and prints its counters
  kill_pidfile "$RUN/sensor.pid"
  kill_pidfile "$RUN/sensor2.pid"
  kill_pidfile "$RUN/cloud.pid"
}
