//! The detections on crafted events at their thresholds.
use super::super::{DetectConfig, Engine};
use crate::pb::{activity_event::Detail, ActivityEvent, DceRpc, Dns, DnsQuestion, DnsRecord, Kerberos, Ldap, Ntlm};

const S: i64 = 1_000_000_000;

fn ev(t: i64, src: &str, detail: Detail) -> ActivityEvent {
    ActivityEvent {
        sensor_id: "s".into(),
        seq: t as u64,
        time_unix_ns: t * S,
        src_ip: src.into(),
        src_port: 50_000,
        dc_ip: "10.0.0.10".into(),
        detail: Some(detail),
        ..Default::default()
    }
}

fn krb(msg_type: u32) -> Kerberos {
    Kerberos { msg_type, sname: "krbtgt/LAB".into(), ..Default::default() }
}

fn krb_error(t: i64, src: &str, user: &str, code: i32) -> ActivityEvent {
    ev(t, src, Detail::Kerberos(Kerberos { cname: user.into(), error_code: code, ..krb(30) }))
}

fn rpc(t: i64, src: &str, interface: &str, op: &str) -> ActivityEvent {
    ev(
        t,
        src,
        Detail::Dcerpc(DceRpc {
            operation: "call".into(),
            interface: interface.into(),
            operation_name: op.into(),
            ..Default::default()
        }),
    )
}

fn ldap_search(t: i64, src: &str, filter: &str) -> ActivityEvent {
    ev(t, src, Detail::Ldap(Ldap { operation: "search".into(), filter: filter.into(), ..Default::default() }))
}

/// Detections raised by a sequence of events (each alert once).
fn run(cfg: DetectConfig, events: &[ActivityEvent]) -> Vec<String> {
    let mut engine = Engine::new(cfg);
    let mut out: Vec<String> = Vec::new();
    for e in events {
        for a in engine.process(e) {
            if !out.contains(&a.detection) {
                out.push(a.detection);
            }
        }
    }
    out
}

#[test]
fn password_spray_fires_at_the_account_threshold_within_the_window_only() {
    let users = ["alice", "bob", "carol", "dave", "eve"];
    let spray: Vec<_> = users.iter().enumerate().map(|(i, u)| krb_error(i as i64, "10.1.1.1", u, 24)).collect();
    assert_eq!(run(DetectConfig::default(), &spray), vec!["password_spray"]);
    assert!(run(DetectConfig::default(), &spray[..4]).is_empty(), "four accounts is below the threshold");
    // The same five, spread over more than the window, are not a spray.
    let slow: Vec<_> = users.iter().enumerate().map(|(i, u)| krb_error(i as i64 * 200, "10.1.1.1", u, 24)).collect();
    assert!(run(DetectConfig::default(), &slow).is_empty());
    // Five sources with one failure each are five forgetful users.
    let spread: Vec<_> =
        users.iter().enumerate().map(|(i, u)| krb_error(i as i64, &format!("10.1.1.{i}"), u, 24)).collect();
    assert!(run(DetectConfig::default(), &spread).is_empty());
    let mut cfg = DetectConfig::default();
    cfg.exclusions.insert("password_spray".into(), vec!["10.1.1.1".into()]);
    assert!(run(cfg, &spray).is_empty(), "an excluded source raises nothing");
}

#[test]
fn brute_force_and_enumeration_count_failures_per_account_and_unknown_names() {
    let brute: Vec<_> = (0..10).map(|i| krb_error(i, "10.1.1.1", "bob", 24)).collect();
    assert_eq!(run(DetectConfig::default(), &brute), vec!["brute_force"]);
    assert!(run(DetectConfig::default(), &brute[..9]).is_empty());
    let names: Vec<_> = (0..5).map(|i| krb_error(i, "10.1.1.1", &format!("guess{i}"), 6)).collect();
    assert_eq!(run(DetectConfig::default(), &names), vec!["account_enumeration"]);
    assert!(run(DetectConfig::default(), &names[..4]).is_empty());
    // NTLM failures count the same way.
    let ntlm: Vec<_> = (0..5)
        .map(|i| {
            let mut e =
                ev(i, "10.1.1.2", Detail::Ntlm(Ntlm { message_type: 3, user: format!("u{i}"), ..Default::default() }));
            e.account = format!("LAB\\u{i}");
            e.result = "failure".into();
            e.status_code = 0xC000_006A;
            e
        })
        .collect();
    assert_eq!(run(DetectConfig::default(), &ntlm), vec!["password_spray"]);
}

