//! Events as JSON lines, written by hand: the same bytes as `serde_json::to_writer` on the
//! derived `Serialize` (compact, fields in declaration order, the oneof externally tagged,
//! serde_json's string escapes), at a fraction of the cost, since `--json` writes about a
//! million of them per GB of capture. The tests compare both on every message type, so a
//! field added to proto/dctap.proto and not here fails them.

use super::pb::{self, activity_event::Detail, ActivityEvent};

/// `,"name":`, the text before a member's value, for a field name known when compiling:
/// one copy per member instead of four pushes and copies (a third of the JSON writer's
/// time in `bench parse`).
macro_rules! k {
    ($name:literal) => {
        concat!(",\"", $name, "\":").as_bytes()
    };
}

/// Appends `event` as one JSON object (no newline).
pub fn write_event(out: &mut Vec<u8>, e: &ActivityEvent) {
    let mut o = Obj::new(out);
    o.str(k!("sensor_id"), &e.sensor_id);
    o.uint(k!("seq"), e.seq);
    o.int(k!("time_unix_ns"), e.time_unix_ns);
    o.str(k!("src_ip"), &e.src_ip);
    o.uint(k!("src_port"), e.src_port.into());
    o.str(k!("dc_ip"), &e.dc_ip);
    o.uint(k!("dc_port"), e.dc_port.into());
    o.str(k!("protocol"), &e.protocol);
    o.str(k!("category"), &e.category);
    o.str(k!("account"), &e.account);
    o.str(k!("result"), &e.result);
    o.int(k!("status_code"), e.status_code);
    o.str(k!("account_source"), &e.account_source);
    o.key(k!("detail"));
    match &e.detail {
        None => o.out.extend_from_slice(b"null"),
        Some(d) => {
            let mut tagged = Obj::new(o.out);
            match d {
                Detail::Kerberos(k) => {
                    tagged.key(k!("Kerberos"));
                    kerberos(tagged.out, k);
                }
                Detail::Dns(d) => {
                    tagged.key(k!("Dns"));
                    dns(tagged.out, d);
                }
                Detail::Ldap(l) => {
                    tagged.key(k!("Ldap"));
                    ldap(tagged.out, l);
                }
                Detail::Ntlm(n) => {
                    tagged.key(k!("Ntlm"));
                    ntlm(tagged.out, n);
                }
                Detail::Smb2(s) => {
                    tagged.key(k!("Smb2"));
                    smb2(tagged.out, s);
                }
                Detail::Dcerpc(d) => {
                    tagged.key(k!("Dcerpc"));
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
    o.uint(k!("msg_type"), k.msg_type.into());
    o.str(k!("cname"), &k.cname);
    o.str(k!("crealm"), &k.crealm);
    o.str(k!("sname"), &k.sname);
    o.str(k!("realm"), &k.realm);
    o.ints(k!("requested_etypes"), &k.requested_etypes);
    o.int(k!("ticket_etype"), k.ticket_etype.into());
    o.int(k!("enc_part_etype"), k.enc_part_etype.into());
    o.ints(k!("padata_types"), &k.padata_types);
    o.int(k!("enc_timestamp_etype"), k.enc_timestamp_etype.into());
    o.key(k!("pac_requested"));
    match k.pac_requested {
        None => o.out.extend_from_slice(b"null"),
        Some(b) => bool_value(o.out, b),
    }
    o.bool(k!("pk_as_req"), k.pk_as_req);
    o.bool(k!("fast"), k.fast);
    o.uint(k!("kdc_options"), k.kdc_options.into());
    o.int(k!("error_code"), k.error_code.into());
    o.str(k!("ticket_fingerprint"), &k.ticket_fingerprint);
    o.bool(k!("over_tcp"), k.over_tcp);
    o.str(k!("carrier"), &k.carrier);
    o.end();
}

fn dns(out: &mut Vec<u8>, d: &pb::Dns) {
    let mut o = Obj::new(out);
    o.uint(k!("id"), d.id.into());
    o.bool(k!("response"), d.response);
    o.uint(k!("opcode"), d.opcode.into());
    o.uint(k!("rcode"), d.rcode.into());
    o.key(k!("questions"));
    o.out.push(b'[');
    for (i, q) in d.questions.iter().enumerate() {
        if i > 0 {
            o.out.push(b',');
        }
        let mut qo = Obj::new(o.out);
        qo.str(k!("name"), &q.name);
        qo.uint(k!("qtype"), q.qtype.into());
        qo.end();
    }
    o.out.push(b']');
    o.uint(k!("answers"), d.answers.into());
    o.bool(k!("over_tcp"), d.over_tcp);
    o.key(k!("records"));
    o.out.push(b'[');
    for (i, r) in d.records.iter().enumerate() {
        if i > 0 {
            o.out.push(b',');
        }
        let mut ro = Obj::new(o.out);
        ro.str(k!("name"), &r.name);
        ro.uint(k!("rtype"), r.rtype.into());
        ro.str(k!("data"), &r.data);
        ro.end();
    }
    o.out.push(b']');
    o.end();
}

fn ldap(out: &mut Vec<u8>, l: &pb::Ldap) {
    let mut o = Obj::new(out);
    o.uint(k!("message_id"), l.message_id.into());
    o.str(k!("operation"), &l.operation);
    o.str(k!("bind_name"), &l.bind_name);
    o.str(k!("bind_method"), &l.bind_method);
    o.str(k!("sasl_mechanism"), &l.sasl_mechanism);
    o.bool(k!("cleartext_password_sent"), l.cleartext_password_sent);
    o.str(k!("base_dn"), &l.base_dn);
    o.uint(k!("scope"), l.scope.into());
    o.str(k!("filter"), &l.filter);
    o.strs(k!("attributes"), &l.attributes);
    o.uint(k!("result_code"), l.result_code.into());
    o.uint(k!("entries_returned"), l.entries_returned);
    o.str(k!("target_dn"), &l.target_dn);
    o.strs(k!("modified_attributes"), &l.modified_attributes);
    o.uint(k!("sealed_bytes"), l.sealed_bytes);
    o.strs(k!("privileged_accounts"), &l.privileged_accounts);
    o.str(k!("extended_name"), &l.extended_name);
    o.strs(k!("computer_spns"), &l.computer_spns);
    o.end();
}

fn ntlm(out: &mut Vec<u8>, n: &pb::Ntlm) {
    let mut o = Obj::new(out);
    o.uint(k!("message_type"), n.message_type.into());
    o.str(k!("domain"), &n.domain);
    o.str(k!("user"), &n.user);
    o.str(k!("workstation"), &n.workstation);
    o.str(k!("version"), &n.version);
    o.uint(k!("flags"), n.flags.into());
    o.str(k!("target_name"), &n.target_name);
    o.str(k!("carrier"), &n.carrier);
    o.end();
}

fn smb2(out: &mut Vec<u8>, s: &pb::Smb2) {
    let mut o = Obj::new(out);
    o.str(k!("command"), &s.command);
    o.uint(k!("dialect"), s.dialect.into());
    o.str(k!("tree"), &s.tree);
    o.str(k!("file"), &s.file);
    o.uint(k!("session_id"), s.session_id);
    o.uint(k!("encrypted_messages"), s.encrypted_messages);
    o.uint(k!("encrypted_bytes"), s.encrypted_bytes);
    o.end();
}

fn dcerpc(out: &mut Vec<u8>, d: &pb::DceRpc) {
    let mut o = Obj::new(out);
    o.str(k!("operation"), &d.operation);
    o.str(k!("interface"), &d.interface);
    o.str(k!("interface_uuid"), &d.interface_uuid);
    o.uint(k!("opnum"), d.opnum.into());
    o.str(k!("operation_name"), &d.operation_name);
    o.uint(k!("auth_type"), d.auth_type.into());
    o.uint(k!("auth_level"), d.auth_level.into());
    o.bool(k!("sealed"), d.sealed);
    o.str(k!("transport"), &d.transport);
    o.uint(k!("call_id"), d.call_id.into());
    o.uint(k!("bind_contexts"), d.bind_contexts.into());
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

    /// `k` is a member's `,"name":` (see `k!`); the first member goes without the comma.
    /// Field names are plain ASCII: no escaping needed.
    fn key(&mut self, k: &[u8]) {
        let k = if self.first { &k[1..] } else { k };
        self.first = false;
        self.out.extend_from_slice(k);
    }

    fn str(&mut self, k: &[u8], v: &str) {
        self.key(k);
        string(self.out, v);
    }

    fn uint(&mut self, k: &[u8], v: u64) {
        self.key(k);
        uint(self.out, v);
    }

    fn int(&mut self, k: &[u8], v: i64) {
        self.key(k);
        int(self.out, v);
    }

    fn bool(&mut self, k: &[u8], v: bool) {
        self.key(k);
        bool_value(self.out, v);
    }

    fn ints(&mut self, k: &[u8], v: &[i32]) {
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

    fn strs(&mut self, k: &[u8], v: &[String]) {
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

/// Decimal digits of `v`, two at a time from a table, written straight into the vector's
/// spare room: the copy out of a digit buffer was a call to memcpy per number (with the
/// digit loop, 5% of `bench parse`; an event has a dozen numbers).
fn uint(out: &mut Vec<u8>, mut v: u64) {
    if v < 10 {
        // Most numbers of an event are 0 or a small code.
        out.push(b'0' + v as u8);
        return;
    }
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";
    let n = decimal_digits(v);
    let len = out.len();
    out.resize(len + n, b'0');
    let digits = &mut out[len..];
    let mut at = n;
    while v >= 100 {
        let pair = (v % 100) as usize * 2;
        v /= 100;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if v >= 10 {
        let pair = v as usize * 2;
        digits[at - 2..at].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        digits[at - 1] = b'0' + v as u8;
    }
}

fn decimal_digits(v: u64) -> usize {
    let mut n = 1;
    let mut bound = 10u64;
    while n < 20 && v >= bound {
        n += 1;
        bound = bound.saturating_mul(10);
    }
    n
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
    // Eight bytes at a time while none needs an escape: strings are mostly plain names and
    // addresses, and the byte-by-byte test was 4% of `bench parse`.
    let mut clean = 0;
    while let Some(word) = b.get(clean..clean + 8) {
        if needs_escape(u64::from_le_bytes(word.try_into().unwrap_or_default())) {
            break;
        }
        clean += 8;
    }
    for (i, &c) in b.iter().enumerate().skip(clean) {
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

/// Whether any of the eight bytes of `w` is a C0 control, `"` or `\\` (the classic
/// "has a byte less than / equal to" word tricks; bytes of 0x80 and above never match).
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    (below_space | zero_byte(w ^ (ONES * b'"' as u64)) | zero_byte(w ^ (ONES * b'\\' as u64))) != 0
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

    #[test]
    fn the_word_test_finds_every_byte_that_needs_an_escape() {
        for c in 0..=255u8 {
            for at in 0..8 {
                let mut w = *b"abcdefgh";
                w[at] = c;
                let escape = c < 0x20 || c == b'"' || c == b'\\';
                assert_eq!(needs_escape(u64::from_le_bytes(w)), escape, "byte {c:#04x} at {at}");
            }
        }
    }

    #[test]
    fn numbers_are_written_as_rust_formats_them() {
        let mut values = vec![0, 9, 10, 11, 99, 100, 101, 12_345, 65_535, u64::MAX, u64::MAX - 1];
        for p in 1..20 {
            let x = 10u64.pow(p);
            values.extend([x - 1, x, x + 1]);
        }
        for v in values {
            let mut out = b"x".to_vec();
            uint(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), format!("x{v}"));
        }
        let mut out = Vec::new();
        int(&mut out, i64::MIN);
        assert_eq!(String::from_utf8(out).unwrap(), i64::MIN.to_string());
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
            account_source: "smb_ntlm".into(),
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
            records: vec![
                pb::DnsRecord { name: s(), rtype: 33, data: "dc1.lab.example".into() },
                pb::DnsRecord { name: "dc1".into(), rtype: 1, data: s() },
            ],
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
            computer_spns: vec!["host/ws01".into(), s()],
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
