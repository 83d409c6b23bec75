//! HTTP/1.x, only as far as authentication goes: NTLM and Negotiate (SPNEGO: NTLM or
//! Kerberos) tokens in `Authorization` and `WWW-Authenticate` headers, the request line and
//! the response status that says whether the authentication worked. DCs and their
//! neighbours serve HTTP for certificate enrollment (the target of NTLM relay attacks) and
//! WinRM (remote execution), so that is where it matters.
//!
//! Bodies are skipped by `Content-Length`; for anything else (chunked, until-close, a gap)
//! the framer looks for the next message head at a line start, which is how a parser that
//! only needs heads stays in step without interpreting bodies.

use base64::Engine as _;

/// Longest message head kept; longer ones are skipped (counted by the caller).
pub const MAX_HEAD: usize = 16 * 1024;
/// Longest decoded authentication token.
const MAX_TOKEN: usize = 12 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Head {
    Request {
        method: String,
        uri: String,
        /// Decoded token of `Authorization: NTLM|Negotiate <base64>`.
        auth: Option<Vec<u8>>,
    },
    Response {
        status: u16,
        /// Decoded token of a `WWW-Authenticate: NTLM|Negotiate <base64>` header.
        auth: Option<Vec<u8>>,
    },
}

/// Splits one direction of a connection into message heads.
#[derive(Debug, Default)]
pub struct HeadFramer {
    buf: Vec<u8>,
    /// Body bytes still to skip.
    skip: usize,
    /// Lost: looking for the next head at a line start.
    searching: bool,
    pub oversized: u64,
}

const METHODS: [&[u8]; 9] =
    [b"GET ", b"POST ", b"PUT ", b"HEAD ", b"OPTIONS ", b"DELETE ", b"PATCH ", b"RPC_IN_DATA ", b"RPC_OUT_DATA "];

fn starts_head(b: &[u8]) -> bool {
    b.starts_with(b"HTTP/1.") || METHODS.iter().any(|m| b.starts_with(m))
}

/// Could `b` (shorter than any signature) still become a head start?
fn could_start_head(b: &[u8]) -> bool {
    let prefix = |sig: &[u8]| sig.len() > b.len() && sig.starts_with(b);
    prefix(b"HTTP/1.") || METHODS.iter().any(|m| prefix(m))
}

impl HeadFramer {
    /// Whether the direction lost its place and has not found a head since.
    pub fn lost(&self) -> bool {
        self.searching
    }

    pub fn gap(&mut self) {
        self.buf.clear();
        self.skip = 0;
        self.searching = true;
    }

    pub fn push(&mut self, data: &[u8], out: &mut dyn FnMut(Head)) {
        let n = self.skip.min(data.len());
        self.skip -= n;
        self.buf.extend_from_slice(&data[n..]);
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.buf.len());
                self.buf.drain(..n);
                self.skip -= n;
            }
            if self.buf.is_empty() {
                return;
            }
            if self.searching {
                match find_head_start(&self.buf) {
                    Some(at) => {
                        self.buf.drain(..at);
                        self.searching = false;
                    }
                    None => {
                        // Keep only a last line that might still become a head start.
                        let keep = self.buf.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
                        self.buf.drain(..keep);
                        if !could_start_head(&self.buf) {
                            self.buf.clear();
                        }
                        return;
                    }
                }
            }
            if self.buf.len() >= 8 && !starts_head(&self.buf) {
                self.searching = true;
                continue;
            }
            let Some(end) = find(&self.buf, b"\r\n\r\n").map(|i| i + 4) else {
                if self.buf.len() > MAX_HEAD {
                    self.oversized += 1;
                    self.buf.clear();
                    self.searching = true;
                }
                return;
            };
            let head_bytes: Vec<u8> = self.buf.drain(..end).collect();
            let (head, body) = parse_head(&head_bytes);
            match body {
                Body::Length(n) => self.skip = n,
                Body::Unknown => self.searching = true,
            }
            if let Some(h) = head {
                out(h);
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn find_head_start(b: &[u8]) -> Option<usize> {
    if starts_head(b) {
        return Some(0);
    }
    let mut i = 0;
    while let Some(nl) = b[i..].iter().position(|&c| c == b'\n') {
        let at = i + nl + 1;
        let rest = &b[at..];
        if starts_head(rest) {
            return Some(at);
        }
        i = at;
    }
    None
}

enum Body {
    Length(usize),
    /// Chunked, until close, or not said: search for the next head.
    Unknown,
}

fn parse_head(bytes: &[u8]) -> (Option<Head>, Body) {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut content_length = None;
    let mut chunked = false;
    let mut auth = None;
    let is_response = first.starts_with("HTTP/1.");
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if (is_response && name.eq_ignore_ascii_case("www-authenticate"))
            || (!is_response && name.eq_ignore_ascii_case("authorization"))
        {
            // A bare "NTLM" offer carries no token; the one with a token is the message.
            if let Some(token) = auth_token(value) {
                auth = Some(token);
            }
        }
    }
    let head = if is_response {
        first.split_whitespace().nth(1).and_then(|s| s.parse().ok()).map(|status| Head::Response { status, auth })
    } else {
        let mut parts = first.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(m), Some(u)) => Some(Head::Request { method: m.into(), uri: u.chars().take(512).collect(), auth }),
            _ => None,
        }
    };
    let body = match (chunked, content_length) {
        (false, Some(n)) => Body::Length(n),
        // A request with neither has no body (RFC 9112 6.3); a response runs to the close.
        (false, None) if !is_response => Body::Length(0),
        _ => Body::Unknown,
    };
    (head, body)
}

