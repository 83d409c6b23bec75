//! DNS messages (RFC 1035 section 4.1): the header, the question section, which is what
//! the detections use (zone transfers, SRV sweeps, response codes), and the address and
//! service records of answers and dynamic updates, from which the domain controllers are
//! learned. Written here because it is a hundred lines and the crates that fit decode
//! whole messages into owned trees.
//!
//! ```text
//! header: ID(16) | QR(1) OPCODE(4) AA TC RD RA Z(3) RCODE(4) | QDCOUNT | ANCOUNT | NSCOUNT | ARCOUNT
//! question: QNAME (labels, maybe compressed) | QTYPE(16) | QCLASS(16)
//! ```
//! Over TCP each message follows a 2-byte big-endian length (section 4.2.2).

use super::framing::{Framed, Framer, Header, Start};

/// Questions decoded per message; a real query has one.
pub const MAX_QUESTIONS: usize = 8;
/// Longest name (section 2.3.4) and most compression pointers followed in one name.
pub const MAX_NAME: usize = 255;
const MAX_POINTERS: usize = 16;

/// Address and service records kept per message: a DC locator answer lists every DC.
pub const MAX_RECORDS: usize = 32;

pub mod qtype {
    pub const A: u16 = 1;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    /// Transaction key negotiation (RFC 2930), how GSS-TSIG starts.
    pub const TKEY: u16 = 249;
    pub const IXFR: u16 = 251;
    pub const AXFR: u16 = 252;
    pub const ANY: u16 = 255;
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsMessage {
    pub id: u16,
    pub response: bool,
    pub opcode: u8,
    pub rcode: u8,
    pub questions: Vec<(String, u16)>,
    pub answers: u16,
    /// A, AAAA and SRV records of the answer section (or a dynamic update's update
    /// section): (owner name, type, address or SRV target).
    pub records: Vec<(String, u16, String)>,
}

/// OPCODE of a dynamic update (RFC 2136 2.3), whose third section adds and deletes records.
const OPCODE_UPDATE: u8 = 5;
const CLASS_IN: u16 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("DNS message shorter than its header or question section says")]
    Truncated,
    #[error("DNS name malformed (bad label, loop or longer than 255 bytes)")]
    BadName,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, DnsError> {
    b.get(at..at + 2).map(|s| u16::from_be_bytes([s[0], s[1]])).ok_or(DnsError::Truncated)
}

/// Reads a name at `at`; returns it and the offset after it (after the first pointer).
fn read_name(msg: &[u8], mut at: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::with_capacity(64);
    let mut end = None;
    let mut pointers = 0;
    loop {
        let len = *msg.get(at).ok_or(DnsError::Truncated)? as usize;
        match len & 0xc0 {
            0x00 if len == 0 => {
                return Ok((if name.is_empty() { ".".into() } else { name }, end.unwrap_or(at + 1)));
            }
            0x00 => {
                let label = msg.get(at + 1..at + 1 + len).ok_or(DnsError::Truncated)?;
                if name.len() + len + 1 > MAX_NAME * 4 {
                    return Err(DnsError::BadName);
                }
                if !name.is_empty() {
                    name.push('.');
                }
                let plain = |c: &u8| c.is_ascii_graphic() && *c != b'.' && *c != b'\\';
                match std::str::from_utf8(label) {
                    Ok(l) if label.iter().all(plain) => name.push_str(l),
                    _ => {
                        for &c in label {
                            if plain(&c) {
                                name.push(c as char);
                            } else {
                                name.push_str(&format!("\\{c:03}"));
                            }
                        }
                    }
                }
                at += 1 + len;
            }
            0xc0 => {
                pointers += 1;
                if pointers > MAX_POINTERS {
                    return Err(DnsError::BadName);
                }
                let target = (u16_at(msg, at)? & 0x3fff) as usize;
                end.get_or_insert(at + 2);
                at = target;
            }
            _ => return Err(DnsError::BadName),
        }
    }
}

pub fn parse_message(msg: &[u8]) -> Result<DnsMessage, DnsError> {
    let id = u16_at(msg, 0)?;
    let flags = u16_at(msg, 2)?;
    let qdcount = u16_at(msg, 4)? as usize;
    let answers = u16_at(msg, 6)?;
    let mut questions = Vec::with_capacity(qdcount.min(MAX_QUESTIONS));
    let mut at = 12;
    for _ in 0..qdcount.min(MAX_QUESTIONS) {
        let (name, next) = read_name(msg, at)?;
        let qtype = u16_at(msg, next)?;
        u16_at(msg, next + 2)?;
        questions.push((name, qtype));
        at = next + 4;
    }
    let opcode = ((flags >> 11) & 0xf) as u8;
    let response = flags & 0x8000 != 0;
    // A response's records (the DC locator puts the SRV answers' addresses in the
    // additional section); an update request's update section (after its prerequisites,
    // which sit where answers do). Records that do not decode end the walk, not the message.
    let mut records = Vec::new();
    if qdcount <= MAX_QUESTIONS {
        let (ns, ar) = (u16_at(msg, 8)? as usize, u16_at(msg, 10)? as usize);
        let (skip, take) = match (opcode, response) {
            (OPCODE_UPDATE, false) => (answers as usize, ns),
            (0, true) => (0, answers as usize + ns + ar),
            _ => (0, 0),
        };
        let _ = walk_records(msg, at, skip, take, &mut records);
    }
    Ok(DnsMessage { id, response, opcode, rcode: (flags & 0xf) as u8, questions, answers, records })
}

