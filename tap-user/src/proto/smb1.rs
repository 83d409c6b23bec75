//! SMB1 (MS-CIFS, MS-SMB) as far as the detections need it, mapped onto the SMB2 message
//! types so one analyzer handles both: session setup (NTLM in the security blob), tree
//! connect, NT create, and writes and reads on named pipes (DCE/RPC). Attack tools still
//! speak SMB1 to old or misconfigured DCs (Metasploit psexec, pass-the-hash).
//!
//! ```text
//! header (32): "\xffSMB" | command(1) | status(4) | flags(1) (0x80 reply) | flags2(2) |
//!   pid_high(2) | signature(8) | reserved(2) | tid(2) | pid(2) | uid(2) | mid(2)
//! then word_count(1) | words(2*wc) | byte_count(2) | bytes; AndX commands chain through
//! their first words: andx_command(1) reserved(1) andx_offset(2) (from the header start).
//! ```

use super::smb2::{command, Smb2Body, Smb2Message};
use super::wire::{u16_at, u32_at};

const HEADER: usize = 32;
/// Commands followed along one AndX chain.
const MAX_ANDX: usize = 8;

pub mod cmd {
    pub const READ_ANDX: u8 = 0x2e;
    pub const WRITE_ANDX: u8 = 0x2f;
    pub const SESSION_SETUP_ANDX: u8 = 0x73;
    pub const TREE_CONNECT_ANDX: u8 = 0x75;
    pub const NT_CREATE_ANDX: u8 = 0xa2;
    pub const NO_ANDX: u8 = 0xff;
}

/// A FID as the 16-byte file id the SMB2 side uses.
fn file_id(fid: u16) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..2].copy_from_slice(&fid.to_le_bytes());
    id[15] = 1; // never equal to a real SMB2 file id of zeros
    id
}

/// A name at `at` in the message: UTF-16LE (aligned to 2 from the header) when `unicode`,
/// else ASCII; ends at a NUL.
fn name_at(msg: &[u8], mut at: usize, unicode: bool) -> String {
    if unicode {
        if at % 2 == 1 {
            at += 1;
        }
        let units: Vec<u16> = msg
            .get(at..)
            .unwrap_or(&[])
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .take(1024)
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        msg.get(at..).unwrap_or(&[]).iter().take_while(|&&c| c != 0).take(1024).map(|&c| c as char).collect()
    }
}

