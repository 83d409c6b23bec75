//! LDAP (RFC 4511) operations as the detections see them, decoded with the rusticata
//! `ldap-parser` (what Suricata uses) behind two guards: a BER nesting-depth check before
//! parsing (its filter parser recurses without a limit) and a PDU size limit.
//!
//! ```text
//! LDAPMessage ::= SEQUENCE { messageID MessageID, protocolOp CHOICE { bindRequest [APPLICATION 0] ... }, controls [0] OPTIONAL }
//! ```
//! A simple bind's password is never kept: only whether one was sent.

use std::fmt::Write as _;

use super::{
    framing::{Framed, Framer, Header, Start},
    kerberos, ntlm,
};

use ldap_parser::{
    asn1_rs::FromBer,
    filter::{Filter, Substring},
    ldap::{AuthenticationChoice, LdapMessage, ProtocolOp},
};

/// Largest LDAP PDU decoded. Search result entries with large multi-valued attributes
/// reach hundreds of KB; anything larger is skipped and counted.
pub const MAX_PDU: usize = 1 << 20;
/// Deepest BER nesting accepted; a real filter nests a handful of levels.
pub const MAX_DEPTH: usize = 48;
/// Longest rendered filter kept in an event.
pub const MAX_FILTER_CHARS: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LdapOp {
    Bind {
        name: String,
        method: &'static str,
        sasl_mechanism: String,
        cleartext_password_sent: bool,
        /// NTLM carried by a Sicily or SASL (GSS-SPNEGO, NTLM) bind.
        ntlm: Option<ntlm::NtlmMessage>,
        /// The Kerberos AP-REQ of a SASL GSSAPI or GSS-SPNEGO bind.
        ap_req: Option<Box<kerberos::KerberosMessage>>,
    },
    BindResult {
        code: u32,
        /// The NTLM CHALLENGE of a SASL bind's server credentials.
        ntlm: Option<ntlm::NtlmMessage>,
    },
    Search {
        base: String,
        scope: u32,
        filter: String,
        attributes: Vec<String>,
    },
    SearchEntry {
        /// Accounts this entry shows to be privileged (see [`privileged_accounts`]).
        privileged: Vec<String>,
        /// Service principal names this entry shows held by a computer account (see
        /// [`computer_spns`]).
        computer_spns: Vec<String>,
    },
    SearchDone {
        code: u32,
    },
    Modify {
        target: String,
        attributes: Vec<String>,
    },
    Add {
        target: String,
        attributes: Vec<String>,
    },
    Delete {
        target: String,
    },
    ModifyDn {
        target: String,
    },
    /// An extended operation, by name (its value is never kept: a password modify carries
    /// the old and new passwords).
    Extended {
        name: String,
    },
    /// Any other response with a result code (modify, add, delete, modify DN, extended).
    Result {
        code: u32,
    },
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LdapPdu {
    pub message_id: u32,
    pub op: LdapOp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LdapError {
    #[error("LDAP message nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("LDAP message malformed")]
    Malformed,
}

/// The name of a well-known extended operation, else its OID.
fn extended_name(oid: &str) -> String {
    match oid {
        "1.3.6.1.4.1.1466.20037" => "StartTLS",
        "1.3.6.1.4.1.4203.1.11.1" => "PasswordModify",
        "1.3.6.1.4.1.4203.1.11.3" => "WhoAmI",
        "1.3.6.1.1.8" => "Cancel",
        "1.3.6.1.4.1.1466.101.119.1" => "TTLRefresh",
        "1.2.840.113556.1.4.1781" => "FastBind",
        "1.2.840.113556.1.4.2212" => "BatchRequest",
        other => other,
    }
    .chars()
    .take(128)
    .collect()
}

/// Groups whose members are privileged in a domain (the well-known administrative groups
/// MDI also treats as sensitive), by common name, lower case.
const PRIVILEGED_GROUPS: [&str; 12] = [
    "domain admins",
    "enterprise admins",
    "schema admins",
    "administrators",
    "account operators",
    "backup operators",
    "server operators",
    "print operators",
    "dnsadmins",
    "group policy creator owners",
    "enterprise key admins",
    "key admins",
];
/// Most accounts taken from one entry (a group's member list can be long).
pub const MAX_PRIVILEGED_PER_ENTRY: usize = 64;
/// Most computer SPNs taken from one entry (a computer has a dozen; clusters more).
pub const MAX_SPNS_PER_ENTRY: usize = 64;
/// Longest SPN kept (AD limits servicePrincipalName values to 2048 characters; real ones
/// are short).
const MAX_SPN_LEN: usize = 512;

/// The common name of a DN's first RDN ("CN=Domain Admins,CN=Users,DC=lab" -> "Domain Admins").
fn first_cn(dn: &str) -> Option<&str> {
    let rdn = dn.split(',').next()?.trim();
    let (kind, value) = rdn.split_once('=')?;
    kind.trim().eq_ignore_ascii_case("cn").then_some(value.trim())
}

fn is_privileged_group(dn: &str) -> bool {
    first_cn(dn).is_some_and(|cn| PRIVILEGED_GROUPS.iter().any(|g| cn.eq_ignore_ascii_case(g)))
}

/// A search result entry read where it lies, without decoding it: its DN and the value
/// sets of the attributes the privilege check looks at. Entries are most of an LDAP
/// stream's bytes, and decoding every attribute and value of them with ldap-parser was a
/// tenth of `bench parse` (a vector per attribute and per value); walking the BER in
/// place allocates nothing.
///
/// ```text
/// LDAPMessage ::= SEQUENCE { messageID INTEGER, [APPLICATION 4] SEQUENCE {
///     objectName OCTET STRING, attributes SEQUENCE OF SEQUENCE {
///         type OCTET STRING, vals SET OF OCTET STRING } } ... }
/// ```
#[derive(Debug, Default)]
struct EntryView<'a> {
    object_name: &'a str,
    /// The SET OF content of each attribute looked at (the first of a name, if repeated).
    object_class: &'a [u8],
    member_of: &'a [u8],
    admin_count: &'a [u8],
    sam_account_name: &'a [u8],
    member: &'a [u8],
    service_principal_name: &'a [u8],
}

impl<'a> EntryView<'a> {
    /// The message id and the entry of an LDAPMessage carrying a searchResEntry; `None`
    /// for any other message or a malformed one.
    fn read(b: &'a [u8]) -> Option<(u32, Self)> {
        let (id, (op_tag, op_at, op_end)) = message_envelope(b)?;
        if id.is_empty() || id.len() > 5 {
            return None;
        }
        let id = id.iter().fold(0u64, |acc, &x| acc << 8 | x as u64);
        if op_tag != 0x64 || id > u32::MAX as u64 {
            return None;
        }
        let op = &b[..op_end];
        let (dn_tag, dn_at, dn_end) = tlv_at(op, op_at)?;
        let (attrs_tag, attrs_at, attrs_end) = tlv_at(op, dn_end)?;
        if dn_tag != 0x04 || attrs_tag != 0x30 {
            return None;
        }
        let mut entry = Self { object_name: std::str::from_utf8(&op[dn_at..dn_end]).ok()?, ..Self::default() };
        let attrs = &op[..attrs_end];
        let mut at = attrs_at;
        while at < attrs_end {
            let (seq_tag, seq_at, seq_end) = tlv_at(attrs, at)?;
            let (name_tag, name_at, name_end) = tlv_at(&attrs[..seq_end], seq_at)?;
            let (set_tag, set_at, set_end) = tlv_at(&attrs[..seq_end], name_end)?;
            if seq_tag != 0x30 || name_tag != 0x04 || set_tag != 0x31 {
                return None;
            }
            let name = &attrs[name_at..name_end];
            let set = &attrs[set_at..set_end];
            let slot = match () {
                _ if name.eq_ignore_ascii_case(b"objectClass") => &mut entry.object_class,
                _ if name.eq_ignore_ascii_case(b"memberOf") => &mut entry.member_of,
                _ if name.eq_ignore_ascii_case(b"adminCount") => &mut entry.admin_count,
                _ if name.eq_ignore_ascii_case(b"sAMAccountName") => &mut entry.sam_account_name,
                _ if name.eq_ignore_ascii_case(b"member") => &mut entry.member,
                _ if name.eq_ignore_ascii_case(b"servicePrincipalName") => &mut entry.service_principal_name,
                _ => {
                    at = seq_end;
                    continue;
                }
            };
            if slot.is_empty() {
                *slot = set;
            }
            at = seq_end;
        }
        Some((id as u32, entry))
    }
}

/// The values (OCTET STRINGs) of a SET OF content; stops at anything else.
fn set_values(set: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let (tag, start, end) = tlv_at(set, at)?;
        at = end;
        (tag == 0x04).then(|| &set[start..end])
    })
}

