//! The gRPC ingest endpoint: authenticates every call against the sensor registry,
//! stores batches durably and only then acknowledges them, and answers anything malformed
//! with an error status (never a crash).

use std::{
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt as _};
use tonic::{
    codec::CompressionEncoding,
    metadata::MetadataMap,
    transport::{Certificate, Identity, Server, ServerTlsConfig},
    Request, Response, Status, Streaming,
};

use crate::{
    keys,
    pb::{
        ingest_server::{Ingest, IngestServer},
        Ack, EventBatch, Excerpt, ExcerptAck, Health, HeartbeatReply, RegisterReply, SensorInfo,
    },
    store::{ExcerptUpload, Store},
};

/// Largest message accepted (a sensor batch is at most about 1 MiB before compression).
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;
/// Largest message decoded: an excerpt carries a pcap of up to 8 MiB plus its other fields.
const MAX_DECODED_BYTES: usize = crate::store::MAX_EXCERPT_PCAP_BYTES + (64 << 10);
/// Most events in one batch.
pub const MAX_BATCH_EVENTS: usize = 20_000;
/// How often an open stream looks at the registry again, so a revocation cuts it off.
const RECHECK: Duration = Duration::from_secs(5);

pub struct IngestService {
    store: Arc<dyn Store>,
    /// The client certificate must name the sensor its access key belongs to.
    bind_cert_names: bool,
}

impl IngestService {
    pub fn new(store: Arc<dyn Store>, bind_cert_names: bool) -> Self {
        Self { store, bind_cert_names }
    }

    /// The sensor id of a call whose key matches an active sensor.
    async fn authenticate<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let id = self.authenticate_key(request.metadata()).await?;
        if self.bind_cert_names {
            if let Some(certs) = request.peer_certs() {
                let leaf = certs.first().map(|c| c.as_ref()).unwrap_or_default();
                let names = certificate_names(leaf);
                if !names.iter().any(|n| n == &id) {
                    return Err(Status::permission_denied(format!(
                        "the client certificate names {names:?}, not sensor {id}: issue the sensor a certificate whose CN or a DNS name is its id (tap-cloud certs init --sensor {id}), or serve with --any-client-cert-name"
                    )));
                }
            }
        }
        Ok(id)
    }

    async fn authenticate_key(&self, md: &MetadataMap) -> Result<String, Status> {
        let id = md
            .get("x-dctap-sensor-id")
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Status::unauthenticated("missing x-dctap-sensor-id"))?
            .to_string();
        // Named in the refusals below: a bounded one.
        crate::limits::text("x-dctap-sensor-id", &id, crate::limits::SENSOR_ID).map_err(Status::unauthenticated)?;
        let key = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing access key (authorization: Bearer ...)"))?
            .to_string();
        check_key(Arc::clone(&self.store), id, key).await
    }
}

async fn check_key(store: Arc<dyn Store>, id: String, key: String) -> Result<String, Status> {
    let lookup = id.clone();
    let record = blocking(move || store.sensor(&lookup)).await?;
    match record {
        None => {
            Err(Status::unauthenticated(format!("unknown sensor {id}: register it with `tap-cloud sensors add {id}`")))
        }
        Some(r) if r.key_sha256 != keys::hash(&key) => {
            Err(Status::unauthenticated(format!("wrong access key for sensor {id}")))
        }
        Some(r) if r.revoked_unix_ns.is_some() => {
            Err(Status::permission_denied(format!("the access key of sensor {id} was revoked")))
        }
        Some(_) => Ok(id),
    }
}

/// The common names and DNS names of a DER certificate (empty when it does not parse).
fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer as _};
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der) else { return Vec::new() };
    let mut names: Vec<String> =
        cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok().map(str::to_string)).collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(d) = name {
                names.push(d.to_string());
            }
        }
    }
    names
}

/// Runs store work off the async threads; a store failure is the cloud's problem, reported
/// as unavailable so the sensor retries.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            log::error!("store: {e:#}");
            Err(Status::unavailable(format!("store: {e:#}")))
        }
        Err(e) => Err(Status::internal(format!("store task: {e}"))),
    }
}

