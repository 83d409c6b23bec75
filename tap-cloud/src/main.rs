//! `tap-cloud`: the dctap cloud service.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use tap_cloud::{
    certs,
    detect::{
        export::{ExportConfig, Exporter},
        runner::Runner,
        DetectConfig, Engine,
    },
    ingest, keys, portal,
    store::{SqliteStore, Store},
    text::visible,
};

/// dctap cloud service: takes activity events from dctap sensors over gRPC (mTLS and a
/// per-sensor access key), stores them in an embedded SQLite database, and manages the
/// sensors allowed to send.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct DbArg {
    /// The SQLite database (created when missing).
    #[arg(long, default_value = "/var/lib/dctap/cloud.db", env = "DCTAP_CLOUD_DB")]
    db: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the ingest endpoint and the detections until SIGINT/SIGTERM; SIGHUP re-reads
    /// the configuration and the TLS certificates, key and CA.
    Serve(ServeArgs),
    /// Manage the portal's users.
    #[command(subcommand)]
    Users(UsersCmd),
    /// Issue, list and revoke sensor access keys.
    #[command(subcommand)]
    Sensors(SensorsCmd),
    /// Create a local certificate authority and certificates for mTLS.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Look at the stored events.
    #[command(subcommand)]
    Events(EventsCmd),
    /// Run the detections over every stored event not yet examined, then exit (`serve`
    /// does this continuously).
    Detect {
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List alerts, newest last (with the state of each one's evidence pcap); `alerts pcap
    /// ID --out FILE` saves one alert's pcap.
    #[command(args_conflicts_with_subcommands = true)]
    Alerts {
        #[command(subcommand)]
        action: Option<AlertsCmd>,
        #[command(flatten)]
        db: DbArg,
        /// One JSON object per alert instead of a table; `pcap` is "done", "waiting",
        /// "failed: <why>" or null (none asked for).
        #[arg(long)]
        json: bool,
    },
    /// List incidents (alerts grouped by shared entities close in time).
    Incidents {
        #[command(flatten)]
        db: DbArg,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// TOML configuration: [detect] sets thresholds, exclusions, honeytokens and DCs,
    /// [export] the SIEM outputs, [store] the retention (deploy/cloud.toml documents every
    /// key). Defaults apply when absent.
    #[arg(long, value_name = "FILE", env = "DCTAP_CLOUD_CONFIG")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn exporter(&self) -> anyhow::Result<Option<Exporter>> {
        let Some(path) = &self.config else { return Ok(None) };
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let cfg = ExportConfig::from_toml(&text).with_context(|| format!("{}", path.display()))?;
        Exporter::new(&cfg)
    }

    fn store(&self) -> anyhow::Result<tap_cloud::store::StoreConfig> {
        self.table(tap_cloud::store::StoreConfig::from_toml)
    }

    fn detect(&self) -> anyhow::Result<DetectConfig> {
        self.table(DetectConfig::from_toml)
    }

    /// One table of the file, read by `parse`; its defaults without a file.
    fn table<T: Default>(&self, parse: fn(&str) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let Some(path) = &self.config else { return Ok(T::default()) };
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        parse(&text).with_context(|| format!("{}", path.display()))
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    db: DbArg,
    /// Address of the gRPC ingest endpoint.
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
    /// Directory with ca.pem (the CA sensors' certificates must chain to), server.pem and
    /// server.key, as `certs init` writes them.
    #[arg(long, value_name = "DIR", required_unless_present = "insecure")]
    tls_dir: Option<PathBuf>,
    /// Plaintext gRPC without TLS: local demos only.
    #[arg(long, conflicts_with = "tls_dir")]
    insecure: bool,
    /// Accept a sensor's client certificate whatever name it carries. By default its CN or
    /// a DNS name must be the sensor's id, so one sensor's certificate cannot be used with
    /// another's access key (certs from another PKI may need this).
    #[arg(long, requires = "tls_dir")]
    any_client_cert_name: bool,
    #[command(flatten)]
    config: ConfigArg,
    /// Address of the web portal and its JSON API (sign-in required; users come from
    /// `tap-cloud users add`). Plain HTTP: keep it on localhost or behind a TLS proxy.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// A reverse proxy in front of the portal (repeatable): when a request comes from it,
    /// the client's address for sign-in throttling and the audit log is the last one it
    /// wrote in X-Forwarded-For. Without it, the connection's address is the client's and
    /// X-Forwarded-For is ignored.
    #[arg(long = "trusted-proxy", value_name = "ADDR")]
    trusted_proxies: Vec<std::net::IpAddr>,
    /// Serve Prometheus metrics (GET /metrics) on this address, e.g. 127.0.0.1:9101.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum UsersCmd {
    /// Create a portal user or set a user's password and role. The password is read from
    /// --password-file or, without it, from the first line of standard input.
    Add {
        name: String,
        #[arg(long, value_parser = ["viewer", "analyst", "admin"], default_value = "analyst")]
        role: String,
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        db: DbArg,
    },
}

#[derive(Subcommand)]
enum SensorsCmd {
    /// Register a sensor and issue its access key (shown once; only its hash is stored).
    Add {
        id: String,
        #[command(flatten)]
        db: DbArg,
        /// Write the key to this file (mode 0600; a file or symlink there is replaced)
        /// instead of printing it.
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
    },
    /// List sensors with their state and last heartbeat.
    List {
        #[command(flatten)]
        db: DbArg,
        /// One JSON object per sensor instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a sensor's key: its connections are refused from now on (open streams within
    /// seconds).
    Revoke {
        id: String,
        #[command(flatten)]
        db: DbArg,
    },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Create DIR/ca.pem, a server certificate and one client certificate per sensor.
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Names (DNS or IP) sensors use to reach the cloud; repeat for several.
        #[arg(long = "server-name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
        server_names: Vec<String>,
        /// Sensor ids to issue client certificates for; repeat for several.
        #[arg(long = "sensor", value_name = "ID")]
        sensors: Vec<String>,
    },
}

#[derive(Subcommand)]
enum AlertsCmd {
    /// Save the pcap excerpt of an alert's evidence (the conversation of its first
    /// evidence event, 30 s either side, cut by the live sensor that saw it).
    Pcap {
        alert_id: i64,
        /// Where to write it (mode 0600: it holds the DCs' traffic; a file or symlink there
        /// is replaced); "-" is standard output.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        db: DbArg,
    },
}

#[derive(Subcommand)]
enum EventsCmd {
    /// Print stored events as JSON lines, in (sensor, sequence) order.
    Export {
        #[command(flatten)]
        db: DbArg,
    },
    /// Count stored events and the latency from the sensor's spool to the cloud's store.
    Stats {
        #[command(flatten)]
        db: DbArg,
    },
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::Sensors(cmd) => sensors(cmd),
        Command::Users(UsersCmd::Add { name, role, password_file, db }) => {
            if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
                bail!("user name {name:?}: 1 to 64 characters, no spaces");
            }
            let password = match password_file {
                Some(p) => std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?,
                None => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line
                }
            };
            let password = password.trim_end_matches(['\r', '\n']);
            if password.chars().count() < 12 {
                bail!("the password must have at least 12 characters");
            }
            let user =
                tap_cloud::store::User { name: name.clone(), password_hash: portal::hash_password(password)?, role };
            open(&db.db)?.add_user(&user)?;
            eprintln!("user {name} ({}) saved", user.role);
            Ok(())
        }
        Command::Certs(CertsCmd::Init { dir, server_names, sensors }) => {
            let issued = certs::init(&dir, &server_names, &sensors)?;
            println!("CA:      {}", issued.ca.display());
            println!("server:  {} {}", issued.server_cert.display(), issued.server_key.display());
            for (id, c, k) in issued.sensors {
                println!("sensor {id}: {} {}", c.display(), k.display());
            }
            Ok(())
        }
        Command::Events(EventsCmd::Export { db }) => export(&open(&db.db)?),
        Command::Events(EventsCmd::Stats { db }) => stats(&open(&db.db)?),
        Command::Detect { db, config } => {
            let store: Arc<dyn Store> = Arc::new(open(&db.db)?);
            let mut runner = Runner::new(Engine::new(config.detect()?), Arc::clone(&store))?;
            let n = runner.catch_up()?;
            eprintln!(
                "{n} events examined; {} alerts in {} incidents",
                store.alerts()?.len(),
                store.incidents()?.len()
            );
            Ok(())
        }
        Command::Alerts { action: Some(AlertsCmd::Pcap { alert_id, out, db }), .. } => {
            alert_pcap(&open(&db.db)?, alert_id, &out)
        }
        Command::Alerts { action: None, db, json } => {
            let store = open(&db.db)?;
            let alerts = store.alerts()?;
            let pcaps: std::collections::HashMap<i64, String> =
                store.excerpts()?.into_iter().map(|x| (x.wanted.alert_id, x.label())).collect();
            let mut out = std::io::stdout().lock();
            for a in &alerts {
                let pcap = pcaps.get(&a.id);
                if json {
                    let mut v = serde_json::to_value(a)?;
                    v["pcap"] = serde_json::json!(pcap);
                    serde_json::to_writer(&mut out, &v)?;
                    writeln!(out)?;
                } else {
                    // Names and titles come off the wire: shown, never obeyed by the terminal.
                    writeln!(
                        out,
                        "#{:<4} incident {:<4} {:<7} {:<22} {:<10} src {:<16} account {:<14} {}{}",
                        a.id,
                        a.incident_id,
                        visible(&a.severity),
                        visible(&a.detection),
                        visible(&a.mitre),
                        visible(&a.src_ip),
                        visible(&a.account),
                        visible(&a.title),
                        pcap.map(|p| format!("  [pcap {}]", visible(p))).unwrap_or_default()
                    )?;
                }
            }
            Ok(())
        }
        Command::Incidents { db, json } => {
            let incidents = open(&db.db)?.incidents()?;
            let mut out = std::io::stdout().lock();
            for i in &incidents {
                if json {
                    serde_json::to_writer(&mut out, i)?;
                    writeln!(out)?;
                } else {
                    writeln!(
                        out,
                        "#{:<4} {:<7} {:<12} {:>3} alerts  {}",
                        i.id,
                        visible(&i.severity),
                        visible(&i.status),
                        i.alerts,
                        visible(&i.title)
                    )?;
                }
            }
            Ok(())
        }
    }
}

