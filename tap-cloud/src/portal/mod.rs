//! The analysts' portal: server-rendered pages and the JSON API behind them, served by
//! axum from the `tap-cloud` binary. Every page and API call needs a signed-in session
//! (local users, argon2 password hashes); changes need the session's CSRF token and the
//! analyst or admin role. Sign-in is throttled per account and per client address, and
//! every sign-in, failure, refusal and sign-out goes to the audit log the admin reads.

mod pages;
pub mod throttle;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use argon2::{Argon2, PasswordHasher as _, PasswordVerifier as _};
use axum::{
    extract::{ConnectInfo, FromRequestParts, Path, Query, State},
    http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode},
    middleware,
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
    Form, Json, Router,
};
use serde::Deserialize;

use crate::store::{AuditEntry, Store, User};

/// A session ends after this long without a request.
const SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);
const COOKIE: &str = "dctap_session";
pub const ROLES: [&str; 3] = ["viewer", "analyst", "admin"];
pub const STATUSES: [&str; 4] = ["new", "in_progress", "resolved", "false_positive"];

/// Hashes a password for `tap-cloud users add`.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string()).map_err(|e| anyhow::anyhow!("{e}"))
}

#[derive(Clone, Debug)]
pub struct Session {
    pub user: String,
    pub role: String,
    pub csrf: String,
    last_seen: Instant,
}

impl Session {
    pub fn can_change(&self) -> bool {
        self.role == "analyst" || self.role == "admin"
    }

    pub fn is_admin(&self) -> bool {
        self.role == "admin"
    }
}

/// How the portal is deployed.
#[derive(Clone, Debug, Default)]
pub struct PortalOptions {
    /// Reverse proxies whose X-Forwarded-For names the client (`serve --trusted-proxy`).
    pub trusted_proxies: Vec<IpAddr>,
}

#[derive(Clone)]
pub struct Portal {
    pub store: Arc<dyn Store>,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
    throttle: Arc<Mutex<throttle::Throttle>>,
    trusted_proxies: Arc<[IpAddr]>,
}

impl Portal {
    fn throttle(&self) -> std::sync::MutexGuard<'_, throttle::Throttle> {
        self.throttle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends to the audit log; a store failure is logged, and the answer goes out anyway.
    async fn audit(&self, event: &str, user: &str, source: Option<IpAddr>, detail: String) {
        let entry = AuditEntry {
            at_unix_ns: crate::unix_ns(),
            event: event.into(),
            user: user.into(),
            source: source.map(|s| s.to_string()).unwrap_or_default(),
            detail,
        };
        let store = Arc::clone(&self.store);
        if let Err(e) = blocking(move || store.record_audit(&entry)).await {
            log::error!("portal: audit log: {}", e.1);
        }
    }
}

/// The client's address: the connection's peer, or, when the peer is a trusted proxy, the
/// address it wrote last in X-Forwarded-For. None when there is no connection (a router
/// called directly).
pub struct ClientAddr(pub Option<IpAddr>);

impl FromRequestParts<Portal> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, portal: &Portal) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        Ok(ClientAddr(peer.map(|p| client_address(p, &parts.headers, &portal.trusted_proxies))))
    }
}

/// The address of the client behind `peer`. A proxy appends the address it was called
/// from to X-Forwarded-For; whatever the client wrote there itself comes before that and
/// is not believed. So the entries are read from the last, each trusted proxy's saying
/// who called it, until one that is not a trusted proxy: the client.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|t| t.to_canonical() == ip.to_canonical());
    let mut client = peer.to_canonical();
    if !is_trusted(client) {
        return client;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for entry in forwarded.iter().rev() {
        let Ok(ip) = entry.parse::<IpAddr>() else { break };
        client = ip.to_canonical();
        if !is_trusted(client) {
            break;
        }
    }
    client
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    // Without randomness there is no safe session; refusing to serve is the right failure.
    getrandom::fill(&mut b).expect("no randomness for a session token");
    crate::keys::hex(&b)
}

/// Rejection of a request without a valid session: pages go to the sign-in form, API calls
/// get 401.
pub enum NotSignedIn {
    Page,
    Api,
}

