//! Conformance with the suricata-verify tests of the captures in ../shared/corpus (the
//! `expected/<test>/test.yaml` files MANIFEST.tsv lists). Each `checks: - filter:` block
//! says how many EVE records match a set of fields (`count: N`, `match: {...}`). The
//! sensor's events are turned into records of the same shape (one per Kerberos message to
//! the KDC, SMB tree connect / create / NTLM session setup / DCE/RPC PDU on a pipe,
//! DCE/RPC bind or call over TCP, DNS message, LDAP operation with its result), the EVE
//! keys mapped as in the table of docs/conformance.md ("Suricata baselines"), and each
//! check is counted as agreeing, apart, or not applicable: alerts from rules, flow, stats,
//! anomaly, drop, frame, fileinfo and TLS records, tests of Suricata's own configuration
//! (IPS mode, transaction limits, stream depth, logging options) and checks for older
//! Suricata releases describe Suricata, not the traffic. Keys the sensor does not model
//! (transaction and packet numbers, file ids, stub sizes, ...) are left out of a check,
//! which then asks for at least `count` records instead of exactly `count`.
//!
//! The agreement per protocol is printed; the test fails when it falls below the floors
//! below. Every disagreement is explained in docs/conformance.md. Skips, saying so,
//! without ../shared/corpus. `DCTAP_CONFORMANCE_VERBOSE=1` prints each check apart and the
//! keys left out.

mod common;

use std::collections::BTreeMap;

use common::{corpus_manifest, try_sensor_json};
use serde_json::Value;
use serde_norway::Value as Yaml;
use tap_testkit::shared::shared_dir;

/// Agreement reached so far, per protocol: agreeing / compared checks. What is apart and
/// why is listed in docs/conformance.md ("Suricata baselines").
const FLOORS: &[(&str, usize, usize)] =
    &[("dcerpc", 71, 84), ("dns", 18, 18), ("krb5", 13, 13), ("ldap", 9, 13), ("smb", 47, 78)];

/// One EVE-like record: Suricata's dotted keys (`krb5.cname`, `dcerpc.interfaces[0].uuid`)
/// with values in Suricata's vocabulary.
type Rec = BTreeMap<String, String>;

fn put(r: &mut Rec, k: impl Into<String>, v: impl ToString) {
    r.insert(k.into(), v.to_string());
}

fn or_empty(s: &str) -> String {
    if s.is_empty() {
        "<empty>".into()
    } else {
        s.into()
    }
}

fn krb_msg(t: i64) -> String {
    match t {
        10 => "KRB_AS_REQ".into(),
        11 => "KRB_AS_REP".into(),
        12 => "KRB_TGS_REQ".into(),
        13 => "KRB_TGS_REP".into(),
        14 => "KRB_AP_REQ".into(),
        30 => "KRB_ERROR".into(),
        n => n.to_string(),
    }
}

/// kerberos-parser's names for encryption types, as Suricata logs them.
fn krb_etype(e: i64) -> String {
    match e {
        0 => "<none>".into(),
        1 => "des-cbc-crc".into(),
        2 => "des-cbc-md4".into(),
        3 => "des-cbc-md5".into(),
        16 => "des3-cbc-sha1".into(),
        17 => "aes128-cts-hmac-sha1-96".into(),
        18 => "aes256-cts-hmac-sha1-96".into(),
        19 => "aes128-cts-hmac-sha256-128".into(),
        20 => "aes256-cts-hmac-sha384-192".into(),
        23 => "rc4-hmac".into(),
        24 => "rc4-hmac-exp".into(),
        n => n.to_string(),
    }
}

/// Suricata's `test_weak_encryption`: all but the AES and Camellia types; none is not weak.
fn krb_weak(e: i64) -> bool {
    !matches!(e, 0 | 17 | 18 | 19 | 20 | 25 | 26)
}

