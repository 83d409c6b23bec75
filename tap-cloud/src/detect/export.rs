//! Alerts out to a SIEM: CEF over syslog (UDP or TCP) and JSON lines to a file or stdout,
//! from the `[export]` table of the configuration. New alerts only (updates of an open
//! alert stay in the portal). A SIEM that is down costs log lines, never detection.

use std::{
    io::Write as _,
    net::{TcpStream, ToSocketAddrs as _, UdpSocket},
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use serde::Deserialize;

use super::Alert;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// "udp://host:514" or "tcp://host:514": CEF messages in syslog framing.
    pub syslog: Option<String>,
    /// A file to append JSON lines to, or "-" for standard output.
    pub jsonl: Option<String>,
}

impl ExportConfig {
    /// Reads the `[export]` table of a TOML file; absent means no export.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            export: Option<ExportConfig>,
        }
        let file: File = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let cfg = file.export.unwrap_or_default();
        if let Some(s) = &cfg.syslog {
            parse_syslog(s)?;
        }
        Ok(cfg)
    }
}

enum Syslog {
    Udp(UdpSocket, String),
    Tcp(String, Option<TcpStream>),
}

fn parse_syslog(url: &str) -> anyhow::Result<(bool, String)> {
    let (udp, addr) = match url.split_once("://") {
        Some(("udp", a)) => (true, a),
        Some(("tcp", a)) => (false, a),
        _ => anyhow::bail!("export.syslog = {url:?}: give udp://host:port or tcp://host:port"),
    };
    if addr.to_socket_addrs().map(|mut a| a.next().is_none()).unwrap_or(true) {
        anyhow::bail!("export.syslog = {url:?}: {addr} does not resolve to an address");
    }
    Ok((udp, addr.to_string()))
}

pub struct Exporter {
    syslog: Option<Syslog>,
    jsonl: Option<PathBuf>,
    host: String,
}

fn severity_number(s: &str) -> u8 {
    crate::pb::vocab::Severity::parse(s).cef()
}

/// Largest syslog message (header included) sent in one UDP datagram. RFC 5426 (3.2) has
/// every receiver take 2048 octets (SHOULD; IPv4 ones MUST take 480, IPv6 ones 1180), and
/// the kernel refuses a datagram over 65507 bytes outright (EMSGSIZE): an alert whose
/// account is a 40 kB DN would never leave.
pub const UDP_MAX_BYTES: usize = 2048;
/// Largest message over TCP (one a line): what rsyslog takes by default (maxMessageSize
/// 8k); it cuts a longer one wherever the limit falls.
pub const TCP_MAX_BYTES: usize = 8192;
/// Ends a field cut to fit; `cs6Label=truncated cs6=` also names the fields cut.
const CUT_MARK: &str = "…";

/// Syslog messages cut to fit since the process started (the `/metrics` counter).
static TRUNCATED: AtomicU64 = AtomicU64::new(0);

/// How many syslog messages were cut to fit their bound since the process started.
pub fn truncated_total() -> u64 {
    TRUNCATED.load(Ordering::Relaxed)
}

#[derive(Clone, Copy)]
enum Place {
    Header,
    Extension,
}

/// Appends `c` escaped for `place`. Header fields escape `\` and `|`; extension values
/// escape `\`, `=` and line breaks (`\n`, `\r`, which a CEF reader turns back into
/// them). Any other control or bidirectional character is replaced by the visible form
/// the command line shows (`\x1b`, see `text`), its backslash escaped, so a SIEM's viewer
/// shows the same text and obeys none of it.
fn push_cef(out: &mut String, c: char, place: Place) {
    match (c, place) {
        ('\\', _) => out.push_str("\\\\"),
        ('|', Place::Header) => out.push_str("\\|"),
        ('=', Place::Extension) => out.push_str("\\="),
        ('\n', Place::Extension) => out.push_str("\\n"),
        ('\r', Place::Extension) => out.push_str("\\r"),
        (c, _) if crate::text::is_hidden(c) => {
            let mut shown = String::new();
            crate::text::push_visible(&mut shown, c);
            out.push_str(&shown.replace('\\', "\\\\"));
        }
        (c, _) => out.push(c),
    }
}

/// `text` escaped for `place`, cut to at most `max` bytes between two escaped characters
/// (never inside an escape or a UTF-8 sequence).
fn escape_cef(text: &str, place: Place, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    let mut one = String::new();
    for c in text.chars() {
        one.clear();
        push_cef(&mut one, c, place);
        if out.len() + one.len() > max {
            break;
        }
        out.push_str(&one);
    }
    out
}