impl IntoResponse for NotSignedIn {
    fn into_response(self) -> Response {
        match self {
            NotSignedIn::Page => Redirect::to("/login").into_response(),
            NotSignedIn::Api => {
                (StatusCode::UNAUTHORIZED, Json(serde_json::json!({"error": "sign in first"}))).into_response()
            }
        }
    }
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == COOKIE).then(|| v.to_string())
    })
}

impl FromRequestParts<Portal> for Session {
    type Rejection = NotSignedIn;

    async fn from_request_parts(parts: &mut Parts, portal: &Portal) -> Result<Self, Self::Rejection> {
        let api = parts.uri.path().starts_with("/api/");
        let reject = || if api { NotSignedIn::Api } else { NotSignedIn::Page };
        let token = cookie_token(&parts.headers).ok_or_else(reject)?;
        let mut sessions = portal.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let session = sessions.get_mut(&token).ok_or_else(reject)?;
        if session.last_seen.elapsed() > SESSION_IDLE {
            sessions.remove(&token);
            return Err(reject());
        }
        session.last_seen = Instant::now();
        Ok(session.clone())
    }
}

pub type PortalResult<T> = Result<T, PortalError>;

/// An error page or JSON error with its status.
pub struct PortalError(StatusCode, String);

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<anyhow::Error> for PortalError {
    fn from(e: anyhow::Error) -> Self {
        log::error!("portal: {e:#}");
        PortalError(StatusCode::INTERNAL_SERVER_ERROR, "internal error (see the cloud's log)".into())
    }
}

fn forbidden(why: &str) -> PortalError {
    PortalError(StatusCode::FORBIDDEN, why.into())
}

fn not_found() -> PortalError {
    PortalError(StatusCode::NOT_FOUND, "no such incident".into())
}

/// Runs store work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> PortalResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PortalError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(Into::into)
}

/// What the pages may load and where they may be shown: only the portal's own files (the
/// pages carry no inline script or style, so nothing a page shows can run), no plugins, no
/// `<base>`, forms only to the portal, and never inside a frame (a framed incident page
/// with its Save form is a click-jacking target).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// Headers on every answer, errors and redirects included: the policy above, the older
/// browsers' no-framing header, no MIME sniffing (a download or an error is never read as
/// a page), no referrer (a URL names accounts and hosts), and nothing kept in a cache (the
/// pages and the API show what a session may see). An answer that says how it may be
/// cached keeps that.
pub async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

pub fn router(store: Arc<dyn Store>) -> Router {
    router_with(store, PortalOptions::default())
}

