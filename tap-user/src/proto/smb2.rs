//! SMB2/3 (MS-SMB2) on TCP 445, as much as the detections need: the negotiated dialect,
//! session setups (their security blobs carry NTLM or Kerberos), tree connects, creates of
//! pipes and files, and SMB3 encryption (which hides everything after the session setup).
//! Written here: no maintained crate parses SMB2 without a client or server around it.
//!
//! ```text
//! NetBIOS session message: type(1)=0 | length(3) | SMB2 message(s), chained by NextCommand
//! SMB2 header (64): "\xfeSMB" | size(2)=64 | credit charge(2) | status(4) | command(2) |
//!   credits(2) | flags(4) | next command(4) | message id(8) | reserved/async(4/8) |
//!   tree id(4) | session id(8) | signature(16)
//! Transform header: "\xfdSMB" | signature(16) | nonce(16) | original size(4) | ... (52)
//! ```

use super::{
    framing::{Framed, Framer, Header, Start},
    wire::{u16_at, u32_at, u64_at},
};

/// Largest NetBIOS message accepted (SMB2 writes/reads up to 8 MiB exist; the sensor only
/// needs headers, so larger messages are skipped, not buffered).
pub const MAX_MESSAGE: usize = 1 << 20;
const HEADER: usize = 64;
/// SMB2 messages followed through NextCommand in one NetBIOS message.
const MAX_CHAIN: usize = 32;
/// Longest path or file name kept, in UTF-16 code units.
const MAX_NAME_UNITS: usize = 1024;

pub mod command {
    pub const NEGOTIATE: u16 = 0;
    pub const SESSION_SETUP: u16 = 1;
    pub const TREE_CONNECT: u16 = 3;
    pub const CREATE: u16 = 5;
    pub const READ: u16 = 8;
    pub const WRITE: u16 = 9;
    pub const IOCTL: u16 = 11;
}

/// FSCTL_PIPE_TRANSCEIVE (MS-FSCC 2.3.49): a write and a read on a named pipe in one call,
/// how Windows clients carry most DCE/RPC over SMB.
pub const FSCTL_PIPE_TRANSCEIVE: u32 = 0x0011_c017;

