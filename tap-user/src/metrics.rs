//! Prometheus text exposition of the sensor's counters on a local address (`--metrics`).
//!
//! The counters already exist as `name value` rows (the same ones printed at exit and sent
//! in heartbeats), published about once a second by the control loop; this serves the last
//! snapshot. Written by hand rather than with prometheus-client because the set of names is
//! data (per-protocol parse counters, XDP counters), not a fixed list of typed metrics.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    time::Duration,
};

/// The latest counters, shared between the control loop and the metrics thread.
pub type MetricsBoard = Arc<Mutex<BTreeMap<String, u64>>>;

/// The exposition: one counter per row, names prefixed `dctap_sensor_` and restricted to
/// Prometheus' character set.
pub fn render(counters: &BTreeMap<String, u64>) -> String {
    let mut out = String::new();
    for (name, value) in counters {
        let name: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
        // Gauges by nature (open flows, unsent events, connection state) are still
        // exported as untyped values: their names say what they are.
        let kind = if ["open", "unacked", "connected", "bytes"].iter().any(|g| name.ends_with(g)) {
            "gauge"
        } else {
            "counter"
        };
        out.push_str(&format!("# TYPE dctap_sensor_{name} {kind}\ndctap_sensor_{name} {value}\n"));
    }
    out
}

/// Serves `GET /metrics` on `addr` from a thread of its own; returns the bound address.
pub fn serve(addr: SocketAddr, board: MetricsBoard) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut reader = BufReader::new(&conn);
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // Headers are read and ignored; a scraper sends a handful.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) && line.len() < 16_384 {
                line.clear();
            }
            let (status, body) = if request_line.starts_with("GET /metrics ") {
                let counters = board.lock().map(|b| b.clone()).unwrap_or_default();
                ("200 OK", render(&counters))
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let mut conn = &conn;
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })?;
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn a_scrape_returns_the_published_counters() {
        let board: MetricsBoard = Arc::default();
        board.lock().unwrap().insert("xdp_kept".into(), 42);
        board.lock().unwrap().insert("flow_open".into(), 7);
        let addr = serve("127.0.0.1:0".parse().unwrap(), Arc::clone(&board)).unwrap();
        let get = |path: &str| {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut s = String::new();
            c.read_to_string(&mut s).unwrap();
            s
        };
        let page = get("/metrics");
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        assert!(page.contains("# TYPE dctap_sensor_xdp_kept counter\ndctap_sensor_xdp_kept 42\n"), "{page}");
        assert!(page.contains("# TYPE dctap_sensor_flow_open gauge\ndctap_sensor_flow_open 7\n"), "{page}");
        board.lock().unwrap().insert("xdp_kept".into(), 43);
        assert!(get("/metrics").contains("dctap_sensor_xdp_kept 43"));
        assert!(get("/").starts_with("HTTP/1.1 404"));
    }
}
