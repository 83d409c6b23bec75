//! Conformance with the public captures in ../shared/corpus that carry a `truth.tsv`
//! (tshark's ground truth, see ../shared/corpus/TRUTH_README.md): for Kerberos, NTLM, LDAP
//! and DCE/RPC, the share of truth rows the sensor's events reproduce, field by field.
//! `cargo xtask conformance` prints the table and every disagreement; this test fails when
//! a protocol falls below the agreement it has reached (the floors below, raised as the
//! parsers improve). Skips, saying so, without ../shared/corpus.

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use common::events;
use tap_testkit::shared::shared_dir;
use tap_user::{
    event::{pb::activity_event::Detail, ActivityEvent},
    proto::kerberos::msg,
};

/// Agreement reached so far, per protocol (matched truth rows / compared truth rows).
/// What is missing and why is listed in docs/conformance.md.
const FLOORS: [(&str, f64); 4] = [("kerberos", 1.0), ("ntlmssp", 1.0), ("ldap", 1.0), ("dcerpc", 1530.0 / 1531.0)];

fn truth_dirs() -> Vec<PathBuf> {
    let root = shared_dir().join("corpus");
    let mut out = Vec::new();
    let Ok(sources) = std::fs::read_dir(&root) else { return out };
    for source in sources.flatten() {
        let Ok(cases) = std::fs::read_dir(source.path()) else { continue };
        for case in cases.flatten() {
            if case.path().join("truth.tsv").exists() {
                out.push(case.path());
            }
        }
    }
    out.sort();
    out
}

fn capture_in(dir: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
        .collect();
    files.sort();
    files.into_iter().next()
}

type Row = HashMap<String, String>;

fn read_truth(path: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
    lines.map(|l| header.iter().zip(l.split('\t')).map(|(k, v)| (k.to_string(), v.to_string())).collect()).collect()
}

fn null(v: &str) -> String {
    if v == "NULL" {
        String::new()
    } else {
        v.to_string()
    }
}

/// The compared fields of a truth row, or None when the row is not one the sensor reports
/// (AP-REP inside GSS-API, NTLM NEGOTIATE/CHALLENGE, LDAP responses, bind_acks).
fn truth_key(r: &Row) -> Option<(String, String)> {
    let g = |k: &str| r.get(k).cloned().unwrap_or_default();
    let proto = g("proto");
    let key = match (proto.as_str(), g("msg").as_str()) {
        ("kerberos", m @ ("AS-REQ" | "AS-REP" | "TGS-REQ" | "TGS-REP" | "KRB-ERROR" | "AP-REQ")) => {
            let code = g("krb_error_code").split_whitespace().next().unwrap_or("").to_string();
            format!(
                "{m} realm={} cname={} sname={} etypes={} error={code}",
                g("krb_realm"),
                g("krb_cname"),
                g("krb_sname"),
                g("krb_etypes")
            )
        }
        ("ntlmssp", "AUTH") => {
            format!("AUTH {}\\{}@{}", null(&g("ntlm_domain")), null(&g("ntlm_user")), null(&g("ntlm_workstation")))
        }
        ("ldap", "bindRequest") => format!("bind id={} dn={} auth={}", g("ldap_msgid"), g("ldap_dn"), g("ldap_auth")),
        ("ldap", "searchRequest") => {
            format!("search id={} base={} filter={}", g("ldap_msgid"), g("ldap_dn"), flatten_filter(&g("ldap_filter")))
        }
        ("dcerpc", "Bind" | "Alter_context") => {
            let mut uuids: Vec<String> = g("dce_bind_ctx")
                .split(';')
                .filter_map(|c| c.split_once('=').map(|(_, v)| v.split_whitespace().next().unwrap_or("").to_string()))
                .collect();
            uuids.sort();
            format!("bind {}", uuids.join(","))
        }
        ("dcerpc", "Request") => format!("call opnum={} iface={}", g("dce_opnum"), g("dce_iface_uuid")),
        _ => return None,
    };
    Some((proto, key))
}

