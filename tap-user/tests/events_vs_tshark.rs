//! The events of the lab captures agree with tshark's dissection of the same files: every
//! KDC message on port 88 (type, error code, client name), every DNS message on port 53
//! (query name and type, response code, answers), every LDAP bind (name, SASL mechanism)
//! and search (base, filter string), every NTLM AUTHENTICATE carried by LDAP or SMB2
//! (domain, user, workstation), every SMB2 tree connect and create, and every DCE/RPC bind
//! and call (interface UUID, opnum), each once.
//! Skips, saying so, without ../shared or tshark (under `cargo xtask test` a missing
//! tshark fails).

use std::{path::Path, process::Command};

mod common;

use common::events;
use tap_testkit::shared::lab_pcaps_and_tshark_or_skip;
use tap_user::event::pb::activity_event::Detail;

fn tshark(pcap: &Path, filter: &str, fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap).args(["-Y", filter, "-T", "fields", "-E", "occurrence=f"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.split('\t').map(String::from).collect()).collect()
}

/// Searches as tshark's verbose output shows them: the filter's string form is a text
/// item, not a field, so it is read from `-V` ("messageID: N" then "Filter: ...").
fn tshark_ldap_searches(pcap: &Path) -> Vec<(String, String, String, String)> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(["-Y", "ldap.protocolOp == 3 && (tcp.port == 389 || udp.port == 389 || tcp.port == 3268)", "-V"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut id, mut base) = (String::new(), String::new());
    let mut taken = false;
    let mut found = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("messageID: ") {
            id = v.to_string();
            taken = false;
        } else if let Some(v) = line.strip_prefix("baseObject: ") {
            base = v.to_string();
        } else if line == "baseObject:" {
            base.clear();
        } else if let Some(v) = line.strip_prefix("Filter: ") {
            // The first "Filter:" of a message is the whole filter; nested ones follow.
            if !taken {
                found.push(("search".to_string(), id.clone(), base.clone(), v.to_string()));
                taken = true;
            }
        }
    }
    found
}

