//! Kerberos V5 (RFC 4120) messages between clients and a KDC, decoded with the rusticata
//! `kerberos-parser` (what Suricata uses), reduced to what the detections need.
//!
//! ```text
//! AS-REQ ::= [APPLICATION 10] KDC-REQ      AS-REP ::= [APPLICATION 11] KDC-REP
//! TGS-REQ ::= [APPLICATION 12] KDC-REQ     TGS-REP ::= [APPLICATION 13] KDC-REP
//! KRB-ERROR ::= [APPLICATION 30] SEQUENCE { ... error-code [6] Int32 ... }
//! ```
//! Over TCP each message follows a 4-byte big-endian length (RFC 4120 section 7.2.2).

use der_parser::asn1_rs::FromDer;
use kerberos_parser::{
    krb5::{ApReq, EncryptedData, KdcRep, KdcReq, KrbError, PAData, PrincipalName, Ticket},
    krb5_parser::{parse_as_rep, parse_as_req, parse_tgs_rep, parse_tgs_req},
};
use sha2::{Digest, Sha256};

use super::framing::{Framed, Framer, Header, Start};

/// Largest Kerberos message accepted over TCP. Tickets with large PACs reach tens of KB;
/// the length prefix could claim 2 GB.
pub const MAX_TCP_MESSAGE: usize = 256 << 10;

/// PA-DATA types (RFC 4120 section 7.5.2, MS-KILE, RFC 6113).
pub mod pa {
    pub const TGS_REQ: i32 = 1;
    pub const ENC_TIMESTAMP: i32 = 2;
    pub const PK_AS_REQ: i32 = 16;
    pub const PAC_REQUEST: i32 = 128;
    pub const FX_FAST: i32 = 136;
}

/// Message types (RFC 4120 section 7.5.7).
pub mod msg {
    pub const AS_REQ: u32 = 10;
    pub const AS_REP: u32 = 11;
    pub const TGS_REQ: u32 = 12;
    pub const TGS_REP: u32 = 13;
    pub const AP_REQ: u32 = 14;
    pub const ERROR: u32 = 30;
}

/// Bytes of a carrier's security blob searched for an AP-REQ (SPNEGO and GSS-API
/// wrappers are a few dozen bytes).
const MAX_GSS_SEARCH: usize = 512;

/// The start of an AP-REQ's body: pvno [0] INTEGER 5, msg-type [1] INTEGER 14.
const AP_REQ_HEAD: [u8; 10] = [0xa0, 0x03, 0x02, 0x01, 0x05, 0xa1, 0x03, 0x02, 0x01, 0x0e];

/// The AP-REQ a carrier's security blob holds, wherever SPNEGO or a GSS-API initial
/// context token (RFC 4121 4.1: mech OID, TOK_ID 01 00, AP-REQ) wrapped it; some clients
/// put the bare AP-REQ in SPNEGO's mechToken. Found by its fixed first fields (pvno 5,
/// msg-type 14), then decoded from the [APPLICATION 14] tag a few bytes before them.
/// Returns the service ticket's realm, service name, encryption type and fingerprint,
/// and the authenticator's encryption type.
pub fn find_ap_req(blob: &[u8]) -> Option<KerberosMessage> {
    let window = &blob[..blob.len().min(MAX_GSS_SEARCH)];
    let head = window.windows(AP_REQ_HEAD.len()).position(|w| w == AP_REQ_HEAD)?;
    // [APPLICATION 14] and SEQUENCE headers: 2, 3 or 4 bytes each (short or long length).
    let ap = [4, 5, 6, 7, 8].into_iter().filter_map(|back| head.checked_sub(back)).find_map(|start| {
        if blob[start] != 0x6e {
            return None;
        }
        ApReq::from_der(&blob[start..]).ok().map(|(_, ap)| ap)
    })?;
    Some(KerberosMessage {
        msg_type: msg::AP_REQ,
        sname: principal(&ap.ticket.sname),
        realm: ap.ticket.realm.0.clone(),
        ticket_etype: ap.ticket.enc_part.etype.0,
        enc_part_etype: ap.authenticator.etype.0,
        ticket_fingerprint: ticket_fingerprint(&ap.ticket),
        ..KerberosMessage::default()
    })
}

/// One KDC exchange message, as the detections see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KerberosMessage {
    pub msg_type: u32,
    pub cname: String,
    pub crealm: String,
    pub sname: String,
    pub realm: String,
    pub requested_etypes: Vec<i32>,
    pub ticket_etype: i32,
    pub enc_part_etype: i32,
    pub padata_types: Vec<i32>,
    pub enc_timestamp_etype: i32,
    pub pac_requested: Option<bool>,
    pub pk_as_req: bool,
    pub fast: bool,
    pub kdc_options: u32,
    pub error_code: i32,
    /// Of the ticket issued (AS-REP, TGS-REP) or presented (TGS-REQ's PA-TGS-REQ).
    pub ticket_fingerprint: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KerberosError {
    #[error("not a Kerberos KDC message (first byte {0:#04x})")]
    NotKerberos(u8),
    #[error("Kerberos message malformed")]
    Malformed,
    #[error("empty input")]
    Empty,
}