fn krb_error(code: i64) -> String {
    match code {
        6 => "KDC_ERR_C_PRINCIPAL_UNKNOWN".into(),
        7 => "KDC_ERR_S_PRINCIPAL_UNKNOWN".into(),
        14 => "KDC_ERR_ETYPE_NOSUPP".into(),
        18 => "KDC_ERR_CLIENT_REVOKED".into(),
        23 => "KDC_ERR_KEY_EXPIRED".into(),
        24 => "KDC_ERR_PREAUTH_FAILED".into(),
        25 => "KDC_ERR_PREAUTH_REQUIRED".into(),
        31 => "KRB_AP_ERR_BAD_INTEGRITY".into(),
        37 => "KRB_AP_ERR_SKEW".into(),
        52 => "KRB_ERR_RESPONSE_TOO_BIG".into(),
        60 => "KRB_ERR_GENERIC".into(),
        68 => "KDC_ERR_WRONG_REALM".into(),
        n => n.to_string(),
    }
}

fn nt_status(code: i64) -> String {
    match code as u32 {
        0 => "STATUS_SUCCESS".into(),
        0x8000_0006 => "STATUS_NO_MORE_FILES".into(),
        0xC000_0016 => "STATUS_MORE_PROCESSING_REQUIRED".into(),
        0xC000_0011 => "STATUS_END_OF_FILE".into(),
        0xC000_0022 => "STATUS_ACCESS_DENIED".into(),
        0xC000_0034 => "STATUS_OBJECT_NAME_NOT_FOUND".into(),
        0xC000_006D => "STATUS_LOGON_FAILURE".into(),
        n => format!("0x{n:08x}"),
    }
}

fn smb_dialect(d: i64) -> String {
    if d == 0 {
        "unknown".into()
    } else {
        format!("{}.{:02x}", d >> 8, d & 0xff)
    }
}

fn ldap_result(code: i64) -> String {
    match code {
        0 => "success".into(),
        1 => "operations_error".into(),
        2 => "protocol_error".into(),
        3 => "time_limit_exceeded".into(),
        4 => "size_limit_exceeded".into(),
        5 => "compare_false".into(),
        6 => "compare_true".into(),
        7 => "auth_method_not_supported".into(),
        8 => "stronger_auth_required".into(),
        10 => "referral".into(),
        14 => "sasl_bind_in_progress".into(),
        32 => "no_such_object".into(),
        49 => "invalid_credentials".into(),
        50 => "insufficient_access_rights".into(),
        52 => "unavailable".into(),
        53 => "unwilling_to_perform".into(),
        68 => "entry_already_exists".into(),
        n => n.to_string(),
    }
}

fn dns_rcode(code: i64) -> String {
    match code {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => n.to_string(),
    }
}

fn dns_type(t: i64) -> String {
    match t {
        1 => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        255 => "ANY".into(),
        n => n.to_string(),
    }
}

/// Interface and procedure names compared without case; Suricata's "epmapper" is the
/// sensor's "epm"; the sensor's operation names drop MS-DRSR's "IDL_" prefix.
fn dce_name(n: &str) -> String {
    let n = n.to_ascii_lowercase();
    let n = n.strip_prefix("idl_").unwrap_or(&n).to_string();
    if n == "epmapper" {
        "epm".into()
    } else {
        n
    }
}