/// Accounts a search result entry shows to be privileged: the entry's own account when it
/// is a member of a privileged group (memberOf) or marked adminCount=1, and the members of
/// a privileged group entry. Names are sAMAccountName when present, else the first CN.
fn privileged_accounts(e: &EntryView<'_>) -> Vec<String> {
    let mut out = Vec::new();
    // Groups carry adminCount too; only accounts log on.
    let is_group = set_values(e.object_class).any(|c| c.eq_ignore_ascii_case(b"group"));
    let own = !is_group
        && (set_values(e.member_of).any(|g| std::str::from_utf8(g).is_ok_and(is_privileged_group))
            || set_values(e.admin_count).any(|v| v == b"1"));
    if own {
        let name = set_values(e.sam_account_name)
            .find_map(|v| std::str::from_utf8(v).ok())
            .or_else(|| first_cn(e.object_name));
        out.extend(name.map(str::to_string));
    }
    if is_privileged_group(e.object_name) {
        // Nested administrative groups (Domain Admins in Administrators) are not accounts.
        let members = set_values(e.member)
            .filter_map(|m| std::str::from_utf8(m).ok())
            .filter(|m| !is_privileged_group(m))
            .filter_map(first_cn);
        out.extend(members.take(MAX_PRIVILEGED_PER_ENTRY).map(str::to_string));
    }
    out.retain(|n| !n.is_empty() && n.len() <= 256);
    out
}

/// Service principal names a search result entry shows held by a computer account (its
/// sAMAccountName ends in `$`, or its objectClass is computer), lower case: tickets to
/// them are encrypted with a random machine key, so asking for one is not roasting.
fn computer_spns(e: &EntryView<'_>) -> Vec<String> {
    let computer = set_values(e.sam_account_name).any(|v| v.ends_with(b"$"))
        || set_values(e.object_class).any(|c| c.eq_ignore_ascii_case(b"computer"));
    if !computer {
        return Vec::new();
    }
    set_values(e.service_principal_name)
        .filter(|v| !v.is_empty() && v.len() <= MAX_SPN_LEN)
        .filter_map(|v| std::str::from_utf8(v).ok())
        .map(str::to_lowercase)
        .take(MAX_SPNS_PER_ENTRY)
        .collect()
}