#[test]
fn roasting_needs_rc4_only_requests_or_replies_without_preauth() {
    let tgs = |etypes: Vec<i32>, sname: &str| {
        ev(1, "10.1.1.1", Detail::Kerberos(Kerberos { requested_etypes: etypes, sname: sname.into(), ..krb(12) }))
    };
    // The request waits for its reply, which names the account.
    let reply = |etype: i32| {
        let k = Kerberos { cname: "alice".into(), sname: "MSSQLSvc/sql01".into(), ticket_etype: etype, ..krb(13) };
        ev(1, "10.1.1.1", Detail::Kerberos(k))
    };
    let mut engine = Engine::new(DetectConfig::default());
    assert!(engine.process(&tgs(vec![23], "MSSQLSvc/sql01")).is_empty());
    let alerts = engine.process(&reply(23));
    assert_eq!(alerts.len(), 1);
    assert_eq!((alerts[0].detection.as_str(), alerts[0].account.as_str()), ("kerberoasting", "alice"));
    // A refused request is still the tool's; one with no reply at all is reported later.
    let refused = ev(1, "10.1.1.1", Detail::Kerberos(Kerberos { error_code: 50, ..krb(30) }));
    assert_eq!(
        run(DetectConfig::default(), &[tgs(vec![23], "MSSQLSvc/sql01"), refused.clone()]),
        vec!["kerberoasting"]
    );
    let later = ev(30, "10.9.9.9", Detail::Kerberos(krb(10)));
    assert_eq!(run(DetectConfig::default(), &[tgs(vec![23], "MSSQLSvc/sql01"), later]), vec!["kerberoasting"]);
    assert!(run(DetectConfig::default(), &[tgs(vec![23], "MSSQLSvc/sql01")]).is_empty(), "still waiting");
    // The TGT a refused request carried names its account, when its AS-REP was seen.
    let as_rep = ev(
        0,
        "10.1.1.1",
        Detail::Kerberos(Kerberos { cname: "alice".into(), ticket_fingerprint: "fp1".into(), ..krb(11) }),
    );
    let mut with_tgt = tgs(vec![23], "MSSQLSvc/sql01");
    if let Some(Detail::Kerberos(k)) = &mut with_tgt.detail {
        k.ticket_fingerprint = "fp1".into();
    }
    let mut engine = Engine::new(DetectConfig::default());
    let alerts: Vec<_> = [as_rep, with_tgt, refused.clone()].iter().flat_map(|e| engine.process(e)).collect();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].account, "alice");
    // An AES request answered with an AES ticket is normal.
    assert!(run(DetectConfig::default(), &[tgs(vec![18, 17, 23], "MSSQLSvc/sql01"), reply(18)]).is_empty());
    assert!(run(DetectConfig::default(), &[tgs(vec![18, 17, 23], "MSSQLSvc/sql01")]).is_empty());
    assert!(run(DetectConfig::default(), &[tgs(vec![23], "krbtgt/LAB")]).is_empty());
    assert!(run(DetectConfig::default(), &[tgs(vec![23], "WS01$")]).is_empty(), "computer accounts are not roastable");
    let asreq = |enc_ts: i32| {
        ev(1, "10.1.1.1", Detail::Kerberos(Kerberos { cname: "dave".into(), enc_timestamp_etype: enc_ts, ..krb(10) }))
    };
    let asrep = ev(2, "10.1.1.1", Detail::Kerberos(krb(11)));
    assert_eq!(run(DetectConfig::default(), &[asreq(0), asrep.clone()]), vec!["asrep_roasting"]);
    assert!(run(DetectConfig::default(), &[asreq(18), asrep.clone()]).is_empty(), "pre-authenticated");
    assert!(run(DetectConfig::default(), &[asreq(0)]).is_empty(), "refused (KDC_ERR_PREAUTH_REQUIRED) is normal");
    // MIT kinit -T: the pre-authentication travels inside the FAST armor.
    let mut armored = asreq(0);
    if let Some(Detail::Kerberos(k)) = armored.detail.as_mut() {
        k.fast = true;
        k.padata_types = vec![136];
    }
    assert!(run(DetectConfig::default(), &[armored, asrep]).is_empty(), "FAST hides the pre-authentication");
}

