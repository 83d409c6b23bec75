# shellcheck shell=bash
# The second DC: joined to the domain by the promotion scenario (samba-tool domain join DC,
# a real promotion: DRSAddEntry for its NTDS Settings object, a full replication of every
# partition from the first DC, DsReplicaUpdateRefs), then started, after which it
# registers itself in the first DC's DNS and replicates both ways.  Sourced by lab.sh.

DC2CONF=$DC2DIR/etc/smb.conf

dc2_running() { [ -f "$RUN/samba2.pid" ] && kill -0 "$(cat "$RUN/samba2.pid")" 2>/dev/null; }

# Removes what an earlier join left in the domain (the lab can run the scenario twice).
dc2_forget() {
  dc2_stop
  in_dc samba-tool domain demote --remove-other-dead-server=${DC2_NAME^^} \
      -s "$SMBCONF" -H "$SAMLDB" > "$LOGS/dc2-forget.log" 2>&1 || true
  rm -rf "$DC2DIR"
}

dc2_join() {
  dc2_forget
  mkdir -p "$DC2DIR" "$LOGS"
  : > "$STATE/empty-smb.conf"
  in_dc2 samba-tool domain join $DNSDOMAIN DC -s "$STATE/empty-smb.conf" \
      -U "$DOMAIN\\Administrator" --password="$ADMINPASS" --server=$DC_FQDN \
      --targetdir="$DC2DIR" --dns-backend=SAMBA_INTERNAL \
      --option="netbios name = ${DC2_NAME^^}" --option="interfaces = lo $DC_IF" \
      --option="bind interfaces only = yes" --option="dns forwarder = " \
      > "$LOGS/dc2-join.log" 2>&1 || { tail -20 "$LOGS/dc2-join.log"; return 1; }
  grep -q "Joined domain" "$LOGS/dc2-join.log" && echo "Joined domain $DNSDOMAIN as a DC"
}

dc2_start() {
  dc2_running && return 0
  mkdir -p "$DC2DIR/run" "$RUN"
  KRB5_CONFIG=$DC2DIR/private/krb5.conf nohup ip netns exec "$NS_DC2" /bin/sh -c \
      'mount --bind "$1" /run/samba && exec samba -s "$2" -F --no-process-group' \
      sh "$DC2DIR/run" "$DC2CONF" > "$LOGS/samba2.stdout" 2>&1 < /dev/null &
  echo $! > "$RUN/samba2.pid"
  local i
  for i in $(seq 1 120); do
    in_dc2 ss -Hltn 2>/dev/null | grep -q ":389 " && in_dc2 ss -Hlun | grep -q "$DC2_IP:88 " && break
    dc2_running || { echo "samba on dc2 exited"; return 1; }
    sleep 0.5
  done
  echo "samba started on $DC2_FQDN"
}

dc2_stop() {
  kill_pidfile "$RUN/samba2.pid"
  ns_kill_all "$NS_DC2"
}