/// Length of the BER element at the start of `b` (header + content), if complete enough to
/// know: `Ok(None)` means more bytes are needed.
pub fn element_len(b: &[u8]) -> Result<Option<usize>, LdapError> {
    if b.len() < 2 {
        return Ok(None);
    }
    let first = b[1] as usize;
    if first < 0x80 {
        return Ok(Some(2 + first));
    }
    let n = first & 0x7f;
    if n == 0 || n > 4 {
        return Err(LdapError::Malformed);
    }
    if b.len() < 2 + n {
        return Ok(None);
    }
    let len = b[2..2 + n].iter().fold(0usize, |acc, &x| (acc << 8) | x as usize);
    Ok(Some(2 + n + len))
}

/// The LDAPMessages of a connectionless LDAP datagram, in order. A CLDAP reply carries the
/// search's entries and its searchResDone back to back in one datagram (MS-ADTS 6.3.3,
/// the DC locator ping); anything after a malformed or truncated element is left out, as
/// is a datagram that does not start with an LDAPMessage.
pub fn datagram_messages(mut b: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if b.first() != Some(&0x30) {
            return None;
        }
        let n = element_len(b).ok().flatten().filter(|n| *n <= b.len())?;
        let (m, rest) = b.split_at(n);
        b = rest;
        Some(m)
    })
}

/// Whether constructed elements nest deeper than `max` anywhere in `b`, walked with an
/// explicit stack so hostile input cannot recurse. An indefinite length (or one of more
/// than four bytes) counts as too deep: LDAP allows only definite lengths (RFC 4511 5.1),
/// and the BER parser behind would follow an indefinite one as deep as it is nested.
fn too_deep(b: &[u8], max: usize) -> bool {
    let mut ends: Vec<usize> = Vec::new();
    let mut at = 0;
    while at + 2 <= b.len() {
        while ends.last().is_some_and(|&e| at >= e) {
            ends.pop();
        }
        let len = match element_len(&b[at..]) {
            Ok(Some(len)) => len,
            // Truncated: the parser refuses it without going deep.
            Ok(None) => return false,
            Err(_) => return true,
        };
        let header = if b[at + 1] < 0x80 { 2 } else { 2 + (b[at + 1] & 0x7f) as usize };
        if b[at] & 0x20 != 0 {
            ends.push(at + len);
            if ends.len() > max {
                return true;
            }
            at += header;
        } else {
            at += len;
        }
    }
    false
}

fn escape_value(v: &[u8], out: &mut String) {
    for &c in v {
        match c {
            b'*' | b'(' | b')' | b'\\' | 0 => {
                let _ = write!(out, "\\{c:02x}");
            }
            c if c.is_ascii_graphic() || c == b' ' => out.push(c as char),
            c => {
                let _ = write!(out, "\\{c:02x}");
            }
        }
    }
}

/// The RFC 4515 string form of a filter, e.g. `(&(objectClass=user)(servicePrincipalName=*))`.
pub fn render_filter(f: &Filter<'_>, out: &mut String) {
    if out.len() > MAX_FILTER_CHARS {
        return;
    }
    match f {
        Filter::And(v) | Filter::Or(v) => {
            out.push('(');
            out.push(if matches!(f, Filter::And(_)) { '&' } else { '|' });
            for x in v {
                render_filter(x, out);
            }
            out.push(')');
        }
        Filter::Not(x) => {
            out.push_str("(!");
            render_filter(x, out);
            out.push(')');
        }
        Filter::EqualityMatch(a) | Filter::GreaterOrEqual(a) | Filter::LessOrEqual(a) | Filter::ApproxMatch(a) => {
            let op = match f {
                Filter::EqualityMatch(_) => "=",
                Filter::GreaterOrEqual(_) => ">=",
                Filter::LessOrEqual(_) => "<=",
                _ => "~=",
            };
            out.push('(');
            out.push_str(&a.attribute_desc.0);
            out.push_str(op);
            escape_value(&a.assertion_value, out);
            out.push(')');
        }
        Filter::Present(a) => {
            out.push('(');
            out.push_str(&a.0);
            out.push_str("=*)");
        }
        Filter::Substrings(s) => {
            out.push('(');
            out.push_str(&s.filter_type.0);
            out.push('=');
            let mut star_pending = true;
            for part in &s.substrings {
                match part {
                    Substring::Initial(v) => {
                        escape_value(&v.0, out);
                        star_pending = true;
                    }
                    Substring::Any(v) => {
                        out.push('*');
                        escape_value(&v.0, out);
                        star_pending = true;
                    }
                    Substring::Final(v) => {
                        out.push('*');
                        escape_value(&v.0, out);
                        star_pending = false;
                    }
                }
            }
            if star_pending {
                out.push('*');
            }
            out.push(')');
        }
        Filter::ExtensibleMatch(m) => {
            out.push('(');
            if let Some(t) = &m.rule_type {
                out.push_str(&t.0);
            }
            if m.dn_attributes == Some(true) {
                out.push_str(":dn");
            }
            if let Some(r) = &m.matching_rule {
                out.push(':');
                out.push_str(&r.0);
            }
            out.push_str(":=");
            escape_value(&m.assertion_value.0, out);
            out.push(')');
        }
    }
}

/// A BER element's tag, content start and content end.
type Tlv = (u8, usize, usize);