/// The sensor's events as EVE-like records, in order.
fn sensor_recs(events: &[Value]) -> Vec<Rec> {
    let mut out = Vec::new();
    // Per connection, the last Kerberos request (Suricata's failed_request of an error).
    let mut krb_req: BTreeMap<(String, i64, i64), i64> = BTreeMap::new();
    // Bind events still to be grouped into the record of their PDU: (record index, left).
    let mut bind_open: Option<(usize, String, i64, i64, usize)> = None;
    for e in events {
        let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
        let n = |v: &Value| v.as_i64().unwrap_or_default();
        let conn = (s("src_ip"), n(&e["src_port"]), n(&e["dc_port"]));
        let mut r = Rec::new();
        put(&mut r, "src_ip", s("src_ip"));
        put(&mut r, "src_port", n(&e["src_port"]));
        put(&mut r, "dest_ip", s("dc_ip"));
        put(&mut r, "dest_port", n(&e["dc_port"]));
        let d = &e["detail"];
        if let Some(k) = d.get("Kerberos").filter(|k| k["carrier"].as_str().unwrap_or_default().is_empty()) {
            let t = n(&k["msg_type"]);
            let ks = |f: &str| k[f].as_str().unwrap_or_default().to_string();
            put(&mut r, "event_type", "krb5");
            put(&mut r, "krb5.msg_type", krb_msg(t));
            put(&mut r, "krb5.cname", or_empty(&ks("cname")));
            put(&mut r, "krb5.sname", or_empty(&ks("sname")));
            // Suricata logs a request's realm, a reply's or error's crealm.
            let realm = if matches!(t, 10 | 12) { ks("realm") } else { ks("crealm") };
            put(&mut r, "krb5.realm", or_empty(&realm));
            let enc = if matches!(t, 11 | 13) { n(&k["enc_part_etype"]) } else { 0 };
            put(&mut r, "krb5.encryption", krb_etype(enc));
            put(&mut r, "krb5.weak_encryption", krb_weak(enc));
            match t {
                10 | 12 => {
                    krb_req.insert(conn.clone(), t);
                }
                11 | 13 => {
                    let te = n(&k["ticket_etype"]);
                    put(&mut r, "krb5.ticket_encryption", krb_etype(te));
                    put(&mut r, "krb5.ticket_weak_encryption", krb_weak(te));
                }
                30 => {
                    put(&mut r, "krb5.error_code", krb_error(n(&k["error_code"])));
                    if let Some(q) = krb_req.get(&conn) {
                        put(&mut r, "krb5.failed_request", krb_msg(*q));
                    }
                }
                _ => {}
            }
            out.push(r);
        } else if let Some(m) = d
            .get("Ntlm")
            .filter(|m| n(&m["message_type"]) == 3 && m["carrier"].as_str().unwrap_or_default().starts_with("smb"))
        {
            put(&mut r, "event_type", "smb");
            let cmd =
                if m["carrier"] == "smb1" { "SMB1_COMMAND_SESSION_SETUP_ANDX" } else { "SMB2_COMMAND_SESSION_SETUP" };
            put(&mut r, "smb.command", cmd);
            if !s("result").is_empty() {
                put(&mut r, "smb.status", nt_status(n(&e["status_code"])));
            }
            put(&mut r, "smb.ntlmssp.domain", m["domain"].as_str().unwrap_or_default());
            put(&mut r, "smb.ntlmssp.user", m["user"].as_str().unwrap_or_default());
            put(&mut r, "smb.ntlmssp.host", m["workstation"].as_str().unwrap_or_default());
            out.push(r);
        } else if let Some(m) = d.get("Smb2") {
            let cmd = m["command"].as_str().unwrap_or_default();
            let cmd = match cmd {
                "create" => "SMB2_COMMAND_CREATE",
                "tree_connect" => "SMB2_COMMAND_TREE_CONNECT",
                // Encrypted sessions: Suricata logs nothing it can read of them.
                _ => continue,
            };
            put(&mut r, "event_type", "smb");
            put(&mut r, "smb.command", cmd);
            if !s("result").is_empty() {
                put(&mut r, "smb.status", nt_status(n(&e["status_code"])));
            }
            put(&mut r, "smb.dialect", smb_dialect(n(&m["dialect"])));
            put(&mut r, "smb.session_id", n(&m["session_id"]));
            let tree = m["tree"].as_str().unwrap_or_default();
            if cmd == "SMB2_COMMAND_CREATE" {
                put(&mut r, "smb.filename", m["file"].as_str().unwrap_or_default());
            } else if tree.to_ascii_uppercase().ends_with("\\IPC$") {
                put(&mut r, "smb.named_pipe", tree);
            } else {
                put(&mut r, "smb.share", tree);
            }
            out.push(r);
        } else if let Some(m) = d.get("Dcerpc") {
            let over_smb = m["transport"] != "tcp";
            let (ev, p) = if over_smb { ("smb", "smb.dcerpc.") } else { ("dcerpc", "dcerpc.") };
            let call_id = n(&m["call_id"]);
            let uuid = m["interface_uuid"].as_str().unwrap_or_default().to_ascii_lowercase();
            let iface = dce_name(m["interface"].as_str().unwrap_or_default());
            if m["operation"] == "bind" {
                // One event per presentation context; one EVE record per bind PDU.
                if let Some((i, c, port, id, left)) = bind_open.take() {
                    if c == conn.0 && port == conn.1 && id == call_id && left > 0 {
                        let rec: &mut Rec = &mut out[i];
                        let k = rec.keys().filter(|k| k.ends_with("].uuid")).count();
                        put(rec, format!("{p}interfaces[{k}].uuid"), &uuid);
                        put(rec, format!("{p}interfaces[{k}].service"), &iface);
                        bind_open = (left > 1).then_some((i, c, port, id, left - 1));
                        continue;
                    }
                }
                put(&mut r, "event_type", ev);
                put(&mut r, format!("{p}request"), "BIND");
                put(&mut r, format!("{p}call_id"), call_id);
                put(&mut r, format!("{p}interfaces[0].uuid"), &uuid);
                put(&mut r, format!("{p}interfaces[0].service"), &iface);
                let ctx = (n(&m["bind_contexts"]).max(1) - 1) as usize;
                if ctx > 0 {
                    bind_open = Some((out.len(), conn.0.clone(), conn.1, call_id, ctx));
                }
                out.push(r);
            } else {
                put(&mut r, "event_type", ev);
                put(&mut r, format!("{p}request"), "REQUEST");
                put(&mut r, format!("{p}call_id"), call_id);
                let opnum = if over_smb { "smb.dcerpc.opnum" } else { "dcerpc.req.opnum" };
                put(&mut r, opnum, n(&m["opnum"]));
                put(&mut r, format!("{p}interfaces[0].uuid"), &uuid);
                put(&mut r, format!("{p}interfaces[0].service"), &iface);
                // MS-SCMR names its methods RCreateServiceW, ...; Suricata CreateServiceW.
                let name = dce_name(m["operation_name"].as_str().unwrap_or(""));
                let name = match name.strip_prefix('r') {
                    Some(rest) if iface == "svcctl" => rest.to_string(),
                    _ => name,
                };
                put(&mut r, format!("{p}interfaces[0].procedure"), name);
                out.push(r);
            }
        } else if let Some(m) = d.get("Dns") {
            put(&mut r, "event_type", "dns");
            let response = m["response"].as_bool().unwrap_or_default();
            put(&mut r, "dns.type", if response { "response" } else { "request" });
            put(&mut r, "dns.id", n(&m["id"]));
            if response {
                // Suricata logs a response from the server's side.
                let (a, b) = (r["src_ip"].clone(), r["src_port"].clone());
                let (c, d) = (r["dest_ip"].clone(), r["dest_port"].clone());
                put(&mut r, "src_ip", c);
                put(&mut r, "src_port", d);
                put(&mut r, "dest_ip", a);
                put(&mut r, "dest_port", b);
                put(&mut r, "dns.rcode", dns_rcode(n(&m["rcode"])));
            }
            for (i, q) in m["questions"].as_array().into_iter().flatten().enumerate() {
                put(&mut r, format!("dns.queries[{i}].rrname"), q["name"].as_str().unwrap_or_default());
                put(&mut r, format!("dns.queries[{i}].rrtype"), dns_type(n(&q["qtype"])));
            }
            out.push(r);
        } else if let Some(l) = d.get("Ldap") {
            let ls = |f: &str| l[f].as_str().unwrap_or_default().to_string();
            let op = ls("operation");
            let (req, resp) = match op.as_str() {
                "bind" => ("bind_request", "bind_response"),
                "search" => ("search_request", "search_result_done"),
                "modify" => ("modify_request", "modify_response"),
                "add" => ("add_request", "add_response"),
                "delete" => ("del_request", "del_response"),
                "modify_dn" => ("mod_dn_request", "mod_dn_response"),
                "extended" => ("extended_request", "extended_response"),
                // SASL-sealed traffic: Suricata cannot read it either.
                _ => continue,
            };
            put(&mut r, "event_type", "ldap");
            let p = format!("ldap.request.{req}");
            put(&mut r, "ldap.request.message_id", n(&l["message_id"]));
            put(&mut r, "ldap.request.operation", req);
            let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
            match op.as_str() {
                "bind" => put(&mut r, format!("{p}.name"), ls("bind_name")),
                "search" => {
                    put(&mut r, format!("{p}.base_object"), ls("base_dn"));
                    put(&mut r, format!("{p}.scope"), n(&l["scope"]));
                    for (i, a) in list(&l["attributes"]).iter().enumerate() {
                        put(&mut r, format!("{p}.attributes[{i}]"), a.as_str().unwrap_or_default());
                    }
                }
                "modify" => {
                    put(&mut r, format!("{p}.object"), ls("target_dn"));
                    for (i, a) in list(&l["modified_attributes"]).iter().enumerate() {
                        let k = format!("{p}.changes[{i}].modification.attribute_type");
                        put(&mut r, k, a.as_str().unwrap_or_default());
                    }
                }
                "add" => {
                    put(&mut r, format!("{p}.entry"), ls("target_dn"));
                    for (i, a) in list(&l["modified_attributes"]).iter().enumerate() {
                        put(&mut r, format!("{p}.attributes[{i}].name"), a.as_str().unwrap_or_default());
                    }
                }
                "delete" => put(&mut r, format!("{p}.dn"), ls("target_dn")),
                "modify_dn" => put(&mut r, format!("{p}.entry"), ls("target_dn")),
                _ => {}
            }
            let mut i = 0;
            if op == "search" {
                for _ in 0..n(&l["entries_returned"]) {
                    put(&mut r, format!("ldap.responses[{i}].operation"), "search_result_entry");
                    i += 1;
                }
            }
            if !s("result").is_empty() {
                put(&mut r, format!("ldap.responses[{i}].operation"), resp);
                put(&mut r, format!("ldap.responses[{i}].{resp}.result_code"), ldap_result(n(&l["result_code"])));
            }
            out.push(r);
        }
    }
    // A session setup's dialect and session id are those of the SMB2 records that follow on
    // its connection (the NTLM event does not carry them).
    for i in 0..out.len() {
        if out[i].get("smb.command").map(String::as_str) != Some("SMB2_COMMAND_SESSION_SETUP") {
            continue;
        }
        let conn = |r: &Rec| (r.get("src_ip").cloned(), r.get("src_port").cloned(), r.get("dest_port").cloned());
        let later = out[i + 1..].iter().find(|r| conn(r) == conn(&out[i]) && r.contains_key("smb.session_id"));
        if let Some(l) = later.cloned() {
            for k in ["smb.dialect", "smb.session_id"] {
                out[i].insert(k.into(), l[k].clone());
            }
        }
    }
    out
}

