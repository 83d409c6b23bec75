//! `/etc/dctap/sensor.toml`: every command-line option of `tap-sensor`, in a file, for the
//! appliance. The file is checked strictly (an unknown key or a value of the wrong type
//! stops the sensor with the key named) and turned into command-line arguments placed
//! before the user's own, so a flag given on the command line overrides the file.

use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

/// Options for every mode (the global flags).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorFile {
    pub sensor_id: Option<String>,
    pub workers: Option<u16>,
    pub max_flows: Option<u32>,
    pub max_half_open_flows: Option<u32>,
    pub cloud: Option<String>,
    pub tls_ca: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub tls_server_name: Option<String>,
    pub access_key_file: Option<String>,
    pub insecure: Option<bool>,
    pub spool_dir: Option<String>,
    pub spool_max_mb: Option<u64>,
    pub spool_overflow: Option<String>,
    pub uplink_max_rate: Option<f64>,
    pub log_level: Option<String>,
    pub capture: Option<CaptureFile>,
}

/// The `[capture]` table: options of `tap-sensor capture`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureFile {
    pub iface: Option<String>,
    pub dc: Option<Vec<String>>,
    pub dc_file: Option<String>,
    pub ports: Option<Vec<u16>>,
    pub rpc_ports: Option<String>,
    pub snaplen: Option<u32>,
    pub ring_mib: Option<u32>,
    pub xdp_mode: Option<String>,
    pub metrics: Option<String>,
    pub dc_silence_alert: Option<f64>,
    pub evidence_dir: Option<String>,
    pub evidence_max_mb: Option<u64>,
}

fn push(args: &mut Vec<String>, flag: &str, value: Option<impl ToString>) {
    if let Some(v) = value {
        args.push(format!("--{flag}"));
        args.push(v.to_string());
    }
}

impl SensorFile {
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// (global arguments, capture arguments) the file stands for.
    pub fn to_args(&self) -> (Vec<String>, Vec<String>) {
        let mut g = Vec::new();
        push(&mut g, "sensor-id", self.sensor_id.as_ref());
        push(&mut g, "workers", self.workers);
        push(&mut g, "max-flows", self.max_flows);
        push(&mut g, "max-half-open-flows", self.max_half_open_flows);
        push(&mut g, "cloud", self.cloud.as_ref());
        push(&mut g, "tls-ca", self.tls_ca.as_ref());
        push(&mut g, "tls-cert", self.tls_cert.as_ref());
        push(&mut g, "tls-key", self.tls_key.as_ref());
        push(&mut g, "tls-server-name", self.tls_server_name.as_ref());
        push(&mut g, "access-key-file", self.access_key_file.as_ref());
        if self.insecure == Some(true) {
            g.push("--insecure".into());
        }
        push(&mut g, "spool-dir", self.spool_dir.as_ref());
        push(&mut g, "spool-max-mb", self.spool_max_mb);
        push(&mut g, "spool-overflow", self.spool_overflow.as_ref());
        push(&mut g, "uplink-max-rate", self.uplink_max_rate);
        push(&mut g, "log-level", self.log_level.as_ref());
        let mut c = Vec::new();
        if let Some(cap) = &self.capture {
            push(&mut c, "iface", cap.iface.as_ref());
            push(&mut c, "dc", cap.dc.as_ref().map(|d| d.join(",")));
            push(&mut c, "dc-file", cap.dc_file.as_ref());
            push(
                &mut c,
                "ports",
                cap.ports.as_ref().map(|p| p.iter().map(u16::to_string).collect::<Vec<_>>().join(",")),
            );
            push(&mut c, "rpc-ports", cap.rpc_ports.as_ref());
            push(&mut c, "snaplen", cap.snaplen);
            push(&mut c, "ring-mib", cap.ring_mib);
            push(&mut c, "xdp-mode", cap.xdp_mode.as_ref());
            push(&mut c, "metrics", cap.metrics.as_ref());
            push(&mut c, "dc-silence-alert", cap.dc_silence_alert);
            push(&mut c, "evidence-dir", cap.evidence_dir.as_ref());
            push(&mut c, "evidence-max-mb", cap.evidence_max_mb);
        }
        (g, c)
    }
}

/// The arguments to parse: the file's (when `--config FILE` is among `argv`) first, then
/// the user's, so the user's win. The file's capture options go right after `capture`.
pub fn expand_args(argv: Vec<String>) -> anyhow::Result<Vec<String>> {
    let Some(at) = argv.iter().position(|a| a == "--config" || a.starts_with("--config=")) else {
        return Ok(argv);
    };
    let path = match argv[at].strip_prefix("--config=") {
        Some(p) => p.to_string(),
        None => argv.get(at + 1).cloned().context("--config needs a file")?,
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("read configuration {path}"))?;
    let file = SensorFile::parse(&text, Path::new(&path))?;
    let (globals, capture) = file.to_args();
    let mut rest: Vec<String> = argv.clone();
    rest.drain(at..if argv[at].starts_with("--config=") { at + 1 } else { at + 2 });
    let mut out = vec![rest.first().cloned().unwrap_or_else(|| "tap-sensor".into())];
    let mut capture = Some(capture);
    let cmd_at = rest.iter().position(|a| a == "capture");
    for (i, a) in rest.iter().enumerate().skip(1) {
        if i == 1 {
            out.extend(globals.iter().cloned());
        }
        out.push(a.clone());
        if Some(i) == cmd_at {
            out.extend(capture.take().unwrap_or_default());
        }
    }
    if rest.len() <= 1 {
        out.extend(globals);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_options_come_first_so_the_command_line_wins() {
        let dir = std::env::temp_dir().join(format!("dctap-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sensor.toml");
        std::fs::write(
            &path,
            "sensor_id = \"s1\"\nspool_max_mb = 64\n[capture]\niface = \"ens5\"\ndc = [\"10.0.0.10\", \"10.0.0.11\"]\nports = [88, 389]\nevidence_dir = \"/e\"\nevidence_max_mb = 16\n",
        )
        .unwrap();
        let argv = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let got = expand_args(argv(&format!("tap-sensor --config {} capture --iface eth1", path.display()))).unwrap();
        assert_eq!(
            got,
            argv("tap-sensor --sensor-id s1 --spool-max-mb 64 capture --iface ens5 --dc 10.0.0.10,10.0.0.11 --ports 88,389 --evidence-dir /e --evidence-max-mb 16 --iface eth1")
        );
        let err = SensorFile::parse("[capture]\nifcae = \"x\"\n", &path).unwrap_err().to_string();
        assert!(err.contains("ifcae") && err.contains("sensor.toml"), "{err}");
        let err = SensorFile::parse("spool_max_mb = \"big\"\n", &path).unwrap_err().to_string();
        assert!(err.contains("spool_max_mb"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