/// A TLV at `at`: (tag, content start, content end), bounded by `b`.
fn tlv_at(b: &[u8], at: usize) -> Option<Tlv> {
    let rest = b.get(at..)?;
    let total = element_len(rest).ok()??;
    let header = if *rest.get(1)? < 0x80 { 2 } else { 2 + (rest[1] & 0x7f) as usize };
    (total <= rest.len()).then(|| (rest[0], at + header, at + total))
}

/// The envelope of an LDAPMessage read in place, `SEQUENCE { messageID INTEGER,
/// protocolOp ... }`: the message id's content bytes (each caller bounds them) and the
/// protocolOp's TLV, as `tlv_at` gives it.
fn message_envelope(b: &[u8]) -> Option<(&[u8], Tlv)> {
    let (tag, content_at, _) = tlv_at(b, 0)?;
    let (id_tag, id_at, id_end) = tlv_at(b, content_at)?;
    if tag != 0x30 || id_tag != 0x02 {
        return None;
    }
    Some((&b[id_at..id_end], tlv_at(b, id_end)?))
}

/// Active Directory's "Sicily" NTLM bind (MS-ADTS 5.1.1.1.3), which RFC 4511 parsers
/// refuse: a bindRequest whose authentication choice is [9] package discovery, [10]
/// negotiate or [11] response (the latter two carry NTLM messages).
fn sicily_bind(bytes: &[u8]) -> Option<LdapPdu> {
    let (id, (op, op_s, _)) = message_envelope(bytes)?;
    if id.len() > 4 {
        return None;
    }
    let message_id = id.iter().fold(0u32, |a, &x| (a << 8) | x as u32);
    let (_, _, ver_e) = tlv_at(bytes, op_s).filter(|(t, _, _)| *t == 0x02)?;
    let (name_tag, name_s, name_e) = tlv_at(bytes, ver_e)?;
    let (auth, auth_s, auth_e) = tlv_at(bytes, name_e)?;
    if op != 0x60 || name_tag != 0x04 || !(0x89..=0x8b).contains(&auth) {
        return None;
    }
    let name = String::from_utf8_lossy(&bytes[name_s..name_e]).into_owned();
    Some(LdapPdu {
        message_id,
        op: LdapOp::Bind {
            name,
            method: "sicily",
            sasl_mechanism: String::new(),
            cleartext_password_sent: false,
            ntlm: ntlm::find_message(&bytes[auth_s..auth_e]),
            ap_req: None,
        },
    })
}

/// The server's answer to a Sicily negotiate (MS-ADTS 5.1.1.1.3), which RFC 4511 parsers
/// refuse: a bindResponse whose matchedDN carries the binary NTLM CHALLENGE.
fn sicily_bind_response(bytes: &[u8]) -> Option<LdapPdu> {
    let (id, (op, op_s, _)) = message_envelope(bytes)?;
    if id.len() > 4 {
        return None;
    }
    let message_id = id.iter().fold(0u32, |a, &x| (a << 8) | x as u32);
    let (code_tag, code_s, code_e) = tlv_at(bytes, op_s)?;
    let (dn_tag, dn_s, dn_e) = tlv_at(bytes, code_e)?;
    if op != 0x61 || code_tag != 0x0a || code_e - code_s > 4 || dn_tag != 0x04 {
        return None;
    }
    let code = bytes[code_s..code_e].iter().fold(0u32, |a, &x| (a << 8) | x as u32);
    let ntlm = ntlm::find_message(&bytes[dn_s..dn_e]).filter(|m| m.message_type == 2)?;
    Some(LdapPdu { message_id, op: LdapOp::BindResult { code, ntlm: Some(ntlm) } })
}

/// Decodes one whole LDAPMessage.
pub fn parse_pdu(bytes: &[u8]) -> Result<LdapPdu, LdapError> {
    if let Some((message_id, entry)) = EntryView::read(bytes) {
        let op = LdapOp::SearchEntry { privileged: privileged_accounts(&entry), computer_spns: computer_spns(&entry) };
        return Ok(LdapPdu { message_id, op });
    }
    if too_deep(bytes, MAX_DEPTH) {
        return Err(LdapError::TooDeep);
    }
    let m = match LdapMessage::from_ber(bytes) {
        Ok((_, m)) => m,
        Err(_) => return sicily_bind(bytes).or_else(|| sicily_bind_response(bytes)).ok_or(LdapError::Malformed),
    };
    let op = match &m.protocol_op {
        ProtocolOp::BindRequest(b) => {
            let (method, sasl_mechanism, cleartext, creds) = match &b.authentication {
                AuthenticationChoice::Simple(pw) => ("simple", String::new(), !pw.is_empty(), None),
                AuthenticationChoice::Sasl(s) => ("sasl", s.mechanism.0.to_string(), false, s.credentials.as_deref()),
            };
            LdapOp::Bind {
                name: b.name.0.to_string(),
                method,
                sasl_mechanism,
                cleartext_password_sent: cleartext,
                ntlm: creds.and_then(ntlm::find_message),
                ap_req: creds.and_then(kerberos::find_ap_req).map(Box::new),
            }
        }
        ProtocolOp::BindResponse(r) => LdapOp::BindResult {
            code: r.result.result_code.0,
            ntlm: r.server_sasl_creds.as_deref().and_then(ntlm::find_message),
        },
        ProtocolOp::SearchRequest(s) => {
            let mut filter = String::new();
            render_filter(&s.filter, &mut filter);
            LdapOp::Search {
                base: s.base_object.0.to_string(),
                scope: s.scope.0,
                filter,
                attributes: s.attributes.iter().map(|a| a.0.to_string()).collect(),
            }
        }
        // An entry ldap-parser reads and the in-place reader did not: counted, not named.
        ProtocolOp::SearchResultEntry(_) => LdapOp::SearchEntry { privileged: Vec::new(), computer_spns: Vec::new() },
        ProtocolOp::SearchResultDone(r) => LdapOp::SearchDone { code: r.result_code.0 },
        ProtocolOp::ModifyRequest(r) => LdapOp::Modify {
            target: r.object.0.to_string(),
            attributes: r.changes.iter().map(|c| c.modification.attr_type.0.to_string()).collect(),
        },
        ProtocolOp::AddRequest(r) => LdapOp::Add {
            target: r.entry.0.to_string(),
            attributes: r.attributes.iter().map(|a| a.attr_type.0.to_string()).collect(),
        },
        ProtocolOp::DelRequest(dn) => LdapOp::Delete { target: dn.0.to_string() },
        ProtocolOp::ModDnRequest(r) => LdapOp::ModifyDn { target: r.entry.0.to_string() },
        ProtocolOp::ExtendedRequest(r) => LdapOp::Extended { name: extended_name(&r.request_name.0) },
        ProtocolOp::ModifyResponse(r) => LdapOp::Result { code: r.result.result_code.0 },
        ProtocolOp::AddResponse(r) | ProtocolOp::DelResponse(r) | ProtocolOp::ModDnResponse(r) => {
            LdapOp::Result { code: r.result_code.0 }
        }
        ProtocolOp::ExtendedResponse(r) => LdapOp::Result { code: r.result.result_code.0 },
        _ => LdapOp::Other,
    };
    Ok(LdapPdu { message_id: m.message_id.0, op })
}

