//! The gRPC client: reads the spool in order and streams it to the cloud, moves the
//! acknowledged mark as the cloud confirms storage, and reconnects with exponential backoff
//! and jitter. It runs on its own thread with its own runtime, so nothing on the network
//! path can hold up capture: the only link to the pipeline is the spool on disk.

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use prost::Message as _;
use tokio::sync::watch;
use tonic::{
    codec::CompressionEncoding,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Code, Request,
};

use super::spool::Spool;
use crate::event::pb::{
    ingest_client::IngestClient, ActivityEvent, EventBatch, Excerpt, ExcerptRequest, Health, SensorInfo,
};

/// Largest message either side accepts; a batch stays well under it.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// Certificate files for mTLS, read again at every connection (so SIGHUP, which forces a
/// reconnection, picks up rotated ones).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Name to verify the cloud's certificate against, when not the endpoint's host.
    pub server_name: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `https://host:port`, or `http://` with `tls: None` (`--insecure`).
    pub endpoint: String,
    pub tls: Option<TlsFiles>,
    /// File holding the access key `tap-cloud sensors add` issued; read at every connection.
    pub access_key_file: Option<PathBuf>,
    pub info: SensorInfo,
    pub batch_events: usize,
    pub batch_bytes: usize,
    /// Batches sent and not yet acknowledged, at most.
    pub window: usize,
    pub heartbeat: Duration,
    /// Events per second, at most (thin WAN links); `None`: as fast as the cloud takes them.
    pub max_rate: Option<f64>,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl ClientConfig {
    pub fn new(endpoint: impl Into<String>, info: SensorInfo) -> Self {
        Self {
            endpoint: endpoint.into(),
            tls: None,
            access_key_file: None,
            info,
            batch_events: 2000,
            batch_bytes: 1 << 20,
            window: 8,
            heartbeat: Duration::from_secs(10),
            max_rate: None,
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// What the uplink has done, for the counters and health.
#[derive(Debug, Default)]
pub struct UplinkStatus {
    pub connected: AtomicBool,
    /// The cloud refused this sensor (unknown or revoked key, wrong id).
    pub refused: AtomicBool,
    pub connects: AtomicU64,
    pub failures: AtomicU64,
    pub batches_acked: AtomicU64,
    pub events_acked: AtomicU64,
    /// Events the cloud already held when they arrived (resends after a reconnect).
    pub duplicates: AtomicU64,
    /// Events the cloud stored at their spool time because their capture time was
    /// impossible (before 1990, from 2100 on, or after they were spooled).
    pub time_clamped: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// The last heartbeat's reply showed over five minutes between the clocks.
    pub clock_skewed: AtomicBool,
    /// Since when the sensor has been without a working session (None: connected).
    pub disconnected_since: Mutex<Option<std::time::Instant>>,
    /// Excerpts the cloud asked for and took (with frames or with an error saying why not).
    pub excerpts_uploaded: AtomicU64,
    /// Excerpt uploads that failed (the cloud asks again if it still wants one).
    pub excerpt_failures: AtomicU64,
}

impl UplinkStatus {
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

/// Supplies the counters and alerts a heartbeat carries.
pub type HealthFn = Arc<dyn Fn() -> (HashMap<String, u64>, Vec<String>) + Send + Sync>;

enum SessionEnd {
    Shutdown,
    Reload,
}

/// Excerpts the cloud asks for at once, at most (the rest of a reply waits for the cloud
/// to ask again).
pub const EXCERPTS_AT_ONCE: usize = 4;
/// How long one excerpt upload may take.
const EXCERPT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// What a sensor without evidence answers.
pub const NO_EVIDENCE: &str = "this sensor keeps no evidence (--evidence-dir)";

/// The excerpts the heartbeat replies ask for: cut from the evidence ring on the blocking
/// pool and uploaded from tasks of their own, so neither the event stream nor the
/// heartbeat's timing waits for them.
#[derive(Clone, Debug, Default)]
pub struct Excerpts {
    dir: Option<PathBuf>,
    /// Ids being cut or uploaded: a request repeated meanwhile is not started twice.
    busy: Arc<Mutex<std::collections::HashSet<u64>>>,
}

impl Excerpts {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self { dir, busy: Arc::default() }
    }

    /// Starts the cut and upload of each request not already under way, up to
    /// [`EXCERPTS_AT_ONCE`] in all. Must be called within the uplink's runtime.
    fn start(
        &self,
        client: &IngestClient<Channel>,
        requests: Vec<ExcerptRequest>,
        sensor_id: &str,
        key: &str,
        status: &Arc<UplinkStatus>,
    ) {
        for req in requests {
            {
                let Ok(mut busy) = self.busy.lock() else { return };
                if busy.len() >= EXCERPTS_AT_ONCE {
                    log::debug!("uplink: excerpt {} waits: {EXCERPTS_AT_ONCE} under way", req.id);
                    continue;
                }
                if !busy.insert(req.id) {
                    continue;
                }
            }
            let (mut client, dir, busy, status) =
                (client.clone(), self.dir.clone(), Arc::clone(&self.busy), Arc::clone(status));
            let (sensor_id, key) = (sensor_id.to_string(), key.to_string());
            tokio::spawn(async move {
                let id = req.id;
                let result = upload_one(&mut client, dir, req, &sensor_id, &key).await;
                match result {
                    Ok((frames, bytes, error)) => {
                        status.excerpts_uploaded.fetch_add(1, Ordering::Relaxed);
                        if error.is_empty() {
                            log::info!("uplink: excerpt {id} uploaded: {frames} frames, {bytes} bytes");
                        } else {
                            log::info!("uplink: excerpt {id} answered without frames: {error}");
                        }
                    }
                    Err(e) => {
                        status.excerpt_failures.fetch_add(1, Ordering::Relaxed);
                        log::warn!("uplink: excerpt {id} not uploaded: {e:#} (sent if the cloud asks again)");
                    }
                }
                if let Ok(mut b) = busy.lock() {
                    b.remove(&id);
                }
            });
        }
    }
}

/// Cuts one excerpt (off the async thread) and uploads it: (frames, pcap bytes, error).
async fn upload_one(
    client: &mut IngestClient<Channel>,
    dir: Option<PathBuf>,
    req: ExcerptRequest,
    sensor_id: &str,
    key: &str,
) -> anyhow::Result<(u32, usize, String)> {
    let excerpt = match dir {
        Some(dir) => {
            let wanted = crate::evidence::Wanted {
                client_ip: req.client_ip.clone(),
                client_port: req.client_port,
                dc_ip: req.dc_ip.clone(),
                dc_port: req.dc_port,
                from_unix_ns: req.from_unix_ns,
                to_unix_ns: req.to_unix_ns,
            };
            let cut = tokio::task::spawn_blocking(move || {
                crate::evidence::cut(&dir, &wanted, crate::evidence::EXCERPT_MAX_BYTES)
            })
            .await
            .context("cutting the excerpt")?;
            Excerpt { id: req.id, pcap: cut.pcap, frames: cut.frames, truncated: cut.truncated, error: cut.error }
        }
        None => Excerpt { id: req.id, error: NO_EVIDENCE.into(), ..Excerpt::default() },
    };
    let summary = (excerpt.frames, excerpt.pcap.len(), excerpt.error.clone());
    match tokio::time::timeout(EXCERPT_UPLOAD_TIMEOUT, client.upload_excerpt(authed(excerpt, sensor_id, key)?)).await {
        Ok(Ok(_)) => Ok(summary),
        Ok(Err(s)) => Err(describe(&s, "upload excerpt")),
        Err(_) => bail!("upload excerpt: no answer from the cloud in {} s", EXCERPT_UPLOAD_TIMEOUT.as_secs()),
    }
}

/// Runs until `shutdown` turns true.
pub async fn run(
    cfg: ClientConfig,
    spool: Arc<Spool>,
    status: Arc<UplinkStatus>,
    health: HealthFn,
    excerpts: Excerpts,
    reload: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let result = session(&cfg, &spool, &status, &health, &excerpts, &reload, &mut shutdown, &mut backoff).await;
        status.connected.store(false, Ordering::Relaxed);
        if let Ok(mut since) = status.disconnected_since.lock() {
            since.get_or_insert_with(std::time::Instant::now);
        }
        match result {
            Ok(SessionEnd::Shutdown) => return,
            Ok(SessionEnd::Reload) => {
                log::info!("uplink: reconnecting to load the certificates and access key again");
                backoff.reset();
            }
            Err(e) => {
                status.failures.fetch_add(1, Ordering::Relaxed);
                let text = format!("{e:#}");
                let changed = status.last_error.lock().map(|mut last| last.replace(text.clone()) != Some(text.clone()));
                let delay = backoff.next_wait();
                // Repeats of the same failure are logged quietly: a cloud down for an hour
                // is one warning, not thousands.
                if changed.unwrap_or(true) {
                    log::warn!("uplink: {text}; retrying in {:.1} s (and backing off)", delay.as_secs_f64());
                } else {
                    log::debug!("uplink: {text}; retrying in {:.1} s", delay.as_secs_f64());
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

fn authed<T>(msg: T, sensor_id: &str, key: &str) -> anyhow::Result<Request<T>> {
    let mut req = Request::new(msg);
    let md = req.metadata_mut();
    md.insert("x-dctap-sensor-id", MetadataValue::try_from(sensor_id).context("sensor id is not valid in a header")?);
    md.insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {key}")).context("access key is not valid in a header")?,
    );
    Ok(req)
}

fn read_key(cfg: &ClientConfig) -> anyhow::Result<String> {
    match &cfg.access_key_file {
        Some(path) => {
            let key = std::fs::read_to_string(path).with_context(|| format!("access key file {}", path.display()))?;
            Ok(key.trim().to_string())
        }
        None => std::env::var("DCTAP_ACCESS_KEY")
            .map_err(|_| anyhow!("no access key: give --access-key-file or set DCTAP_ACCESS_KEY")),
    }
}

async fn connect(cfg: &ClientConfig) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(cfg.endpoint.clone())
        .with_context(|| format!("cloud address {}", cfg.endpoint))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    if let Some(tls) = &cfg.tls {
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("read {}", p.display()));
        let mut tls_cfg = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
            .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
        if let Some(name) = &tls.server_name {
            tls_cfg = tls_cfg.domain_name(name.clone());
        }
        endpoint = endpoint.tls_config(tls_cfg).context("TLS configuration")?;
    }
    endpoint.connect().await.map_err(|e| anyhow!("cannot reach the cloud at {}: {}", cfg.endpoint, error_chain(&e)))
}

/// tonic's transport errors say "transport error" at the top; the cause is below.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn refused(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied)
}

fn describe(status: &tonic::Status, what: &str) -> anyhow::Error {
    use std::error::Error as _;
    if refused(status) {
        return anyhow!("the cloud refused this sensor ({what}): {}", status.message());
    }
    if !matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled) {
        return anyhow!("{what}: {:?}: {}", status.code(), status.message());
    }
    // Transport failures: the useful part is the cause, not tonic's wrapper.
    let cause = status.source().map(error_chain).unwrap_or_else(|| status.message().to_string());
    if ["alert", "certificate", "Certificate", "handshake"].iter().any(|w| cause.contains(w)) {
        anyhow!(
            "{what}: TLS with the cloud failed: {cause} (is --tls-cert signed by the CA the cloud trusts, and does \
             --tls-ca hold the CA that signed the cloud's certificate?)"
        )
    } else if what == "register" {
        // In TLS 1.3 the cloud checks the client certificate after the handshake looks done
        // to the client, so a rejected certificate often shows up only as a closed
        // connection at the first call.
        anyhow!(
            "{what}: connection to the cloud lost: {cause} (when this repeats, the cloud may be rejecting \
             --tls-cert: is it signed by the CA the cloud trusts?)"
        )
    } else {
        anyhow!("{what}: connection to the cloud lost: {cause}")
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    cfg: &ClientConfig,
    spool: &Spool,
    status: &Arc<UplinkStatus>,
    health: &HealthFn,
    excerpts: &Excerpts,
    reload: &AtomicBool,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> anyhow::Result<SessionEnd> {
    let key = read_key(cfg)?;
    let id = cfg.info.sensor_id.clone();
    let channel = connect(cfg).await?;
    let mut client = IngestClient::new(channel)
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let reply = client.register(authed(cfg.info.clone(), &id, &key)?).await.map_err(|s| {
        status.refused.store(refused(&s), Ordering::Relaxed);
        describe(&s, "register")
    })?;
    status.refused.store(false, Ordering::Relaxed);
    spool.register(reply.into_inner().stored_through)?;
    status.connects.fetch_add(1, Ordering::Relaxed);
    status.connected.store(true, Ordering::Relaxed);
    if let Ok(mut since) = status.disconnected_since.lock() {
        *since = None;
    }
    backoff.reset();
    log::info!("uplink: connected to {} as {id}; sending from event {}", cfg.endpoint, spool.acked() + 1);

    let (tx, rx) = tokio::sync::mpsc::channel::<EventBatch>(cfg.window.max(1));
    let mut acks = client
        .stream(authed(tokio_stream::wrappers::ReceiverStream::new(rx), &id, &key)?)
        .await
        .map_err(|s| describe(&s, "open stream"))?
        .into_inner();
    let mut cursor = spool.cursor(spool.acked());
    let mut inflight: VecDeque<u64> = VecDeque::new();
    let mut bucket = cfg.max_rate.map(|rate| TokenBucket::new(rate, cfg.batch_events));
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        while inflight.len() < cfg.window {
            let allowed = match bucket.as_mut() {
                Some(b) => b.take_up_to(cfg.batch_events),
                None => cfg.batch_events,
            };
            if allowed == 0 {
                break;
            }
            let records = spool.read(&mut cursor, allowed, cfg.batch_bytes)?;
            if let Some(b) = bucket.as_mut() {
                b.give_back(allowed - records.len());
            }
            let Some(last) = records.last().map(|r| r.seq) else { break };
            let mut batch = EventBatch {
                events: Vec::with_capacity(records.len()),
                spooled_unix_ns: Vec::with_capacity(records.len()),
            };
            for r in records {
                match ActivityEvent::decode(r.payload.as_slice()) {
                    Ok(mut ev) => {
                        ev.seq = r.seq;
                        batch.events.push(ev);
                        batch.spooled_unix_ns.push(r.spooled_unix_ns);
                    }
                    // The CRC matched, so this is a bug, not rot; the rest still goes.
                    Err(e) => log::error!("spool record {} is not an event: {e}", r.seq),
                }
            }
            if batch.events.is_empty() {
                continue;
            }
            inflight.push_back(last);
            if tx.send(batch).await.is_err() {
                bail!("the stream to the cloud closed");
            }
        }
        tokio::select! {
            msg = acks.message() => match msg {
                Ok(Some(ack)) => {
                    spool.ack(ack.last_seq)?;
                    while inflight.front().is_some_and(|&l| l <= ack.last_seq) {
                        inflight.pop_front();
                    }
                    status.batches_acked.fetch_add(1, Ordering::Relaxed);
                    status.events_acked.fetch_add(u64::from(ack.stored + ack.duplicates), Ordering::Relaxed);
                    status.duplicates.fetch_add(u64::from(ack.duplicates), Ordering::Relaxed);
                    if ack.clamped > 0 {
                        status.time_clamped.fetch_add(u64::from(ack.clamped), Ordering::Relaxed);
                        log::warn!(
                            "the cloud stored {} event(s) of {}..={} at their spool time: their capture time was impossible",
                            ack.clamped, ack.first_seq, ack.last_seq
                        );
                    }
                }
                Ok(None) => bail!("the cloud ended the stream"),
                Err(s) => {
                    status.refused.store(refused(&s), Ordering::Relaxed);
                    return Err(describe(&s, "stream"));
                }
            },
            _ = spool.notify.notified(), if inflight.len() < cfg.window => {}
            _ = heartbeat.tick() => {
                let (counters, alerts) = health();
                let beat = Health { sensor_id: id.clone(), sensor_time_unix_ns: crate::time::unix_ns(), counters, alerts };
                let reply = tokio::time::timeout(Duration::from_secs(5), client.heartbeat(authed(beat, &id, &key)?)).await;
                match reply {
                    Ok(Ok(r)) => {
                        let r = r.into_inner();
                        status.clock_skewed.store(check_clock(r.cloud_time_unix_ns), Ordering::Relaxed);
                        // Started, not awaited: the next heartbeat keeps its time.
                        excerpts.start(&client, r.excerpts, &id, &key, status);
                    }
                    Ok(Err(s)) => return Err(describe(&s, "heartbeat")),
                    Err(_) => bail!("heartbeat: no answer from the cloud in 5 s"),
                }
            }
            _ = tick.tick() => {
                if reload.swap(false, Ordering::Relaxed) {
                    return Ok(SessionEnd::Reload);
                }
            }
            _ = shutdown.changed() => return Ok(SessionEnd::Shutdown),
        }
    }
}

/// Clock skew over five minutes breaks Kerberos-time reasoning in the cloud; say so (and
/// raise it as a health alert).
fn check_clock(cloud_ns: i64) -> bool {
    let skew = (crate::time::unix_ns() - cloud_ns).abs();
    if skew > 300_000_000_000 {
        log::warn!("clock skew with the cloud: {:.0} s (over 5 minutes)", skew as f64 / 1e9);
        return true;
    }
    false
}

/// Exponential backoff with full jitter (each wait uniform in [min, current]), so a fleet of
/// sensors does not reconnect in lockstep after a cloud restart.
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, current: min }
    }

    pub fn next_wait(&mut self) -> Duration {
        let upper = self.current;
        self.current = (self.current * 2).min(self.max);
        let span = upper.saturating_sub(self.min).as_millis() as u64;
        self.min + Duration::from_millis(fastrand::u64(0..=span))
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

/// Events-per-second limit with a burst of one batch.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: usize) -> Self {
        let burst = (burst as f64).min(rate.max(1.0));
        Self { rate, burst, tokens: burst, at: Instant::now() }
    }

    fn take_up_to(&mut self, n: usize) -> usize {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        let take = (self.tokens.floor() as usize).min(n);
        self.tokens -= take as f64;
        take
    }

    fn give_back(&mut self, n: usize) {
        self.tokens = (self.tokens + n as f64).min(self.burst);
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use tonic::transport::Server;

    use super::*;
    use crate::event::pb::{
        ingest_server::{Ingest, IngestServer},
        Ack, ExcerptAck, HeartbeatReply, RegisterReply,
    };

    /// A cloud that asks, in every heartbeat reply, for the excerpts it does not hold yet,
    /// and takes uploads slowly.
    #[derive(Clone, Default)]
    struct StandIn {
        asks: Vec<ExcerptRequest>,
        upload_delay: Duration,
        heartbeats: Arc<AtomicU64>,
        uploads: Arc<Mutex<Vec<Excerpt>>>,
        uploading: Arc<AtomicU64>,
        most_at_once: Arc<AtomicU64>,
    }

    type AckStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Ack, tonic::Status>> + Send>>;

    #[tonic::async_trait]
    impl Ingest for StandIn {
        async fn register(&self, _: Request<SensorInfo>) -> Result<tonic::Response<RegisterReply>, tonic::Status> {
            Ok(tonic::Response::new(RegisterReply::default()))
        }

        type StreamStream = AckStream;

        async fn stream(
            &self,
            request: Request<tonic::Streaming<EventBatch>>,
        ) -> Result<tonic::Response<AckStream>, tonic::Status> {
            let mut inbound = request.into_inner();
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Ack, tonic::Status>>(1);
            tokio::spawn(async move {
                while let Ok(Some(_)) = inbound.message().await {}
                drop(tx);
            });
            Ok(tonic::Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
        }

        async fn heartbeat(&self, _: Request<Health>) -> Result<tonic::Response<HeartbeatReply>, tonic::Status> {
            self.heartbeats.fetch_add(1, Ordering::Relaxed);
            let held: Vec<u64> = self.uploads.lock().unwrap().iter().map(|e| e.id).collect();
            let excerpts = self.asks.iter().filter(|r| !held.contains(&r.id)).cloned().collect();
            Ok(tonic::Response::new(HeartbeatReply { cloud_time_unix_ns: crate::time::unix_ns(), excerpts }))
        }

        async fn upload_excerpt(
            &self,
            request: Request<Excerpt>,
        ) -> Result<tonic::Response<ExcerptAck>, tonic::Status> {
            let now = self.uploading.fetch_add(1, Ordering::Relaxed) + 1;
            self.most_at_once.fetch_max(now, Ordering::Relaxed);
            tokio::time::sleep(self.upload_delay).await;
            self.uploads.lock().unwrap().push(request.into_inner());
            self.uploading.fetch_sub(1, Ordering::Relaxed);
            Ok(tonic::Response::new(ExcerptAck {}))
        }
    }

    /// Runs the uplink client against `cloud` for `run_for`.
    async fn run_against(cloud: StandIn, evidence: Option<PathBuf>, tmp: &std::path::Path, run_for: Duration) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = IngestServer::new(cloud)
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let server = tokio::spawn(
            Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let key = tmp.join("key");
        std::fs::write(&key, "k").unwrap();
        let mut cfg =
            ClientConfig::new(format!("http://{addr}"), SensorInfo { sensor_id: "s1".into(), ..SensorInfo::default() });
        cfg.access_key_file = Some(key);
        cfg.heartbeat = Duration::from_millis(100);
        let spool = Arc::new(Spool::open(super::super::SpoolConfig::new(tmp.join("spool"), 16 << 20)).unwrap());
        let health: HealthFn = Arc::new(|| (HashMap::new(), Vec::new()));
        let (stop, stopped) = watch::channel(false);
        let client =
            tokio::spawn(run(cfg, spool, Arc::default(), health, Excerpts::new(evidence), Arc::default(), stopped));
        tokio::time::sleep(run_for).await;
        stop.send(true).unwrap();
        client.await.unwrap();
        server.abort();
    }

    fn ask(id: u64, from: u64, to: u64) -> ExcerptRequest {
        ExcerptRequest {
            id,
            client_ip: "10.0.1.20".into(),
            client_port: 40000,
            dc_ip: "10.0.0.10".into(),
            dc_port: 88,
            from_unix_ns: from as i64,
            to_unix_ns: to as i64,
        }
    }

    #[tokio::test]
    async fn excerpts_asked_for_are_cut_and_uploaded_once_four_at_a_time_while_heartbeats_keep_time() {
        let tmp = std::env::temp_dir().join(format!("dctap-excerpts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let evidence = tmp.join("evidence");
        let t0 = 1_795_000_000_000_000_000u64;
        {
            let opts = crate::evidence::EvidenceOptions { dir: evidence.clone(), max_bytes: 16 << 20 };
            let mut ring = crate::evidence::EvidenceRing::open(&opts).unwrap();
            let mut batch = crate::frames::FrameBatch::default();
            for i in 0..10u64 {
                let f = tap_testkit::frame::ipv4(
                    tap_testkit::frame::Tags::None,
                    "10.0.1.20".parse().unwrap(),
                    "10.0.0.10".parse().unwrap(),
                    tap_testkit::frame::L4::Tcp { src: 40000, dst: 88 },
                    100,
                    i as u32,
                );
                batch.push_frame(Duration::from_nanos(t0 + i * 1000), f.len() as u32, &f);
            }
            ring.append(&batch);
        }
        // Six asks: five over the kept frames, one before them.
        let mut asks: Vec<ExcerptRequest> = (1..=5).map(|id| ask(id, t0, t0 + id * 1000)).collect();
        asks.push(ask(6, t0 - 2_000_000_000, t0 - 1_000_000_000));
        let cloud = StandIn { asks, upload_delay: Duration::from_millis(400), ..StandIn::default() };
        run_against(cloud.clone(), Some(evidence), &tmp, Duration::from_millis(2500)).await;

        let mut uploads = cloud.uploads.lock().unwrap().clone();
        uploads.sort_by_key(|e| e.id);
        assert_eq!(uploads.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6], "each once");
        for e in &uploads[..5] {
            assert_eq!((e.frames, e.error.as_str()), (e.id as u32 + 1, ""), "excerpt {}", e.id);
            assert_eq!(e.pcap.len(), 24 + (e.id as usize + 1) * (16 + 154));
        }
        assert_eq!(uploads[5].error, crate::evidence::NOT_KEPT);
        assert!(uploads[5].pcap.is_empty());
        assert_eq!(cloud.most_at_once.load(Ordering::Relaxed), EXCERPTS_AT_ONCE as u64);
        // 100 ms heartbeats over 2.5 s, while uploads took 400 ms each.
        let beats = cloud.heartbeats.load(Ordering::Relaxed);
        assert!(beats >= 18, "{beats} heartbeats: the uploads held them up");

        // Without evidence, each ask is answered with the reason.
        let cloud = StandIn { asks: vec![ask(9, t0, t0 + 1000)], ..StandIn::default() };
        run_against(cloud.clone(), None, &tmp, Duration::from_millis(500)).await;
        let uploads = cloud.uploads.lock().unwrap().clone();
        assert_eq!(uploads.len(), 1);
        assert_eq!((uploads[0].id, uploads[0].error.as_str(), uploads[0].pcap.len()), (9, NO_EVIDENCE, 0));
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(3));
        let waits: Vec<Duration> = (0..12).map(|_| b.next_wait()).collect();
        assert!(waits.iter().all(|w| *w >= Duration::from_millis(100) && *w <= Duration::from_secs(3)));
        assert_eq!(b.current, Duration::from_secs(3));
        // Jitter: late waits are not all the same.
        assert!(waits[6..].windows(2).any(|w| w[0] != w[1]), "{waits:?}");
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(100));
    }

    #[test]
    fn token_bucket_limits_the_rate() {
        let mut bucket = TokenBucket::new(1000.0, 500);
        let start = Instant::now();
        let mut sent = 0;
        while start.elapsed() < Duration::from_millis(300) {
            sent += bucket.take_up_to(100);
            std::thread::sleep(Duration::from_millis(5));
        }
        let allowed = 500.0 + 1000.0 * start.elapsed().as_secs_f64();
        // Never more than the burst plus the rate over the time taken; and the refill works.
        assert!(sent as f64 <= allowed + 1.0 && sent >= 700, "{sent} of {allowed}");
    }
}