/// EVE keys the sensor does not model, with why; a check keeps its other keys.
fn unmodelled(key: &str) -> Option<&'static str> {
    // `x[3].y` -> `x[].y`
    let mut k = String::new();
    let mut skip = false;
    for c in key.chars() {
        match c {
            '[' => {
                skip = true;
                k.push('[');
            }
            ']' => {
                skip = false;
                k.push(']');
            }
            _ if skip => {}
            c => k.push(c),
        }
    }
    let k = k.as_str();
    let tail = |t: &str| k.ends_with(t);
    Some(match k {
        "pcap_cnt" => "packet number in the capture",
        "proto" | "app_proto" | "direction" | "has-key" | "not-has-key" => "Suricata flow metadata",
        "smb.id" | "smb.tree_id" | "smb.fuid" | "smb.status_code" => "Suricata transaction, tree and file ids",
        "smb.disposition" | "smb.access" | "smb.created" | "smb.accessed" | "smb.modified" | "smb.changed"
        | "smb.size" => "create options and file times (the sensor keeps the name)",
        "smb.client_dialects[]" | "smb.server_guid" => "SMB negotiate details",
        "smb.request.native_os" | "smb.request.native_lm" | "smb.response.native_os" | "smb.response.native_lm" => {
            "SMB1 session setup OS strings"
        }
        "smb.ntlmssp.version" => "NTLM OS version (the sensor keeps v1/v2)",
        "smb.rename.from" | "smb.rename.to" => "SMB2 SET_INFO renames",
        "dcerpc.response" | "smb.dcerpc.response" => "the response PDU type (the sensor folds the response in)",
        "dcerpc.rpc_version"
        | "dcerpc.req.frag_cnt"
        | "dcerpc.req.stub_data_size"
        | "dcerpc.res.frag_cnt"
        | "dcerpc.res.stub_data_size" => "fragment counts and stub sizes",
        "dcerpc.activityuuid" | "dcerpc.seqnum" => "connectionless DCE/RPC ids",
        "ldap.request.search_request.deref_alias"
        | "ldap.request.search_request.size_limit"
        | "ldap.request.search_request.time_limit"
        | "ldap.request.search_request.types_only"
        | "ldap.request.mod_dn_request.new_rdn"
        | "ldap.request.mod_dn_request.delete_old_rdn"
        | "ldap.request.modify_request.changes[].operation"
        | "ldap.request.extended_request.name" => "LDAP request options",
        "ldap.responses[].message_id" => "LDAP response message id (the request's is compared)",
        _ if tail(".version") || tail(".ack_result") || tail(".ack_reason") => "bind context versions and results",
        _ if tail(".values[]") || tail(".attribute_values[]") => "LDAP attribute values (the sensor keeps names)",
        _ if tail(".matched_dn") || tail(".message") || tail("_response.name") => "LDAP result text",
        _ if k.starts_with("ldap.responses[].search_result_entry.") => "search result entries' contents",
        _ if k.starts_with("dns.answers[]") || k.starts_with("dns.authorities[]") => {
            "DNS answer records (the sensor keeps their count)"
        }
        _ => return None,
    })
}