/// What a sensor says of itself, within the bounds of [`crate::limits`].
fn check_sensor_info(info: &SensorInfo) -> Result<(), Status> {
    use crate::limits::*;
    text("SensorInfo.sensor_id", &info.sensor_id, SENSOR_ID)
        .and_then(|()| text("SensorInfo.hostname", &info.hostname, HOSTNAME))
        .and_then(|()| text("SensorInfo.version", &info.version, VERSION))
        .and_then(|()| {
            let dcs = info.monitored_dcs.iter().map(String::as_str);
            list("SensorInfo.monitored_dcs", dcs, MONITORED_DCS, MONITORED_DC)
        })
        .and_then(|()| {
            let caps = info.capabilities.iter().map(String::as_str);
            list("SensorInfo.capabilities", caps, CAPABILITIES, CAPABILITY)
        })
        .map_err(Status::invalid_argument)
}

/// A heartbeat's health, within the bounds of [`crate::limits`].
fn check_health(health: &Health) -> Result<(), Status> {
    use crate::limits::*;
    list("Health.alerts", health.alerts.iter().map(String::as_str), HEALTH_ALERTS, HEALTH_ALERT)
        .and_then(|()| {
            if health.counters.len() > HEALTH_COUNTERS {
                return Err(format!("Health.counters: {} entries (at most {HEALTH_COUNTERS})", health.counters.len()));
            }
            health.counters.keys().try_for_each(|name| text("Health.counters name", name, COUNTER_NAME))
        })
        .map_err(Status::invalid_argument)
}

fn validate(batch: &EventBatch, sensor_id: &str) -> Result<(), Status> {
    if batch.events.len() > MAX_BATCH_EVENTS {
        return Err(Status::invalid_argument(format!(
            "batch of {} events (at most {MAX_BATCH_EVENTS})",
            batch.events.len()
        )));
    }
    if !batch.spooled_unix_ns.is_empty() && batch.spooled_unix_ns.len() != batch.events.len() {
        return Err(Status::invalid_argument("spooled_unix_ns must be empty or one per event"));
    }
    let mut last = 0;
    for ev in &batch.events {
        if ev.seq == 0 || ev.seq > i64::MAX as u64 {
            return Err(Status::invalid_argument(format!("event sequence number {} out of range", ev.seq)));
        }
        if ev.seq <= last {
            return Err(Status::invalid_argument(format!("sequence numbers not increasing ({last} then {})", ev.seq)));
        }
        if ev.sensor_id != sensor_id {
            return Err(Status::permission_denied(format!(
                "event {} claims sensor {:?}, the connection is sensor {sensor_id:?}",
                ev.seq, ev.sensor_id
            )));
        }
        last = ev.seq;
    }
    Ok(())
}

/// How far after the sensor's clock (its spool time) an event may be dated: a frame is
/// captured before it is spooled, so more is a broken or forged time.
const MAX_AHEAD_OF_SENSOR_NS: i64 = 3_600_000_000_000;

/// Gives every event a time the detections can trust: one outside the accepted range, or
/// later than the sensor spooled it, takes its spool time (the cloud's own clock when that
/// is no better). Returns how many were changed.
fn clamp_times(batch: &mut EventBatch, received_unix_ns: i64) -> u32 {
    let mut clamped = 0;
    for (i, ev) in batch.events.iter_mut().enumerate() {
        let spooled = batch.spooled_unix_ns.get(i).copied().filter(|t| crate::sane_time(*t));
        let ahead = spooled.is_some_and(|s| ev.time_unix_ns.saturating_sub(s) > MAX_AHEAD_OF_SENSOR_NS);
        if !crate::sane_time(ev.time_unix_ns) || ahead {
            ev.time_unix_ns = spooled.unwrap_or(received_unix_ns);
            clamped += 1;
        }
    }
    clamped
}