/// tshark writes an n-ary AND or OR as nested binary ones (`(&(&A B)C)` for the wire's
/// `(&A B C)`); both mean the same, so the nesting is undone before comparing with the
/// sensor's RFC 4515 rendering of the filter as it was on the wire.
fn flatten_filter(f: &str) -> String {
    fn parse(b: &[u8], at: &mut usize) -> Option<(Option<u8>, Vec<String>, String)> {
        // Returns (operator for & and |, children, text) of the item at `at`.
        if b.get(*at) != Some(&b'(') {
            return None;
        }
        let start = *at;
        *at += 1;
        match b.get(*at) {
            Some(&op @ (b'&' | b'|')) => {
                *at += 1;
                let mut children = Vec::new();
                while b.get(*at) == Some(&b'(') {
                    let (cop, cchildren, text) = parse(b, at)?;
                    if cop == Some(op) {
                        children.extend(cchildren);
                    } else {
                        children.push(text);
                    }
                }
                *at += 1; // ')'
                let text = format!("({}{})", op as char, children.concat());
                Some((Some(op), children, text))
            }
            _ => {
                let mut depth = 0;
                while let Some(&c) = b.get(*at) {
                    *at += 1;
                    match c {
                        b'(' => depth += 1,
                        b')' if depth == 0 => break,
                        b')' => depth -= 1,
                        _ => {}
                    }
                }
                let text = String::from_utf8_lossy(&b[start..*at]).into_owned();
                // A NOT keeps its inner filter as written; flatten inside it too.
                let text = match text.strip_prefix("(!").and_then(|t| t.strip_suffix(')')) {
                    Some(inner) => format!("(!{})", flatten_filter(inner)),
                    None => text,
                };
                Some((None, Vec::new(), text))
            }
        }
    }
    let mut at = 0;
    parse(f.as_bytes(), &mut at).map(|(_, _, t)| t).unwrap_or_else(|| f.to_string())
}

#[test]
fn tshark_filter_nesting_is_undone() {
    assert_eq!(flatten_filter("(&(&(a=*)(b=*))(!(c=1)))"), "(&(a=*)(b=*)(!(c=1)))");
    assert_eq!(flatten_filter("(|(&(a=1)(b=2))(c=3))"), "(|(&(a=1)(b=2))(c=3))");
    assert_eq!(flatten_filter("(objectClass=*)"), "(objectClass=*)");
}

fn krb_name(t: u32) -> &'static str {
    match t {
        msg::AS_REQ => "AS-REQ",
        msg::AS_REP => "AS-REP",
        msg::TGS_REQ => "TGS-REQ",
        msg::TGS_REP => "TGS-REP",
        msg::AP_REQ => "AP-REQ",
        _ => "KRB-ERROR",
    }
}

/// The same fields from the sensor's events, with the contexts of one bind PDU (one event
/// each) grouped back into one row as tshark has it.
fn event_keys(ev: &[ActivityEvent]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // Each bind event says how many contexts its PDU had: that many events make one row.
    let mut binds: Vec<Vec<String>> = Vec::new();
    let mut open_group = 0usize;
    for e in ev {
        if let Some(Detail::Dcerpc(d)) = &e.detail {
            if d.operation == "bind" {
                if open_group == 0 {
                    binds.push(Vec::new());
                    open_group = d.bind_contexts.max(1) as usize;
                }
                if let Some(group) = binds.last_mut() {
                    group.push(d.interface_uuid.clone());
                }
                open_group -= 1;
            }
        }
        match &e.detail {
            Some(Detail::Kerberos(k)) => {
                let is_req = matches!(k.msg_type, msg::AS_REQ | msg::TGS_REQ);
                let is_rep = matches!(k.msg_type, msg::AS_REP | msg::TGS_REP);
                let realm = if is_rep { &k.crealm } else { &k.realm };
                let sname = if is_rep { format!("{}@{}", k.sname, k.realm) } else { k.sname.clone() };
                let etypes = if k.msg_type == msg::AP_REQ {
                    format!("ticket:{}", k.ticket_etype)
                } else if is_req {
                    k.requested_etypes.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(",")
                } else if is_rep {
                    format!("ticket:{},enc-part:{}", k.ticket_etype, k.enc_part_etype)
                } else {
                    String::new()
                };
                let error = if k.msg_type == msg::ERROR { k.error_code.to_string() } else { String::new() };
                out.push((
                    "kerberos".into(),
                    format!(
                        "{} realm={realm} cname={} sname={sname} etypes={etypes} error={error}",
                        krb_name(k.msg_type),
                        k.cname
                    ),
                ));
            }
            Some(Detail::Ntlm(n)) => {
                out.push(("ntlmssp".into(), format!("AUTH {}\\{}@{}", n.domain, n.user, n.workstation)))
            }
            Some(Detail::Ldap(l)) if l.operation == "bind" => {
                let auth = match l.bind_method.as_str() {
                    "sasl" => format!("sasl:{}", l.sasl_mechanism),
                    other => other.to_string(),
                };
                out.push(("ldap".into(), format!("bind id={} dn={} auth={auth}", l.message_id, l.bind_name)));
            }
            Some(Detail::Ldap(l)) if l.operation == "search" => {
                out.push(("ldap".into(), format!("search id={} base={} filter={}", l.message_id, l.base_dn, l.filter)));
            }
            Some(Detail::Dcerpc(d)) if d.operation == "call" => {
                out.push(("dcerpc".into(), format!("call opnum={} iface={}", d.opnum, d.interface_uuid)));
            }
            _ => {}
        }
    }
    for mut uuids in binds {
        uuids.sort();
        out.push(("dcerpc".into(), format!("bind {}", uuids.join(","))));
    }
    out
}

