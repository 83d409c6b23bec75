//! Events as JSON lines, written by hand: the same bytes as `serde_json::to_writer` on the
//! derived `Serialize` (compact, fields in declaration order, the oneof externally tagged,
//! serde_json's string escapes), at a fraction of the cost, since `--json` writes about a
//! million of them per GB of capture. The tests compare both on every message type, so a
//! field added to proto/dctap.proto and not here fails them.

use super::pb::{self, activity_event::Detail, ActivityEvent};

/// Appends `event` as one JSON object (no newline).
pub fn write_event(out: &mut Vec<u8>, e: &ActivityEvent) {
    let mut o = Obj::new(out);
    o.str("sensor_id", &e.sensor_id);
    o.uint("seq", e.seq);
    o.int("time_unix_ns", e.time_unix_ns);
    o.str("src_ip", &e.src_ip);
    o.uint("src_port", e.src_port.into());
    o.str("dc_ip", &e.dc_ip);
    o.uint("dc_port", e.dc_port.into());
    o.str("protocol", &e.protocol);
    o.str("category", &e.category);
    o.str("account", &e.account);
    o.str("result", &e.result);
    o.int("status_code", e.status_code);
    o.key("detail");
    match &e.detail {
        None => o.out.extend_from_slice(b"null"),
        Some(d) => {
            let mut tagged = Obj::new(o.out);
            match d {
                Detail::Kerberos(k) => {
                    tagged.key("Kerberos");
                    kerberos(tagged.out, k);
                }
                Detail::Dns(d) => {
                    tagged.key("Dns");
                    dns(tagged.out, d);
                }
                Detail::Ldap(l) => {
                    tagged.key("Ldap");
                    ldap(tagged.out, l);
                }
                Detail::Ntlm(n) => {
                    tagged.key("Ntlm");
                    ntlm(tagged.out, n);
                }
                Detail::Smb2(s) => {
                    tagged.key("Smb2");
                    smb2(tagged.out, s);
                }
                Detail::Dcerpc(d) => {
                    tagged.key("Dcerpc");
                    dcerpc(tagged.out, d);
                }
            }
            tagged.end();
        }
    }
    o.end();
}

fn kerberos(out: &mut Vec<u8>, k: &pb::Kerberos) {
    let mut o = Obj::new(out);
    o.uint("msg_type", k.msg_type.into());
    o.str("cname", &k.cname);
    o.str("crealm", &k.crealm);
    o.str("sname", &k.sname);
    o.str("realm", &k.realm);
    o.ints("requested_etypes", &k.requested_etypes);
    o.int("ticket_etype", k.ticket_etype.into());
    o.int("enc_part_etype", k.enc_part_etype.into());
    o.ints("padata_types", &k.padata_types);
    o.int("enc_timestamp_etype", k.enc_timestamp_etype.into());
    o.key("pac_requested");
    match k.pac_requested {
        None => o.out.extend_from_slice(b"null"),
        Some(b) => bool_value(o.out, b),
    }
    o.bool("pk_as_req", k.pk_as_req);
    o.bool("fast", k.fast);
    o.uint("kdc_options", k.kdc_options.into());
    o.int("error_code", k.error_code.into());
    o.str("ticket_fingerprint", &k.ticket_fingerprint);
    o.bool("over_tcp", k.over_tcp);
    o.str("carrier", &k.carrier);
    o.end();
}

fn dns(out: &mut Vec<u8>, d: &pb::Dns) {
    let mut o = Obj::new(out);
    o.uint("id", d.id.into());
    o.bool("response", d.response);
    o.uint("opcode", d.opcode.into());
    o.uint("rcode", d.rcode.into());
    o.key("questions");
    o.out.push(b'[');
    for (i, q) in d.questions.iter().enumerate() {
        if i > 0 {
            o.out.push(b',');
        }
        let mut qo = Obj::new(o.out);
        qo.str("name", &q.name);
        qo.uint("qtype", q.qtype.into());
        qo.end();
    }
    o.out.push(b']');
    o.uint("answers", d.answers.into());
    o.bool("over_tcp", d.over_tcp);
    o.end();
}