fn principal(p: &PrincipalName) -> String {
    p.name_string.join("/")
}

/// Hex of the first 8 bytes of SHA-256 over the ticket's cipher: stable across hosts and
/// messages, and too short to be of any use against the ticket.
pub fn ticket_fingerprint(ticket: &Ticket<'_>) -> String {
    let digest = Sha256::digest(ticket.enc_part.cipher);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn flags_u32(bits: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    for (d, s) in b.iter_mut().zip(bits) {
        *d = *s;
    }
    u32::from_be_bytes(b)
}

/// KERB-PA-PAC-REQUEST ::= SEQUENCE { include-pac [0] BOOLEAN } (MS-KILE 2.2.3), read
/// from its fixed DER encoding: 30 05 a0 03 01 01 xx.
fn pac_request(value: &[u8]) -> Option<bool> {
    match value {
        [0x30, 0x05, 0xa0, 0x03, 0x01, 0x01, v] => Some(*v != 0),
        _ => None,
    }
}

fn read_padata(out: &mut KerberosMessage, padata: &[PAData<'_>]) {
    for p in padata {
        let t = p.padata_type.0;
        out.padata_types.push(t);
        match t {
            pa::ENC_TIMESTAMP => {
                if let Ok((_, enc)) = EncryptedData::from_der(p.padata_value) {
                    out.enc_timestamp_etype = enc.etype.0;
                }
            }
            pa::PAC_REQUEST => out.pac_requested = pac_request(p.padata_value),
            pa::PK_AS_REQ => out.pk_as_req = true,
            pa::FX_FAST => out.fast = true,
            pa::TGS_REQ => {
                if let Ok((_, ap)) = ApReq::from_der(p.padata_value) {
                    out.ticket_fingerprint = ticket_fingerprint(&ap.ticket);
                    out.ticket_etype = ap.ticket.enc_part.etype.0;
                    if out.realm.is_empty() {
                        out.realm = ap.ticket.realm.0.clone();
                    }
                }
            }
            _ => {}
        }
    }
}

fn from_req(r: &KdcReq<'_>) -> KerberosMessage {
    let b = &r.req_body;
    let mut m = KerberosMessage {
        msg_type: r.msg_type.0,
        cname: b.cname.as_ref().map(principal).unwrap_or_default(),
        crealm: b.realm.0.clone(),
        sname: b.sname.as_ref().map(principal).unwrap_or_default(),
        realm: b.realm.0.clone(),
        requested_etypes: b.etype.iter().map(|e| e.0).collect(),
        kdc_options: flags_u32(&b.kdc_options.data),
        ..KerberosMessage::default()
    };
    read_padata(&mut m, &r.padata);
    m
}

fn from_rep(r: &KdcRep<'_>) -> KerberosMessage {
    let enc: &EncryptedData<'_> = &r.enc_part;
    let mut m = KerberosMessage {
        msg_type: r.msg_type.0,
        cname: principal(&r.cname),
        crealm: r.crealm.0.clone(),
        sname: principal(&r.ticket.sname),
        realm: r.ticket.realm.0.clone(),
        ticket_etype: r.ticket.enc_part.etype.0,
        enc_part_etype: enc.etype.0,
        ticket_fingerprint: ticket_fingerprint(&r.ticket),
        ..KerberosMessage::default()
    };
    read_padata(&mut m, &r.padata);
    m
}

/// One DER/BER TLV header: (tag byte, header length, content length).
fn tlv(b: &[u8]) -> Option<(u8, usize, usize)> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    if first < 0x80 {
        return Some((tag, 2, first));
    }
    let n = first & 0x7f;
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | *b.get(2 + i)? as usize;
    }
    Some((tag, 2 + n, len))
}

/// Content of the context-tagged field `[field]` inside the SEQUENCE at the start of `b`,
/// as (offset in `b`, length).
fn field(b: &[u8], field: u8) -> Option<(usize, usize)> {
    let (tag, hl, len) = tlv(b)?;
    if tag != 0x30 {
        return None;
    }
    let mut at = hl;
    let end = hl.checked_add(len)?.min(b.len());
    while at < end {
        let (t, h, l) = tlv(&b[at..])?;
        if t == 0xa0 | field {
            return Some((at + h, l));
        }
        at = at.checked_add(h + l)?;
    }
    None
}