/// Why the sensor has no record like the check's, when that is by design.
fn by_design(m: &BTreeMap<String, String>) -> Option<&'static str> {
    let g = |k: &str| m.get(k).map(String::as_str);
    if let Some(c) = g("smb.command").filter(|_| !m.keys().any(|k| k.starts_with("smb.dcerpc."))) {
        if !matches!(c, "SMB2_COMMAND_CREATE" | "SMB2_COMMAND_TREE_CONNECT" | "SMB2_COMMAND_SESSION_SETUP") {
            return Some("SMB command the sensor does not report");
        }
    }
    if let Some(op) = g("ldap.request.operation") {
        if matches!(op, "unbind_request" | "abandon_request" | "compare_request" | "extended_request") {
            return Some("LDAP operation the sensor does not report");
        }
    }
    let service = g("dcerpc.interfaces[0].service").or(g("smb.dcerpc.interfaces[0].service"));
    if service.is_some_and(|s| {
        matches!(
            s.to_ascii_lowercase().as_str(),
            "iremunknown2" | "iremotescmactivator" | "mgmt" | "winreg" | "dssetup"
        )
    }) {
        return Some("operations of an interface outside the detections are reported by opnum, not named");
    }
    if g("event_type") == Some("dcerpc") && g("proto") == Some("UDP") {
        return Some("connectionless DCE/RPC (ncadg_ip_udp), which AD does not use, is not parsed");
    }
    // A count of all SMB records, or of all with some status.
    if g("event_type") == Some("smb") && m.keys().all(|k| matches!(k.as_str(), "event_type" | "smb.status" | "has-key"))
    {
        return Some("Suricata logs every SMB transaction, the sensor the ones detections use");
    }
    None
}

