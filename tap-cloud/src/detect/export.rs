//! Alerts out to a SIEM: CEF over syslog (UDP or TCP) and JSON lines to a file or stdout,
//! from the `[export]` table of the configuration. New alerts only (updates of an open
//! alert stay in the portal). A SIEM that is down costs log lines, never detection.

use std::{
    io::Write as _,
    net::{TcpStream, ToSocketAddrs as _, UdpSocket},
    path::PathBuf,
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
    match s {
        "high" => 8,
        "medium" => 5,
        "low" => 3,
        _ => 1,
    }
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

/// `text` escaped for `place`.
fn escape_cef(text: &str, place: Place) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_cef(&mut out, c, place);
    }
    out
}

/// One alert as a CEF message.
pub fn cef(alert: &Alert) -> String {
    use Place::{Extension, Header};
    format!(
        "CEF:0|dctap|dctap|{}|{}|{}|{}|rt={} src={} dst={} suser={} cs1Label=mitre cs1={} cs2Label=incident cs2={} cs3Label=alert cs3={} msg={}",
        env!("CARGO_PKG_VERSION"),
        escape_cef(&alert.detection, Header),
        escape_cef(&alert.title, Header),
        severity_number(&alert.severity),
        alert.first_seen_ns / 1_000_000,
        escape_cef(&alert.src_ip, Extension),
        escape_cef(&alert.dc_ip, Extension),
        escape_cef(&alert.account, Extension),
        escape_cef(&alert.mitre, Extension),
        alert.incident_id,
        alert.id,
        escape_cef(&alert.description, Extension)
    )
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
            let level = match alert.severity.as_str() {
                "high" => 2,
                "info" => 6,
                _ => 4,
            };
            let pri = 10 * 8 + level;
            let line = format!("<{pri}>1 - {} tap-cloud - - - {}", self.host, cef(alert));
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
        let m = cef(&alert());
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
        let m = cef(&a);
        let (header, ext) = parse_cef(&m);
        // The text the command line shows (`\x1b`), except line breaks, which CEF carries.
        assert_eq!(ext["suser"], "ev\\x00il\\x1b]0;owned\\x07\r\n\\x9b2J\\u{202e}txt\\x");
        assert_eq!(ext["msg"], "bind as \\x1b[2Jroot\\x7f");
        assert_eq!(header[5], "Password spray | \\x1b[31mred\\x07");
        assert_eq!(header[5], crate::text::visible(&a.title));
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