/// impacket encodes some INTEGERs of the KDC-REQ body with a redundant leading 0xff
/// (`02 02 ff 80` for the name type -128, KRB_NT_MS_PRINCIPAL), which BER allows and
/// Windows accepts but DER, and so kerberos-parser, refuses. Those integers (name types,
/// nonce) are of no use to the sensor: clearing the redundant byte keeps every length and
/// makes the encoding valid DER. MIT clients send the nonce as a negative INTEGER (its
/// 32 bits read as signed), which kerberos-parser's u32 refuses: its top bit is cleared.
/// Only the request body is touched (it holds no ciphertext the sensor fingerprints).
/// Returns whether anything was changed.
fn relax_body_integers(msg: &mut [u8]) -> bool {
    let Some((_, app_hl, _)) = tlv(msg) else { return false };
    let Some((body_at, body_len)) = field(&msg[app_hl..], 4).map(|(o, l)| (o + app_hl, l)) else { return false };
    let end = (body_at + body_len).min(msg.len());
    let mut changed = false;
    if let Some((nonce_at, _)) = field(&msg[body_at..end], 7).map(|(o, l)| (o + body_at, l)) {
        if let Some([0x02, n, first]) = msg.get(nonce_at..nonce_at + 3) {
            if *n >= 1 && first & 0x80 != 0 && !(*first == 0xff && *n > 1) {
                msg[nonce_at + 2] &= 0x7f;
                changed = true;
            }
        }
    }
    let mut at = body_at;
    while at + 4 <= end {
        if msg[at] == 0x02 && (2..=4).contains(&msg[at + 1]) && msg[at + 2] == 0xff && msg[at + 3] & 0x80 != 0 {
            msg[at + 2] = 0x00;
            changed = true;
            at += 4;
        } else {
            at += 1;
        }
    }
    changed
}

/// Decodes one whole message (a UDP payload, or a TCP record without its length).
pub fn parse_message(bytes: &[u8]) -> Result<KerberosMessage, KerberosError> {
    match parse_strict(bytes) {
        Err(KerberosError::Malformed) if matches!(bytes.first(), Some(0x6a | 0x6c)) => {
            let mut relaxed = bytes.to_vec();
            if relax_body_integers(&mut relaxed) {
                parse_strict(&relaxed)
            } else {
                Err(KerberosError::Malformed)
            }
        }
        other => other,
    }
}

fn parse_strict(bytes: &[u8]) -> Result<KerberosMessage, KerberosError> {
    let first = *bytes.first().ok_or(KerberosError::Empty)?;
    let bad = |_| KerberosError::Malformed;
    // APPLICATION tags, constructed: 0x60 | tag number.
    match first {
        0x6a => parse_as_req(bytes).map(|(_, r)| from_req(&r)).map_err(bad),
        0x6b => parse_as_rep(bytes).map(|(_, r)| from_rep(&r)).map_err(bad),
        0x6c => parse_tgs_req(bytes).map(|(_, r)| from_req(&r)).map_err(bad),
        0x6d => parse_tgs_rep(bytes).map(|(_, r)| from_rep(&r)).map_err(bad),
        0x7e => KrbError::from_der(bytes)
            .map(|(_, e)| KerberosMessage {
                msg_type: e.msg_type.0,
                cname: e.cname.as_ref().map(principal).unwrap_or_default(),
                crealm: e.crealm.as_ref().map(|r| r.0.clone()).unwrap_or_default(),
                sname: principal(&e.sname),
                realm: e.realm.0.clone(),
                error_code: e.error_code.0,
                ..KerberosMessage::default()
            })
            .map_err(bad),
        other => Err(KerberosError::NotKerberos(other)),
    }
}

/// Splits a TCP byte stream into Kerberos records: keeps a partial record across
/// segments, drops a record claiming more than `MAX_TCP_MESSAGE`, and after a gap skips to
/// the next plausible record start.
#[derive(Debug, Default)]
pub struct TcpFramer {
    framer: Framer,
}

/// Whether `b` starts with a length prefix followed by a KDC message tag whose own DER
/// length fits the prefix: what a record start looks like.
fn looks_like_record(b: &[u8]) -> bool {
    if b.len() < 6 {
        return false;
    }
    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    matches!(b[4], 0x6a..=0x6d | 0x7e)
        && len > 2
        && len <= MAX_TCP_MESSAGE
        && (b[5] & 0x80 != 0 || b[5] as usize + 2 == len)
}

/// RFC 4120 7.2.2: a 4-byte big-endian length whose top bit is reserved.
fn header(b: &[u8]) -> Header {
    match b {
        [a, b1, c, d, ..] => {
            Header::Record { header: 4, total: 4 + (u32::from_be_bytes([*a, *b1, *c, *d]) & 0x7fff_ffff) as usize }
        }
        _ => Header::Incomplete,
    }
}

