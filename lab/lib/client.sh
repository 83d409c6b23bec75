# shellcheck shell=bash
# The two workstations' configuration (client 1 "WS01" 10.78.0.20, client 2 "WS02"
# 10.78.0.21).  Both namespaces share the files below.  Sourced by lab.sh.

client_setup() {
  mkdir -p "$CLDIR/loot" "$CLDIR/samba1" "$CLDIR/samba2"
  # MIT Kerberos: KDC found through DNS SRV records (real lookups on the wire), no rDNS.
  cat > "$CLDIR/krb5.conf" <<EOC
[libdefaults]
  default_realm = $REALM
  dns_lookup_realm = false
  dns_lookup_kdc = true
  rdns = false
  dns_canonicalize_hostname = false
[domain_realm]
  .$DNSDOMAIN = $REALM
  $DNSDOMAIN = $REALM
EOC
  local n
  for n in 1 2; do
    local conf=$CLDIR/smb.conf; [ $n = 2 ] && conf=$CLDIR/smb2.conf
    cat > "$conf" <<EOC
[global]
  workgroup = $DOMAIN
  realm = $REALM
  netbios name = WS0$n
  client min protocol = SMB2
  private dir = $CLDIR/samba$n
  lock directory = $CLDIR/samba$n
  state directory = $CLDIR/samba$n
  cache directory = $CLDIR/samba$n
  pid directory = $CLDIR/samba$n
  ncalrpc dir = $CLDIR/samba$n/ncalrpc
  log file = $LOGS/client$n-samba.log
EOC
  done
  # attacker word lists
  printf '%s\n' alice bob carol svc_sql dave eve.admin Administrator > "$CLDIR/users.txt"
  printf '%s\n' 'Winter2024!' 'Password1' 'Welcome1!' 'Summer2024' 'Company123' \
                'Passw0rd!' 'Qwerty123!' 'Letmein1!' 'Spring2024!' 'Admin123!' > "$CLDIR/passwords.txt"
  # kerbrute-style name list: mostly names that do not exist, two that do
  printf '%s\n' jdoe jsmith mjones admin administrator1 backup svc_backup helpdesk sqladmin \
                testuser webadmin ftpuser scanner printer oracle alice bob > "$CLDIR/enum_users.txt"
}