/// Roasting is a client's request, not a service's configuration: a client that offers
/// AES and gets an RC4 ticket (a service account without AES keys, common in real
/// domains), tickets to the services every computer has, and S4U2self (whose reply
/// names the impersonated user) raise nothing.
#[test]
fn kerberoasting_ignores_service_configuration_computer_services_and_s4u() {
    let d = DetectConfig::default;
    let exchange = |port: u32, etypes: Vec<i32>, sname: &str, padata: Vec<i32>, cname: &str, ticket: i32| {
        let mut req = ev(
            1,
            "10.1.1.1",
            Detail::Kerberos(Kerberos {
                requested_etypes: etypes,
                sname: sname.into(),
                padata_types: padata,
                ..krb(12)
            }),
        );
        req.src_port = port;
        let mut rep = ev(
            1,
            "10.1.1.1",
            Detail::Kerberos(Kerberos { cname: cname.into(), sname: sname.into(), ticket_etype: ticket, ..krb(13) }),
        );
        rep.src_port = port;
        [req, rep]
    };
    // Four ordinary users offering AES, an RC4-only service account answers with RC4.
    let benign: Vec<_> = ["alice", "bob", "carol", "dave"]
        .iter()
        .enumerate()
        .flat_map(|(i, u)| exchange(50_000 + i as u32, vec![18, 17, 23], "MSSQLSvc/sql01:1433", vec![], u, 23))
        .collect();
    assert!(run(d(), &benign).is_empty(), "an RC4 ticket to a client that offered AES");
    // That is the service account's configuration, kept for the posture: RC4 tickets.
    let mut engine = Engine::new(d());
    benign.iter().for_each(|e| drop(engine.process(e)));
    let rc4 = &engine.profiles.rc4_services["mssqlsvc/sql01:1433"];
    assert_eq!((rc4.tickets, rc4.first_seen_ns, rc4.last_seen_ns), (4, S, S));
    assert_eq!(engine.profiles.rc4_services.len(), 1);
    let rows = engine.profiles.take_changes();
    assert!(rows.iter().any(|r| r.kind == "rc4_service" && r.key == "mssqlsvc/sql01:1433"), "{rows:?}");
    // RC4-only requests (after an RC4 logon) to the DC's own services.
    for service in ["cifs/dc1.lab.example", "ldap/dc1.lab.example/lab.example", "HOST/dc1", "DC1$", "krbtgt/LAB"] {
        assert!(run(d(), &exchange(1, vec![23], service, vec![], "alice", 23)).is_empty(), "{service}");
    }
    // S4U2self by a service for a user, even offering RC4 only.
    let s4u = exchange(1, vec![23], "svc_web", vec![1, 129], "alice", 23);
    assert!(run(d(), &s4u).is_empty(), "S4U2self names the impersonated user, who roasted nothing");
    // The real thing: RC4 only for a user's service, named by the reply.
    let mut engine = Engine::new(d());
    let alerts: Vec<_> = exchange(1, vec![23], "MSSQLSvc/sql01:1433", vec![], "mallory", 23)
        .iter()
        .flat_map(|e| engine.process(e))
        .collect();
    assert_eq!(alerts.len(), 1);
    assert_eq!((alerts[0].detection.as_str(), alerts[0].account.as_str()), ("kerberoasting", "mallory"));
    // The same SPN held by a computer account, as an LDAP search answer showed: its
    // tickets use the machine's random key, nothing to crack.
    let search = ev(
        0,
        "10.1.1.2",
        Detail::Ldap(Ldap {
            operation: "search".into(),
            computer_spns: vec!["mssqlsvc/sql01:1433".into(), "http/app3".into()],
            ..Default::default()
        }),
    );
    let mut held = vec![search.clone()];
    held.extend(exchange(1, vec![23], "MSSQLSvc/sql01:1433@LAB.EXAMPLE", vec![], "mallory", 23));
    assert!(run(d(), &held).is_empty(), "a computer's SPN");
    // A burst of AES requests for many user services by one account is roasting too,
    // at the configured threshold and not below.
    let burst: Vec<_> = (0..8u32)
        .flat_map(|i| exchange(100 + i, vec![18, 17], &format!("http/app{i}"), vec![], "mallory", 18))
        .collect();
    let mut engine = Engine::new(d());
    let alerts: Vec<_> = burst.iter().flat_map(|e| engine.process(e)).collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    // One of the eight is a computer's: seven user services stay under the threshold.
    let mut seven = vec![search];
    seven.extend(burst.iter().cloned());
    assert!(run(d(), &seven).is_empty(), "http/app3 is a computer's");
    assert_eq!(alerts[0].account, "mallory");
    assert!(run(d(), &burst[..14]).is_empty(), "seven services are below the threshold of eight");
    let off = DetectConfig { roast_burst_services: 0, ..d() };
    assert!(run(off, &burst).is_empty());
    let no_rc4 = DetectConfig { roast_rc4_requests: false, ..d() };
    assert!(run(no_rc4, &exchange(1, vec![23], "MSSQLSvc/sql01:1433", vec![], "mallory", 23)).is_empty());
}

#[test]
fn account_names_in_every_form_are_one_account() {
    for name in [
        "carol",
        "CAROL",
        "LAB\\carol",
        "carol@LAB.EXAMPLE",
        "Carol@lab.example",
        "cn=carol,cn=users,dc=lab,dc=example",
        "CN=Carol,CN=Users,DC=lab,DC=example",
    ] {
        assert_eq!(super::account_key(name), "carol", "{name}");
    }
    assert_eq!(super::account_key(""), "");
    assert_eq!(super::account_key("WS01$"), "ws01$");
}

/// A spray that finds a password: an account logs on from the spraying host (Kerberos,
/// NTLM) after it failed for five others. The same logon from elsewhere, or after a few
/// typos (below the spray threshold), is not one, nor is an account the spray did not
/// try logging on from the sprayer.
#[test]
fn a_sprayed_account_logging_on_from_the_sprayer_is_spray_success() {
    let d = DetectConfig::default;
    let spray: Vec<_> = ["alice", "bob", "carol", "dave", "frank"]
        .iter()
        .enumerate()
        .map(|(i, u)| krb_error(i as i64, "10.1.1.1", u, 24))
        .collect();
    let as_rep = |src: &str, user: &str| {
        ev(20, src, Detail::Kerberos(Kerberos { cname: user.into(), ticket_fingerprint: "f".into(), ..krb(11) }))
    };
    let mut engine = Engine::new(d());
    let mut alerts: Vec<_> = spray.iter().flat_map(|e| engine.process(e)).collect();
    alerts.extend(engine.process(&as_rep("10.1.1.1", "frank")));
    let found: Vec<_> = alerts.iter().filter(|a| a.detection == "spray_success").collect();
    assert_eq!(found.len(), 1, "{alerts:?}");
    assert_eq!((found[0].account.as_str(), found[0].severity.as_str()), ("frank", "high"));
    let with = |logon: ActivityEvent| {
        let mut events = spray.clone();
        events.push(logon);
        run(d(), &events)
    };
    assert!(!with(as_rep("10.1.1.9", "frank")).contains(&"spray_success".to_string()), "another host");
    let mut mallory_ntlm =
        ev(21, "10.1.1.1", Detail::Ntlm(Ntlm { message_type: 3, user: "mallory".into(), ..Default::default() }));
    mallory_ntlm.account = "LAB\\mallory".into();
    mallory_ntlm.result = "success".into();
    assert!(
        !with(mallory_ntlm).contains(&"spray_success".to_string()),
        "an account the Kerberos spray did not try, logging on with NTLM: its own password"
    );
    assert!(
        with(as_rep("10.1.1.1", "grace")).contains(&"spray_success".to_string()),
        "the spray's next attempt, at an account it had not tried yet, succeeding"
    );
    let mut later = as_rep("10.1.1.1", "grace");
    later.time_unix_ns += 120 * S;
    assert!(!with(later).contains(&"spray_success".to_string()), "long after the spray, not one it tried");
    let mut typos = spray[..2].to_vec();
    typos.push(as_rep("10.1.1.1", "alice"));
    assert!(run(d(), &typos).is_empty(), "two typos, then the password");
    let mut ntlm =
        ev(21, "10.1.1.1", Detail::Ntlm(Ntlm { message_type: 3, user: "frank".into(), ..Default::default() }));
    ntlm.account = "LAB\\frank".into();
    ntlm.result = "success".into();
    assert!(with(ntlm).contains(&"spray_success".to_string()));
}