/// Skips `skip` resource records from `at`, then keeps the A, AAAA and SRV additions (class
/// IN) among the next `take` (RFC 1035 4.1.3; SRV RDATA: priority, weight, port, target,
/// RFC 2782).
fn walk_records(
    msg: &[u8],
    mut at: usize,
    skip: usize,
    take: usize,
    out: &mut Vec<(String, u16, String)>,
) -> Result<(), DnsError> {
    for i in 0..skip.saturating_add(take) {
        if out.len() >= MAX_RECORDS {
            break;
        }
        let (name, next) = read_name(msg, at)?;
        let (rtype, class) = (u16_at(msg, next)?, u16_at(msg, next + 2)?);
        let rdlength = u16_at(msg, next + 8)? as usize;
        let rdata_at = next + 10;
        let rdata = msg.get(rdata_at..rdata_at + rdlength).ok_or(DnsError::Truncated)?;
        at = rdata_at + rdlength;
        if i < skip || class != CLASS_IN {
            continue;
        }
        let data = match (rtype, rdata.len()) {
            (qtype::A, 4) => std::net::Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]).to_string(),
            (qtype::AAAA, 16) => {
                let octets: [u8; 16] = rdata.try_into().map_err(|_| DnsError::Truncated)?;
                std::net::Ipv6Addr::from(octets).to_string()
            }
            (qtype::SRV, 7..) => read_name(msg, rdata_at + 6)?.0,
            _ => continue,
        };
        out.push((name, rtype, data));
    }
    Ok(())
}

/// Splits a TCP byte stream into DNS messages (2-byte length prefix). After a gap framing
/// resumes at the next plausible message (see `starts`).
#[derive(Debug, Default)]
pub struct TcpFramer(Framer);

fn header(b: &[u8]) -> Header {
    match b {
        [h, l, ..] => Header::Record { header: 2, total: 2 + u16::from_be_bytes([*h, *l]) as usize },
        _ => Header::Incomplete,
    }
}

/// After a gap: a length prefix that holds at least a DNS header, then a header (RFC 1035
/// 4.1.1) with the Z bit clear, a standard, notify or update opcode, at most one question
/// and section counts a message of that length can hold (each record takes 11 bytes or
/// more), and, when there is a question, a first label of 1 to 63 bytes.
fn starts(b: &[u8]) -> Start {
    let Some(h) = b.get(..16) else { return Start::NeedMore };
    let len = u16::from_be_bytes([h[0], h[1]]) as usize;
    let count = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]) as usize;
    let (opcode, z) = ((h[4] >> 3) & 0x0f, h[5] & 0x40);
    let records = count(8) + count(10) + count(12);
    let plausible = len >= 12
        && z == 0
        && matches!(opcode, 0 | 4 | 5)
        && count(6) <= 1
        && records.saturating_mul(11) <= len
        && count(6) + records > 0;
    if !plausible {
        return Start::No;
    }
    match (count(6), b.get(14)) {
        (1, Some(label)) if (1..=63).contains(label) => Start::Yes,
        (1, _) => Start::No,
        _ => Start::Yes,
    }
}

impl TcpFramer {
    pub fn push(&mut self, data: &[u8], record: &mut dyn FnMut(&[u8])) {
        self.0.push(data, usize::MAX, header, starts, &mut |f| {
            if let Framed::Record { payload, .. } = f {
                record(payload);
            }
        });
    }

    pub fn gap(&mut self) {
        self.0.gap();
    }