/// Splits one direction of an LDAP stream into PDUs. SASL-sealed traffic (a 4-byte length
/// then an opaque wrapped token, RFC 4752 section 3.3) does not start with a SEQUENCE
/// tag: it is reported as sealed bytes, not parsed.
#[derive(Debug, Default)]
pub struct TcpFramer {
    framer: Framer,
    pub sealed_bytes: u64,
}

pub enum Frame<'a> {
    Pdu(&'a [u8]),
    Oversized,
}

fn header(b: &[u8]) -> Header {
    match b.first() {
        None => Header::Incomplete,
        Some(0x30) => match element_len(b) {
            Ok(Some(total)) => Header::Record { header: 0, total },
            Ok(None) => Header::Incomplete,
            Err(_) => Header::Broken,
        },
        // Not an LDAPMessage: SASL-wrapped (sealed or signed) data, from here on.
        Some(_) => Header::Foreign,
    }
}

/// After a gap: an LDAPMessage (RFC 4511 4.1.1) whose SEQUENCE length fits, then a
/// messageID INTEGER of one to four bytes, then the tag of a protocolOp (APPLICATION 0 to
/// 25, or an unbind/abandon/delete primitive).
fn starts(b: &[u8]) -> Start {
    if b.first() != Some(&0x30) {
        return Start::No;
    }
    let Ok(Some(total)) = element_len(b) else {
        return if element_len(b).is_err() { Start::No } else { Start::NeedMore };
    };
    if total > MAX_PDU {
        return Start::No;
    }
    let Some(at) = header_len(b) else { return Start::NeedMore };
    match b.get(at..at + 2) {
        None => Start::NeedMore,
        Some([0x02, n @ 1..=4]) => match b.get(at + 2 + *n as usize) {
            None => Start::NeedMore,
            Some(op) if (0x60..=0x79).contains(op) || matches!(op, 0x42 | 0x4a | 0x50) => Start::Yes,
            Some(_) => Start::No,
        },
        Some(_) => Start::No,
    }
}

/// Bytes of a BER header (tag and length) at the start of `b`, when complete.
fn header_len(b: &[u8]) -> Option<usize> {
    let first = *b.get(1)? as usize;
    if first < 0x80 {
        Some(2)
    } else {
        let n = first & 0x7f;
        (b.len() >= 2 + n).then_some(2 + n)
    }
}