fn ldap(out: &mut Vec<u8>, l: &pb::Ldap) {
    let mut o = Obj::new(out);
    o.uint("message_id", l.message_id.into());
    o.str("operation", &l.operation);
    o.str("bind_name", &l.bind_name);
    o.str("bind_method", &l.bind_method);
    o.str("sasl_mechanism", &l.sasl_mechanism);
    o.bool("cleartext_password_sent", l.cleartext_password_sent);
    o.str("base_dn", &l.base_dn);
    o.uint("scope", l.scope.into());
    o.str("filter", &l.filter);
    o.strs("attributes", &l.attributes);
    o.uint("result_code", l.result_code.into());
    o.uint("entries_returned", l.entries_returned);
    o.str("target_dn", &l.target_dn);
    o.strs("modified_attributes", &l.modified_attributes);
    o.uint("sealed_bytes", l.sealed_bytes);
    o.strs("privileged_accounts", &l.privileged_accounts);
    o.str("extended_name", &l.extended_name);
    o.end();
}

fn ntlm(out: &mut Vec<u8>, n: &pb::Ntlm) {
    let mut o = Obj::new(out);
    o.uint("message_type", n.message_type.into());
    o.str("domain", &n.domain);
    o.str("user", &n.user);
    o.str("workstation", &n.workstation);
    o.str("version", &n.version);
    o.uint("flags", n.flags.into());
    o.str("target_name", &n.target_name);
    o.str("carrier", &n.carrier);
    o.end();
}

fn smb2(out: &mut Vec<u8>, s: &pb::Smb2) {
    let mut o = Obj::new(out);
    o.str("command", &s.command);
    o.uint("dialect", s.dialect.into());
    o.str("tree", &s.tree);
    o.str("file", &s.file);
    o.uint("session_id", s.session_id);
    o.uint("encrypted_messages", s.encrypted_messages);
    o.uint("encrypted_bytes", s.encrypted_bytes);
    o.end();
}

fn dcerpc(out: &mut Vec<u8>, d: &pb::DceRpc) {
    let mut o = Obj::new(out);
    o.str("operation", &d.operation);
    o.str("interface", &d.interface);
    o.str("interface_uuid", &d.interface_uuid);
    o.uint("opnum", d.opnum.into());
    o.str("operation_name", &d.operation_name);
    o.uint("auth_type", d.auth_type.into());
    o.uint("auth_level", d.auth_level.into());
    o.bool("sealed", d.sealed);
    o.str("transport", &d.transport);
    o.uint("call_id", d.call_id.into());
    o.uint("bind_contexts", d.bind_contexts.into());
    o.end();
}

/// An object being written: `{` on creation, commas between members, `}` on `end`.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, first: true }
    }

    /// Field names are plain ASCII: no escaping needed.
    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        string(self.out, v);
    }

    fn uint(&mut self, k: &str, v: u64) {
        self.key(k);
        uint(self.out, v);
    }

    fn int(&mut self, k: &str, v: i64) {
        self.key(k);
        int(self.out, v);
    }

    fn bool(&mut self, k: &str, v: bool) {
        self.key(k);
        bool_value(self.out, v);
    }

    fn ints(&mut self, k: &str, v: &[i32]) {
        self.key(k);
        self.out.push(b'[');
        for (i, n) in v.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            int(self.out, (*n).into());
        }
        self.out.push(b']');
    }

    fn strs(&mut self, k: &str, v: &[String]) {
        self.key(k);
        self.out.push(b'[');
        for (i, s) in v.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            string(self.out, s);
        }
        self.out.push(b']');
    }

    fn end(self) {
        self.out.push(b'}');
    }
}

fn bool_value(out: &mut Vec<u8>, v: bool) {
    out.extend_from_slice(if v { b"true" } else { b"false" });
}