/// A YAML scalar as a string (as Suricata's JSON value would compare).
fn scalar(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Null => String::new(),
        other => serde_json::to_string(&serde_json::to_value(other).unwrap_or_default()).unwrap_or_default(),
    }
}

fn flatten(prefix: &str, v: &Yaml, out: &mut BTreeMap<String, String>) {
    match v {
        Yaml::Mapping(m) => {
            for (k, v) in m {
                let k = scalar(k);
                let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), scalar(v));
        }
    }
}

/// Expected values in the sensor's terms: v2 DNS record types, alter-context reported as
/// a bind, interface and procedure names without case.
fn normalise(k: &str, v: &str) -> String {
    match (k, v) {
        ("dns.type", "query") => "request".into(),
        ("dns.type", "answer") => "response".into(),
        (_, "ALTER_CONTEXT") if k.ends_with("request") => "BIND".into(),
        _ if k.ends_with(".service") || k.ends_with(".procedure") => dce_name(v),
        _ if k.ends_with(".uuid") => v.to_ascii_lowercase(),
        _ => v.to_string(),
    }
}

/// Test-wide reasons a suricata-verify test describes Suricata rather than the traffic.
fn test_not_applicable(name: &str, args: &str) -> Option<&'static str> {
    if args.contains("--simulate-ips") {
        Some("IPS mode: Suricata's drop and pass verdicts")
    } else if args.contains("max-tx") {
        Some("Suricata's per-flow transaction limit")
    } else if args.contains("midstream-policy") {
        Some("Suricata's exception policy")
    } else if args.contains("reassembly.depth=50") {
        Some("Suricata's stream depth limit")
    } else if name.starts_with("smb-log-conf") {
        Some("the test's own EVE logging options (its suricata.yaml)")
    } else {
        None
    }
}