pub fn router_with(store: Arc<dyn Store>, options: PortalOptions) -> Router {
    let portal = Portal {
        store,
        sessions: Arc::default(),
        throttle: Arc::default(),
        trusted_proxies: options.trusted_proxies.into(),
    };
    Router::new()
        .route("/", get(|| async { Redirect::to("/incidents") }))
        .route("/login", get(pages::login_form).post(login))
        .route("/logout", post(logout))
        .route("/incidents", get(pages::incidents))
        .route("/incidents/{id}", get(pages::incident).post(change_incident_form))
        .route("/sensors", get(pages::sensors))
        .route("/activity", get(pages::activity))
        .route("/accounts/{name}", get(pages::account))
        .route("/hosts/{ip}", get(pages::host))
        .route("/audit", get(pages::audit))
        .route("/api/audit", get(api_audit))
        .route("/api/activity", get(api_activity))
        .route("/api/accounts/{name}", get(api_account))
        .route("/api/hosts/{ip}", get(api_host))
        .route("/api/incidents", get(api_incidents))
        .route("/api/incidents/{id}", get(api_incident).post(change_incident_api))
        .route("/api/alerts", get(api_alerts))
        .route("/api/alerts/{id}/pcap", get(api_alert_pcap))
        .route("/api/sensors", get(api_sensors))
        // Like everything else, the API's description is for signed-in users only.
        .route(
            "/api/openapi.json",
            get(|_session: Session| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/static/{name}", get(pages::static_file))
        .fallback(pages::not_found)
        .layer(middleware::map_response(security_headers))
        .with_state(portal)
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

/// Longest user name taken at sign-in and by `users add`: a longer one is refused before it
/// is looked up, counted against the account or hashed against.
pub const MAX_USER_NAME: usize = 256;

/// A sign-in page answer with its status.
fn login_answer(status: StatusCode, message: &str) -> Response {
    (status, Html(pages::login_page(Some(message)))).into_response()
}

async fn login(
    State(portal): State<Portal>,
    ClientAddr(source): ClientAddr,
    Form(form): Form<LoginForm>,
) -> PortalResult<Response> {
    let from = source.map_or("an unknown address".to_string(), |s| s.to_string());
    let name = form.username;
    if name.len() > MAX_USER_NAME {
        let shown = crate::text::shortened(&name, 64).into_owned();
        // Counted against the address, so a flood of them is throttled like wrong passwords.
        let counted = portal.throttle().attempt(None, source, Instant::now());
        if counted.map_or_else(|r| r.first, |()| true) {
            log::warn!("portal: sign-in from {from} refused: a user name of {} bytes: {shown}", name.len());
            let detail = format!("user name of {} bytes (at most {MAX_USER_NAME})", name.len());
            portal.audit("refused", &shown, source, detail).await;
        }
        return Ok(login_answer(
            StatusCode::BAD_REQUEST,
            &format!("The user name is longer than {MAX_USER_NAME} bytes."),
        ));
    }
    // The guard must be gone before the first await.
    let attempt = portal.throttle().attempt(Some(&name), source, Instant::now());
    if let Err(refused) = attempt {
        let wait = refused.retry_after.as_secs() + u64::from(refused.retry_after.subsec_nanos() > 0);
        if refused.first {
            log::warn!(
                "portal: sign-in for {} from {from} refused for {wait} s: too many failures",
                crate::text::visible(&name)
            );
            portal.audit("throttled", &name, source, format!("refused for {wait} s after repeated failures")).await;
        }
        let mut answer = login_answer(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Too many failed sign-ins for this user or from this address: try again in {wait} s."),
        );
        answer.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return Ok(answer);
    }
    let store = Arc::clone(&portal.store);
    let lookup = name.clone();
    let user: Option<User> = blocking(move || store.user(&lookup)).await?;
    // Hash even for an unknown user, so timing does not tell which names exist.
    let (hash, known) = match &user {
        Some(u) => (u.password_hash.clone(), true),
        None => (dummy_hash().to_string(), false),
    };
    let password = form.password;
    let ok = tokio::task::spawn_blocking(move || {
        Argon2::default().verify_password(password.as_bytes(), hash.as_str()).is_ok()
    })
    .await
    .unwrap_or(false);
    let Some(user) = user.filter(|_| ok && known) else {
        log::warn!("portal: failed sign-in for {} from {from}", crate::text::visible(&name));
        let why = if known { "wrong password" } else { "no such user" };
        portal.audit("failed", &name, source, why.into()).await;
        return Ok(login_answer(StatusCode::UNAUTHORIZED, "Wrong user name or password."));
    };
    portal.throttle().succeeded(&name, source);
    let token = random_token();
    let session = Session { user: user.name.clone(), role: user.role, csrf: random_token(), last_seen: Instant::now() };
    portal.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(token.clone(), session);
    log::info!("portal: {} signed in from {from}", crate::text::visible(&user.name));
    portal.audit("signed_in", &user.name, source, String::new()).await;
    let cookie =
        format!("{COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={}", SESSION_IDLE.as_secs());
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/incidents")).into_response())
}

/// The hash of a random password, verified against when the user is unknown.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password(&random_token()).unwrap_or_default())
}

async fn logout(
    State(portal): State<Portal>,
    headers: HeaderMap,
    session: Session,
    ClientAddr(source): ClientAddr,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if form.csrf != session.csrf {
        return forbidden("bad CSRF token").into_response();
    }
    if let Some(token) = cookie_token(&headers) {
        portal.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&token);
    }
    portal.audit("signed_out", &session.user, source, String::new()).await;
    let cookie = format!("{COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

#[derive(Deserialize)]
struct CsrfOnly {
    csrf: String,
}

#[derive(Deserialize, Default)]
pub struct IncidentChange {
    #[serde(default)]
    pub csrf: String,
    pub status: Option<String>,
    pub assignee: Option<String>,
    #[serde(default)]
    pub comment: String,
}

async fn apply_change(
    portal: &Portal,
    session: &Session,
    id: i64,
    change: IncidentChange,
    csrf: &str,
) -> PortalResult<()> {
    if csrf != session.csrf {
        return Err(forbidden("bad or missing CSRF token"));
    }
    if !session.can_change() {
        return Err(forbidden("the viewer role cannot change incidents"));
    }
    if let Some(s) = change.status.as_deref().filter(|s| !s.is_empty()) {
        if !STATUSES.contains(&s) {
            return Err(PortalError(StatusCode::BAD_REQUEST, format!("status {s:?}: one of {}", STATUSES.join(", "))));
        }
    }
    let assignee = change.assignee.as_deref().map(str::trim);
    crate::limits::text("assignee", assignee.unwrap_or_default(), crate::limits::ASSIGNEE)
        .and_then(|()| crate::limits::text("comment", &change.comment, crate::limits::COMMENT))
        .map_err(|why| PortalError(StatusCode::BAD_REQUEST, why))?;
    let store = Arc::clone(&portal.store);
    let author = session.user.clone();
    let found = blocking(move || {
        store.update_incident(
            id,
            change.status.as_deref().filter(|s| !s.is_empty()),
            change.assignee.as_deref().map(str::trim),
            &change.comment,
            &author,
        )
    })
    .await?;
    if found {
        Ok(())
    } else {
        Err(not_found())
    }
}

async fn change_incident_form(
    State(portal): State<Portal>,
    session: Session,
    Path(id): Path<i64>,
    Form(change): Form<IncidentChange>,
) -> Result<Response, pages::PageError> {
    let csrf = change.csrf.clone();
    apply_change(&portal, &session, id, change, &csrf).await?;
    Ok(Redirect::to(&format!("/incidents/{id}")).into_response())
}

async fn change_incident_api(
    State(portal): State<Portal>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Json(change): Json<IncidentChange>,
) -> PortalResult<Json<serde_json::Value>> {
    let csrf = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    apply_change(&portal, &session, id, change, &csrf).await?;
    Ok(Json(serde_json::json!({ "ok": true })))
}

#[derive(Deserialize, Default)]
pub struct IncidentFilter {
    pub status: Option<String>,
    pub q: Option<String>,
}

/// An incident as the list shows it: its row, and what its alerts detected and on whom.
#[derive(serde::Serialize)]
pub struct IncidentSummary {
    #[serde(flatten)]
    pub incident: crate::store::Incident,
    /// Alert titles, in the order they were first raised, each once.
    pub detections: Vec<String>,
    /// Source hosts and accounts of its alerts, each once.
    pub hosts: Vec<String>,
    pub accounts: Vec<String>,
}

fn push_once(list: &mut Vec<String>, item: &str) {
    if !item.is_empty() && !list.iter().any(|x| x == item) {
        list.push(item.to_string());
    }
}

/// Incidents matching the filter, newest first. The search matches the title, the
/// detections, the hosts and the accounts.
pub async fn filtered_incidents(portal: &Portal, filter: &IncidentFilter) -> PortalResult<Vec<IncidentSummary>> {
    let store = Arc::clone(&portal.store);
    let (incidents, alerts) = blocking(move || Ok((store.incidents()?, store.alerts()?))).await?;
    let mut list: Vec<IncidentSummary> = incidents
        .into_iter()
        .rev()
        .map(|incident| IncidentSummary { incident, detections: vec![], hosts: vec![], accounts: vec![] })
        .collect();
    let at: HashMap<i64, usize> = list.iter().enumerate().map(|(n, i)| (i.incident.id, n)).collect();
    for a in &alerts {
        if let Some(&n) = at.get(&a.incident_id) {
            let s = &mut list[n];
            push_once(&mut s.detections, &a.title);
            push_once(&mut s.hosts, &a.src_ip);
            push_once(&mut s.accounts, &a.account);
        }
    }
    if let Some(s) = filter.status.as_deref().filter(|s| !s.is_empty()) {
        list.retain(|i| i.incident.status == s);
    }
    if let Some(q) = filter.q.as_deref().map(str::to_lowercase).filter(|q| !q.is_empty()) {
        list.retain(|i| {
            std::iter::once(&i.incident.title)
                .chain(&i.detections)
                .chain(&i.hosts)
                .chain(&i.accounts)
                .any(|t| t.to_lowercase().contains(&q))
        });
    }
    Ok(list)
}

async fn api_incidents(
    State(portal): State<Portal>,
    _session: Session,
    Query(filter): Query<IncidentFilter>,
) -> PortalResult<Json<serde_json::Value>> {
    Ok(Json(serde_json::json!({ "incidents": filtered_incidents(&portal, &filter).await? })))
}

/// An incident with its alerts, each with its evidence events, and the comment log.
pub async fn incident_detail(portal: &Portal, id: i64) -> PortalResult<serde_json::Value> {
    let store = Arc::clone(&portal.store);
    let detail = blocking(move || {
        let Some((incident, assignee)) = store.incident(id)? else { return Ok(None) };
        let mut alerts = Vec::new();
        for a in store.incident_alerts(id)? {
            let mut evidence = Vec::new();
            for (sensor, seq) in &a.evidence {
                if let Some(e) = store.event(sensor, *seq)? {
                    evidence.push(serde_json::to_value(&e.event)?);
                }
            }
            let mut v = serde_json::to_value(&a)?;
            v["evidence_events"] = serde_json::Value::Array(evidence);
            v["pcap"] = pcap_summary(store.alert_excerpt(a.id, false)?.as_ref());
            alerts.push(v);
        }
        let comments = store.incident_comments(id)?;
        Ok(Some(serde_json::json!({
            "incident": incident, "assignee": assignee, "alerts": alerts, "comments": comments,
        })))
    })
    .await?;
    detail.ok_or_else(not_found)
}

async fn api_incident(
    State(portal): State<Portal>,
    _session: Session,
    Path(id): Path<i64>,
) -> PortalResult<Json<serde_json::Value>> {
    Ok(Json(incident_detail(&portal, id).await?))
}

/// An alert's evidence pcap for the API and the page: null when none was asked for (the
/// sensor reads files, or the alert predates excerpts), else its state and where to get it.
pub fn pcap_summary(x: Option<&crate::store::ExcerptRecord>) -> serde_json::Value {
    let Some(x) = x else { return serde_json::Value::Null };
    serde_json::json!({
        "status": match x.status.as_str() { "done" => "done", "failed" => "failed", _ => "waiting" },
        "sensor_id": x.wanted.sensor_id,
        "frames": x.frames,
        "truncated": x.truncated,
        "bytes": x.pcap_bytes,
        "error": x.error,
        "url": (x.status == "done").then(|| format!("/api/alerts/{}/pcap", x.wanted.alert_id)),
    })
}

async fn api_alerts(State(portal): State<Portal>, _session: Session) -> PortalResult<Json<serde_json::Value>> {
    let store = Arc::clone(&portal.store);
    let alerts = blocking(move || {
        let excerpts: HashMap<i64, crate::store::ExcerptRecord> =
            store.excerpts()?.into_iter().map(|x| (x.wanted.alert_id, x)).collect();
        let mut list = Vec::new();
        for a in store.alerts()? {
            let mut v = serde_json::to_value(&a)?;
            v["pcap"] = pcap_summary(excerpts.get(&a.id));
            list.push(v);
        }
        Ok(list)
    })
    .await?;
    Ok(Json(serde_json::json!({ "alerts": alerts })))
}

/// The pcap excerpt of an alert's evidence, as a download.
async fn api_alert_pcap(
    State(portal): State<Portal>,
    _session: Session,
    Path(id): Path<i64>,
) -> PortalResult<Response> {
    let store = Arc::clone(&portal.store);
    let excerpt = blocking(move || store.alert_excerpt(id, true)).await?;
    let missing = |why: String| PortalError(StatusCode::NOT_FOUND, why);
    match excerpt {
        None => Err(missing(format!("alert {id} has no pcap excerpt"))),
        Some(x) => match (x.status.as_str(), x.pcap) {
            ("done", Some(pcap)) => Ok((
                [
                    (header::CONTENT_TYPE, "application/vnd.tcpdump.pcap".to_string()),
                    (header::CONTENT_DISPOSITION, format!("attachment; filename=\"alert-{id}.pcap\"")),
                ],
                pcap,
            )
                .into_response()),
            ("failed", _) => Err(missing(format!("the pcap excerpt of alert {id} is not available: {}", x.error))),
            _ => Err(missing(format!("the pcap excerpt of alert {id} is not there yet: waiting for the sensor"))),
        },
    }
}

/// How many audit log lines a page or an API call shows at most (the store keeps more).
#[derive(Deserialize, Default)]
pub struct AuditParams {
    pub limit: Option<usize>,
}

/// The audit log's latest lines, newest first, for an admin only.
pub async fn audit_entries(portal: &Portal, session: &Session, limit: usize) -> PortalResult<Vec<AuditEntry>> {
    if !session.is_admin() {
        return Err(forbidden("only the admin role reads the audit log"));
    }
    let store = Arc::clone(&portal.store);
    blocking(move || store.audit_log(limit)).await
}

async fn api_audit(
    State(portal): State<Portal>,
    session: Session,
    Query(p): Query<AuditParams>,
) -> PortalResult<Json<serde_json::Value>> {
    let entries = audit_entries(&portal, &session, p.limit.unwrap_or(500)).await?;
    Ok(Json(serde_json::json!({ "entries": entries })))
}

async fn api_sensors(State(portal): State<Portal>, _session: Session) -> PortalResult<Json<serde_json::Value>> {
    let store = Arc::clone(&portal.store);
    Ok(Json(serde_json::json!({ "sensors": blocking(move || store.sensors()).await? })))
}

/// Activity search with times in seconds (what the form and the API take).
#[derive(Deserialize, Default)]
pub struct ActivityParams {
    pub account: Option<String>,
    pub host: Option<String>,
    pub protocol: Option<String>,
    /// Unix seconds.
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub limit: Option<usize>,
}

pub async fn activity_events(portal: &Portal, p: &ActivityParams) -> PortalResult<Vec<serde_json::Value>> {
    let q = crate::store::EventQuery {
        account: p.account.clone().filter(|s| !s.is_empty()),
        host: p.host.clone().filter(|s| !s.is_empty()),
        protocol: p.protocol.clone().filter(|s| !s.is_empty()),
        from_ns: p.from.map(|s| s.saturating_mul(1_000_000_000)),
        to_ns: p.to.map(|s| s.saturating_mul(1_000_000_000)),
        limit: p.limit,
    };
    let store = Arc::clone(&portal.store);
    let events = blocking(move || store.search_events(&q)).await?;
    events
        .iter()
        .map(|e| serde_json::to_value(&e.event).map_err(|e| PortalError::from(anyhow::Error::from(e))))
        .collect()
}

async fn api_activity(
    State(portal): State<Portal>,
    _session: Session,
    Query(p): Query<ActivityParams>,
) -> PortalResult<Json<serde_json::Value>> {
    Ok(Json(serde_json::json!({ "events": activity_events(&portal, &p).await? })))
}

/// An account: what was learned about it, its alerts and its recent activity.
pub async fn account_detail(portal: &Portal, name: &str) -> PortalResult<serde_json::Value> {
    let key = crate::detect::rules::account_key(name);
    let store = Arc::clone(&portal.store);
    let k = key.clone();
    let (profile, alerts) = blocking(move || {
        let profile: Option<crate::detect::profiles::AccountProfile> =
            store.profile_row(crate::detect::profiles::kind::ACCOUNT, &k)?.and_then(|j| serde_json::from_str(&j).ok());
        let alerts: Vec<_> =
            store.alerts()?.into_iter().filter(|a| crate::detect::rules::account_key(&a.account) == k).collect();
        Ok((profile, alerts))
    })
    .await?;
    let activity =
        activity_events(portal, &ActivityParams { account: Some(key.clone()), limit: Some(100), ..Default::default() })
            .await?;
    Ok(serde_json::json!({ "account": key, "profile": profile, "alerts": alerts, "activity": activity }))
}

async fn api_account(
    State(portal): State<Portal>,
    _session: Session,
    Path(name): Path<String>,
) -> PortalResult<Json<serde_json::Value>> {
    Ok(Json(account_detail(&portal, &name).await?))
}

/// A computer (source address): the accounts seen on it, its alerts, its recent activity.
pub async fn host_detail(portal: &Portal, ip: &str) -> PortalResult<serde_json::Value> {
    let store = Arc::clone(&portal.store);
    let host = ip.to_string();
    let alerts: Vec<_> =
        blocking(move || Ok(store.alerts()?.into_iter().filter(|a| a.src_ip == host).collect::<Vec<_>>())).await?;
    let activity =
        activity_events(portal, &ActivityParams { host: Some(ip.to_string()), limit: Some(200), ..Default::default() })
            .await?;
    let mut accounts: Vec<String> =
        activity.iter().filter_map(|e| e["account"].as_str()).filter(|a| !a.is_empty()).map(String::from).collect();
    accounts.sort();
    accounts.dedup();
    Ok(serde_json::json!({ "host": ip, "accounts": accounts, "alerts": alerts, "activity": activity }))
}

async fn api_host(
    State(portal): State<Portal>,
    _session: Session,
    Path(ip): Path<String>,
) -> PortalResult<Json<serde_json::Value>> {
    Ok(Json(host_detail(&portal, &ip).await?))
}

/// Prometheus text exposition of the cloud's state (`serve --metrics ADDR`): stored events,
/// alerts and incidents by severity or status, sensors and their freshness, and the syslog
/// messages cut to fit their bound.
pub fn metrics_router(store: Arc<dyn Store>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let store = Arc::clone(&store);
                async move {
                    let text = blocking(move || {
                        let mut out = String::new();
                        let mut gauge = |name: &str, labels: &str, value: u64| {
                            out.push_str(&format!("dctap_cloud_{name}{labels} {value}\n"));
                        };
                        gauge("events_stored", "", store.event_count()?);
                        // Events detection failed on and skipped (a bug some input met).
                        gauge(
                            "detection_failures",
                            "",
                            crate::detect::runner::DetectionFailures::load(store.as_ref()).count,
                        );
                        gauge("export_syslog_truncated_total", "", crate::detect::export::truncated_total());
                        let alerts = store.alerts()?;
                        for sev in crate::pb::vocab::Severity::ALL.map(|s| s.as_str()) {
                            gauge(
                                "alerts",
                                &format!("{{severity=\"{sev}\"}}"),
                                alerts.iter().filter(|a| a.severity == sev).count() as u64,
                            );
                        }
                        let incidents = store.incidents()?;
                        for status in STATUSES {
                            gauge(
                                "incidents",
                                &format!("{{status=\"{status}\"}}"),
                                incidents.iter().filter(|i| i.status == status).count() as u64,
                            );
                        }
                        let now = crate::unix_ns();
                        for s in store.sensors()? {
                            let age = s
                                .last_heartbeat_unix_ns
                                .map_or(u64::MAX, |t| (now.saturating_sub(t).max(0) / 1_000_000_000) as u64);
                            gauge(
                                "sensor_heartbeat_age_seconds",
                                &format!("{{sensor=\"{}\"}}", s.id.replace(['"', '\\'], "_")),
                                age.min(1 << 40),
                            );
                        }
                        Ok(out)
                    })
                    .await;
                    match text {
                        Ok(t) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], t).into_response(),
                        Err(e) => e.into_response(),
                    }
                }
            }),
        )
        .layer(middleware::map_response(security_headers))
}

