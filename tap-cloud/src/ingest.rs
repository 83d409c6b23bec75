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
    store::Store,
};

/// Largest message accepted (a sensor batch is at most about 1 MiB before compression).
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;
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

type AckStream = Pin<Box<dyn Stream<Item = Result<Ack, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn register(&self, request: Request<SensorInfo>) -> Result<Response<RegisterReply>, Status> {
        let id = self.authenticate(&request).await?;
        let info = request.into_inner();
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
                    let batch = next?;
                    if checked.elapsed() >= RECHECK {
                        check_key(Arc::clone(&store), id.clone(), key.clone()).await?;
                        checked = Instant::now();
                    }
                    validate(&batch, &id)?;
                    let (first_seq, last_seq) = match (batch.events.first(), batch.events.last()) {
                        (Some(f), Some(l)) => (f.seq, l.seq),
                        _ => return Ok(None),
                    };
                    let (s, sid) = (Arc::clone(&store), id.clone());
                    let outcome =
                        blocking(move || s.insert_events(&sid, &batch.events, &batch.spooled_unix_ns)).await?;
                    Ok::<_, Status>(Some(Ack {
                        first_seq,
                        last_seq,
                        stored: outcome.stored,
                        duplicates: outcome.duplicates,
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
        let _ = self.authenticate(&request).await?;
        Err(Status::failed_precondition("this cloud asks for no excerpts"))
    }

    async fn heartbeat(&self, request: Request<Health>) -> Result<Response<HeartbeatReply>, Status> {
        let id = self.authenticate(&request).await?;
        let mut health = request.into_inner();
        health.sensor_id = id;
        let now = crate::unix_ns();
        let store = Arc::clone(&self.store);
        blocking(move || store.record_heartbeat(&health, now)).await?;
        Ok(Response::new(HeartbeatReply { cloud_time_unix_ns: crate::unix_ns(), excerpts: Vec::new() }))
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
/// (`--insecure`, local demos only).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<ServerTls>,
    store: Arc<dyn Store>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let bind_cert_names = tls.as_ref().is_some_and(|t| !t.any_client_name);
    let service = IngestServer::new(IngestService::new(store, bind_cert_names))
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut builder = Server::builder()
        .concurrency_limit_per_connection(32)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)));
    if let Some(tls) = &tls {
        builder = builder.tls_config(tls.config()?).context("TLS configuration")?;
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    builder.add_service(service).serve_with_incoming_shutdown(incoming, shutdown).await.context("gRPC server")?;
    Ok(())
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