/// The DC locator names the DC dc1; a TGT asked for "dc1" (no '$') is noPac, for
/// "DC1$" (the DC itself) or another name it is not.
#[test]
fn a_tgt_for_a_dcs_name_without_its_dollar_is_nopac() {
    let locator = ev(
        0,
        "10.1.1.1",
        Detail::Dns(Dns {
            response: true,
            records: vec![DnsRecord {
                name: "_ldap._tcp.dc._msdcs.lab.example".into(),
                rtype: 33,
                data: "dc1.lab.example".into(),
            }],
            ..Default::default()
        }),
    );
    let as_req = |name: &str| ev(1, "10.1.1.5", Detail::Kerberos(Kerberos { cname: name.into(), ..krb(10) }));
    let mut engine = Engine::new(DetectConfig::default());
    engine.process(&locator);
    let alerts = engine.process(&as_req("DC1"));
    assert_eq!(alerts.len(), 1);
    assert_eq!((alerts[0].detection.as_str(), alerts[0].account.as_str()), ("nopac", "dc1"));
    for other in ["DC1$", "alice", "dc10"] {
        assert!(run(DetectConfig::default(), &[locator.clone(), as_req(other)]).is_empty(), "{other}");
    }
    assert!(run(DetectConfig::default(), &[as_req("DC1")]).is_empty(), "no DC name known yet");
}

/// S4U2self for krbtgt is abuse at once; S4U2proxy to a DC's service is abuse the first
/// time an account does it after the learning period, and never twice for the same
/// service.
#[test]
fn delegation_to_a_dcs_service_and_s4u2self_for_a_tgt_are_delegation_abuse() {
    let locator = ev(
        0,
        "10.1.1.1",
        Detail::Dns(Dns {
            response: true,
            records: vec![DnsRecord {
                name: "_kerberos._tcp.dc._msdcs.lab.example".into(),
                rtype: 33,
                data: "dc1.lab.example".into(),
            }],
            ..Default::default()
        }),
    );
    let tgs = |t: i64, sname: &str, padata: Vec<i32>, kdc_options: u32| {
        let mut e = ev(
            t,
            "10.1.1.5",
            Detail::Kerberos(Kerberos { sname: sname.into(), padata_types: padata, kdc_options, ..krb(12) }),
        );
        e.account = "web01$@LAB.EXAMPLE".into();
        e
    };
    let d = || DetectConfig { learning_days: 0, ..DetectConfig::default() };
    let s4u_tgt = tgs(1, "krbtgt/LAB.EXAMPLE", vec![1, 129], 0);
    assert_eq!(run(d(), &[s4u_tgt]), vec!["delegation_abuse"]);
    let proxy = |t: i64, sname: &str| tgs(t, sname, vec![1], 1 << 17);
    let mut engine = Engine::new(d());
    engine.process(&locator);
    let first: Vec<_> = engine.process(&proxy(5, "cifs/dc1.lab.example"));
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].detection.as_str(), first[0].account.as_str()), ("delegation_abuse", "web01$"));
    assert!(engine.process(&proxy(6, "cifs/dc1.lab.example")).is_empty(), "the same delegation again");
    assert!(run(d(), &[locator.clone(), proxy(5, "cifs/files01.lab.example")]).is_empty(), "not a DC");
    let learning = DetectConfig { learning_seconds: Some(60), ..DetectConfig::default() };
    assert!(run(learning, &[locator, proxy(5, "cifs/dc1.lab.example")]).is_empty(), "learned");
}

/// A service ticket presented to a DC (an AP-REQ in SMB) that no watched DC issued is a
/// silver ticket, only when every DC is watched and for longer than a ticket lives;
/// a ticket whose TGS-REP was seen is not.
#[test]
fn a_service_ticket_no_dc_issued_is_a_silver_ticket_when_every_dc_is_watched() {
    let cfg = |all: bool| DetectConfig {
        all_dcs_watched: all,
        max_ticket_lifetime_hours: 1,
        dcs: vec!["10.0.0.10".into()],
        ..DetectConfig::default()
    };
    let start = ev(0, "10.1.1.2", Detail::Kerberos(krb(10)));
    let issued = ev(
        7200,
        "10.1.1.5",
        Detail::Kerberos(Kerberos { sname: "cifs/dc1".into(), ticket_fingerprint: "real".into(), ..krb(13) }),
    );
    let ap_req = |fp: &str| {
        let k = Kerberos { sname: "cifs/dc1".into(), ticket_fingerprint: fp.into(), carrier: "smb2".into(), ..krb(14) };
        ev(7300, "10.1.1.5", Detail::Kerberos(k))
    };
    assert_eq!(run(cfg(true), &[start.clone(), issued.clone(), ap_req("forged")]), vec!["silver_ticket"]);
    assert!(run(cfg(true), &[start.clone(), issued.clone(), ap_req("real")]).is_empty(), "issued");
    assert!(run(cfg(false), &[start.clone(), issued.clone(), ap_req("forged")]).is_empty(), "a DC is unwatched");
    let early = ev(
        600,
        "10.1.1.5",
        Detail::Kerberos(Kerberos { ticket_fingerprint: "f".into(), carrier: "smb2".into(), ..krb(14) }),
    );
    assert!(run(cfg(true), &[start, early]).is_empty(), "not watched for a ticket's life yet");
}