    /// Whether the direction lost its place and has not found a message start since.
    pub fn lost(&self) -> bool {
        self.0.lost()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `_ldap._tcp.dc._msdcs.lab.example` SRV, as dig sends it.
    fn srv_query() -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in ["_ldap", "_tcp", "dc", "_msdcs", "lab", "example"] {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 33, 0, 1]);
        m
    }

    /// A DC locator answer (two SRV records, compressed, their addresses in the additional
    /// section) and a dynamic update that registers a new DC's SRV and A records.
    #[test]
    fn dc_locator_answers_and_dynamic_updates_give_their_records() {
        let rr = |name: &[u8], rtype: u16, rdata: &[u8]| {
            let mut r = name.to_vec();
            r.extend(rtype.to_be_bytes());
            r.extend(1u16.to_be_bytes());
            r.extend(600u32.to_be_bytes());
            r.extend((rdata.len() as u16).to_be_bytes());
            r.extend(rdata);
            r
        };
        let label = |host: &str| {
            let mut n = Vec::new();
            for l in host.split('.') {
                n.push(l.len() as u8);
                n.extend(l.as_bytes());
            }
            n.push(0);
            n
        };
        let srv = |host: &str| [&[0u8, 0, 0, 100, 1, 133][..], &label(host)].concat();
        let mut m = srv_query();
        m[2] = 0x85;
        m[7] = 2; // answers
        m[11] = 2; // additional
        m.extend(rr(&[0xc0, 12], qtype::SRV, &srv("dc1.lab.example")));
        m.extend(rr(&[0xc0, 12], qtype::SRV, &srv("dc2.lab.example")));
        m.extend(rr(&label("dc1.lab.example"), qtype::A, &[10, 0, 0, 10]));
        m.extend(rr(&label("dc2.lab.example"), qtype::A, &[10, 0, 0, 11]));
        let r = parse_message(&m).unwrap();
        let name = "_ldap._tcp.dc._msdcs.lab.example".to_string();
        assert_eq!(
            r.records,
            vec![
                (name.clone(), qtype::SRV, "dc1.lab.example".to_string()),
                (name.clone(), qtype::SRV, "dc2.lab.example".to_string()),
                ("dc1.lab.example".to_string(), qtype::A, "10.0.0.10".to_string()),
                ("dc2.lab.example".to_string(), qtype::A, "10.0.0.11".to_string()),
            ]
        );
        for cut in 0..m.len() {
            let _ = parse_message(&m[..cut]);
        }
        // RFC 2136: zone in the question slot, no prerequisites, two additions.
        let mut u = vec![0x00, 0x07, 0x28, 0x00, 0, 1, 0, 0, 0, 2, 0, 0];
        u.extend(label("lab.example"));
        u.extend([0, 6, 0, 1]);
        u.extend(rr(&label("_ldap._tcp.dc._msdcs.lab.example"), qtype::SRV, &srv("dc2.lab.example")));
        u.extend(rr(&label("dc2.lab.example"), qtype::A, &[10, 0, 0, 11]));
        let r = parse_message(&u).unwrap();
        assert_eq!((r.opcode, r.response), (5, false));
        assert_eq!(r.records.len(), 2);
        assert_eq!(r.records[0], (name, qtype::SRV, "dc2.lab.example".to_string()));
    }

    #[test]
    fn parses_a_query_and_a_compressed_response() {
        let q = parse_message(&srv_query()).unwrap();
        assert_eq!(q.id, 0x1234);
        assert!(!q.response);
        assert_eq!(q.questions, vec![("_ldap._tcp.dc._msdcs.lab.example".to_string(), qtype::SRV)]);
        // A refused AXFR whose question name points back at the header's first name.
        let mut r = srv_query();
        r[2] = 0x80;
        r[3] = 0x05;
        r[5] = 2;
        r.extend_from_slice(&[0xc0, 12, 0, 252, 0, 1]);
        let m = parse_message(&r).unwrap();
        assert!(m.response);
        assert_eq!(m.rcode, 5);
        assert_eq!(m.questions[1], ("_ldap._tcp.dc._msdcs.lab.example".to_string(), qtype::AXFR));
    }

    #[test]
    fn loops_truncation_and_odd_bytes_are_handled() {
        let mut looped = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(parse_message(&looped), Err(DnsError::BadName));
        let q = srv_query();
        for cut in 0..q.len() {
            assert!(parse_message(&q[..cut]).is_err(), "cut at {cut}");
        }
        let odd = [0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 2, b'a', 0x07, 0, 0, 1, 0, 1];
        assert_eq!(parse_message(&odd).unwrap().questions[0].0, "a\\007");
    }

    #[test]
    fn tcp_framing_across_segments() {
        let q = srv_query();
        let mut s = (q.len() as u16).to_be_bytes().to_vec();
        s.extend(&q);
        s.extend(s.clone());
        let mut f = TcpFramer::default();
        let mut n = 0;
        for c in s.chunks(5) {
            f.push(c, &mut |m| {
                assert_eq!(m, &q[..]);
                n += 1;
            });
        }
        assert_eq!(n, 2);
    }

    /// A zone transfer's messages over one TCP connection, the middle one cut by a gap:
    /// framing resumes at the third, and a gap in the middle of a header is no start.
    #[test]
    fn tcp_framing_resumes_after_a_gap() {
        let q = srv_query();
        let mut record = (q.len() as u16).to_be_bytes().to_vec();
        record.extend(&q);
        let mut f = TcpFramer::default();
        let mut n = 0;
        f.push(&record, &mut |_| n += 1);
        f.push(&record[..7], &mut |_| n += 1);
        f.gap();
        // What follows the hole: the rest of the second message minus some bytes, then
        // the third in two pieces.
        f.push(&record[11..], &mut |_| n += 1);
        f.push(&record[..9], &mut |_| n += 1);
        f.push(&record[9..], &mut |m| {
            assert_eq!(m, &q[..]);
            n += 1;
        });
        assert_eq!(n, 2, "the first and the third message");
        assert!(!f.0.seeking());
    }
}