/// Serves the portal on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
    options: PortalOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = router_with(store, options).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

/// The API, described for clients (OpenAPI 3.1).
const OPENAPI: &str = r##"{
  "openapi": "3.1.0",
  "info": {"title": "dctap portal API", "version": "1",
    "description": "Every call needs the session cookie a sign-in at POST /login sets; without it the answer is 401. Changes also need the session's CSRF token."},
  "components": {"securitySchemes": {"session": {"type": "apiKey", "in": "cookie", "name": "dctap_session"}},
    "responses": {"NotSignedIn": {"description": "no session, or an expired or signed-out one: {error}"}}},
  "security": [{"session": []}],
  "paths": {
    "/api/incidents": {"get": {"summary": "Incidents, newest first",
      "parameters": [{"name": "status", "in": "query", "schema": {"type": "string", "enum": ["new", "in_progress", "resolved", "false_positive"]}},
                     {"name": "q", "in": "query", "description": "text in the title, a detection, a host or an account", "schema": {"type": "string"}}],
      "responses": {"200": {"description": "{incidents: [Incident with detections, hosts, accounts]}"}, "401": {"$ref": "#/components/responses/NotSignedIn"}}}},
    "/api/incidents/{id}": {
      "get": {"summary": "An incident with its alerts (each with its evidence events) and its comment log",
        "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
        "responses": {"200": {"description": "{incident, assignee, alerts, comments}"}, "401": {"$ref": "#/components/responses/NotSignedIn"},
                      "404": {"description": "no such incident"}}},
      "post": {"summary": "Change status or assignee, add a comment (analyst or admin; header x-csrf-token)",
        "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}},
                       {"name": "x-csrf-token", "in": "header", "required": true, "schema": {"type": "string"}}],
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {
          "status": {"type": "string", "enum": ["new", "in_progress", "resolved", "false_positive"]},
          "assignee": {"type": "string", "description": "at most 256 bytes"},
          "comment": {"type": "string", "description": "at most 4096 bytes"}}}}}},
        "responses": {"200": {"description": "{ok: true}"}, "400": {"description": "unknown status, or a field too long: {error: \"assignee of N bytes (at most 256)\"}"},
                      "401": {"$ref": "#/components/responses/NotSignedIn"}, "403": {"description": "viewer role or bad CSRF token"},
                      "404": {"description": "no such incident"}}}},
    "/api/activity": {"get": {"summary": "Activity search, newest first",
      "parameters": [{"name": "account", "in": "query", "schema": {"type": "string"}}, {"name": "host", "in": "query", "schema": {"type": "string"}},
                     {"name": "protocol", "in": "query", "schema": {"type": "string"}}, {"name": "from", "in": "query", "description": "unix seconds", "schema": {"type": "integer"}},
                     {"name": "to", "in": "query", "description": "unix seconds", "schema": {"type": "integer"}}, {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 5000}}],
      "responses": {"200": {"description": "{events: [ActivityEvent]}"}, "401": {"$ref": "#/components/responses/NotSignedIn"}}}},
    "/api/accounts/{name}": {"get": {"summary": "An account: learned profile, alerts, recent activity",
      "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
      "responses": {"200": {"description": "{account, profile, alerts, activity}"}, "401": {"$ref": "#/components/responses/NotSignedIn"}}}},
    "/api/hosts/{ip}": {"get": {"summary": "A computer: accounts seen on it, alerts, recent activity",
      "parameters": [{"name": "ip", "in": "path", "required": true, "schema": {"type": "string"}}],
      "responses": {"200": {"description": "{host, accounts, alerts, activity}"}, "401": {"$ref": "#/components/responses/NotSignedIn"}}}},
    "/api/alerts": {"get": {"summary": "All alerts, each with the state of its evidence pcap",
      "responses": {"200": {"description": "{alerts: [Alert with pcap: null or {status: done|waiting|failed, sensor_id, frames, truncated, bytes, error, url}]}"}, "401": {"$ref": "#/components/responses/NotSignedIn"}}}},
    "/api/alerts/{id}/pcap": {"get": {"summary": "The pcap excerpt of an alert's evidence: the conversation of its first evidence event, 30 s either side, as the sensor that saw it cut it (at most 8 MiB)",
      "parameters": [{"name": "id", "in": "path", "required": true, "description": "alert id", "schema": {"type": "integer"}}],
      "responses": {"200": {"description": "the pcap file, as an attachment named alert-<id>.pcap",
                            "content": {"application/vnd.tcpdump.pcap": {"schema": {"type": "string", "format": "binary"}}}},
                    "401": {"$ref": "#/components/responses/NotSignedIn"},
                    "404": {"description": "no excerpt for this alert, or not ready: waiting for the sensor, or not available (the error says why): {error}"}}}},
    "/api/audit": {"get": {"summary": "The audit log: sign-ins, failed and refused (throttled, or a user name over 256 bytes) sign-ins, sign-outs; newest first (admin only)",
      "parameters": [{"name": "limit", "in": "query", "description": "at most this many lines (default 500; the cloud keeps the last 10000)", "schema": {"type": "integer"}}],
      "responses": {"200": {"description": "{entries: [{at_unix_ns, event: signed_in|failed|throttled|refused|signed_out, user, source, detail}]}"},
                    "401": {"$ref": "#/components/responses/NotSignedIn"}, "403": {"description": "not the admin role"}}}},
    "/api/sensors": {"get": {"summary": "Sensors with registration, last heartbeat and health",
      "responses": {"200": {"description": "{sensors: [Sensor]}"}, "401": {"$ref": "#/components/responses/NotSignedIn"}}}},
    "/api/openapi.json": {"get": {"summary": "This document",
      "responses": {"200": {"description": "OpenAPI 3.1"}, "401": {"$ref": "#/components/responses/NotSignedIn"}}}}
  }
}"##;