fn not_applicable_event(ev: &str) -> Option<&'static str> {
    Some(match ev {
        "alert" => "alerts from the test's rules",
        "flow" | "netflow" => "flow records",
        "stats" => "Suricata's counters",
        "anomaly" => "Suricata's parser anomalies",
        "drop" => "IPS drops",
        "frame" => "Suricata's frame records",
        "fileinfo" => "file extraction",
        "tls" => "TLS (not an AD protocol)",
        "http" => "HTTP",
        _ => return None,
    })
}

#[derive(Default)]
struct Tally {
    compared: usize,
    agree: usize,
    by_design: usize,
}

enum Outcome {
    Agree,
    Apart(Option<&'static str>, usize),
    NotApplicable(&'static str),
}

/// One `filter:` check against the sensor's records.
fn judge(filter: &Yaml, recs: &[Rec], left_out: &mut BTreeMap<String, &'static str>) -> (String, Outcome) {
    let count = filter.get("count").and_then(Yaml::as_u64).unwrap_or(0) as usize;
    let mut m = BTreeMap::new();
    if let Some(v) = filter.get("match") {
        flatten("", v, &mut m);
    }
    let ev = m
        .get("event_type")
        .cloned()
        .unwrap_or_else(|| m.keys().find_map(|k| k.split_once('.').map(|(p, _)| p.to_string())).unwrap_or_default());
    let proto = match ev.as_str() {
        "krb5" | "smb" | "dcerpc" | "dns" | "ldap" => ev.clone(),
        _ => "other".into(),
    };
    if filter.get("requires").and_then(|r| r.get("lt-version")).is_some() {
        return (proto, Outcome::NotApplicable("a check for an older Suricata release"));
    }
    if m.keys().any(|k| k.starts_with("alert")) {
        return (proto, Outcome::NotApplicable("alerts from the test's rules"));
    }
    if let Some(why) = not_applicable_event(&ev) {
        return (proto, Outcome::NotApplicable(why));
    }
    if proto == "other" {
        return (proto, Outcome::NotApplicable("not an AD protocol"));
    }
    if m.get("dcerpc.request").map(String::as_str) == Some("REQUEST_LOST") {
        return (proto, Outcome::NotApplicable("Suricata's record for a response whose request was lost"));
    }
    let mut wanted: Vec<(String, String)> = Vec::new();
    let mut dropped = false;
    for (k, v) in &m {
        if k == "event_type" {
            continue;
        }
        if let Some(why) = unmodelled(k) {
            left_out.insert(k.clone(), why);
            dropped = true;
            continue;
        }
        // SMB's record of a DCE/RPC PDU on a pipe names the carrying command (WRITE,
        // IOCTL, READ) and its status; the sensor's DCE/RPC events do not.
        if (k == "smb.command" || k == "smb.status") && m.keys().any(|k| k.starts_with("smb.dcerpc.")) {
            left_out.insert(k.clone(), "the SMB command that carried a DCE/RPC PDU, and its status");
            dropped = true;
            continue;
        }
        wanted.push((k.clone(), normalise(k, v)));
    }
    if dropped && count == 0 {
        return (proto, Outcome::NotApplicable("told apart only by fields the sensor does not model"));
    }
    let found = recs
        .iter()
        .filter(|r| r.get("event_type") == Some(&ev))
        .filter(|r| wanted.iter().all(|(k, v)| r.get(k) == Some(v)))
        .count();
    let ok = if dropped { found >= count } else { found == count };
    let outcome = if ok { Outcome::Agree } else { Outcome::Apart(by_design(&m), found) };
    (proto, outcome)
}

#[test]
fn suricata_baselines_agreement() {
    let corpus = shared_dir().join("corpus");
    let Some(manifest) = corpus_manifest() else {
        tap_testkit::skip::skipped(
            "suricata_baselines_agreement",
            &tap_testkit::skip::no_shared(&corpus.display().to_string()),
        );
        return;
    };
    let verbose = std::env::var("DCTAP_CONFORMANCE_VERBOSE").is_ok();
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    let mut not_applicable: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut left_out: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut apart = Vec::new();
    let (mut captures, mut tests) = (0, 0);
    for row in &manifest {
        let (Some(capture), Some(expected)) = (row.get("file"), row.get("expected_output")) else { continue };
        if !capture.starts_with("suricata-verify/") || !corpus.join(capture).exists() {
            continue;
        }
        let yamls: Vec<&str> = expected.split(';').filter(|p| p.ends_with("/test.yaml")).collect();
        if yamls.is_empty() {
            continue;
        }
        captures += 1;
        let recs = match try_sensor_json(&corpus.join(capture)) {
            Ok(events) => sensor_recs(&events),
            Err(e) => {
                eprintln!("  {capture}: {e}");
                Vec::new()
            }
        };
        for path in yamls {
            let name = path.rsplit('/').nth(1).unwrap_or(path);
            let Ok(text) = std::fs::read_to_string(corpus.join(path)) else { continue };
            let doc: Yaml = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
            tests += 1;
            let args = match doc.get("args") {
                Some(Yaml::Sequence(s)) => s.iter().map(scalar).collect::<Vec<_>>().join(" "),
                Some(v) => scalar(v),
                None => String::new(),
            };
            let test_na = test_not_applicable(name, &args)
                .or_else(|| doc.get("requires").and_then(|r| r.get("lt-version")).map(|_| "an older Suricata"));
            for (i, check) in doc.get("checks").and_then(Yaml::as_sequence).into_iter().flatten().enumerate() {
                let Some(filter) = check.get("filter") else {
                    *not_applicable.entry("checks of Suricata's own log or exit code").or_default() += 1;
                    continue;
                };
                let (proto, outcome) = match test_na {
                    Some(why) => ("other".to_string(), Outcome::NotApplicable(why)),
                    None => judge(filter, &recs, &mut left_out),
                };
                match outcome {
                    Outcome::NotApplicable(why) => *not_applicable.entry(why).or_default() += 1,
                    Outcome::Agree => {
                        let t = tallies.entry(proto).or_default();
                        t.compared += 1;
                        t.agree += 1;
                    }
                    Outcome::Apart(design, found) => {
                        let t = tallies.entry(proto.clone()).or_default();
                        t.compared += 1;
                        t.by_design += design.is_some() as usize;
                        let want = filter.get("count").map(scalar).unwrap_or_default();
                        let mut m = BTreeMap::new();
                        flatten("", filter.get("match").unwrap_or(&Yaml::Null), &mut m);
                        apart.push(format!(
                            "  {name} check {}: want {want}, sensor {found}{} {m:?}",
                            i + 1,
                            design.map(|d| format!(" (by design: {d})")).unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }
    if captures == 0 {
        tap_testkit::skip::skipped(
            "suricata_baselines_agreement",
            &format!("no suricata-verify tests in {}", corpus.display()),
        );
        return;
    }
    if verbose {
        eprintln!("checks apart:");
        for a in &apart {
            eprintln!("{a}");
        }
        eprintln!("keys left out of checks:");
        for (k, why) in &left_out {
            eprintln!("  {k}: {why}");
        }
    }
    eprintln!("\nsuricata-verify tests: {tests} of {captures} captures; checks per protocol");
    eprintln!("{:<9}{:>9}{:>7}{:>9}{:>9}{:>8}", "protocol", "compared", "agree", "apart", "design", "agree");
    let mut below = Vec::new();
    for (proto, t) in &tallies {
        let pct = if t.compared == 0 { 100.0 } else { 100.0 * t.agree as f64 / t.compared as f64 };
        let apart = t.compared - t.agree;
        eprintln!("{proto:<9}{:>9}{:>7}{apart:>9}{:>9}{pct:>7.1}%", t.compared, t.agree, t.by_design);
    }
    eprintln!("not applicable:");
    for (why, n) in &not_applicable {
        eprintln!("  {n:>4}  {why}");
    }
    for (proto, agree, compared) in FLOORS {
        let t = tallies.get(*proto);
        let (a, c) = t.map_or((0, 0), |t| (t.agree, t.compared));
        // Fewer agreeing checks, or a smaller share of them, than reached so far.
        if a < *agree || (c > 0 && (a as f64 / c as f64) + 1e-9 < *agree as f64 / *compared as f64) {
            below.push(format!("{proto}: {a}/{c} < floor {agree}/{compared}"));
        }
    }
    assert!(below.is_empty(), "agreement with the suricata-verify checks fell: {below:#?}");
}