/// NTSTATUS values with a meaning for the flow of a session setup.
pub mod status {
    pub const SUCCESS: u32 = 0;
    pub const MORE_PROCESSING_REQUIRED: u32 = 0xc000_0016;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Smb2Body {
    NegotiateResponse {
        dialect: u16,
    },
    SessionSetup {
        security_blob: Vec<u8>,
    },
    TreeConnect {
        path: String,
    },
    Create {
        name: String,
    },
    CreateResponse {
        file_id: [u8; 16],
    },
    /// Request data written to a file or pipe.
    Write {
        file_id: [u8; 16],
        data: Vec<u8>,
    },
    /// A read request; its response carries the data but not the file id.
    Read {
        file_id: [u8; 16],
    },
    ReadResponse {
        data: Vec<u8>,
    },
    /// A pipe transceive: `data` is the input (request) or output (response).
    Transceive {
        file_id: [u8; 16],
        data: Vec<u8>,
    },
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Smb2Message {
    pub command: u16,
    pub response: bool,
    pub status: u32,
    pub message_id: u64,
    pub tree_id: u32,
    pub session_id: u64,
    pub body: Smb2Body,
    /// Decoded from SMB1 (see `smb1`), mapped onto SMB2 commands.
    pub smb1: bool,
}

/// What one NetBIOS message held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Smb2Unit {
    Messages(Vec<Smb2Message>),
    /// An SMB3 transform header: `len` bytes nobody but the endpoints can read.
    Encrypted {
        len: usize,
    },
    /// SMB1 (the negotiate some clients still open with) or anything else.
    NotSmb2,
}

/// UTF-16LE name at (offset, length) from the start of the SMB2 header.
fn name(msg: &[u8], offset: usize, len: usize) -> Option<String> {
    let bytes = msg.get(offset..offset.checked_add(len)?)?;
    let units: Vec<u16> =
        bytes.chunks_exact(2).take(MAX_NAME_UNITS).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    Some(String::from_utf16_lossy(&units))
}

fn file_id(body: &[u8], at: usize) -> Option<[u8; 16]> {
    body.get(at..at + 16)?.try_into().ok()
}

/// `len` bytes at `offset` from the start of the SMB2 header; a length of zero needs no
/// valid offset.
fn slice(msg: &[u8], offset: usize, len: usize) -> Option<&[u8]> {
    if len == 0 {
        return Some(&[]);
    }
    msg.get(offset..offset.checked_add(len)?)
}

fn parse_one(msg: &[u8]) -> Option<Smb2Message> {
    if msg.get(..4)? != b"\xfeSMB" || u16_at(msg, 4)? as usize != HEADER {
        return None;
    }
    let status = u32_at(msg, 8)?;
    let command = u16_at(msg, 12)?;
    let flags = u32_at(msg, 16)?;
    let response = flags & 1 != 0;
    let async_flag = flags & 2 != 0;
    let message_id = u64_at(msg, 24)?;
    let tree_id = if async_flag { 0 } else { u32_at(msg, 36)? };
    let session_id = u64_at(msg, 40)?;
    let body = &msg.get(HEADER..)?;
    let parsed = match (command, response) {
        (command::NEGOTIATE, true) if status == status::SUCCESS => {
            Smb2Body::NegotiateResponse { dialect: u16_at(body, 4)? }
        }
        (command::SESSION_SETUP, _) => {
            let (off_at, len_at) = if response { (4, 6) } else { (12, 14) };
            let (off, len) = (u16_at(body, off_at)? as usize, u16_at(body, len_at)? as usize);
            let blob = if len == 0 { &[][..] } else { msg.get(off..off.checked_add(len)?)? };
            Smb2Body::SessionSetup { security_blob: blob.to_vec() }
        }
        (command::TREE_CONNECT, false) => {
            Smb2Body::TreeConnect { path: name(msg, u16_at(body, 4)? as usize, u16_at(body, 6)? as usize)? }
        }
        (command::CREATE, false) => {
            Smb2Body::Create { name: name(msg, u16_at(body, 44)? as usize, u16_at(body, 46)? as usize)? }
        }
        (command::CREATE, true) if status == status::SUCCESS => {
            Smb2Body::CreateResponse { file_id: file_id(body, 64)? }
        }
        (command::WRITE, false) => {
            let (off, len) = (u16_at(body, 2)? as usize, u32_at(body, 4)? as usize);
            Smb2Body::Write { file_id: file_id(body, 16)?, data: slice(msg, off, len)?.to_vec() }
        }
        (command::READ, false) => Smb2Body::Read { file_id: file_id(body, 16)? },
        (command::READ, true) if status == status::SUCCESS => {
            let (off, len) = (*body.get(2)? as usize, u32_at(body, 4)? as usize);
            Smb2Body::ReadResponse { data: slice(msg, off, len)?.to_vec() }
        }
        (command::IOCTL, _) if u32_at(body, 4)? == FSCTL_PIPE_TRANSCEIVE => {
            // Request: input at (24, 28); response: output at (32, 36).
            let (off_at, len_at) = if response { (32, 36) } else { (24, 28) };
            let (off, len) = (u32_at(body, off_at)? as usize, u32_at(body, len_at)? as usize);
            Smb2Body::Transceive { file_id: file_id(body, 8)?, data: slice(msg, off, len)?.to_vec() }
        }
        _ => Smb2Body::Other,
    };
    Some(Smb2Message { command, response, status, message_id, tree_id, session_id, body: parsed, smb1: false })
}

/// Decodes the payload of one NetBIOS session message.
pub fn parse_unit(b: &[u8]) -> Smb2Unit {
    match b.get(..4) {
        Some(b"\xfdSMB") => return Smb2Unit::Encrypted { len: b.len() },
        Some(b"\xfeSMB") => {}
        Some(b"\xffSMB") => return Smb2Unit::Messages(super::smb1::parse(b)),
        _ => return Smb2Unit::NotSmb2,
    }
    let mut out = Vec::new();
    let mut at = 0;
    for _ in 0..MAX_CHAIN {
        let msg = &b[at..];
        let next = u32_at(msg, 20).unwrap_or(0) as usize;
        let this = if next == 0 { msg } else { &msg[..next.min(msg.len())] };
        match parse_one(this) {
            Some(m) => out.push(m),
            None => break,
        }
        if next == 0 || next < HEADER || at + next >= b.len() {
            break;
        }
        at += next;
    }
    Smb2Unit::Messages(out)
}

/// Splits a TCP stream into NetBIOS session messages (RFC 1002 4.3.1: type 0, 24-bit
/// length as used by direct-hosted SMB), skipping keep-alives and oversized messages.
#[derive(Debug, Default)]
pub struct TcpFramer(Framer);

pub enum Frame<'a> {
    Unit(&'a [u8]),
    /// A message over `MAX_MESSAGE` whose first bytes are given (enough to see a transform
    /// header) and whose length is `len`.
    Oversized {
        head: &'a [u8],
        len: usize,
    },
}

fn header(b: &[u8]) -> Header {
    match b {
        [0x00 | 0x85, a, b2, c, ..] => {
            Header::Record { header: 4, total: 4 + (((*a as usize) << 16) | ((*b2 as usize) << 8) | *c as usize) }
        }
        [_, _, _, _, ..] => Header::Broken,
        _ => Header::Incomplete,
    }
}

/// After a gap: a NetBIOS session message header whose length can hold an SMB header,
/// followed by an SMB1, SMB2 or SMB3 transform protocol id. Eight fixed bytes out of
/// nine: a false start inside a file's data is about one in 2^40 offsets.
fn starts(b: &[u8]) -> Start {
    match b {
        [0x00, a, b2, c, 0xfd..=0xff, b'S', b'M', b'B', ..] => {
            let len = ((*a as usize) << 16) | ((*b2 as usize) << 8) | *c as usize;
            if (32..=MAX_MESSAGE).contains(&len) {
                Start::Yes
            } else {
                Start::No
            }
        }
        [0x00, _, _, _, _, _, _, _, ..] => Start::No,
        [0x00, ..] => Start::NeedMore,
        _ => Start::No,
    }
}

impl TcpFramer {
    pub fn push(&mut self, data: &[u8], out: &mut dyn FnMut(Frame<'_>)) {
        self.0.push(data, MAX_MESSAGE + 4, header, starts, &mut |f| match f {
            // Type 0x85 is a keep-alive: nothing to decode.
            Framed::Record { payload, whole } if whole[0] == 0x00 => out(Frame::Unit(payload)),
            Framed::Oversized { head, total } => {
                out(Frame::Oversized { head: head.get(4..).unwrap_or(&[]), len: total - 4 })
            }
            _ => {}
        });
    }

    /// Bytes went missing: framing resumes at the next SMB message (see `starts`).
    pub fn gap(&mut self) {
        self.0.gap();
    }

    pub fn lost(&self) -> bool {
        self.0.lost()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(command: u16, response: bool, status: u32, message_id: u64, tree_id: u32) -> Vec<u8> {
        let mut h = b"\xfeSMB".to_vec();
        h.extend(64u16.to_le_bytes());
        h.extend(0u16.to_le_bytes());
        h.extend(status.to_le_bytes());
        h.extend(command.to_le_bytes());
        h.extend(1u16.to_le_bytes());
        h.extend(u32::from(response).to_le_bytes());
        h.extend(0u32.to_le_bytes());
        h.extend(message_id.to_le_bytes());
        h.extend(0u32.to_le_bytes());
        h.extend(tree_id.to_le_bytes());
        h.extend(0x1122u64.to_le_bytes());
        h.extend([0u8; 16]);
        h
    }

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
    }

    #[test]
    fn tree_connect_and_create_names() {
        let path = utf16("\\\\dc1.lab.example\\IPC$");
        let mut m = header(command::TREE_CONNECT, false, 0, 4, 0);
        m.extend(9u16.to_le_bytes());
        m.extend(0u16.to_le_bytes());
        m.extend(72u16.to_le_bytes());
        m.extend((path.len() as u16).to_le_bytes());
        m.extend(&path);
        let Smb2Unit::Messages(v) = parse_unit(&m) else { panic!() };
        assert_eq!(v[0].body, Smb2Body::TreeConnect { path: "\\\\dc1.lab.example\\IPC$".into() });

        let pipe = utf16("samr");
        let mut c = header(command::CREATE, false, 0, 5, 7);
        let mut body = vec![0u8; 56];
        body[0..2].copy_from_slice(&57u16.to_le_bytes());
        body[44..46].copy_from_slice(&120u16.to_le_bytes());
        body[46..48].copy_from_slice(&(pipe.len() as u16).to_le_bytes());
        c.extend(body);
        c.extend(&pipe);
        let Smb2Unit::Messages(v) = parse_unit(&c) else { panic!() };
        assert_eq!((v[0].tree_id, &v[0].body), (7, &Smb2Body::Create { name: "samr".into() }));
    }

    #[test]
    fn encrypted_and_foreign_units_and_bad_offsets() {
        assert_eq!(parse_unit(b"\xfdSMBxxxxxxxxxxxx"), Smb2Unit::Encrypted { len: 16 });
        assert_eq!(parse_unit(b"\xffSMBr"), Smb2Unit::Messages(vec![]));
        assert_eq!(parse_unit(b"GET / HTTP/1.1"), Smb2Unit::NotSmb2);
        let mut m = header(command::TREE_CONNECT, false, 0, 4, 0);
        m.extend([9, 0, 0, 0, 0xff, 0xff, 0x10, 0]);
        assert_eq!(parse_unit(&m), Smb2Unit::Messages(vec![]), "path outside the message");
        let h = header(command::CREATE, false, 0, 1, 1);
        for cut in 0..h.len() {
            let _ = parse_unit(&h[..cut]);
        }
    }

    #[test]
    fn framer_splits_netbios_messages_and_skips_keepalives() {
        let mut s = vec![0x85, 0, 0, 0];
        s.extend([0, 0, 0, 3, b'a', b'b', b'c']);
        s.extend([0, 0, 0, 2, b'd', b'e']);
        let mut f = TcpFramer::default();
        let mut got = Vec::new();
        for c in s.chunks(3) {
            f.push(c, &mut |fr| {
                if let Frame::Unit(u) = fr {
                    got.push(u.to_vec())
                }
            });
        }
        assert_eq!(got, vec![b"abc".to_vec(), b"de".to_vec()]);
    }
}