fn open(db: &Path) -> anyhow::Result<SqliteStore> {
    SqliteStore::open(db)
}

/// `alerts pcap ID --out FILE`: the excerpt's bytes, or why there are none.
fn alert_pcap(store: &SqliteStore, alert_id: i64, out: &Path) -> anyhow::Result<()> {
    let Some(x) = store.alert_excerpt(alert_id, true)? else {
        bail!("alert {alert_id} has no pcap excerpt (none is asked for when its sensor reads a file, or the alert is older than excerpts)");
    };
    let pcap = match (x.status.as_str(), x.pcap) {
        ("done", Some(pcap)) => pcap,
        ("failed", _) => bail!("the pcap excerpt of alert {alert_id} is not available: {}", visible(&x.error)),
        (_, _) => bail!(
            "the pcap excerpt of alert {alert_id} is not there yet: waiting for sensor {} (asked {} times)",
            visible(&x.wanted.sensor_id),
            x.asks
        ),
    };
    if out == Path::new("-") {
        std::io::stdout().lock().write_all(&pcap)?;
    } else {
        // The frames hold what the DCs' traffic holds (hashes, tickets, cleartext binds).
        tap_cloud::files::write_private(out, &pcap)?;
        eprintln!(
            "alert {alert_id}: {} frames{} from sensor {} written to {}",
            x.frames,
            if x.truncated { " (cut at 8 MiB)" } else { "" },
            visible(&x.wanted.sensor_id),
            out.display()
        );
    }
    Ok(())
}