type AckStream = Pin<Box<dyn Stream<Item = Result<Ack, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn register(&self, request: Request<SensorInfo>) -> Result<Response<RegisterReply>, Status> {
        let id = self.authenticate(&request).await?;
        let info = request.into_inner();
        if let Err(status) = check_sensor_info(&info) {
            log::warn!("sensor {id}: registration refused: {}", status.message());
            return Err(status);
        }
        if info.sensor_id != id {
            return Err(Status::permission_denied(format!(
                "registration for {:?} on a connection of sensor {id:?}",
                info.sensor_id
            )));
        }
        let store = Arc::clone(&self.store);
        let stored_through = blocking(move || {
            store.record_registration(&info)?;
            store.stored_through(&info.sensor_id)
        })
        .await?;
        log::info!("sensor {id} registered; holds its events up to {stored_through}");
        Ok(Response::new(RegisterReply { stored_through, cloud_time_unix_ns: crate::unix_ns() }))
    }

    type StreamStream = AckStream;

    async fn stream(&self, request: Request<Streaming<EventBatch>>) -> Result<Response<AckStream>, Status> {
        let id = self.authenticate(&request).await?;
        let key = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_string();
        let mut inbound = request.into_inner();
        let store = Arc::clone(&self.store);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut checked = Instant::now();
            while let Some(next) = inbound.next().await {
                let reply = async {
                    let mut batch = next?;
                    if checked.elapsed() >= RECHECK {
                        check_key(Arc::clone(&store), id.clone(), key.clone()).await?;
                        checked = Instant::now();
                    }
                    validate(&batch, &id)?;
                    let (first_seq, last_seq) = match (batch.events.first(), batch.events.last()) {
                        (Some(f), Some(l)) => (f.seq, l.seq),
                        _ => return Ok(None),
                    };
                    let clamped = clamp_times(&mut batch, crate::unix_ns());
                    if clamped > 0 {
                        log::warn!(
                            "sensor {id}: {clamped} event(s) of {first_seq}..={last_seq} dated impossibly (before 1990, \
                             from 2100 on, or over an hour after the sensor spooled them); stored at their spool time"
                        );
                    }
                    let (s, sid) = (Arc::clone(&store), id.clone());
                    let outcome =
                        blocking(move || s.insert_events(&sid, &batch.events, &batch.spooled_unix_ns)).await?;
                    if let Some((seq, held)) = outcome.late {
                        return Err(Status::failed_precondition(format!(
                            "event {seq} is new but the cloud already holds or has examined this sensor's events up \
                             to {held}: sequence numbers only grow, and detection never goes back (was the spool \
                             directory replaced while another sensor kept the id?); nothing of {first_seq}..={last_seq} \
                             was stored"
                        )));
                    }
                    Ok::<_, Status>(Some(Ack {
                        first_seq,
                        last_seq,
                        stored: outcome.stored,
                        duplicates: outcome.duplicates,
                        clamped,
                    }))
                }
                .await;
                match reply {
                    Ok(Some(ack)) => {
                        if tx.send(Ok(ack)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(status) => {
                        log::warn!("sensor {id}: stream ended: {}", status.message());
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn upload_excerpt(&self, request: Request<Excerpt>) -> Result<Response<ExcerptAck>, Status> {
        let id = self.authenticate(&request).await?;
        let excerpt = request.into_inner();
        let (store, sensor) = (Arc::clone(&self.store), id.clone());
        let (excerpt_id, bytes, frames) = (excerpt.id, excerpt.pcap.len(), excerpt.frames);
        let outcome = blocking(move || store.save_excerpt(&sensor, &excerpt, crate::unix_ns())).await?;
        match outcome {
            ExcerptUpload::Saved => {
                log::info!("sensor {id}: excerpt {excerpt_id} stored ({frames} frames, {bytes} bytes)");
                Ok(Response::new(ExcerptAck {}))
            }
            ExcerptUpload::AlreadyAnswered => Ok(Response::new(ExcerptAck {})),
            ExcerptUpload::NotYours => {
                log::warn!("sensor {id}: upload for excerpt {excerpt_id}, which it was not asked for");
                Err(Status::permission_denied(format!("excerpt {excerpt_id} was not asked of sensor {id}")))
            }
            ExcerptUpload::Invalid(why) => {
                log::warn!("sensor {id}: excerpt {excerpt_id} refused: {why}");
                Err(Status::invalid_argument(format!("excerpt {excerpt_id}: {why}")))
            }
        }
    }

    /// Records the sensor's health and hands it the excerpts it is asked for.
    async fn heartbeat(&self, request: Request<Health>) -> Result<Response<HeartbeatReply>, Status> {
        let id = self.authenticate(&request).await?;
        let mut health = request.into_inner();
        if let Err(status) = check_health(&health) {
            log::warn!("sensor {id}: heartbeat refused: {}", status.message());
            return Err(status);
        }
        health.sensor_id = id;
        let now = crate::unix_ns();
        let store = Arc::clone(&self.store);
        let excerpts = blocking(move || {
            store.record_heartbeat(&health, now)?;
            store.pending_excerpts(&health.sensor_id, now)
        })
        .await?;
        Ok(Response::new(HeartbeatReply { cloud_time_unix_ns: crate::unix_ns(), excerpts }))
    }
}

/// Server certificate and key, and the CA whose certificates sensors must present.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Accept a client certificate whatever sensor it names (only the access key then says
    /// which sensor is calling). Off: the certificate's CN or a DNS name must be the id.
    pub any_client_name: bool,
}

impl ServerTls {
    fn config(&self) -> anyhow::Result<ServerTlsConfig> {
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("read {}", p.display()));
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?))
            .client_ca_root(Certificate::from_pem(read(&self.ca)?)))
    }
}