#[test]
fn lab_capture_events_match_tshark() {
    let Some(pcaps) = lab_pcaps_and_tshark_or_skip("lab_capture_events_match_tshark") else { return };
    let (mut krb_total, mut dns_total, mut ldap_total, mut ntlm_total, mut smb_total, mut rpc_total) =
        (0, 0, 0, 0, 0, 0);
    for pcap in &pcaps {
        let name = pcap.file_name().unwrap().to_string_lossy().into_owned();
        let ev = events(pcap);
        // Kerberos: (msg_type, error_code, cname of AS exchanges and errors).
        let mut ours: Vec<(String, String, String)> = ev
            .iter()
            .filter_map(|e| match &e.detail {
                Some(Detail::Kerberos(k)) if k.carrier.is_empty() => Some((
                    k.msg_type.to_string(),
                    if k.msg_type == 30 { k.error_code.to_string() } else { String::new() },
                    if matches!(k.msg_type, 10 | 11 | 30) {
                        k.cname.split('/').next().unwrap_or("").to_string()
                    } else {
                        String::new()
                    },
                )),
                _ => None,
            })
            .collect();
        let mut theirs: Vec<(String, String, String)> = tshark(
            pcap,
            "kerberos && (tcp.port == 88 || udp.port == 88)",
            &["kerberos.msg_type", "kerberos.error_code", "kerberos.CNameString"],
        )
        .into_iter()
        .map(|r| {
            let t = r[0].clone();
            let cname = if matches!(t.as_str(), "10" | "11" | "30") {
                r.get(2).cloned().unwrap_or_default()
            } else {
                String::new()
            };
            (t, r.get(1).cloned().unwrap_or_default(), cname)
        })
        .collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{name}: Kerberos messages (msg_type, error_code, cname)");
        krb_total += ours.len();

        // Kerberos AP-REQs inside other protocols' authentication: the service name's first
        // component (tshark's first SNameString).
        let mut ours: Vec<String> = ev
            .iter()
            .filter_map(|e| match &e.detail {
                Some(Detail::Kerberos(k)) if !k.carrier.is_empty() => {
                    Some(k.sname.split('/').next().unwrap_or("").to_string())
                }
                _ => None,
            })
            .collect();
        let mut theirs: Vec<String> =
            tshark(pcap, "kerberos.msg_type == 14 && !(tcp.port == 88 || udp.port == 88)", &["kerberos.SNameString"])
                .into_iter()
                .map(|r| r.first().cloned().unwrap_or_default())
                .collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{name}: Kerberos AP-REQs in SMB, LDAP and DCE/RPC");
        krb_total += ours.len();

        // DNS: (response, rcode, first question name, its type, answer count).
        let mut ours: Vec<(String, String, String, String, String)> = ev
            .iter()
            .filter_map(|e| match &e.detail {
                Some(Detail::Dns(d)) => {
                    let q = d.questions.first();
                    Some((
                        u8::from(d.response).to_string(),
                        if d.response { d.rcode.to_string() } else { String::new() },
                        q.map(|q| q.name.clone()).unwrap_or_default(),
                        q.map(|q| q.qtype.to_string()).unwrap_or_default(),
                        d.answers.to_string(),
                    ))
                }
                _ => None,
            })
            .collect();
        let mut theirs: Vec<(String, String, String, String, String)> = tshark(
            pcap,
            "dns && (tcp.port == 53 || udp.port == 53)",
            &[
                "dns.flags.response",
                "dns.flags.rcode",
                "dns.qry.name",
                "dns.qry.type",
                "dns.count.answers",
                "dns.count.prerequisites",
            ],
        )
        .into_iter()
        .map(|r| {
            let g = |i: usize| r.get(i).cloned().unwrap_or_default();
            let response = if g(0) == "True" || g(0) == "1" { "1" } else { "0" };
            // A dynamic update's second section holds prerequisites, not answers (RFC 2136).
            let answers = if g(4).is_empty() { g(5) } else { g(4) };
            (response.to_string(), if response == "1" { g(1) } else { String::new() }, g(2), g(3), answers)
        })
        .collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{name}: DNS messages");
        dns_total += ours.len();

        // LDAP: binds (message id, name, SASL mechanism) and searches (message id, base, filter).
        let mut ours: Vec<(String, String, String, String)> = ev
            .iter()
            .filter_map(|e| match &e.detail {
                Some(Detail::Ldap(l)) if l.operation == "bind" => {
                    Some(("bind".into(), l.message_id.to_string(), l.bind_name.clone(), l.sasl_mechanism.clone()))
                }
                Some(Detail::Ldap(l)) if l.operation == "search" => {
                    Some(("search".into(), l.message_id.to_string(), l.base_dn.clone(), l.filter.clone()))
                }
                _ => None,
            })
            .collect();
        let mut theirs: Vec<(String, String, String, String)> = tshark(
            pcap,
            "ldap.protocolOp == 0 && (tcp.port == 389 || udp.port == 389 || tcp.port == 3268)",
            &["ldap.messageID", "ldap.name", "ldap.mechanism"],
        )
        .into_iter()
        .map(|r| {
            (
                "bind".to_string(),
                r[0].clone(),
                r.get(1).cloned().unwrap_or_default(),
                r.get(2).cloned().unwrap_or_default(),
            )
        })
        .collect();
        theirs.extend(tshark_ldap_searches(pcap));
        // The DC locator's CLDAP ping: tshark shows its NtVer value decoded, not as the
        // filter's bytes; the two agree that it is that ping.
        let ping = |v: &mut Vec<(String, String, String, String)>| {
            for row in v.iter_mut().filter(|r| r.3.contains("(NtVer=")) {
                row.3 = "<DC locator ping>".into();
            }
        };
        ping(&mut ours);
        ping(&mut theirs);
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{name}: LDAP binds and searches");
        ldap_total += ours.len();

        // NTLM AUTHENTICATE carried by LDAP: (domain, user, workstation).
        let mut ours: Vec<(String, String, String)> = ev
            .iter()
            .filter_map(|e| match &e.detail {
                Some(Detail::Ntlm(n)) if n.carrier == "ldap" => {
                    Some((n.domain.clone(), n.user.clone(), n.workstation.clone()))
                }
                _ => None,
            })
            .collect();
        let mut theirs: Vec<(String, String, String)> = tshark(
            pcap,
            "ntlmssp.messagetype == 3 && (tcp.port == 389 || tcp.port == 3268)",
            &["ntlmssp.auth.domain", "ntlmssp.auth.username", "ntlmssp.auth.hostname"],
        )
        .into_iter()
        .map(|r| {
            let g = |i: usize| r.get(i).cloned().filter(|v| v != "NULL").unwrap_or_default();
            (g(0), g(1), g(2))
        })
        .collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{name}: NTLM over LDAP");
        ntlm_total += ours.len();

        // SMB2: tree connects (share path), creates (file or pipe name), NTLM AUTHENTICATE in
        // session setups, and messages hidden in SMB3 transform headers.
        let mut ours: Vec<(String, String)> = ev
            .iter()
            .filter_map(|e| match &e.detail {
                Some(Detail::Smb2(m)) if m.command == "tree_connect" => Some(("tree".into(), m.tree.clone())),
                Some(Detail::Smb2(m)) if m.command == "create" => Some(("create".into(), m.file.clone())),
                Some(Detail::Ntlm(n)) if n.carrier == "smb2" => {
                    Some(("ntlm".into(), format!("{}\\{}@{}", n.domain, n.user, n.workstation)))
                }
                _ => None,
            })
            .collect();
        let mut theirs: Vec<(String, String)> = Vec::new();
        for r in tshark(pcap, "smb2.cmd == 3 && smb2.flags.response == 0 && tcp.port == 445", &["smb2.tree"]) {
            theirs.push(("tree".into(), r[0].clone()));
        }
        for r in tshark(pcap, "smb2.cmd == 5 && smb2.flags.response == 0 && tcp.port == 445", &["smb2.filename"]) {
            theirs.push(("create".into(), r.first().cloned().unwrap_or_default()));
        }
        for r in tshark(
            pcap,
            "ntlmssp.messagetype == 3 && tcp.port == 445",
            &["ntlmssp.auth.domain", "ntlmssp.auth.username", "ntlmssp.auth.hostname"],
        ) {
            let g = |i: usize| r.get(i).cloned().filter(|v| v != "NULL").unwrap_or_default();
            theirs.push(("ntlm".into(), format!("{}\\{}@{}", g(0), g(1), g(2))));
        }
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{name}: SMB2 tree connects, creates and NTLM session setups");
        smb_total += ours.len();
        let encrypted_ours: u64 = ev
            .iter()
            .filter_map(|e| match &e.detail {
                Some(Detail::Smb2(m)) if m.command == "encrypted" => Some(m.encrypted_messages),
                _ => None,
            })
            .sum();
        let encrypted_theirs: usize = tshark(pcap, "tcp.port == 445", &["smb2.header.transform.msg_size"])
            .iter()
            .map(|r| r.first().map_or(0, |v| if v.is_empty() { 0 } else { v.split(',').count() }))
            .sum();
        assert_eq!(encrypted_ours, encrypted_theirs as u64, "{name}: SMB3 encrypted messages");

        // DCE/RPC: binds (interface UUID) and calls (opnum), over TCP and SMB pipes.
        let mut ours: Vec<(String, String)> = ev
            .iter()
            .filter_map(|e| match &e.detail {
                Some(Detail::Dcerpc(d)) if d.operation == "bind" => Some(("bind".into(), d.interface_uuid.clone())),
                Some(Detail::Dcerpc(d)) if d.operation == "call" => Some(("call".into(), d.opnum.to_string())),
                _ => None,
            })
            .collect();
        let mut theirs: Vec<(String, String)> = Vec::new();
        // Binds: which interfaces were bound, by bind or alter-context. How many context
        // items carry one differs (Samba offers each interface in NDR, NDR64 and a
        // bind-time feature context, which tshark lists in its own ways); the sensor's
        // context count is checked against the corpus's truth in corpus_conformance.rs.
        for r in tshark(pcap, "dcerpc.pkt_type == 11 || dcerpc.pkt_type == 14", &["dcerpc.cn_bind_to_uuid"]) {
            theirs.extend(r[0].split(',').filter(|u| !u.is_empty()).map(|u| ("bind".to_string(), u.to_string())));
        }
        let distinct_binds = |v: &mut Vec<(String, String)>| {
            let (mut binds, calls): (Vec<_>, Vec<_>) = v.drain(..).partition(|(k, _)| k == "bind");
            binds.sort();
            binds.dedup();
            v.extend(binds);
            v.extend(calls);
        };
        distinct_binds(&mut ours);
        distinct_binds(&mut theirs);
        for r in tshark(pcap, "dcerpc.pkt_type == 0 && dcerpc.cn_flags.first_frag == 1", &["dcerpc.opnum"]) {
            theirs.push(("call".into(), r[0].clone()));
        }
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{name}: DCE/RPC binds and calls");
        rpc_total += ours.len();

        // Every event is stamped, in order, without holes.
        let seqs: Vec<u64> = ev.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=ev.len() as u64).collect::<Vec<_>>(), "{name}: sequence numbers");
    }
    eprintln!(
        "matched {krb_total} Kerberos, {dns_total} DNS, {ldap_total} LDAP, {ntlm_total} NTLM-over-LDAP, {smb_total} SMB2 and {rpc_total} DCE/RPC messages with tshark"
    );
    assert!(
        krb_total > 100 && dns_total > 500 && ldap_total > 30 && ntlm_total > 0 && smb_total > 20 && rpc_total > 40,
        "{krb_total} Kerberos, {dns_total} DNS, {ldap_total} LDAP, {ntlm_total} NTLM"
    );
}
