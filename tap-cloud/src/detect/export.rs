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

/// CEF header fields escape `\` and `|`; extension values escape `\`, `=` and newlines.
fn cef_header(s: &str) -> String {
    s.replace('\\', "\\\\").replace('|', "\\|")
}

fn cef_value(s: &str) -> String {
    s.replace('\\', "\\\\").replace('=', "\\=").replace(['\r', '\n'], " ")
}

/// One alert as a CEF message.
pub fn cef(alert: &Alert) -> String {
    format!(
        "CEF:0|dctap|dctap|{}|{}|{}|{}|rt={} src={} dst={} suser={} cs1Label=mitre cs1={} cs2Label=incident cs2={} cs3Label=alert cs3={} msg={}",
        env!("CARGO_PKG_VERSION"),
        cef_header(&alert.detection),
        cef_header(&alert.title),
        severity_number(&alert.severity),
        alert.first_seen_ns / 1_000_000,
        cef_value(&alert.src_ip),
        cef_value(&alert.dc_ip),
        cef_value(&alert.account),
        cef_value(&alert.mitre),
        alert.incident_id,
        alert.id,
        cef_value(&alert.description)
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

    #[test]
    fn cef_fields_are_escaped() {
        let m = cef(&alert());
        assert!(m.starts_with("CEF:0|dctap|dctap|"), "{m}");
        assert!(
            m.contains("|password_spray|Password spray|8|rt=1000 src=10.1.1.1 dst=10.0.0.10 suser=a\\=b|c "),
            "{m}"
        );
        assert!(m.ends_with("msg=line one x\\=y"), "{m}");
        assert!(m.contains("cs2Label=incident cs2=2"));
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