impl TcpFramer {
    pub fn push(&mut self, data: &[u8], out: &mut dyn FnMut(Frame<'_>)) {
        let mut sealed = 0;
        self.framer.push(data, MAX_PDU, header, starts, &mut |f| match f {
            Framed::Record { whole, .. } => out(Frame::Pdu(whole)),
            Framed::Oversized { .. } => out(Frame::Oversized),
            Framed::Foreign(rest) => sealed += rest.len() as u64,
        });
        self.sealed_bytes += sealed;
    }

    /// Whether the stream turned into SASL-wrapped data.
    pub fn sealed(&self) -> bool {
        self.sealed_bytes > 0
    }

    /// Counts bytes of a stream already known to be sealed.
    pub fn count_sealed(&mut self, n: usize) {
        self.sealed_bytes += n as u64;
    }

    /// Bytes went missing: framing resumes at the next LDAPMessage (see `starts`). A
    /// sealed stream stays sealed.
    pub fn gap(&mut self) {
        if !self.sealed() {
            self.framer.gap();
        }
    }

    pub fn lost(&self) -> bool {
        self.framer.lost()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(&(objectCategory=person)(servicePrincipalName=*))` search, as ldapsearch sends it.
    fn spn_search() -> Vec<u8> {
        let base = b"DC=lab,DC=example";
        let mut filter = vec![0xa0, 0x00];
        let eq = [&[0xa3, 0x18, 0x04, 0x0e][..], b"objectCategory", &[0x04, 0x06], b"person"].concat();
        let pres = [&[0x87, 0x14][..], b"servicePrincipalName"].concat();
        filter.extend(&eq);
        filter.extend(&pres);
        filter[1] = (filter.len() - 2) as u8;
        let mut req = vec![0x04, base.len() as u8];
        req.extend(base);
        req.extend([0x0a, 0x01, 0x02, 0x0a, 0x01, 0x00, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00, 0x01, 0x01, 0x00]);
        req.extend(&filter);
        req.extend([0x30, 0x0a, 0x04, 0x08]);
        req.extend(b"sAMAccou");
        let mut op = vec![0x63, req.len() as u8];
        op.extend(req);
        let mut msg = vec![0x30, 0x00, 0x02, 0x01, 0x07];
        msg.extend(op);
        msg[1] = (msg.len() - 2) as u8;
        msg
    }

    /// A BER element, with a long-form length when the content needs one.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    /// An LDAPMessage carrying a searchResEntry with these attributes and values.
    fn search_entry(id: u8, dn: &str, attrs: &[(&str, &[&str])]) -> Vec<u8> {
        let attributes: Vec<u8> = attrs
            .iter()
            .flat_map(|(name, vals)| {
                let set: Vec<u8> = vals.iter().flat_map(|v| tlv(0x04, v.as_bytes())).collect();
                tlv(0x30, &[tlv(0x04, name.as_bytes()), tlv(0x31, &set)].concat())
            })
            .collect();
        let op = tlv(0x64, &[tlv(0x04, dn.as_bytes()), tlv(0x30, &attributes)].concat());
        tlv(0x30, &[vec![0x02, 0x01, id], op].concat())
    }

    fn privileged(dn: &str, attrs: &[(&str, &[&str])]) -> Vec<String> {
        match parse_pdu(&search_entry(7, dn, attrs)).unwrap() {
            LdapPdu { message_id: 7, op: LdapOp::SearchEntry { privileged, .. } } => privileged,
            other => panic!("not an entry: {other:?}"),
        }
    }

    #[test]
    fn privileged_accounts_come_from_member_of_admin_count_and_admin_group_members() {
        let eve = [
            ("sAMAccountName", &["eve.admin"][..]),
            ("memberOf", &["CN=Users,CN=Builtin,DC=lab", "CN=Domain Admins,CN=Users,DC=lab,DC=example"]),
        ];
        assert_eq!(privileged("CN=Eve Admin,CN=Users,DC=lab,DC=example", &eve), ["eve.admin"]);
        let svc = [("admincount", &["1"][..])];
        assert_eq!(privileged("CN=svc_backup,CN=Users,DC=lab", &svc), ["svc_backup"], "adminCount=1, name from the CN");
        let members = [(
            "member",
            &["CN=Administrator,CN=Users,DC=lab", "CN=Domain Admins,CN=Users,DC=lab", "CN=eve.admin,CN=Users,DC=lab"][..],
        )];
        assert_eq!(privileged("CN=Enterprise Admins,CN=Users,DC=lab", &members), ["Administrator", "eve.admin"]);
        let alice = [("memberOf", &["CN=Domain Users,CN=Users,DC=lab"][..]), ("adminCount", &["0"])];
        assert!(privileged("CN=alice,CN=Users,DC=lab", &alice).is_empty());
        let admins_group = [("objectClass", &["top", "group"][..]), ("adminCount", &["1"])];
        assert!(
            privileged("CN=Backup Operators,CN=Builtin,DC=lab", &admins_group).is_empty(),
            "a group is not an account"
        );
        let users = [("member", &["CN=alice,CN=Users,DC=lab"][..])];
        assert!(privileged("CN=Domain Users,CN=Users,DC=lab", &users).is_empty(), "not an administrative group");
    }

    fn spns(dn: &str, attrs: &[(&str, &[&str])]) -> Vec<String> {
        match parse_pdu(&search_entry(7, dn, attrs)).unwrap() {
            LdapPdu { op: LdapOp::SearchEntry { computer_spns, .. }, .. } => computer_spns,
            other => panic!("not an entry: {other:?}"),
        }
    }

    /// What an SPN search (GetUserSPNs, BloodHound) returns shows which SPNs computers hold.
    #[test]
    fn spns_of_computer_accounts_are_reported_and_users_are_not() {
        let sql01 = [
            ("sAMAccountName", &["SQL01$"][..]),
            ("servicePrincipalName", &["MSSQLSvc/sql01.lab.example:1433", "HOST/SQL01"]),
        ];
        assert_eq!(spns("CN=SQL01,CN=Computers,DC=lab", &sql01), ["mssqlsvc/sql01.lab.example:1433", "host/sql01"]);
        let by_class =
            [("objectClass", &["top", "person", "user", "computer"][..]), ("servicePrincipalName", &["http/web01"])];
        assert_eq!(spns("CN=WEB01,CN=Computers,DC=lab", &by_class), ["http/web01"]);
        let svc_sql = [
            ("sAMAccountName", &["svc_sql"][..]),
            ("objectClass", &["top", "person", "user"]),
            ("servicePrincipalName", &["MSSQLSvc/sql01.lab.example:1433"]),
        ];
        assert!(spns("CN=svc_sql,CN=Users,DC=lab", &svc_sql).is_empty(), "a user's SPN is roastable");
        let long = "a".repeat(MAX_SPN_LEN + 1);
        let many: Vec<String> = (0..100).map(|i| format!("host/n{i}")).collect();
        let mut values: Vec<&str> = many.iter().map(String::as_str).collect();
        values.insert(0, &long);
        let big = [("sAMAccountName", &["BIG$"][..]), ("servicePrincipalName", &values)];
        let got = spns("CN=BIG,DC=lab", &big);
        assert_eq!(got.len(), MAX_SPNS_PER_ENTRY, "bounded");
        assert_eq!(got[0], "host/n0", "an overlong value is skipped");
    }

    /// The in-place reader sees what ldap-parser decodes: the DN and every value of the
    /// attributes it looks at, with short and long BER lengths, among attributes it skips.
    #[test]
    fn entries_read_in_place_agree_with_ldap_parser() {
        let many: Vec<String> = (0..40).map(|i| format!("CN=user{i},OU=Staff,DC=lab,DC=example")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let attrs = [
            ("cn", &["Domain Admins"][..]),
            ("objectClass", &["top", "group"]),
            ("description", &["x"; 60]),
            ("member", &many),
            ("memberOf", &["CN=Denied RODC Password Replication Group,CN=Users,DC=lab"]),
        ];
        let bytes = search_entry(9, "CN=Domain Admins,CN=Users,DC=lab,DC=example", &attrs);
        assert!(bytes.len() > 0x100, "long-form lengths are exercised");
        let (id, view) = EntryView::read(&bytes).expect("an entry");
        let (_, m) = LdapMessage::from_ber(&bytes).unwrap();
        let ProtocolOp::SearchResultEntry(e) = m.protocol_op else { panic!("not an entry") };
        assert_eq!((id, view.object_name), (m.message_id.0, &*e.object_name.0));
        for (name, set) in [("objectClass", view.object_class), ("member", view.member), ("memberOf", view.member_of)] {
            let theirs: Vec<&[u8]> = e
                .attributes
                .iter()
                .filter(|a| a.attr_type.0 == name)
                .flat_map(|a| a.attr_vals.iter().map(|v| &*v.0))
                .collect();
            assert_eq!(set_values(set).collect::<Vec<_>>(), theirs, "{name}");
        }
        // A group's own adminCount does not make it an account; its members do.
        assert_eq!(privileged_accounts(&view).len(), 40);

        // Not entries, or broken ones: no view, and parse_pdu still answers.
        assert!(EntryView::read(&spn_search()).is_none(), "a search request");
        for cut in 1..bytes.len() {
            assert!(EntryView::read(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut lying = bytes.clone();
        let at = lying.windows(6).position(|w| w == b"member").unwrap() - 1;
        lying[at] = 0x7f; // the name "member" claiming more bytes than its sequence holds
        assert!(EntryView::read(&lying).is_none());
    }

    #[test]
    fn extended_operations_are_named_and_their_values_not_kept() {
        // ExtendedRequest id 5: PasswordModify with a value holding "secret".
        let oid = b"1.3.6.1.4.1.4203.1.11.1";
        let value = b"\x30\x08\x81\x06secret";
        let mut op = vec![0x80, oid.len() as u8];
        op.extend_from_slice(oid);
        op.extend_from_slice(&[0x81, value.len() as u8]);
        op.extend_from_slice(value);
        let mut body = vec![0x02, 0x01, 0x05, 0x77, op.len() as u8];
        body.extend(op);
        let mut msg = vec![0x30, body.len() as u8];
        msg.extend(body);
        let pdu = parse_pdu(&msg).unwrap();
        assert_eq!(pdu, LdapPdu { message_id: 5, op: LdapOp::Extended { name: "PasswordModify".into() } });
        assert!(!format!("{pdu:?}").contains("secret"));
        assert_eq!(extended_name("1.2.3.4"), "1.2.3.4");
    }

    #[test]
    fn search_filter_renders_in_string_form() {
        let pdu = parse_pdu(&spn_search()).unwrap();
        assert_eq!(pdu.message_id, 7);
        let LdapOp::Search { base, scope, filter, attributes } = pdu.op else { panic!("{pdu:?}") };
        assert_eq!(base, "DC=lab,DC=example");
        assert_eq!(scope, 2);
        assert_eq!(filter, "(&(objectCategory=person)(servicePrincipalName=*))");
        assert_eq!(attributes, vec!["sAMAccou"]);
    }

    #[test]
    fn simple_bind_keeps_no_password() {
        // bindRequest: version 3, name "alice", simple "Secret1!".
        let mut m = vec![0x30, 0x00, 0x02, 0x01, 0x01, 0x60, 0x00, 0x02, 0x01, 0x03, 0x04, 0x05];
        m.extend(b"alice");
        m.extend([0x80, 0x08]);
        m.extend(b"Secret1!");
        m[6] = (m.len() - 7) as u8;
        m[1] = (m.len() - 2) as u8;
        let pdu = parse_pdu(&m).unwrap();
        assert_eq!(
            pdu.op,
            LdapOp::Bind {
                name: "alice".into(),
                method: "simple",
                sasl_mechanism: String::new(),
                cleartext_password_sent: true,
                ntlm: None,
                ap_req: None
            }
        );
        assert!(!format!("{pdu:?}").contains("Secret1!"), "the password is not in the parsed message");
    }

    #[test]
    fn sicily_package_discovery_is_a_bind() {
        // From ldapdomaindump's NTLM bind: bindRequest(1) "" [9] (empty).
        let m = [0x30, 0x0c, 0x02, 0x01, 0x01, 0x60, 0x07, 0x02, 0x01, 0x03, 0x04, 0x00, 0x89, 0x00];
        let pdu = parse_pdu(&m).unwrap();
        assert_eq!(pdu.message_id, 1);
        assert!(matches!(pdu.op, LdapOp::Bind { method: "sicily", .. }));
    }

    #[test]
    fn sicily_negotiate_response_carries_the_challenge() {
        // bindResponse(5) success, matchedDN = NTLM CHALLENGE for target "LAB" (Unicode), as
        // a domain controller answers a Sicily negotiate (MS-ADTS 5.1.1.1.3).
        let mut ch = b"NTLMSSP\0".to_vec();
        ch.extend(2u32.to_le_bytes());
        ch.extend([6, 0, 6, 0, 48, 0, 0, 0]);
        ch.extend(0x0000_0001u32.to_le_bytes());
        ch.extend([0xaa; 8]);
        ch.extend([0; 16]);
        ch.extend([b'L', 0, b'A', 0, b'B', 0, 0xff]);
        let mut op = vec![0x0a, 0x01, 0x00, 0x04, ch.len() as u8];
        op.extend(&ch);
        op.extend([0x04, 0x00]);
        let mut m = vec![0x30, 0x00, 0x02, 0x01, 0x05, 0x61, op.len() as u8];
        m.extend(op);
        m[1] = (m.len() - 2) as u8;
        let pdu = parse_pdu(&m).unwrap();
        assert_eq!(pdu.message_id, 5);
        let LdapOp::BindResult { code: 0, ntlm: Some(n) } = pdu.op else { panic!("{pdu:?}") };
        assert_eq!((n.message_type, n.target_name.as_str()), (2, "LAB"));
    }

    #[test]
    fn escaping_and_substrings_follow_rfc4515() {
        let mut s = String::new();
        escape_value(b"a*b(c)\\\0", &mut s);
        assert_eq!(s, "a\\2ab\\28c\\29\\5c\\00");
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        // 200 nested NOT filters would recurse 200 deep in the filter parser.
        let mut inner = vec![0x87, 0x01, b'x'];
        for _ in 0..200 {
            let mut n = vec![0xa2];
            let len = inner.len();
            if len < 0x80 {
                n.push(len as u8);
            } else {
                n.extend([0x82, (len >> 8) as u8, len as u8]);
            }
            n.extend(inner);
            inner = n;
        }
        let mut msg = vec![0x30, 0x82, 0, 0, 0x02, 0x01, 0x01, 0x63, 0x82, 0, 0];
        msg.extend(&inner);
        let op_len = inner.len();
        msg[9] = (op_len >> 8) as u8;
        msg[10] = op_len as u8;
        let total = msg.len() - 4;
        msg[2] = (total >> 8) as u8;
        msg[3] = total as u8;
        assert_eq!(parse_pdu(&msg), Err(LdapError::TooDeep));
        // The same nesting with indefinite lengths (0x80 ... 00 00), which no length check
        // can bound: refused before the parser sees it.
        let mut inner = vec![0x87, 0x01, b'x'];
        for _ in 0..5000 {
            let mut n = vec![0xa2, 0x80];
            n.extend(inner);
            n.extend([0, 0]);
            inner = n;
        }
        let mut msg = vec![0x30, 0x80, 0x02, 0x01, 0x01, 0x63, 0x80];
        msg.extend(&inner);
        msg.extend([0, 0, 0, 0]);
        assert_eq!(parse_pdu(&msg), Err(LdapError::TooDeep));
    }

    #[test]
    fn cldap_datagram_yields_each_message() {
        // searchResEntry (id 1, "", no attributes) then searchResDone (id 1, success).
        let entry: &[u8] = &[0x30, 0x09, 0x02, 0x01, 0x01, 0x64, 0x04, 0x04, 0x00, 0x30, 0x00];
        let done = [0x30, 0x0c, 0x02, 0x01, 0x01, 0x65, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00];
        let mut d = entry.to_vec();
        d.extend_from_slice(&done);
        let msgs: Vec<&[u8]> = datagram_messages(&d).collect();
        assert_eq!(msgs, [entry, &done[..]]);
        let ops: Vec<LdapOp> = msgs.iter().map(|m| parse_pdu(m).unwrap().op).collect();
        assert!(matches!(ops[0], LdapOp::SearchEntry { .. }), "{:?}", ops[0]);
        assert_eq!(ops[1], LdapOp::SearchDone { code: 0 });
        // A cut-short second message is left out; a foreign datagram yields nothing.
        assert_eq!(datagram_messages(&d[..d.len() - 1]).count(), 1);
        assert_eq!(datagram_messages(&[0x01, 0x02]).count(), 0);
    }

    #[test]
    fn framer_splits_pdus_and_recognises_sealed_data() {
        let a = spn_search();
        let mut stream = a.clone();
        stream.extend(&a);
        let mut f = TcpFramer::default();
        let mut n = 0;
        for c in stream.chunks(7) {
            f.push(c, &mut |fr| {
                if let Frame::Pdu(p) = fr {
                    assert_eq!(p, &a[..]);
                    n += 1;
                }
            });
        }
        assert_eq!(n, 2);
        // After a GSSAPI bind, data is wrapped: 4-byte length, then the token.
        f.push(&[0x00, 0x00, 0x00, 0x40, 0x05, 0x04], &mut |_| panic!("sealed data is not a PDU"));
        assert!(f.sealed());
        assert_eq!(f.sealed_bytes, 6);
    }
}