/// Serves ingest on `listener` until `shutdown` resolves. `tls: None` is plaintext
/// (`--insecure`, local demos only). Each `reload` notification (SIGHUP) reads the
/// certificate, key and CA files again: when they are valid, a server with them takes over
/// the listening socket (nothing queued on it is lost) and the previous one stops
/// accepting and lets its connections finish; when they are not, the running server stays
/// and the error is logged.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<ServerTls>,
    store: Arc<dyn Store>,
    shutdown: impl std::future::Future<Output = ()> + Send,
    reload: Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    let bind_cert_names = tls.as_ref().is_some_and(|t| !t.any_client_name);
    let service = IngestServer::new(IngestService::new(store, bind_cert_names))
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(MAX_DECODED_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let builder = |config: Option<ServerTlsConfig>| -> anyhow::Result<Server> {
        let builder = Server::builder()
            .concurrency_limit_per_connection(32)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)));
        Ok(match config {
            Some(c) => builder.tls_config(c).context("TLS configuration")?,
            None => builder,
        })
    };
    let config = |tls: &Option<ServerTls>| tls.as_ref().map(ServerTls::config).transpose();
    let mut server = builder(config(&tls)?)?;
    // Each generation of the server accepts on its own descriptor of the one socket.
    let socket = listener.into_std().context("listening socket")?;
    tokio::pin!(shutdown);
    loop {
        let incoming = tokio::net::TcpListener::from_std(socket.try_clone().context("listening socket")?)?;
        let (retire, retired) = tokio::sync::oneshot::channel::<()>();
        let mut running = tokio::spawn(server.add_service(service.clone()).serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(incoming),
            async {
                let _ = retired.await;
            },
        ));
        server = loop {
            tokio::select! {
                () = &mut shutdown => {
                    let _ = retire.send(());
                    return running.await.context("gRPC server task")?.context("gRPC server");
                }
                ended = &mut running => {
                    ended.context("gRPC server task")?.context("gRPC server")?;
                    anyhow::bail!("the gRPC server stopped by itself");
                }
                () = reload.notified() => {
                    if tls.is_none() {
                        continue;
                    }
                    match config(&tls).and_then(builder) {
                        Ok(next) => {
                            log::info!("ingest: certificates reloaded; new connections use them");
                            break next;
                        }
                        Err(e) => log::error!("ingest: certificates not reloaded, keeping the current ones: {e:#}"),
                    }
                }
            }
        };
        // The retired server stops accepting and finishes its connections on its own.
        let _ = retire.send(());
    }
}