/// A call whose interface tshark could not tell (no bind in its view) matches any call
/// with the same opnum: the sensor may know more, never less.
fn take_match(ours: &mut HashMap<(String, String), usize>, proto: &str, key: &str) -> bool {
    if let Some(n) = ours.get_mut(&(proto.to_string(), key.to_string())).filter(|n| **n > 0) {
        *n -= 1;
        return true;
    }
    if let Some(opnum_only) = key.strip_suffix(" iface=") {
        let prefix = format!("{opnum_only} iface=");
        if let Some((_, n)) = ours.iter_mut().find(|((p, k), n)| p == proto && k.starts_with(&prefix) && **n > 0) {
            *n -= 1;
            return true;
        }
    }
    false
}

#[test]
fn corpus_truth_agreement() {
    let dirs = truth_dirs();
    if dirs.is_empty() {
        tap_testkit::skip::skipped("corpus_truth_agreement", &tap_testkit::skip::no_shared("../shared/corpus"));
        return;
    }
    let verbose = std::env::var("DCTAP_CONFORMANCE_VERBOSE").is_ok();
    let mut totals: HashMap<String, (usize, usize)> = HashMap::new();
    for dir in &dirs {
        let Some(pcap) = capture_in(dir) else { continue };
        let name = dir.strip_prefix(shared_dir().join("corpus")).unwrap_or(dir).display().to_string();
        let truth: Vec<(String, String)> = read_truth(&dir.join("truth.tsv")).iter().filter_map(truth_key).collect();
        let mut ours: HashMap<(String, String), usize> = HashMap::new();
        for k in event_keys(&events(&pcap)) {
            *ours.entry(k).or_default() += 1;
        }
        for (proto, key) in truth {
            let t = totals.entry(proto.clone()).or_default();
            t.0 += 1;
            if take_match(&mut ours, &proto, &key) {
                t.1 += 1;
            } else if verbose {
                eprintln!("  {name}: missing {proto} {key}");
            }
        }
        if verbose {
            for ((proto, key), n) in ours.iter().filter(|(_, n)| **n > 0) {
                eprintln!("  {name}: extra {proto} {key} (x{n})");
            }
        }
    }
    eprintln!("\n{:<10}{:>10}{:>10}{:>10}", "protocol", "truth", "matched", "agree");
    let mut below = Vec::new();
    for (proto, floor) in FLOORS {
        let (n, m) = totals.get(proto).copied().unwrap_or((0, 0));
        let agree = if n == 0 { 1.0 } else { m as f64 / n as f64 };
        eprintln!("{proto:<10}{n:>10}{m:>10}{:>9.1}%", agree * 100.0);
        if agree + 1e-9 < floor {
            below.push(format!("{proto}: {:.1}% < floor {:.1}%", agree * 100.0, floor * 100.0));
        }
    }
    assert!(below.is_empty(), "conformance fell: {below:?}");
}

/// Endpoint-mapper replies teach the sensor the DC's dynamic RPC ports: the ports it learns
/// from each corpus capture are the ones tshark reads from the ept_map replies' towers.
#[test]
fn epm_replies_teach_the_dynamic_ports() {
    let dirs = truth_dirs();
    if dirs.is_empty() {
        tap_testkit::skip::skipped(
            "epm_replies_teach_the_dynamic_ports",
            &tap_testkit::skip::no_shared("../shared/corpus"),
        );
        return;
    }
    let tshark =
        std::process::Command::new("tshark").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if !tap_testkit::skip::unless_missing(
        "epm_replies_teach_the_dynamic_ports",
        (!tshark).then(|| "tshark is not installed".into()),
    ) {
        return;
    }
    let mut learned_total = 0;
    for dir in &dirs {
        let Some(pcap) = capture_in(dir) else { continue };
        let out =
            std::process::Command::new(env!("CARGO_BIN_EXE_tap-sensor")).arg("--read").arg(&pcap).output().unwrap();
        let learned: u64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("parse_epm_ports_learned").map(|v| v.trim().parse().unwrap()))
            .expect("counter reported");
        let t = std::process::Command::new("tshark")
            .arg("-r")
            .arg(&pcap)
            .args(["-Y", "epm && dcerpc.pkt_type == 2", "-T", "fields", "-e", "epm.proto.tcp_port"])
            .output()
            .unwrap();
        let mut ports: Vec<u16> = String::from_utf8_lossy(&t.stdout)
            .split([',', '\n'])
            .filter_map(|p| p.trim().parse().ok())
            .filter(|p| *p != 0 && *p != 135)
            .collect();
        ports.sort();
        ports.dedup();
        assert_eq!(learned, ports.len() as u64, "{}: learned ports vs tshark {ports:?}", dir.display());
        learned_total += learned;
    }
    assert!(learned_total > 0, "no corpus capture taught a port");
}