fn auth_token(value: &str) -> Option<Vec<u8>> {
    let (scheme, token) = value.split_once(' ')?;
    if !(scheme.eq_ignore_ascii_case("ntlm") || scheme.eq_ignore_ascii_case("negotiate")) {
        return None;
    }
    let token = token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN * 4 / 3 + 4 {
        return None;
    }
    base64::engine::general_purpose::STANDARD.decode(token).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(chunks: &[&[u8]]) -> Vec<Head> {
        let mut f = HeadFramer::default();
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut |h| out.push(h));
        }
        out
    }

    #[test]
    fn tokens_come_out_of_requests_and_challenges_split_anywhere() {
        let stream: &[u8] = b"GET /certsrv/ HTTP/1.1\r\nHost: dc1\r\nAuthorization: NTLM TlRMTVNTUAABAAAA\r\n\r\n\
POST /wsman HTTP/1.1\r\nContent-Length: 5\r\nAuthorization: Negotiate YWJj\r\n\r\nhello\
GET / HTTP/1.1\r\n\r\n";
        for split in 1..stream.len() {
            let got = heads(&[&stream[..split], &stream[split..]]);
            assert_eq!(got.len(), 3, "split at {split}: {got:?}");
            assert_eq!(
                got[0],
                Head::Request {
                    method: "GET".into(),
                    uri: "/certsrv/".into(),
                    auth: Some(b"NTLMSSP\0\x01\0\0\0".to_vec())
                }
            );
            assert_eq!(
                got[1],
                Head::Request { method: "POST".into(), uri: "/wsman".into(), auth: Some(b"abc".to_vec()) }
            );
        }
        let resp: &[u8] =
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Negotiate\r\nWWW-Authenticate: NTLM YWJj\r\n\
Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let got = heads(&[resp]);
        assert_eq!(
            got,
            vec![
                Head::Response { status: 401, auth: Some(b"abc".to_vec()) },
                Head::Response { status: 200, auth: None }
            ]
        );
    }

    #[test]
    fn after_a_gap_or_garbage_the_next_head_is_found() {
        let mut f = HeadFramer::default();
        let mut out = Vec::new();
        f.push(b"GET /a HTTP/1.1\r\nContent-Le", &mut |h| out.push(h));
        f.gap();
        f.push(b"ngth: 10\r\n\r\n0123456789binary junk\r\nGET /b HTTP/1.1\r\n\r\n", &mut |h| out.push(h));
        assert_eq!(out, vec![Head::Request { method: "GET".into(), uri: "/b".into(), auth: None }]);
        let mut f = HeadFramer::default();
        f.push(&vec![b'x'; 3 * MAX_HEAD], &mut |_| panic!("no head in junk"));
        assert!(f.buf.len() <= MAX_HEAD);
    }
}