#[test]
fn tickets_used_from_a_second_host_or_never_issued_are_flagged() {
    let tgt = |t: i64, src: &str, msg: u32| {
        ev(
            t,
            src,
            Detail::Kerberos(Kerberos { ticket_fingerprint: "ab12".into(), sname: "cifs/dc1".into(), ..krb(msg) }),
        )
    };
    assert!(run(DetectConfig::default(), &[tgt(1, "10.1.1.1", 11), tgt(2, "10.1.1.1", 12)]).is_empty());
    assert_eq!(
        run(DetectConfig::default(), &[tgt(1, "10.1.1.1", 11), tgt(2, "10.1.1.9", 12)]),
        vec!["pass_the_ticket"]
    );
    // A TGT nobody issued: only after watching longer than a ticket lives.
    let early = [ev(0, "10.1.1.5", Detail::Kerberos(krb(13))), tgt(3600, "10.1.1.1", 12)];
    assert!(run(DetectConfig::default(), &early).is_empty());
    let late = [ev(0, "10.1.1.5", Detail::Kerberos(krb(13))), tgt(11 * 3600, "10.1.1.1", 12)];
    assert!(run(DetectConfig::default(), &late).is_empty(), "waits for the reply that names the account");
    // The reply names the account the forged ticket claims.
    let reply = ev(
        11 * 3600,
        "10.1.1.1",
        Detail::Kerberos(Kerberos { cname: "Administrator".into(), sname: "cifs/dc1".into(), ..krb(13) }),
    );
    let mut engine = Engine::new(DetectConfig::default());
    let alerts: Vec<_> = [late[0].clone(), late[1].clone(), reply].iter().flat_map(|e| engine.process(e)).collect();
    assert_eq!(alerts.len(), 1);
    assert_eq!((alerts[0].detection.as_str(), alerts[0].account.as_str()), ("golden_ticket", "administrator"));
    // With no reply at all, it is reported without an account after a few seconds.
    let later = ev(11 * 3600 + 30, "10.9.9.9", Detail::Kerberos(krb(10)));
    assert_eq!(run(DetectConfig::default(), &[late[0].clone(), late[1].clone(), later.clone()]), vec!["golden_ticket"]);
    // A DC presenting a TGT its own KDC issued (on the DC, out of every sensor's sight).
    let dc_config = || DetectConfig { dcs: vec!["10.0.0.10".into(), "10.0.0.11".into()], ..DetectConfig::default() };
    let from_dc = [late[0].clone(), tgt(11 * 3600, "10.0.0.11", 12), later];
    assert!(run(dc_config(), &from_dc).is_empty(), "a DC's own TGT, used at another DC");
    // Nor is a service ticket a DC's own KDC issued a silver ticket.
    let watched = || DetectConfig { all_dcs_watched: true, max_ticket_lifetime_hours: 0, ..dc_config() };
    let ap_req = |src: &str| {
        ev(
            7200,
            src,
            Detail::Kerberos(Kerberos { ticket_fingerprint: "cd34".into(), sname: "cifs/dc1".into(), ..krb(14) }),
        )
    };
    let start = ev(0, "10.1.1.5", Detail::Kerberos(krb(13)));
    assert!(run(watched(), &[start.clone(), ap_req("10.0.0.11")]).is_empty(), "from a DC");
    assert_eq!(run(watched(), &[start, ap_req("10.1.1.1")]), vec!["silver_ticket"], "from a workstation");
}

#[test]
fn replication_is_normal_from_dcs_and_dcsync_from_anything_else() {
    let mut cfg = DetectConfig::default();
    cfg.dcs.push("10.0.0.11".into());
    let from_dc = rpc(1, "10.0.0.11", "drsuapi", "DRSGetNCChanges");
    let from_ws = rpc(2, "10.1.1.1", "drsuapi", "DRSGetNCChanges");
    assert!(run(cfg.clone(), &[from_dc]).is_empty());
    assert_eq!(run(cfg.clone(), &[from_ws]), vec!["dcsync"]);
    // A DC learned from answering Kerberos replicates without alerts too.
    let answers = ev(0, "10.9.9.9", Detail::Kerberos(krb(13)));
    let mut learned = answers.clone();
    learned.dc_ip = "10.1.1.3".into();
    assert!(run(cfg, &[learned, rpc(3, "10.1.1.3", "drsuapi", "DRSGetNCChanges")]).is_empty());
}

