//! NTLM against Arkime's own expected output for its `ntlm_synthetic` capture (in
//! ../shared/corpus): every session Arkime saw an NTLM AUTHENTICATE in, on a carrier the
//! sensor parses (SMB, HTTP, LDAP, DCE/RPC), must come out as an NTLM event from the same
//! client with the same domain and workstation. Arkime's sessions over SMTP, IMAP, POP3 and
//! TDS are out of scope: those are not domain controller services.

use std::process::Command;

const CARRIER_PORTS: [u64; 6] = [445, 80, 389, 135, 5985, 8080];

#[test]
fn ntlm_auths_match_arkimes_expected_sessions() {
    let dir = tap_testkit::shared::shared_dir().join("corpus/arkime/ntlm_synthetic");
    let (pcap, expected) = (dir.join("ntlm_synthetic.pcap"), dir.join("expected/ntlm_synthetic.test.json"));
    if !pcap.exists() || !expected.exists() {
        tap_testkit::skip::skipped(
            "ntlm_auths_match_arkimes_expected_sessions",
            &tap_testkit::skip::no_shared(&dir.display().to_string()),
        );
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tap-sensor")).arg("--read").arg(&pcap).arg("--json").output().unwrap();
    assert!(out.status.success());
    let events: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let arkime: serde_json::Value = serde_json::from_slice(&std::fs::read(&expected).unwrap()).unwrap();
    let mut compared = 0;
    for session in arkime["sessions3"].as_array().unwrap() {
        let b = &session["body"];
        let ntlm = &b["ntlm"];
        let has_auth = ntlm["type"].as_array().is_some_and(|t| t.iter().any(|x| x.as_str() == Some("3")));
        let port = b["destination"]["port"].as_u64().unwrap_or(0);
        if !has_auth || !CARRIER_PORTS.contains(&port) {
            continue;
        }
        compared += 1;
        let (ip, src_port) = (b["source"]["ip"].as_str().unwrap(), b["source"]["port"].as_u64().unwrap());
        let first = |k: &str| ntlm[k][0].as_str().unwrap_or_default().to_string();
        let found = events.iter().any(|e| {
            let d = &e["detail"]["Ntlm"];
            e["src_ip"] == ip
                && e["src_port"] == src_port
                && d["message_type"] == 3
                && d["domain"] == first("domain").as_str()
                && d["workstation"] == first("host").as_str()
        });
        assert!(found, "no NTLM AUTHENTICATE from {ip}:{src_port} to port {port} with {ntlm}");
    }
    assert_eq!(compared, 8, "Arkime's sessions with an AUTHENTICATE on DC carriers");
}
