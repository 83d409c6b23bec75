//! Every event of an authenticated connection names the account, and says where the name
//! came from, on the project's lab captures (a real Samba DC, impacket, MIT Kerberos and
//! Samba's own tools): the SMB session's setup names its tree connects, creates and the
//! RPC on its pipes; an RPC association's NTLM auth verifier names its calls (the DCSync);
//! an LDAP bind names the searches after it; a ticket's TGS-REP names the AP-REQ and TGS-REQ
//! that present it.

use std::{collections::BTreeSet, process::Command};

use serde_json::Value;

fn events(stem: &str) -> Vec<Value> {
    let pcap = tap_testkit::shared::project_lab_capture(stem).path;
    let out = Command::new(env!("CARGO_BIN_EXE_tap-sensor")).arg("--read").arg(&pcap).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// (account, account_source) of the events `pick` selects.
fn named(events: &[Value], pick: impl Fn(&Value) -> bool) -> BTreeSet<(String, String)> {
    events
        .iter()
        .filter(|e| pick(e))
        .map(|e| (e["account"].as_str().unwrap().to_string(), e["account_source"].as_str().unwrap().to_string()))
        .collect()
}

fn rpc_op(e: &Value, op: &str) -> bool {
    e["detail"]["Dcerpc"]["operation_name"] == op
}

#[test]
fn dcsync_calls_name_the_account_of_their_rpc_authentication() {
    let ev = events("08_dcsync");
    let who = named(&ev, |e| rpc_op(e, "DRSGetNCChanges"));
    assert_eq!(who, BTreeSet::from([("dctap.test\\eve.admin".into(), "dcerpc_ntlm".into())]));
}

#[test]
fn smb_trees_files_and_pipe_rpc_name_the_session_account() {
    // secretsdump-style remote execution: NTLM session setup, then SVCCTL on a pipe.
    let ev = events("16_remote_execution");
    let calls = named(&ev, |e| e["protocol"] == "dcerpc" && e["detail"]["Dcerpc"]["operation"] == "call");
    assert_eq!(calls, BTreeSet::from([("dctap.test\\eve.admin".into(), "smb_ntlm".into())]));
    let trees = named(&ev, |e| e["detail"]["Smb2"]["command"] == "tree_connect");
    assert_eq!(trees, BTreeSet::from([("dctap.test\\eve.admin".into(), "smb_ntlm".into())]));
    // smbclient with Kerberos: a one-leg setup whose AP-REQ is named by its TGS-REP.
    let ev = events("01_normal_logons");
    let kerberos_trees: BTreeSet<_> =
        named(&ev, |e| e["detail"]["Smb2"]["command"] == "tree_connect" && e["account_source"] == "smb_kerberos");
    assert!(kerberos_trees.contains(&("alice@DCTAP.TEST".into(), "smb_kerberos".into())), "{kerberos_trees:?}");
    let unnamed = ev.iter().filter(|e| e["protocol"] == "smb2" && e["detail"]["Smb2"]["command"] != "encrypted");
    assert!(unnamed.clone().all(|e| e["account"] != ""), "SMB events without an account");
}

#[test]
fn ldap_searches_name_the_bind_and_sasl_binds_name_their_ticket() {
    let ev = events("05_ldap_recon");
    let searches = named(&ev, |e| e["detail"]["Ldap"]["operation"] == "search");
    assert!(!searches.is_empty());
    assert!(searches.iter().all(|(a, s)| a.to_lowercase().ends_with("alice") && s == "ldap_simple"), "{searches:?}");
    // The GSSAPI binds finish with a leg that carries nothing: named from the AP-REQ leg.
    let gssapi = named(&ev, |e| e["detail"]["Ldap"]["sasl_mechanism"] == "GSSAPI" && e["result"] == "success");
    assert_eq!(gssapi, BTreeSet::from([("alice@DCTAP.TEST".into(), "ldap_kerberos".into())]));
}

#[test]
fn tgs_requests_name_the_account_of_their_tgt() {
    let ev = events("11_pass_the_ticket");
    let tgs = named(&ev, |e| e["detail"]["Kerberos"]["msg_type"] == 12);
    assert!(tgs.contains(&("carol@DCTAP.TEST".into(), "kerberos_ticket".into())), "{tgs:?}");
    // A forged TGT was issued by nobody: its requests stay unnamed on the sensor (the cloud
    // names them from the reply).
    let ev = events("12_golden_ticket");
    assert!(named(&ev, |e| e["detail"]["Kerberos"]["msg_type"] == 12).iter().all(|(a, _)| a.is_empty()));
}