/// How often the retention pass runs.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let store: Arc<dyn Store> = Arc::new(open(&args.db.db)?);
    let tls = args.tls_dir.map(|d| ingest::ServerTls {
        any_client_name: args.any_client_cert_name,
        ca: d.join("ca.pem"),
        cert: d.join("server.pem"),
        key: d.join("server.key"),
    });
    if tls.is_none() {
        log::warn!("--insecure: sensors connect without TLS; their access keys cross the network in the clear");
    }
    // Detection follows the store on its own thread: ingest never waits for it.
    let mut runner = Runner::new(Engine::new(args.config.detect()?), Arc::clone(&store))?;
    runner.exporter = args.config.exporter()?;
    let mut retention = args.config.store()?;
    let reload = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (config, reload_flag) = (args.config.clone(), Arc::clone(&reload));
    let prune_store = Arc::clone(&store);
    let mut pruned_at: Option<std::time::Instant> = None;
    std::thread::Builder::new().name("detect".into()).spawn(move || loop {
        if reload_flag.swap(false, std::sync::atomic::Ordering::Relaxed) {
            // A bad file leaves the running configuration in force.
            match config.detect().and_then(|cfg| Ok((cfg, config.exporter()?, config.store()?))) {
                Ok((cfg, exporter, store_cfg)) => {
                    runner.engine.reconfigure(cfg);
                    runner.exporter = exporter;
                    retention = store_cfg;
                    pruned_at = None;
                    log::info!("detection, export and retention configuration reloaded");
                }
                Err(e) => log::error!("configuration not reloaded, keeping the current one: {e:#}"),
            }
        }
        // Retention: at start, then hourly, on the detection thread (it only deletes what
        // detection has gone through).
        if let Some(keep) = retention.retention().filter(|_| pruned_at.is_none_or(|t| t.elapsed() >= PRUNE_EVERY)) {
            pruned_at = Some(std::time::Instant::now());
            let before = tap_cloud::unix_ns().saturating_sub(keep.as_nanos() as i64);
            match prune_store.prune(before) {
                Ok(p) if p.events + p.excerpts > 0 => log::info!(
                    "retention ({} days): {} events and {} pcap excerpts deleted",
                    retention.retention_days,
                    p.events,
                    p.excerpts
                ),
                Ok(_) => {}
                Err(e) => log::error!("retention: {e:#}"),
            }
        }
        // A panic outside an event's own processing (that one is caught per event) must not
        // end detection: start again from the checkpoint, as after a restart.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runner.step())) {
            Ok(Ok(0)) => std::thread::sleep(std::time::Duration::from_millis(500)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                log::error!("detection: {e:#}");
                std::thread::sleep(std::time::Duration::from_secs(5));
            }
            Err(_) => {
                log::error!("detection failed outside an event; resuming from the last checkpoint");
                std::thread::sleep(std::time::Duration::from_secs(5));
                match config.detect().and_then(|cfg| Runner::new(Engine::new(cfg), Arc::clone(&prune_store))) {
                    Ok(mut fresh) => {
                        fresh.exporter = runner.exporter.take();
                        runner = fresh;
                    }
                    Err(e) => log::error!("detection: {e:#}"),
                }
            }
        }
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = ingest::bind(args.listen).await?;
        let web = tokio::net::TcpListener::bind(args.http)
            .await
            .with_context(|| format!("portal: listen on {}", args.http))?;
        log::info!(
            "ingest listening on {} ({}), portal on http://{}, database {}",
            listener.local_addr()?,
            if tls.is_some() { "mTLS" } else { "plaintext" },
            web.local_addr()?,
            args.db.db.display()
        );
        let reload_tls = Arc::new(tokio::sync::Notify::new());
        let hup_tls = Arc::clone(&reload_tls);
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
            while hup.recv().await.is_some() {
                reload.store(true, std::sync::atomic::Ordering::Relaxed);
                hup_tls.notify_one();
            }
        });
        // One signal stops both servers.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        if let Some(addr) = args.metrics {
            let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("metrics: listen on {addr}"))?;
            let router = portal::metrics_router(Arc::clone(&store));
            let stop = stopped(stop_rx.clone());
            tokio::spawn(async move { axum::serve(l, router).with_graceful_shutdown(stop).await });
        }
        let web_store = Arc::clone(&store);
        let options = portal::PortalOptions { trusted_proxies: args.trusted_proxies };
        let portal = tokio::spawn(portal::serve(web, web_store, options, stopped(stop_rx.clone())));
        ingest::serve(listener, tls, store, stopped(stop_rx), reload_tls).await?;
        portal.await.map_err(|e| anyhow::anyhow!("portal task: {e}"))?
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    log::info!("stopping");
}

