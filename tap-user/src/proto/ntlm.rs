//! NTLM (MS-NLMP 2.2.1) messages, wherever they are carried: LDAP Sicily and SASL
//! (GSS-SPNEGO), SMB2 session setup, HTTP, DCE/RPC auth verifiers. Written here because no
//! maintained crate parses the messages without also implementing the authentication.
//!
//! ```text
//! "NTLMSSP\0" | MessageType u32 | ... fields: len u16, maxlen u16, offset u32 (from the signature)
//! NEGOTIATE (1):    flags@12 domain@16 workstation@24
//! CHALLENGE (2):    target_name@12 flags@20 challenge@24 target_info@40
//! AUTHENTICATE (3): lm@12 nt@20 domain@28 user@36 workstation@44 session_key@52 flags@60
//! ```
//! Challenge responses and keys are never kept: only their lengths decide NTLMv1 or v2.

use super::wire::u32_at;

pub const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";
/// NTLMSSP_NEGOTIATE_UNICODE: strings are UTF-16LE, otherwise OEM (read as Latin-1).
const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
/// Longest name kept (domain, user, workstation, target); longer ones are cut.
const MAX_NAME_BYTES: usize = 512;
/// Bytes searched for the signature inside a carrier's blob (SPNEGO wrapping is short).
const MAX_SEARCH: usize = 256;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NtlmMessage {
    pub message_type: u32,
    pub flags: u32,
    pub domain: String,
    pub user: String,
    pub workstation: String,
    pub target_name: String,
    /// "v1" (24-byte NT response), "v2" (longer), "" (anonymous or not AUTHENTICATE).
    pub version: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NtlmError {
    #[error("no NTLMSSP signature")]
    NoSignature,
    #[error("NTLM message cut short or with a field outside it")]
    Malformed,
}

/// The bytes a (len, maxlen, offset) field points at, checked against the message.
fn field(b: &[u8], at: usize) -> Option<&[u8]> {
    let len = u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]) as usize;
    let offset = u32_at(b, at + 4)? as usize;
    if len == 0 {
        return Some(&[]);
    }
    b.get(offset..offset.checked_add(len)?)
}

fn text(bytes: &[u8], unicode: bool) -> String {
    let bytes = &bytes[..bytes.len().min(MAX_NAME_BYTES)];
    if unicode {
        let units: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        String::from_utf16_lossy(&units)
    } else {
        bytes.iter().map(|&c| c as char).collect()
    }
}

/// Decodes the message starting at the signature.
pub fn parse_message(b: &[u8]) -> Result<NtlmMessage, NtlmError> {
    if !b.starts_with(SIGNATURE) {
        return Err(NtlmError::NoSignature);
    }
    let bad = NtlmError::Malformed;
    let message_type = u32_at(b, 8).ok_or(bad)?;
    let mut m = NtlmMessage { message_type, ..NtlmMessage::default() };
    match message_type {
        1 => {
            m.flags = u32_at(b, 12).ok_or(bad)?;
            // Domain and workstation are OEM strings here, and usually empty.
            m.domain = field(b, 16).map(|s| text(s, false)).unwrap_or_default();
            m.workstation = field(b, 24).map(|s| text(s, false)).unwrap_or_default();
        }
        2 => {
            m.flags = u32_at(b, 20).ok_or(bad)?;
            m.target_name = text(field(b, 12).ok_or(bad)?, m.flags & NEGOTIATE_UNICODE != 0);
        }
        3 => {
            m.flags = u32_at(b, 60).ok_or(bad)?;
            let unicode = m.flags & NEGOTIATE_UNICODE != 0;
            let nt = field(b, 20).ok_or(bad)?;
            m.domain = text(field(b, 28).ok_or(bad)?, unicode);
            m.user = text(field(b, 36).ok_or(bad)?, unicode);
            m.workstation = text(field(b, 44).ok_or(bad)?, unicode);
            m.version = match nt.len() {
                0 => "",
                24 => "v1",
                _ => "v2",
            };
        }
        _ => return Err(bad),
    }
    Ok(m)
}

/// Finds and decodes an NTLM message inside a carrier's security blob (raw, or wrapped in
/// SPNEGO/GSS-API DER). The search is safe because every field the message points at is
/// checked against the message itself, which starts at the signature.
pub fn find_message(blob: &[u8]) -> Option<NtlmMessage> {
    let window = &blob[..blob.len().min(MAX_SEARCH + SIGNATURE.len())];
    let at = window.windows(SIGNATURE.len()).position(|w| w == SIGNATURE)?;
    parse_message(&blob[at..]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An AUTHENTICATE as impacket builds it: Unicode, NTLMv2 response of 60 bytes.
    fn authenticate(nt_len: usize) -> Vec<u8> {
        let utf16 = |s: &str| s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect::<Vec<u8>>();
        let (domain, user, ws) = (utf16("LAB"), utf16("alice"), utf16("WS01"));
        let mut m = SIGNATURE.to_vec();
        m.extend(3u32.to_le_bytes());
        let mut payload = Vec::new();
        let base = 88u32;
        let mut fields = Vec::new();
        for part in [vec![0u8; 24], vec![7u8; nt_len], domain, user, ws, vec![]] {
            fields.push((part.len() as u16, base + payload.len() as u32));
            payload.extend(part);
        }
        for (len, off) in &fields {
            m.extend(len.to_le_bytes());
            m.extend(len.to_le_bytes());
            m.extend(off.to_le_bytes());
        }
        m.extend(0xe288_8215u32.to_le_bytes()); // flags, Unicode set
        m.resize(base as usize, 0);
        m.extend(payload);
        m
    }

    #[test]
    fn authenticate_gives_names_and_version_not_secrets() {
        let m = parse_message(&authenticate(60)).unwrap();
        assert_eq!(
            (m.message_type, m.domain.as_str(), m.user.as_str(), m.workstation.as_str()),
            (3, "LAB", "alice", "WS01")
        );
        assert_eq!(m.version, "v2");
        assert_eq!(parse_message(&authenticate(24)).unwrap().version, "v1");
        assert!(!format!("{m:?}").contains("\\u{7}"), "no response bytes kept");
    }

    #[test]
    fn found_inside_spnego_wrapping() {
        let mut blob = vec![0xa1, 0x81, 0x90, 0x30, 0x81, 0x8d, 0xa2, 0x81, 0x8a, 0x04, 0x81, 0x87];
        blob.extend(authenticate(60));
        assert_eq!(find_message(&blob).unwrap().user, "alice");
        assert!(find_message(b"no ntlm here").is_none());
    }

    #[test]
    fn fields_pointing_outside_are_refused() {
        let mut m = authenticate(60);
        m[36 + 4..36 + 8].copy_from_slice(&5000u32.to_le_bytes());
        assert_eq!(parse_message(&m), Err(NtlmError::Malformed));
        for cut in 0..m.len() {
            let _ = parse_message(&m[..cut]);
        }
    }
}