/// One alert as a CEF message of at most `max` bytes (a few hundred always fit the fixed
/// fields), and the fields cut to fit. When the whole alert does not fit, every text field
/// keeps up to the same share of the room left (the longest are cut, the short ones stay
/// whole), each cut one ends with `…`, and `cs6Label=truncated cs6=` names them.
pub fn cef(alert: &Alert, max: usize) -> (String, Vec<&'static str>) {
    use Place::{Extension, Header};
    let fields: [(&'static str, &str, Place); 7] = [
        ("deviceEventClassId", &alert.detection, Header),
        ("name", &alert.title, Header),
        ("src", &alert.src_ip, Extension),
        ("dst", &alert.dc_ip, Extension),
        ("suser", &alert.account, Extension),
        ("cs1", &alert.mitre, Extension),
        ("msg", &alert.description, Extension),
    ];
    let message = |v: &[String], cut: &[&str]| {
        let cut = if cut.is_empty() { String::new() } else { format!(" cs6Label=truncated cs6={}", cut.join(",")) };
        format!(
            "CEF:0|dctap|dctap|{}|{}|{}|{}|rt={} src={} dst={} suser={} cs1Label=mitre cs1={} cs2Label=incident cs2={} cs3Label=alert cs3={}{cut} msg={}",
            env!("CARGO_PKG_VERSION"),
            v[0],
            v[1],
            severity_number(&alert.severity),
            alert.first_seen_ns / 1_000_000,
            v[2],
            v[3],
            v[4],
            v[5],
            alert.incident_id,
            alert.id,
            v[6]
        )
    };
    let whole: Vec<String> = fields.iter().map(|&(_, text, place)| escape_cef(text, place, usize::MAX)).collect();
    let text = message(&whole, &[]);
    if text.len() <= max {
        return (text, vec![]);
    }
    // The largest share that fits: fields longer than it are cut to it (the mark
    // included) and named in cs6.
    let empty = vec![String::new(); fields.len()];
    let cost = |share: usize| {
        let cut: Vec<&str> = fields.iter().zip(&whole).filter(|(_, w)| w.len() > share).map(|(f, _)| f.0).collect();
        let kept: usize = whole.iter().map(|w| if w.len() > share { share.max(CUT_MARK.len()) } else { w.len() }).sum();
        message(&empty, &cut).len() + kept
    };
    let (mut lo, mut hi) = (0, whole.iter().map(String::len).max().unwrap_or(0));
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if cost(mid) <= max {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let mut cut = Vec::new();
    let values: Vec<String> = fields
        .iter()
        .zip(whole)
        .map(|(&(key, text, place), w)| {
            if w.len() <= lo {
                return w;
            }
            cut.push(key);
            let mut v = escape_cef(text, place, lo.saturating_sub(CUT_MARK.len()));
            v.push_str(CUT_MARK);
            v
        })
        .collect();
    (message(&values, &cut), cut)
}

impl Exporter {
    pub fn new(cfg: &ExportConfig) -> anyhow::Result<Option<Self>> {
        if cfg.syslog.is_none() && cfg.jsonl.is_none() {
            return Ok(None);
        }
        let syslog = match &cfg.syslog {
            None => None,
            Some(url) => match parse_syslog(url)? {
                (true, addr) => Some(Syslog::Udp(UdpSocket::bind("0.0.0.0:0")?, addr)),
                (false, addr) => Some(Syslog::Tcp(addr, None)),
            },
        };
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        Ok(Some(Self { syslog, jsonl: cfg.jsonl.as_ref().map(PathBuf::from), host }))
    }

    pub fn send(&mut self, alert: &Alert) {
        if let Some(s) = self.syslog.as_mut() {
            // RFC 5424 framing, facility security/authorization (10), severity by alert.
            let level = crate::pb::vocab::Severity::parse(&alert.severity).syslog_level();
            let pri = 10 * 8 + level;
            let header = format!("<{pri}>1 - {} tap-cloud - - - ", self.host);
            let max = match s {
                Syslog::Udp(..) => UDP_MAX_BYTES,
                Syslog::Tcp(..) => TCP_MAX_BYTES,
            };
            let (message, cut) = cef(alert, max.saturating_sub(header.len()));
            if !cut.is_empty() {
                TRUNCATED.fetch_add(1, Ordering::Relaxed);
                log::info!(
                    "export: alert {}: {} cut to fit the {max}-byte syslog message ({} bytes whole)",
                    alert.id,
                    cut.join(", "),
                    cef(alert, usize::MAX).0.len() + header.len()
                );
            }
            let line = header + &message;
            let result = match s {
                Syslog::Udp(sock, addr) => sock.send_to(line.as_bytes(), addr.as_str()).map(|_| ()),
                Syslog::Tcp(addr, conn) => {
                    if conn.is_none() {
                        *conn = addr
                            .to_socket_addrs()
                            .ok()
                            .and_then(|mut a| a.next())
                            .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok());
                    }
                    match conn.as_mut() {
                        Some(c) => c.write_all(format!("{line}\n").as_bytes()).inspect_err(|_| *conn = None),
                        None => Err(std::io::Error::other("cannot connect")),
                    }
                }
            };
            if let Err(e) = result {
                log::warn!("export: syslog: {e}");
            }
        }
        if let Some(path) = &self.jsonl {
            let line = match serde_json::to_string(alert) {
                Ok(l) => l,
                Err(e) => return log::warn!("export: {e}"),
            };
            let result = if path.as_os_str() == "-" {
                writeln!(std::io::stdout().lock(), "{line}")
            } else {
                std::fs::OpenOptions::new().create(true).append(true).open(path).and_then(|mut f| writeln!(f, "{line}"))
            };
            if let Err(e) = result {
                log::warn!("export: {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn alert() -> Alert {
        Alert {
            id: 3,
            detection: "password_spray".into(),
            title: "Password spray".into(),
            severity: "high".into(),
            mitre: "T1110.003".into(),
            account: "a=b|c".into(),
            src_ip: "10.1.1.1".into(),
            dc_ip: "10.0.0.10".into(),
            dcs: Vec::new(),
            first_seen_ns: 1_000_000_000,
            last_seen_ns: 1_000_000_000,
            description: "line one\nx=y".into(),
            evidence: vec![],
            incident_id: 2,
        }
    }

    /// Reads a CEF message as a SIEM would: the seven header fields and the extension's
    /// pairs, unescaped. Panics on what the format does not allow: an unknown escape, a
    /// control character, a key that is not a word.
    fn parse_cef(m: &str) -> (Vec<String>, BTreeMap<String, String>) {
        assert!(!m.chars().any(|c| c.is_control()), "raw control characters in {m:?}");
        assert!(!m.chars().any(|c| ('\u{202a}'..='\u{202e}').contains(&c) || ('\u{2066}'..='\u{2069}').contains(&c)));
        let body = &m[m.find("CEF:0|").expect("a CEF message")..];
        let mut chars = body.chars();
        let (mut header, mut field) = (Vec::new(), String::new());
        while header.len() < 7 {
            match chars.next().expect("seven header fields") {
                '\\' => match chars.next() {
                    Some(c @ ('\\' | '|')) => field.push(c),
                    other => panic!("header escape \\{other:?} in {m}"),
                },
                '|' => header.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        // A value runs to the space before the next key (the word before an unescaped '=').
        let ext: Vec<char> = chars.collect();
        let mut raw: Vec<(String, &[char])> = Vec::new();
        let (mut i, mut start) = (0, 0);
        while i < ext.len() {
            match ext[i] {
                '\\' => i += 2,
                '=' => {
                    let key_at = ext[start..i].iter().rposition(|c| *c == ' ').map_or(start, |p| start + p + 1);
                    if let Some(last) = raw.last_mut() {
                        last.1 = &ext[start..key_at - 1];
                    }
                    raw.push((ext[key_at..i].iter().collect(), &ext[i + 1..]));
                    start = i + 1;
                    i += 1;
                }
                _ => i += 1,
            }
        }
        let mut pairs = BTreeMap::new();
        for (key, value) in raw {
            assert!(!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric()), "key {key:?} in {m}");
            let (mut v, mut i) = (String::new(), 0);
            while i < value.len() {
                v.push(match (value[i], value.get(i + 1)) {
                    ('\\', Some(&e @ ('\\' | '='))) => e,
                    ('\\', Some('n')) => '\n',
                    ('\\', Some('r')) => '\r',
                    ('\\', other) => panic!("extension escape \\{other:?} in {m}"),
                    (c, _) => {
                        i += 1;
                        v.push(c);
                        continue;
                    }
                });
                i += 2;
            }
            assert!(pairs.insert(key.clone(), v).is_none(), "{key} twice in {m}");
        }
        (header, pairs)
    }

    #[test]
    fn cef_fields_are_escaped() {
        let (m, cut) = cef(&alert(), usize::MAX);
        assert!(cut.is_empty());
        assert!(m.starts_with("CEF:0|dctap|dctap|"), "{m}");
        assert!(
            m.contains("|password_spray|Password spray|8|rt=1000 src=10.1.1.1 dst=10.0.0.10 suser=a\\=b|c "),
            "{m}"
        );
        assert!(m.ends_with("msg=line one\\nx\\=y"), "{m}");
        assert!(m.contains("cs2Label=incident cs2=2"));
        let (header, ext) = parse_cef(&m);
        assert_eq!(header[4..7], ["password_spray", "Password spray", "8"]);
        assert_eq!((ext["suser"].as_str(), ext["msg"].as_str()), ("a=b|c", "line one\nx=y"));
    }

    #[test]
    fn control_characters_reach_the_siem_visible_not_raw() {
        let mut a = alert();
        a.account = "ev\0il\x1b]0;owned\x07\r\n\u{9b}2J\u{202e}txt\\x".into();
        a.description = "bind as \x1b[2Jroot\x7f".into();
        a.title = "Password spray | \x1b[31mred\x07".into();
        let (m, _) = cef(&a, usize::MAX);
        let (header, ext) = parse_cef(&m);
        // The text the command line shows (`\x1b`), except line breaks, which CEF carries.
        assert_eq!(ext["suser"], "ev\\x00il\\x1b]0;owned\\x07\r\n\\x9b2J\\u{202e}txt\\x");
        assert_eq!(ext["msg"], "bind as \\x1b[2Jroot\\x7f");
        assert_eq!(header[5], "Password spray | \\x1b[31mred\\x07");
        assert_eq!(header[5], crate::text::visible(&a.title));
    }

    #[test]
    fn an_alert_too_long_is_cut_to_any_bound_and_stays_valid_cef() {
        let mut a = alert();
        // Escapes of every length and multi-byte characters, so some bound falls inside each.
        let dn = "CN=é\\=|,\x1b€😀".repeat(300);
        a.account = dn.clone();
        a.description = format!("bind as {dn}");
        let full = cef(&a, usize::MAX).0;
        let (whole, account) = (full.len(), parse_cef(&full).1["suser"].clone());
        for max in (400..1200).chain([2000, whole - 1]) {
            let (m, cut) = cef(&a, max);
            assert!(m.len() <= max, "{} > {max}", m.len());
            let (header, ext) = parse_cef(&m);
            assert_eq!(cut, ["suser", "msg"], "{max}");
            assert_eq!((ext["cs6Label"].as_str(), ext["cs6"].as_str()), ("truncated", "suser,msg"));
            let shown = ext["suser"].strip_suffix('…').expect("the cut field ends with the mark");
            assert!(account.starts_with(shown), "{max}: {shown}");
            // Only what an escape or a character that did not fit whole leaves unused.
            assert!(m.len() + 24 >= max, "{max}: {} bytes used", m.len());
            assert_eq!(header[5], a.title, "a short field stays whole");
            assert_eq!((ext["src"].as_str(), ext["cs3"].as_str()), ("10.1.1.1", "3"));
        }
        assert!(cef(&a, whole).1.is_empty());
    }

    #[test]
    fn an_alert_with_a_40_kb_dn_reaches_a_udp_receiver_in_one_datagram() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let cfg = ExportConfig { syslog: Some(format!("udp://{}", receiver.local_addr().unwrap())), jsonl: None };
        let mut exporter = Exporter::new(&cfg).unwrap().unwrap();
        let mut a = alert();
        a.account = format!("CN={},OU=Users,DC=lab,DC=example", "x".repeat(40_000));
        a.description = format!("cleartext LDAP bind as {}", a.account);
        let before = truncated_total();
        exporter.send(&a);
        let mut buf = vec![0u8; 65_536];
        let n = receiver.recv(&mut buf).expect("the datagram arrives");
        assert!(n <= UDP_MAX_BYTES, "{n} bytes");
        let got = std::str::from_utf8(&buf[..n]).expect("UTF-8, not cut inside a character");
        assert!(got.starts_with("<82>1 "), "{got}");
        let (_, ext) = parse_cef(got);
        assert_eq!((ext["cs6Label"].as_str(), ext["cs6"].as_str()), ("truncated", "suser,msg"), "{got}");
        assert!(ext["suser"].starts_with("CN=xxx") && ext["suser"].ends_with("x…"), "{got}");
        assert!(truncated_total() > before);
    }

    #[test]
    fn alerts_reach_a_syslog_receiver_and_a_json_lines_file() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let file = std::env::temp_dir().join(format!("dctap-export-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&file);
        let cfg = ExportConfig::from_toml(&format!(
            "[export]\nsyslog = \"udp://{}\"\njsonl = \"{}\"\n",
            receiver.local_addr().unwrap(),
            file.display()
        ))
        .unwrap();
        let mut exporter = Exporter::new(&cfg).unwrap().unwrap();
        exporter.send(&alert());
        let mut buf = [0u8; 4096];
        let n = receiver.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]);
        assert!(got.starts_with("<82>1 ") && got.contains("CEF:0|dctap|"), "{got}");
        let lines = std::fs::read_to_string(&file).unwrap();
        let v: serde_json::Value = serde_json::from_str(lines.trim()).unwrap();
        assert_eq!(v["detection"], "password_spray");
        std::fs::remove_file(file).unwrap();
        assert!(ExportConfig::from_toml("[export]\nsyslog = \"514\"\n").unwrap_err().to_string().contains("udp://"));
    }
}