/// A DC being promoted registers its DC object (DRSAddEntry) and replicates at once:
/// a notice, not DCSync or DCShadow, and it replicates as a DC from then on. A DCSync
/// from a workstation still alerts at once, one alert per account; a registration that
/// is not followed by replication, or that asks the DC to replicate from it, is DCShadow.
#[test]
fn a_promotion_is_a_notice_and_dcsync_and_dcshadow_still_alert() {
    let mut cfg = DetectConfig::default();
    cfg.dcs.push("10.0.0.10".into());
    let call = |t: i64, src: &str, op: &str, account: &str, result: &str| {
        let mut e = rpc(t, src, "drsuapi", op);
        e.account = account.into();
        e.result = result.into();
        e
    };
    let join = [
        call(1, "10.0.0.11", "DRSAddEntry", "LAB\\Administrator", "success"),
        call(2, "10.0.0.11", "DRSGetNCChanges", "LAB\\Administrator", "success"),
        call(3, "10.0.0.11", "DRSGetNCChanges", "LAB\\Administrator", "success"),
        call(4, "10.0.0.11", "DRSReplicaUpdateRefs", "LAB\\Administrator", "success"),
        call(200, "10.0.0.11", "DRSGetNCChanges", "DC2$", "success"),
    ];
    let mut engine = Engine::new(cfg.clone());
    let alerts: Vec<_> = join.iter().flat_map(|e| engine.process(e)).collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        (alerts[0].detection.as_str(), alerts[0].severity.as_str(), alerts[0].account.as_str()),
        ("new_domain_controller", "info", "administrator")
    );
    // DCSync from a workstation, by two accounts: two alerts, each naming its account.
    let dcsync = [
        call(1, "10.1.1.5", "DRSGetNCChanges", "LAB\\bob", "failure"),
        call(2, "10.1.1.5", "DRSGetNCChanges", "LAB\\eve.admin", "success"),
    ];
    let mut engine = Engine::new(cfg.clone());
    let alerts: Vec<_> = dcsync.iter().flat_map(|e| engine.process(e)).collect();
    let named: Vec<_> = alerts.iter().map(|a| (a.detection.as_str(), a.account.as_str())).collect();
    assert_eq!(named, [("dcsync", "bob"), ("dcsync", "eve.admin")]);
    // A registration with no replication after it: DCShadow, once the wait is over.
    let rogue = [
        call(1, "10.1.1.6", "DRSAddEntry", "LAB\\eve.admin", "success"),
        ev(30, "10.9.9.9", Detail::Kerberos(krb(10))),
    ];
    assert!(run(cfg.clone(), &rogue).is_empty(), "a promotion replicates within the wait");
    let later = ev(120, "10.9.9.9", Detail::Kerberos(krb(10)));
    assert_eq!(run(cfg.clone(), &[rogue[0].clone(), later]), vec!["dcshadow"]);
    // A registration followed by asking the DC to replicate from it: DCShadow at once.
    let push = [
        call(1, "10.1.1.6", "DRSAddEntry", "LAB\\eve.admin", "success"),
        call(2, "10.1.1.6", "DRSReplicaAdd", "LAB\\eve.admin", "success"),
    ];
    assert_eq!(run(cfg.clone(), &push), vec!["dcshadow"]);
    // A refused registration is the attempt itself.
    assert_eq!(run(cfg, &[call(1, "10.1.1.6", "DRSAddEntry", "", "failure")]), vec!["dcshadow"]);
}

/// The DC locator's records name the DCs: a locator answer teaches them silently, a
/// dynamic update registering an unknown DC is a notice; either way its replication is
/// then a DC's.
#[test]
fn dcs_are_learned_from_the_dc_locator_records() {
    let record = |name: &str, rtype: u32, data: &str| DnsRecord { name: name.into(), rtype, data: data.into() };
    let dns = |response: bool, opcode: u32| {
        ev(
            1,
            "10.0.0.12",
            Detail::Dns(Dns {
                id: 7,
                response,
                opcode,
                records: vec![
                    record("_ldap._tcp.dc._msdcs.lab.example", 33, "dc2.lab.example"),
                    record("dc2.lab.example", 1, "10.0.0.12"),
                    record("www.lab.example", 1, "10.0.0.99"),
                ],
                ..Default::default()
            }),
        )
    };
    let pull = |src: &str| rpc(5, src, "drsuapi", "DRSGetNCChanges");
    assert!(run(DetectConfig::default(), &[dns(true, 0), pull("10.0.0.12")]).is_empty());
    assert_eq!(run(DetectConfig::default(), &[dns(true, 0), pull("10.0.0.99")]), vec!["dcsync"]);
    // A dynamic update counts once the DC answers that it applied it.
    let answer = |id: u32, rcode: u32| {
        ev(1, "10.0.0.12", Detail::Dns(Dns { id, response: true, opcode: 5, rcode, ..Default::default() }))
    };
    let update = dns(false, 5);
    assert_eq!(
        run(DetectConfig::default(), &[update.clone(), answer(7, 0), pull("10.0.0.12")]),
        vec!["new_domain_controller"]
    );
    const REFUSED: u32 = 5;
    for unanswered in [vec![update.clone()], vec![update.clone(), answer(7, REFUSED)], vec![update, answer(8, 0)]] {
        let mut events = unanswered;
        events.push(pull("10.0.0.12"));
        assert_eq!(run(DetectConfig::default(), &events), vec!["dcsync"], "an update the DC did not apply");
    }
    // A site's locator record counts too.
    let mut site = dns(true, 0);
    if let Some(Detail::Dns(d)) = site.detail.as_mut() {
        d.records[0].name = "_kerberos._tcp.Default-First-Site-Name._sites.dc._msdcs.lab.example".into();
    }
    assert!(run(DetectConfig::default(), &[site, pull("10.0.0.12")]).is_empty());
    // The KDC records MIT clients look up are the DCs' too; the domain's plain LDAP
    // record may name another LDAP server.
    let named = |owner: &str| {
        let mut e = dns(true, 0);
        if let Some(Detail::Dns(d)) = e.detail.as_mut() {
            d.records[0].name = owner.into();
        }
        e
    };
    assert!(run(DetectConfig::default(), &[named("_kerberos._tcp.lab.example"), pull("10.0.0.12")]).is_empty());
    assert!(run(DetectConfig::default(), &[named("_kpasswd._udp.lab.example"), pull("10.0.0.12")]).is_empty());
    assert_eq!(run(DetectConfig::default(), &[named("_ldap._tcp.lab.example"), pull("10.0.0.12")]), vec!["dcsync"]);
}