fn uint(out: &mut Vec<u8>, mut v: u64) {
    if v < 10 {
        // Most numbers of an event are 0 or a small code: no buffer to copy.
        out.push(b'0' + v as u8);
        return;
    }
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn int(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    uint(out, v.unsigned_abs());
}

/// A JSON string with serde_json's escapes: `"` and `\` backslashed, the C0 controls as
/// `\b \t \n \f \r` or `\u00XX` (lowercase hex), everything else (DEL, non-ASCII) as is.
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c >= 0x20 && c != b'"' && c != b'\\' {
            continue;
        }
        out.extend_from_slice(&b[start..i]);
        start = i + 1;
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x0a => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x0d => out.extend_from_slice(b"\\r"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(c >> 4) as usize]);
                out.push(HEX[(c & 0xf) as usize]);
            }
        }
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(e: &ActivityEvent) {
        let mut ours = Vec::new();
        write_event(&mut ours, e);
        let theirs = serde_json::to_vec(e).unwrap();
        assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(theirs).unwrap());
    }

    /// Every byte value a string can hold in one string, and some non-ASCII.
    fn awkward() -> String {
        let mut s: String = (0u8..0x80).map(char::from).collect();
        s.push_str("é€😀\u{2028}");
        s
    }

    fn base() -> ActivityEvent {
        ActivityEvent {
            sensor_id: "vm \"one\"".into(),
            seq: u64::MAX,
            time_unix_ns: i64::MIN,
            src_ip: "10.0.0.1".into(),
            src_port: 65535,
            dc_ip: "fe80::1".into(),
            dc_port: 0,
            protocol: awkward(),
            category: "logon".into(),
            account: "DOM\\user".into(),
            result: String::new(),
            status_code: -3,
            detail: None,
        }
    }

    #[test]
    fn same_bytes_as_serde_json_for_every_detail() {
        let mut details = vec![
            None,
            Some(Detail::Kerberos(pb::Kerberos::default())),
            Some(Detail::Dns(pb::Dns::default())),
            Some(Detail::Ldap(pb::Ldap::default())),
            Some(Detail::Ntlm(pb::Ntlm::default())),
            Some(Detail::Smb2(pb::Smb2::default())),
            Some(Detail::Dcerpc(pb::DceRpc::default())),
        ];
        let s = awkward;
        details.push(Some(Detail::Kerberos(pb::Kerberos {
            msg_type: 30,
            cname: s(),
            crealm: "R".into(),
            sname: "krbtgt/R".into(),
            realm: s(),
            requested_etypes: vec![18, -128, i32::MIN, i32::MAX],
            ticket_etype: -1,
            enc_part_etype: 23,
            padata_types: vec![2],
            enc_timestamp_etype: 18,
            pac_requested: Some(true),
            pk_as_req: true,
            fast: true,
            kdc_options: u32::MAX,
            error_code: 24,
            ticket_fingerprint: "00ff".into(),
            over_tcp: true,
            carrier: s(),
        })));
        details.push(Some(Detail::Kerberos(pb::Kerberos { pac_requested: Some(false), ..Default::default() })));
        details.push(Some(Detail::Dns(pb::Dns {
            id: 65535,
            response: true,
            opcode: 5,
            rcode: 3,
            questions: vec![
                pb::DnsQuestion { name: s(), qtype: 33 },
                pb::DnsQuestion { name: "a\\.b".into(), qtype: 0 },
            ],
            answers: 7,
            over_tcp: true,
        })));
        details.push(Some(Detail::Ldap(pb::Ldap {
            message_id: 9,
            operation: s(),
            bind_name: s(),
            bind_method: "sasl".into(),
            sasl_mechanism: "GSS-SPNEGO".into(),
            cleartext_password_sent: true,
            base_dn: s(),
            scope: 2,
            filter: "(&(a=*)(b=\\2a))".into(),
            attributes: vec![s(), String::new(), "cn".into()],
            result_code: 49,
            entries_returned: u64::MAX,
            target_dn: s(),
            modified_attributes: vec!["x".into()],
            sealed_bytes: 1,
            privileged_accounts: vec!["eve.admin".into(), s()],
            extended_name: "StartTLS".into(),
        })));
        details.push(Some(Detail::Ntlm(pb::Ntlm {
            message_type: 3,
            domain: s(),
            user: s(),
            workstation: s(),
            version: "10.0.19041".into(),
            flags: 0xe2888215,
            target_name: s(),
            carrier: "smb2".into(),
        })));
        details.push(Some(Detail::Smb2(pb::Smb2 {
            command: s(),
            dialect: 0x311,
            tree: s(),
            file: s(),
            session_id: u64::MAX,
            encrypted_messages: 1,
            encrypted_bytes: 2,
        })));
        details.push(Some(Detail::Dcerpc(pb::DceRpc {
            operation: s(),
            interface: s(),
            interface_uuid: s(),
            opnum: 3,
            operation_name: s(),
            auth_type: 9,
            auth_level: 6,
            sealed: true,
            transport: s(),
            call_id: u32::MAX,
            bind_contexts: 2,
        })));
        for d in details {
            same(&ActivityEvent { detail: d.clone(), ..base() });
            same(&ActivityEvent { detail: d, ..ActivityEvent::default() });
        }
    }
}