fn sensors(cmd: SensorsCmd) -> anyhow::Result<()> {
    match cmd {
        SensorsCmd::Add { id, db, key_file } => {
            if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                bail!("sensor id {id:?}: 1 to 128 letters, digits, '-', '_' or '.'");
            }
            let store = open(&db.db)?;
            let key = keys::generate()?;
            store.add_sensor(&id, &keys::hash(&key))?;
            match key_file {
                Some(path) => {
                    tap_cloud::files::write_private(&path, format!("{key}\n").as_bytes())?;
                    eprintln!("sensor {id} added; its access key is in {}", path.display());
                }
                None => {
                    eprintln!("sensor {id} added; its access key (shown once):");
                    println!("{key}");
                }
            }
            Ok(())
        }
        SensorsCmd::List { db, json } => {
            let list = open(&db.db)?.sensors()?;
            let mut out = std::io::stdout().lock();
            if json {
                for s in &list {
                    serde_json::to_writer(&mut out, s)?;
                    writeln!(out)?;
                }
                return Ok(());
            }
            writeln!(
                out,
                "{:<24} {:<8} {:<10} {:<28} {:<20}",
                "SENSOR", "STATE", "VERSION", "MONITORED DCS", "LAST HEARTBEAT"
            )?;
            let now = tap_cloud::unix_ns();
            for s in &list {
                let state = if s.revoked_unix_ns.is_some() { "revoked" } else { "active" };
                let beat = match s.last_heartbeat_unix_ns {
                    Some(t) => format!("{} s ago", (now - t) / 1_000_000_000),
                    None => "never".into(),
                };
                writeln!(
                    out,
                    "{:<24} {:<8} {:<10} {:<28} {beat:<20}",
                    visible(&s.id),
                    state,
                    visible(&s.version),
                    visible(&s.monitored_dcs.join(","))
                )?;
            }
            Ok(())
        }
        SensorsCmd::Revoke { id, db } => {
            if !open(&db.db)?.revoke_sensor(&id)? {
                bail!("no sensor {id}");
            }
            eprintln!("sensor {id}: access key revoked");
            Ok(())
        }
    }
}