/// Binds the listen address with a clear error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listen on {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::ActivityEvent;

    fn batch(seqs: &[u64], sensor: &str) -> EventBatch {
        EventBatch {
            events: seqs
                .iter()
                .map(|&seq| ActivityEvent { seq, sensor_id: sensor.into(), ..Default::default() })
                .collect(),
            spooled_unix_ns: vec![],
        }
    }

    /// Ingest served on a loopback port of its own, in plaintext.
    struct Serving {
        addr: SocketAddr,
        stop: tokio::sync::oneshot::Sender<()>,
        server: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    impl Serving {
        async fn start(store: &Arc<dyn Store>) -> Self {
            let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let shutdown = async {
                let _ = stopped.await;
            };
            let server = tokio::spawn(serve(listener, None, Arc::clone(store), shutdown, Arc::default()));
            Self { addr, stop, server }
        }

        async fn stop(self) {
            let _ = self.stop.send(());
            self.server.await.unwrap().unwrap();
        }
    }

    /// A unary call through a real tonic server on loopback (the cloud builds no client, so
    /// the generic one with the prost codec).
    async fn call<Req: prost::Message + 'static, Resp: prost::Message + Default + 'static>(
        addr: SocketAddr,
        method: &'static str,
        sensor: &str,
        key: &str,
        msg: Req,
    ) -> Result<Resp, Status> {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(16 << 20);
        grpc.ready().await.unwrap();
        let mut req = Request::new(msg);
        req.metadata_mut().insert("x-dctap-sensor-id", sensor.parse().unwrap());
        req.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
        grpc.unary(req, path, tonic_prost::ProstCodec::<Req, Resp>::default()).await.map(Response::into_inner)
    }

    #[tokio::test]
    async fn a_heartbeat_hands_out_the_sensors_excerpt_requests_and_only_its_own_upload_is_stored() {
        use crate::{
            detect::Alert,
            store::{ExcerptWanted, SqliteStore},
        };
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        for s in ["s1", "s2"] {
            store.add_sensor(s, &keys::hash(&format!("key-{s}"))).unwrap();
        }
        let mut alert = Alert {
            id: 0,
            detection: "kerberoasting".into(),
            title: "Kerberoasting".into(),
            severity: "medium".into(),
            mitre: String::new(),
            account: String::new(),
            src_ip: "10.1.1.1".into(),
            dc_ip: "10.0.0.10".into(),
            dcs: Vec::new(),
            first_seen_ns: 1,
            last_seen_ns: 1,
            description: String::new(),
            evidence: vec![],
            incident_id: 0,
        };
        store.save_alert(&mut alert, 1).unwrap();
        let wanted = ExcerptWanted {
            alert_id: alert.id,
            sensor_id: "s1".into(),
            client_ip: "10.1.1.1".into(),
            client_port: 50_123,
            dc_ip: "10.0.0.10".into(),
            dc_port: 88,
            from_unix_ns: 10,
            to_unix_ns: 20,
        };
        let id = store.request_excerpt(&wanted).unwrap();

        let server = Serving::start(&store).await;
        let addr = server.addr;
        const HEARTBEAT: &str = "/dctap.v1.Ingest/Heartbeat";
        const UPLOAD: &str = "/dctap.v1.Ingest/UploadExcerpt";
        let health = |s: &str| Health { sensor_id: s.into(), ..Default::default() };

        let reply: HeartbeatReply = call(addr, HEARTBEAT, "s2", "key-s2", health("s2")).await.unwrap();
        assert!(reply.excerpts.is_empty(), "not another sensor's requests");
        let reply: HeartbeatReply = call(addr, HEARTBEAT, "s1", "key-s1", health("s1")).await.unwrap();
        assert_eq!(reply.excerpts.len(), 1);
        let r = &reply.excerpts[0];
        assert_eq!(
            (r.id, r.client_ip.as_str(), r.client_port, r.dc_ip.as_str(), r.dc_port, r.from_unix_ns, r.to_unix_ns),
            (id, "10.1.1.1", 50_123, "10.0.0.10", 88, 10, 20)
        );
        let reply: HeartbeatReply = call(addr, HEARTBEAT, "s1", "key-s1", health("s1")).await.unwrap();
        assert!(reply.excerpts.is_empty(), "asked once, not again ten seconds later");

        // The largest pcap the contract allows passes the message size limit.
        let frame = vec![0x5a; crate::store::MAX_EXCERPT_PCAP_BYTES - 24 - 16];
        let file = crate::store::sample_pcap(&[&frame]);
        assert_eq!(file.len(), crate::store::MAX_EXCERPT_PCAP_BYTES);
        let upload = Excerpt { id, pcap: file.clone(), frames: 1, truncated: true, error: String::new() };
        // Another sensor's upload for this request, a wrong key: refused, nothing stored.
        let err = call::<_, ExcerptAck>(addr, UPLOAD, "s2", "key-s2", upload.clone()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        let err = call::<_, ExcerptAck>(addr, UPLOAD, "s1", "key-s2", upload.clone()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
        let x = store.alert_excerpt(alert.id, true).unwrap().unwrap();
        assert_eq!((x.status.as_str(), x.pcap_bytes), ("asked", 0));
        let not_pcap = Excerpt { id, pcap: b"GIF89a and so on, not a capture".to_vec(), ..Default::default() };
        let err = call::<_, ExcerptAck>(addr, UPLOAD, "s2", "key-s2", not_pcap).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "whatever it holds");

        call::<_, ExcerptAck>(addr, UPLOAD, "s1", "key-s1", upload.clone()).await.unwrap();
        let x = store.alert_excerpt(alert.id, true).unwrap().unwrap();
        assert_eq!((x.status.as_str(), x.frames, x.truncated), ("done", 1, true));
        assert!(x.pcap.as_deref() == Some(file.as_slice()), "the bytes as sent");
        // A resend (the acknowledgement was lost) is acknowledged and changes nothing.
        call::<_, ExcerptAck>(addr, UPLOAD, "s1", "key-s1", upload).await.unwrap();

        // Not a pcap: refused with the reason, and the excerpt fails.
        let mut second = alert.clone();
        second.id = 0;
        second.src_ip = "10.9.9.9".into();
        store.save_alert(&mut second, 1).unwrap();
        let id2 = store.request_excerpt(&ExcerptWanted { alert_id: second.id, ..wanted }).unwrap();
        let bogus = Excerpt { id: id2, pcap: vec![0; 100], ..Default::default() };
        let err = call::<_, ExcerptAck>(addr, UPLOAD, "s1", "key-s1", bogus).await.unwrap_err();
        assert!(err.code() == tonic::Code::InvalidArgument && err.message().contains("not a pcap"), "{err:?}");
        assert_eq!(store.alert_excerpt(second.id, false).unwrap().unwrap().status, "failed");

        server.stop().await;
    }

    /// One batch on a fresh Stream call: its acknowledgement, or the status that ended it.
    async fn send(addr: SocketAddr, sensor: &str, key: &str, batch: EventBatch) -> Result<Ack, Status> {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let mut req = Request::new(tokio_stream::iter(vec![batch]));
        req.metadata_mut().insert("x-dctap-sensor-id", sensor.parse().unwrap());
        req.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/dctap.v1.Ingest/Stream");
        let mut acks =
            grpc.streaming(req, path, tonic_prost::ProstCodec::<EventBatch, Ack>::default()).await?.into_inner();
        match acks.message().await {
            Ok(Some(ack)) => Ok(ack),
            Ok(None) => Err(Status::unknown("no acknowledgement")),
            Err(status) => Err(status),
        }
    }

    /// What a crafted capture or a broken sensor sends: impossible times are stored at the
    /// sensor's spool time and counted in the acknowledgement; new events below what the
    /// cloud holds are refused with the reason; a heartbeat from i64::MIN is recorded.
    #[tokio::test]
    async fn impossible_times_are_clamped_late_events_refused_and_any_heartbeat_clock_recorded() {
        use crate::store::SqliteStore;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        store.add_sensor("s1", &keys::hash("key-s1")).unwrap();
        let server = Serving::start(&store).await;
        let addr = server.addr;
        let spooled = 1_800_000_000_000_000_000;
        let mut b = batch(&[1, 2, 3, 4, 5, 6], "s1");
        let times = [i64::MIN, i64::MAX, 0, spooled - 5, spooled + 2 * MAX_AHEAD_OF_SENSOR_NS, spooled];
        for (ev, t) in b.events.iter_mut().zip(times) {
            ev.time_unix_ns = t;
        }
        b.spooled_unix_ns = vec![spooled; 6];
        b.spooled_unix_ns[5] = i64::MIN;
        let before = crate::unix_ns();
        let ack = send(addr, "s1", "key-s1", b).await.unwrap();
        assert_eq!((ack.stored, ack.clamped), (6, 4));
        let stored: Vec<i64> = (1..=6).map(|seq| store.event("s1", seq).unwrap().unwrap().event.time_unix_ns).collect();
        assert_eq!(&stored[..5], &[spooled, spooled, spooled, spooled - 5, spooled]);
        assert!(stored[5] == spooled, "a sane time stays, whatever the spool time says");

        let mut gap = batch(&[10], "s1");
        gap.events[0].time_unix_ns = spooled;
        send(addr, "s1", "key-s1", gap).await.unwrap();
        let mut late = batch(&[7], "s1");
        late.events[0].time_unix_ns = spooled;
        let err = send(addr, "s1", "key-s1", late).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("event 7") && err.message().contains("up to 10"), "{}", err.message());
        assert!(store.event("s1", 7).unwrap().is_none());

        let health = Health { sensor_id: "s1".into(), sensor_time_unix_ns: i64::MIN, ..Default::default() };
        let _: HeartbeatReply = call(addr, "/dctap.v1.Ingest/Heartbeat", "s1", "key-s1", health).await.unwrap();
        let s = store.sensors().unwrap().into_iter().find(|s| s.id == "s1").unwrap();
        assert!(s.clock_skew_ns.is_some_and(|k| k < 0) && s.last_heartbeat_unix_ns.is_some_and(|t| t >= before));

        server.stop().await;
    }

    /// Every field a sensor registers or reports that is stored has a bound: at the bound it
    /// is stored, one byte or one entry over it the call is refused with INVALID_ARGUMENT
    /// naming the field and the limit, and nothing of it is stored.
    #[tokio::test]
    async fn registration_and_heartbeat_fields_over_their_limits_are_refused_naming_the_field() {
        use crate::store::SqliteStore;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        store.add_sensor("s1", &keys::hash("key-s1")).unwrap();
        let server = Serving::start(&store).await;
        let addr = server.addr;
        const REGISTER: &str = "/dctap.v1.Ingest/Register";
        const HEARTBEAT: &str = "/dctap.v1.Ingest/Heartbeat";
        let n = |count: usize, len: usize| -> Vec<String> { (0..count).map(|i| format!("{i:0len$}")).collect() };

        // Everything at its limit: stored as sent.
        let full = SensorInfo {
            sensor_id: "s1".into(),
            version: "v".repeat(64),
            monitored_dcs: n(crate::limits::MONITORED_DCS, 64),
            capabilities: n(16, 32),
            hostname: "h".repeat(255),
        };
        let _: RegisterReply = call(addr, REGISTER, "s1", "key-s1", full.clone()).await.unwrap();
        let counters: std::collections::HashMap<String, u64> = n(256, 64).into_iter().map(|k| (k, 1)).collect();
        let health = Health {
            sensor_id: "s1".into(),
            counters,
            alerts: n(crate::limits::HEALTH_ALERTS, 512),
            ..Default::default()
        };
        let _: HeartbeatReply = call(addr, HEARTBEAT, "s1", "key-s1", health.clone()).await.unwrap();
        let stored = store.sensor("s1").unwrap().unwrap();
        assert_eq!((stored.hostname.len(), stored.monitored_dcs.len(), stored.capabilities.len()), (255, 1024, 16));
        assert_eq!((stored.health_alerts.len(), stored.health_counters.len()), (1024, 256));

        // One over, field by field.
        let over_info: Vec<(SensorInfo, &str)> = vec![
            (
                SensorInfo { hostname: "h".repeat(256), ..full.clone() },
                "SensorInfo.hostname of 256 bytes (at most 255)",
            ),
            (
                SensorInfo { hostname: "h".repeat(4 << 20), ..full.clone() },
                "SensorInfo.hostname of 4194304 bytes (at most 255)",
            ),
            (SensorInfo { version: "v".repeat(65), ..full.clone() }, "SensorInfo.version of 65 bytes (at most 64)"),
            (
                SensorInfo { monitored_dcs: n(1025, 8), ..full.clone() },
                "SensorInfo.monitored_dcs: 1025 entries (at most 1024)",
            ),
            (
                SensorInfo { monitored_dcs: vec!["10.0.0.1".into(), "d".repeat(65)], ..full.clone() },
                "SensorInfo.monitored_dcs[1] of 65 bytes (at most 64)",
            ),
            (SensorInfo { capabilities: n(17, 4), ..full.clone() }, "SensorInfo.capabilities: 17 entries (at most 16)"),
            (
                SensorInfo { capabilities: vec!["c".repeat(33)], ..full.clone() },
                "SensorInfo.capabilities[0] of 33 bytes (at most 32)",
            ),
            (
                SensorInfo { sensor_id: "s".repeat(1 << 20), ..full.clone() },
                "SensorInfo.sensor_id of 1048576 bytes (at most 128)",
            ),
        ];
        for (info, why) in over_info {
            let err = call::<_, RegisterReply>(addr, REGISTER, "s1", "key-s1", info).await.unwrap_err();
            assert_eq!((err.code(), err.message()), (tonic::Code::InvalidArgument, why));
        }
        let mut many_counters = health.counters.clone();
        many_counters.insert("one-more".into(), 1);
        let mut long_name = health.counters.clone();
        long_name.remove("0".repeat(64).as_str());
        long_name.insert("c".repeat(65), 1);
        let over_health: Vec<(Health, &str)> = vec![
            (Health { alerts: n(1025, 8), ..health.clone() }, "Health.alerts: 1025 entries (at most 1024)"),
            (Health { alerts: n(5000, 1024), ..health.clone() }, "Health.alerts: 5000 entries (at most 1024)"),
            (Health { alerts: vec!["a".repeat(513)], ..health.clone() }, "Health.alerts[0] of 513 bytes (at most 512)"),
            (Health { counters: many_counters, ..health.clone() }, "Health.counters: 257 entries (at most 256)"),
            (Health { counters: long_name, ..health.clone() }, "Health.counters name of 65 bytes (at most 64)"),
        ];
        for (h, why) in over_health {
            let err = call::<_, HeartbeatReply>(addr, HEARTBEAT, "s1", "key-s1", h).await.unwrap_err();
            assert_eq!((err.code(), err.message()), (tonic::Code::InvalidArgument, why));
        }
        let after = store.sensor("s1").unwrap().unwrap();
        assert_eq!(after, stored, "nothing of a refused call is stored");

        server.stop().await;
    }

    #[test]
    fn malformed_batches_are_refused_with_a_reason() {
        assert!(validate(&batch(&[1, 2, 3], "s1"), "s1").is_ok());
        let cases = [
            (batch(&[0], "s1"), "out of range"),
            (batch(&[2, 2], "s1"), "not increasing"),
            (batch(&[1], "s2"), "claims sensor"),
            (EventBatch { spooled_unix_ns: vec![1, 2], ..batch(&[1], "s1") }, "one per event"),
        ];
        for (b, reason) in cases {
            let err = validate(&b, "s1").unwrap_err();
            assert!(err.message().contains(reason), "{}", err.message());
        }
    }
}