/// After a gap: a record start (`looks_like_record`).
fn starts(b: &[u8]) -> Start {
    match b.len() {
        0..6 => Start::NeedMore,
        _ if looks_like_record(b) => Start::Yes,
        _ => Start::No,
    }
}

impl TcpFramer {
    /// Feeds stream bytes; calls `record` with each complete message.
    pub fn push(&mut self, data: &[u8], oversized: &mut u64, record: &mut dyn FnMut(&[u8])) {
        let mut over = 0;
        self.framer.push(data, MAX_TCP_MESSAGE + 4, header, starts, &mut |f| match f {
            Framed::Record { payload, .. } => record(payload),
            Framed::Oversized { .. } => over += 1,
            Framed::Foreign(_) => {}
        });
        *oversized += over;
    }

    /// Bytes went missing: what is buffered is no longer trustworthy, and framing resumes
    /// at the next record start (see `looks_like_record`).
    pub fn gap(&mut self) {
        self.framer.gap();
    }

    /// Whether the direction lost its place and has not found a record start since.
    pub fn lost(&self) -> bool {
        self.framer.lost()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framer_reassembles_split_records_and_resyncs_after_a_gap() {
        let rec = |tag: u8, body: &[u8]| {
            let mut msg = vec![tag, body.len() as u8];
            msg.extend_from_slice(body);
            let mut r = (msg.len() as u32).to_be_bytes().to_vec();
            r.extend(msg);
            r
        };
        let a = rec(0x6a, &[1, 2, 3]);
        let b = rec(0x6c, &[4, 5]);
        let mut stream = a.clone();
        stream.extend(&b);
        let mut f = TcpFramer::default();
        let mut got = Vec::new();
        let mut over = 0;
        for chunk in stream.chunks(3) {
            f.push(chunk, &mut over, &mut |r| got.push(r.to_vec()));
        }
        assert_eq!(got, vec![a[4..].to_vec(), b[4..].to_vec()]);
        // A gap, then the tail of some record and a fresh one.
        got.clear();
        f.gap();
        let mut after = vec![0x99, 0x42, 0x00];
        after.extend(&b);
        f.push(&after, &mut over, &mut |r| got.push(r.to_vec()));
        assert_eq!(got, vec![b[4..].to_vec()]);
        // A length of 1 GB is refused, not buffered.
        f.push(&0x4000_0000u32.to_be_bytes(), &mut over, &mut |_| panic!("no record"));
        assert_eq!(over, 1);
    }

    #[test]
    fn relaxes_only_redundant_leading_ff_integers_of_the_body() {
        // [APPLICATION 12] { SEQUENCE { [4] SEQUENCE { [7] INTEGER ff 8a bc de } } }
        let mut m =
            vec![0x6c, 0x0e, 0x30, 0x0c, 0xa4, 0x0a, 0x30, 0x08, 0xa7, 0x06, 0x02, 0x04, 0xff, 0x8a, 0xbc, 0xde];
        assert!(relax_body_integers(&mut m));
        assert_eq!(&m[12..], &[0x00, 0x8a, 0xbc, 0xde]);
        assert!(!relax_body_integers(&mut m), "already valid");
        let mut short = m[..10].to_vec();
        assert!(!relax_body_integers(&mut short));
        // A negative nonce (MIT) loses its sign bit.
        let mut neg =
            vec![0x6c, 0x0e, 0x30, 0x0c, 0xa4, 0x0a, 0x30, 0x08, 0xa7, 0x06, 0x02, 0x04, 0x9a, 0x8a, 0xbc, 0xde];
        assert!(relax_body_integers(&mut neg));
        assert_eq!(neg[12], 0x1a);
        // Outside the body nothing changes: [3] instead of [4].
        let mut other =
            vec![0x6c, 0x0e, 0x30, 0x0c, 0xa3, 0x0a, 0x30, 0x08, 0xa7, 0x06, 0x02, 0x04, 0xff, 0x8a, 0xbc, 0xde];
        assert!(!relax_body_integers(&mut other));
    }

    #[test]
    fn non_kerberos_and_garbage_are_errors_not_panics() {
        assert_eq!(parse_message(&[]), Err(KerberosError::Empty));
        assert_eq!(parse_message(&[0x30, 0]), Err(KerberosError::NotKerberos(0x30)));
        for len in 0..40 {
            let mut junk = vec![0x6a];
            junk.extend((0..len).map(|i| (i * 37) as u8));
            assert!(parse_message(&junk).is_err());
        }
        assert_eq!(pac_request(&[0x30, 0x05, 0xa0, 0x03, 0x01, 0x01, 0xff]), Some(true));
        assert_eq!(pac_request(&[0x30, 0x05, 0xa0, 0x03, 0x01, 0x01, 0x00]), Some(false));
        assert_eq!(flags_u32(&[0x40, 0x81, 0x00, 0x10]), 0x4081_0010);
    }
}