/// Every stored event in (sensor, sequence) order, a page at a time.
fn each_stored_event(
    store: &SqliteStore,
    mut f: impl FnMut(&tap_cloud::store::StoredEvent) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut after: Option<(String, u64)> = None;
    loop {
        let page = store.events_after(after.as_ref().map(|(s, q)| (s.as_str(), *q)), 10_000)?;
        let Some(last) = page.last() else { return Ok(()) };
        after = Some((last.event.sensor_id.clone(), last.event.seq));
        page.iter().try_for_each(&mut f)?;
    }
}

fn export(store: &SqliteStore) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    each_stored_event(store, |e| {
        serde_json::to_writer(&mut out, &e.event)?;
        Ok(writeln!(out)?)
    })?;
    out.flush()?;
    Ok(())
}

fn stats(store: &SqliteStore) -> anyhow::Result<()> {
    let mut latencies = Vec::new();
    let (mut first_spooled, mut last_stored) = (i64::MAX, i64::MIN);
    each_stored_event(store, |e| {
        if e.spooled_unix_ns > 0 {
            latencies.push(e.stored_unix_ns.saturating_sub(e.spooled_unix_ns));
            first_spooled = first_spooled.min(e.spooled_unix_ns);
        }
        last_stored = last_stored.max(e.stored_unix_ns);
        Ok(())
    })?;
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i] as f64 / 1e6
    };
    let span_s = if latencies.is_empty() { 0.0 } else { (last_stored - first_spooled) as f64 / 1e9 };
    let report = serde_json::json!({
        "events": store.event_count()?,
        "latency_ms_p50": pct(0.50),
        "latency_ms_p99": pct(0.99),
        "latency_ms_max": pct(1.0),
        "first_spooled_to_last_stored_s": span_s,
    });
    println!("{report}");
    Ok(())
}