/// Decodes the SMB1 message of one NetBIOS session message, AndX chain included.
pub fn parse(msg: &[u8]) -> Vec<Smb2Message> {
    let mut out = Vec::new();
    if msg.get(..4) != Some(b"\xffSMB") || msg.len() < HEADER + 3 {
        return out;
    }
    let status = u32_at(msg, 5).unwrap_or(0);
    let response = msg[9] & 0x80 != 0;
    let unicode = u16_at(msg, 10).unwrap_or(0) & 0x8000 != 0;
    let tid = u16_at(msg, 24).unwrap_or(0) as u32;
    let uid = u16_at(msg, 28).unwrap_or(0) as u64;
    let mid = u16_at(msg, 30).unwrap_or(0) as u64;
    let mut command_byte = msg[4];
    let mut at = HEADER;
    for _ in 0..MAX_ANDX {
        let Some(&wc) = msg.get(at) else { break };
        let words = at + 1;
        let words_end = words + 2 * wc as usize;
        let Some(byte_count) = u16_at(msg, words_end) else { break };
        let bytes = words_end + 2;
        let bytes_end = (bytes + byte_count as usize).min(msg.len());
        let w = |i: usize| u16_at(msg, words + i);
        let (cmd2, body) = match (command_byte, response) {
            (cmd::SESSION_SETUP_ANDX, _) => {
                // Extended security: the blob length is word 7 in requests, word 3 in replies.
                let len = if response { w(6) } else { w(14) }.unwrap_or(0) as usize;
                let blob = msg.get(bytes..(bytes + len).min(bytes_end)).unwrap_or(&[]).to_vec();
                (command::SESSION_SETUP, Smb2Body::SessionSetup { security_blob: blob })
            }
            (cmd::TREE_CONNECT_ANDX, false) => {
                let password_len = w(6).unwrap_or(0) as usize;
                (command::TREE_CONNECT, Smb2Body::TreeConnect { path: name_at(msg, bytes + password_len, unicode) })
            }
            (cmd::TREE_CONNECT_ANDX, true) => (command::TREE_CONNECT, Smb2Body::Other),
            (cmd::NT_CREATE_ANDX, false) => (
                command::CREATE,
                Smb2Body::Create { name: name_at(msg, bytes, unicode).trim_start_matches('\\').to_string() },
            ),
            (cmd::NT_CREATE_ANDX, true) if status == 0 => {
                // Word layout: andx(4) oplock(1) fid(2): the FID starts at byte 5.
                let fid = msg.get(words + 5..words + 7).map(|s| u16::from_le_bytes([s[0], s[1]])).unwrap_or(0);
                (command::CREATE, Smb2Body::CreateResponse { file_id: file_id(fid) })
            }
            (cmd::WRITE_ANDX, false) => {
                let fid = w(4).unwrap_or(0);
                let len = w(20).unwrap_or(0) as usize;
                let off = w(22).unwrap_or(0) as usize;
                let data = msg.get(off..off.saturating_add(len)).unwrap_or(&[]).to_vec();
                (command::WRITE, Smb2Body::Write { file_id: file_id(fid), data })
            }
            (cmd::READ_ANDX, false) => (command::READ, Smb2Body::Read { file_id: file_id(w(4).unwrap_or(0)) }),
            (cmd::READ_ANDX, true) if status == 0 => {
                let len = w(10).unwrap_or(0) as usize;
                let off = w(12).unwrap_or(0) as usize;
                let data = msg.get(off..off.saturating_add(len)).unwrap_or(&[]).to_vec();
                (command::READ, Smb2Body::ReadResponse { data })
            }
            _ => (u16::MAX, Smb2Body::Other),
        };
        if cmd2 != u16::MAX {
            out.push(Smb2Message {
                command: cmd2,
                response,
                status,
                message_id: mid,
                tree_id: tid,
                session_id: uid,
                body,
                smb1: true,
            });
        }
        // Follow the AndX chain: the first word holds the next command and its offset.
        let andx =
            [cmd::SESSION_SETUP_ANDX, cmd::TREE_CONNECT_ANDX, cmd::NT_CREATE_ANDX, cmd::WRITE_ANDX, cmd::READ_ANDX];
        if wc < 2 || !andx.contains(&command_byte) {
            break;
        }
        let next = msg[words];
        let next_at = w(2).unwrap_or(0) as usize;
        if next == cmd::NO_ANDX || next_at <= at || next_at >= msg.len() {
            break;
        }
        command_byte = next;
        at = next_at;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(command: u8, reply: bool, mid: u16) -> Vec<u8> {
        let mut h = b"\xffSMB".to_vec();
        h.push(command);
        h.extend(0u32.to_le_bytes());
        h.push(if reply { 0x98 } else { 0x18 });
        h.extend(0xc807u16.to_le_bytes()); // unicode, extended security
        h.extend([0u8; 12]);
        h.extend(1u16.to_le_bytes()); // tid
        h.extend(100u16.to_le_bytes()); // pid
        h.extend(2048u16.to_le_bytes()); // uid
        h.extend(mid.to_le_bytes());
        h
    }

    #[test]
    fn nt_create_names_the_pipe_and_write_carries_its_data() {
        let name: Vec<u8> = "\\svcctl\0".encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        let mut m = header(cmd::NT_CREATE_ANDX, false, 5);
        m.push(24);
        let mut words = vec![0u8; 48];
        words[0] = 0xff;
        m.extend(&words);
        m.extend(((name.len() + 1) as u16).to_le_bytes());
        m.push(0); // pad to even
        m.extend(&name);
        let v = parse(&m);
        assert_eq!(v[0].body, Smb2Body::Create { name: "svcctl".into() });
        assert!(v[0].smb1);

        let mut w = header(cmd::WRITE_ANDX, false, 6);
        w.push(14);
        let mut words = vec![0u8; 28];
        words[0] = 0xff;
        words[4..6].copy_from_slice(&0x4001u16.to_le_bytes());
        words[20..22].copy_from_slice(&3u16.to_le_bytes());
        let data_off = (32 + 1 + 28 + 2) as u16;
        words[22..24].copy_from_slice(&data_off.to_le_bytes());
        w.extend(&words);
        w.extend(3u16.to_le_bytes());
        w.extend([5, 0, 11]);
        let v = parse(&w);
        assert_eq!(v[0].body, Smb2Body::Write { file_id: file_id(0x4001), data: vec![5, 0, 11] });
    }

    #[test]
    fn hostile_input_ends_quietly() {
        let h = header(cmd::SESSION_SETUP_ANDX, false, 1);
        for cut in 0..h.len() + 4 {
            let mut m = h.clone();
            m.extend([12u8, 0xff, 0xff, 0xff]);
            let _ = parse(&m[..cut.min(m.len())]);
        }
        // An AndX offset pointing backwards stops the chain instead of looping.
        let mut m = header(cmd::TREE_CONNECT_ANDX, false, 1);
        m.extend([4, cmd::TREE_CONNECT_ANDX, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(parse(&m).len() <= MAX_ANDX);
    }
}