#[test]
fn dcshadow_and_rc4_preauthentication_are_flagged() {
    let d = DetectConfig::default;
    assert_eq!(run(d(), &[rpc(1, "10.1.1.1", "drsuapi", "DRSAddEntry")]), vec!["dcshadow"]);
    assert_eq!(run(d(), &[rpc(1, "10.1.1.1", "drsuapi", "DRSReplicaAdd")]), vec!["dcshadow"]);
    let mut with_dc = d();
    with_dc.dcs.push("10.1.1.1".into());
    assert!(run(with_dc, &[rpc(1, "10.1.1.1", "drsuapi", "DRSAddEntry")]).is_empty(), "DCs do this");
    let asreq = |etypes: Vec<i32>, enc_ts: i32| {
        ev(
            1,
            "10.1.1.1",
            Detail::Kerberos(Kerberos {
                cname: "alice".into(),
                requested_etypes: etypes,
                enc_timestamp_etype: enc_ts,
                ..krb(10)
            }),
        )
    };
    assert_eq!(run(d(), &[asreq(vec![23], 23)]), vec!["encryption_downgrade"]);
    assert!(run(d(), &[asreq(vec![18, 17, 23], 23)]).is_empty(), "AES offered: an old client, not a hash");
    assert!(run(d(), &[asreq(vec![18, 17, 23], 18)]).is_empty());
}

#[test]
fn rpc_abuse_and_recon_detections_fire_on_their_operations() {
    let d = DetectConfig::default;
    assert_eq!(run(d(), &[rpc(1, "10.1.1.1", "efsrpc", "EfsRpcOpenFileRaw")]), vec!["forced_authentication"]);
    assert_eq!(
        run(d(), &[rpc(1, "10.1.1.1", "spoolss", "RpcRemoteFindFirstPrinterChangeNotificationEx")]),
        vec!["forced_authentication"]
    );
    assert_eq!(run(d(), &[rpc(1, "10.1.1.1", "svcctl", "RCreateServiceW")]), vec!["remote_execution"]);
    assert_eq!(run(d(), &[rpc(1, "10.1.1.1", "atsvc", "JobAdd")]), vec!["remote_execution"]);
    assert_eq!(run(d(), &[rpc(1, "10.1.1.1", "atsvc", "NetrJobAdd")]), vec!["remote_execution"]);
    assert_eq!(run(d(), &[rpc(1, "10.1.1.1", "iwbemservices", "ExecMethod")]), vec!["remote_execution"], "WMI");
    assert!(run(d(), &[rpc(1, "10.1.1.1", "isystemactivator", "RemoteCreateInstance")]).is_empty());
    let mut psexec = rpc(1, "10.1.1.1", "svcctl", "RCreateServiceWOW64W");
    psexec.category = "remote_execution".into();
    assert_eq!(run(d(), &[psexec]), vec!["remote_execution"], "whatever the sensor marks as such");
    assert!(run(d(), &[rpc(1, "10.1.1.1", "svcctl", "ROpenSCManagerW")]).is_empty());
    assert_eq!(run(d(), &[rpc(1, "10.1.1.1", "srvsvc", "NetrSessionEnum")]), vec!["session_enumeration"]);
    assert!(run(d(), &[rpc(1, "10.1.1.1", "srvsvc", "NetrShareEnum")]).is_empty());
    let recon = [
        rpc(1, "10.1.1.1", "samr", "SamrEnumerateUsersInDomain"),
        rpc(2, "10.1.1.1", "samr", "SamrEnumerateGroupsInDomain"),
    ];
    assert_eq!(run(d(), &recon), vec!["rpc_recon"]);
    assert!(run(d(), &recon[..1]).is_empty(), "one listing is below the threshold");
    let zerologon: Vec<_> = (0..10).map(|i| rpc(i, "10.1.1.1", "netlogon", "NetrServerAuthenticate3")).collect();
    assert_eq!(run(d(), &zerologon), vec!["zerologon"]);
    assert!(run(d(), &zerologon[..9]).is_empty());
}

#[test]
fn ldap_recon_counts_kinds_of_query_but_flags_roastable_account_searches_at_once() {
    let d = DetectConfig::default;
    let kinds = [
        ldap_search(1, "10.1.1.1", "(&(objectCategory=person)(objectClass=user))"),
        ldap_search(2, "10.1.1.1", "(objectClass=group)"),
        ldap_search(3, "10.1.1.1", "(objectClass=trustedDomain)"),
    ];
    assert_eq!(run(d(), &kinds), vec!["ldap_recon"]);
    assert!(run(d(), &kinds[..2]).is_empty());
    assert!(run(d(), &[ldap_search(1, "10.1.1.1", "(sAMAccountName=alice)")]).is_empty(), "a lookup is not recon");
    let spn = ldap_search(1, "10.1.1.1", "(&(servicePrincipalName=*)(objectCategory=person))");
    assert_eq!(run(d(), &[spn]), vec!["ldap_recon"]);
    let bind = ev(
        1,
        "10.1.1.1",
        Detail::Ldap(Ldap {
            operation: "bind".into(),
            bind_name: "alice".into(),
            cleartext_password_sent: true,
            ..Default::default()
        }),
    );
    assert_eq!(run(d(), &[bind]), vec!["cleartext_ldap_bind"]);
}

#[test]
fn a_dc_authenticating_to_a_non_dc_was_coerced() {
    let mut cfg = DetectConfig::default();
    cfg.dcs.push("10.0.0.10".into());
    let auth = |server: &str, account: &str| {
        let mut e = ev(1, "10.0.0.10", Detail::Ntlm(Ntlm { message_type: 3, ..Default::default() }));
        e.dc_ip = server.into();
        e.account = account.into();
        e.result = "failure".into();
        e
    };
    assert_eq!(run(cfg.clone(), &[auth("10.1.1.66", "LAB\\DC1$")]), vec!["forced_authentication"]);
    assert!(run(cfg.clone(), &[auth("10.1.1.66", "LAB\\admin")]).is_empty(), "an admin on the DC is not coercion");
    let mut two_dcs = cfg;
    two_dcs.dcs.push("10.0.0.11".into());
    assert!(run(two_dcs, &[auth("10.0.0.11", "LAB\\DC1$")]).is_empty(), "DC to DC is replication business");
    // Anonymous failures are not guesses at an account.
    let anonymous: Vec<_> = (0..20)
        .map(|i| {
            let mut e = ev(i, "10.1.1.1", Detail::Ntlm(Ntlm { message_type: 3, ..Default::default() }));
            e.result = "failure".into();
            e
        })
        .collect();
    assert!(run(DetectConfig::default(), &anonymous).is_empty());
}

#[test]
fn zone_transfers_and_honeytokens_alert_on_the_first_event() {
    let axfr = ev(
        1,
        "10.1.1.1",
        Detail::Dns(Dns {
            questions: vec![DnsQuestion { name: "lab.example".into(), qtype: 252 }],
            ..Default::default()
        }),
    );
    assert_eq!(run(DetectConfig::default(), &[axfr]), vec!["dns_zone_transfer"]);
    let mut cfg = DetectConfig::default();
    cfg.honeytokens.push("LAB\\honey.admin".into());
    let mut logon = ev(1, "10.1.1.1", Detail::Kerberos(krb(10)));
    logon.account = "honey.admin@LAB.EXAMPLE".into();
    assert_eq!(run(cfg, &[logon]), vec!["honeytoken"]);
}

#[test]
fn accounts_directory_results_show_as_admins_are_learned_as_sensitive() {
    let mut engine = Engine::new(DetectConfig::default());
    // An RC4-only request for a user's service: a medium alert for an ordinary account.
    let roast = |engine: &mut Engine, account: &str| -> Vec<super::super::Alert> {
        let request = ev(
            1,
            "10.1.1.1",
            Detail::Kerberos(Kerberos { requested_etypes: vec![23], sname: "http/web".into(), ..krb(12) }),
        );
        let mut e = ev(
            1,
            "10.1.1.1",
            Detail::Kerberos(Kerberos { ticket_etype: 23, sname: "http/web".into(), cname: account.into(), ..krb(13) }),
        );
        e.account = account.into();
        engine.process(&request);
        engine.process(&e)
    };
    let first = roast(&mut engine, "eve.admin");
    assert!(!first.is_empty() && first.iter().all(|a| a.severity == "medium"), "nothing learned yet: {first:?}");
    let search = ev(
        20,
        "10.1.1.2",
        Detail::Ldap(Ldap {
            operation: "search".into(),
            privileged_accounts: vec!["eve.admin".into(), "Administrator".into()],
            ..Default::default()
        }),
    );
    engine.process(&search);
    assert!(engine.profiles.privileged.contains("administrator"));
    let mut later = Engine::new(DetectConfig::default());
    later.profiles = engine.profiles.clone();
    let alerts = roast(&mut later, "LAB\\eve.admin");
    assert!(!alerts.is_empty());
    assert!(alerts.iter().all(|a| a.severity == "high" && a.description.contains("administrative group")));
    assert!(roast(&mut later, "bob").iter().all(|a| a.severity == "medium"), "others keep their severity");
}

#[test]
fn alerts_on_sensitive_accounts_are_high() {
    let cfg = DetectConfig { sensitive_accounts: vec!["LAB\\svc_backup".into()], ..Default::default() };
    let brute: Vec<_> = (0..10).map(|i| krb_error(i, "10.1.1.1", "svc_backup", 24)).collect();
    let mut engine = Engine::new(cfg);
    let alerts: Vec<_> = brute.iter().flat_map(|e| engine.process(e)).collect();
    assert!(alerts.iter().all(|a| a.severity == "high" && a.description.ends_with("marked sensitive.")));
    let mut plain = Engine::new(DetectConfig::default());
    let tgs = ev(
        1,
        "10.1.1.1",
        Detail::Kerberos(Kerberos { requested_etypes: vec![23], sname: "http/web".into(), ..krb(12) }),
    );
    let reply = ev(1, "10.1.1.1", Detail::Kerberos(Kerberos { ticket_etype: 23, sname: "http/web".into(), ..krb(13) }));
    assert!(plain.process(&tgs).is_empty());
    assert_eq!(plain.process(&reply)[0].severity, "medium", "others keep their severity");
}

#[test]
fn repeated_findings_extend_one_alert() {
    let mut engine = Engine::new(DetectConfig::default());
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..20 {
        for mut a in engine.process(&krb_error(i, "10.1.1.1", &format!("u{}", i % 6), 24)) {
            if a.id == 0 {
                a.id = ids.len() as i64 + 1;
                engine.saved(&a);
            }
            ids.insert((a.detection.clone(), a.id));
        }
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
}
