//! The portal through its router, as a browser and an API client use it: nothing without
//! signing in, sign-in with the argon2-checked password, pages and API showing the incident
//! with its timeline and evidence, changes needing the CSRF token and a role that may
//! change, and whatever came off the wire escaped.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{header, HeaderMap, Request, StatusCode},
};
use tap_cloud::{
    detect::Alert,
    pb::{activity_event::Detail, ActivityEvent, Excerpt, Kerberos},
    portal,
    store::{ExcerptUpload, ExcerptWanted, SqliteStore, Store, User},
};
use tower::ServiceExt as _;

fn store_with_incident() -> Arc<dyn Store> {
    let store = SqliteStore::in_memory().unwrap();
    for (name, role) in [("ana", "analyst"), ("vic", "viewer")] {
        let hash = portal::hash_password(&format!("{name}-correct-horse")).unwrap();
        store.add_user(&User { name: name.into(), password_hash: hash, role: role.into() }).unwrap();
    }
    let event = ActivityEvent {
        sensor_id: "s1".into(),
        seq: 7,
        time_unix_ns: 1_795_749_927_000_000_000,
        src_ip: "10.77.0.20".into(),
        dc_ip: "10.77.0.10".into(),
        protocol: "kerberos".into(),
        account: "<script>alert(1)</script>".into(),
        result: "failure".into(),
        detail: Some(Detail::Kerberos(Kerberos { msg_type: 30, error_code: 24, ..Default::default() })),
        ..Default::default()
    };
    store.insert_events("s1", &[event], &[]).unwrap();
    let mut alert = Alert {
        id: 0,
        detection: "password_spray".into(),
        title: "Password spray".into(),
        severity: "high".into(),
        mitre: "T1110.003".into(),
        account: String::new(),
        src_ip: "10.77.0.20".into(),
        dc_ip: "10.77.0.10".into(),
        dcs: Vec::new(),
        first_seen_ns: 1_795_749_927_000_000_000,
        last_seen_ns: 1_795_749_928_000_000_000,
        description: "10.77.0.20 failed to log on as 5 different accounts".into(),
        evidence: vec![("s1".into(), 7)],
        incident_id: 0,
    };
    store.save_alert(&mut alert, 3_600_000_000_000).unwrap();
    // The sensor was asked for the pcap of the evidence and sent it.
    let id = store.request_excerpt(&excerpt_of(alert.id)).unwrap();
    assert_eq!(store.pending_excerpts("s1", 1).unwrap().len(), 1);
    let upload = Excerpt { id, pcap: pcap_file(&[b"first frame", b"second frame"]), frames: 2, ..Default::default() };
    assert_eq!(store.save_excerpt("s1", &upload, 2).unwrap(), ExcerptUpload::Saved);
    Arc::new(store)
}

/// The conversation of the evidence event, 30 s either side.
fn excerpt_of(alert_id: i64) -> ExcerptWanted {
    ExcerptWanted {
        alert_id,
        sensor_id: "s1".into(),
        client_ip: "10.77.0.20".into(),
        client_port: 50_000,
        dc_ip: "10.77.0.10".into(),
        dc_port: 88,
        from_unix_ns: 1_795_749_897_000_000_000,
        to_unix_ns: 1_795_749_957_000_000_000,
    }
}

/// A pcap file (nanosecond timestamps) holding these frames.
fn pcap_file(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = 0xa1b2_3c4du32.to_le_bytes().to_vec();
    out.extend_from_slice(&[2, 0, 4, 0]);
    for v in [0u32, 0, 65535, 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for f in frames {
        for v in [1_795_749_927u32, 0, f.len() as u32, f.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(f);
    }
    out
}

struct Client {
    app: axum::Router,
    cookie: Option<String>,
}

impl Client {
    async fn send(
        &self,
        method: &str,
        uri: &str,
        body: Option<(&str, String)>,
        csrf: Option<&str>,
    ) -> (StatusCode, String, Vec<String>) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(c) = &self.cookie {
            req = req.header(header::COOKIE, c);
        }
        if let Some(t) = csrf {
            req = req.header("x-csrf-token", t);
        }
        let req = match body {
            Some((ctype, b)) => req.header(header::CONTENT_TYPE, ctype).body(Body::from(b)),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let cookies =
            resp.headers().get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_string()).collect();
        let location = resp.headers().get(header::LOCATION).map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22).await.unwrap();
        (status, location.unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()), cookies)
    }

    /// The whole answer: status, headers and body.
    async fn answer(&self, method: &str, uri: &str, body: Option<(&str, String)>) -> (StatusCode, HeaderMap, String) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(c) = &self.cookie {
            req = req.header(header::COOKIE, c);
        }
        let req = match body {
            Some((ctype, b)) => req.header(header::CONTENT_TYPE, ctype).body(Body::from(b)),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22).await.unwrap();
        (status, headers, String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn login(app: &axum::Router, user: &str, password: &str) -> (StatusCode, Client) {
        let c = Client { app: app.clone(), cookie: None };
        let form = format!("username={user}&password={password}");
        let (status, _, cookies) =
            c.send("POST", "/login", Some(("application/x-www-form-urlencoded", form)), None).await;
        let cookie = cookies.first().map(|c| c.split(';').next().unwrap().to_string());
        if let Some(raw) = cookies.first() {
            for attr in ["HttpOnly", "Secure", "SameSite=Strict"] {
                assert!(raw.contains(attr), "session cookie without {attr}: {raw}");
            }
        }
        (status, Client { app: app.clone(), cookie })
    }
}

fn csrf_of(page: &str) -> String {
    let field = "name=\"csrf\" value=\"";
    let at = page.find(field).expect("a CSRF field") + field.len();
    page[at..].split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn nothing_is_readable_without_signing_in() {
    let app = portal::router(store_with_incident());
    let anon = Client { app: app.clone(), cookie: None };
    for page in ["/incidents", "/incidents/1", "/sensors", "/activity", "/accounts/alice", "/hosts/10.77.0.20"] {
        let (status, location, _) = anon.send("GET", page, None, None).await;
        assert_eq!((status, location.as_str()), (StatusCode::SEE_OTHER, "/login"), "{page}");
    }
    for api in [
        "/api/incidents",
        "/api/incidents/1",
        "/api/alerts",
        "/api/alerts/1/pcap",
        "/api/sensors",
        "/api/activity",
        "/api/hosts/10.77.0.20",
    ] {
        assert_eq!(anon.send("GET", api, None, None).await.0, StatusCode::UNAUTHORIZED, "{api}");
    }
    let forged = Client { app: app.clone(), cookie: Some("dctap_session=0123".into()) };
    assert_eq!(forged.send("GET", "/api/incidents", None, None).await.0, StatusCode::UNAUTHORIZED);
    let (status, nobody) = Client::login(&app, "ana", "wrong-password-here").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(nobody.cookie.is_none());
    assert_eq!(Client::login(&app, "mallory", "whatever-password").await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_analyst_sees_the_timeline_and_changes_the_incident_with_the_csrf_token() {
    let store = store_with_incident();
    let app = portal::router(Arc::clone(&store));
    let (status, ana) = Client::login(&app, "ana", "ana-correct-horse").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, list, _) = ana.send("GET", "/incidents", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(list.contains("Password spray (10.77.0.20)"), "{list}");
    let (_, page, _) = ana.send("GET", "/incidents/1", None, None).await;
    assert!(page.contains("failed to log on as 5 different accounts") && page.contains("T1110.003"));
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "evidence shown, escaped");
    assert!(!page.contains("<script>alert(1)"), "nothing from the wire runs in the page");
    let (_, json, _) = ana.send("GET", "/api/incidents/1", None, None).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["alerts"][0]["evidence_events"][0]["seq"], 7);

    let change =
        || Some(("application/json", r#"{"status":"in_progress","assignee":"ana","comment":"looking"}"#.to_string()));
    assert_eq!(ana.send("POST", "/api/incidents/1", change(), None).await.0, StatusCode::FORBIDDEN, "no CSRF token");
    assert_eq!(ana.send("POST", "/api/incidents/1", change(), Some("forged")).await.0, StatusCode::FORBIDDEN);
    let csrf = csrf_of(&page);
    assert_eq!(ana.send("POST", "/api/incidents/1", change(), Some(&csrf)).await.0, StatusCode::OK);
    let (incident, assignee) = store.incident(1).unwrap().unwrap();
    assert_eq!((incident.status.as_str(), assignee.as_str()), ("in_progress", "ana"));
    let log = store.incident_comments(1).unwrap();
    assert!(
        log[0].text.contains("status new → in_progress") && log[0].text.contains("looking") && log[0].author == "ana"
    );
    let bad = Some(("application/json", r#"{"status":"deleted"}"#.to_string()));
    assert_eq!(ana.send("POST", "/api/incidents/1", bad, Some(&csrf)).await.0, StatusCode::BAD_REQUEST);
    // The form path works the same way.
    let form =
        Some(("application/x-www-form-urlencoded", format!("csrf={csrf}&status=resolved&assignee=ana&comment=")));
    assert_eq!(ana.send("POST", "/incidents/1", form, None).await.0, StatusCode::SEE_OTHER);
    assert_eq!(store.incident(1).unwrap().unwrap().0.status, "resolved");
    let (_, filtered, _) = ana.send("GET", "/api/incidents?status=new", None, None).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&filtered).unwrap()["incidents"], serde_json::json!([]));
}

#[tokio::test]
async fn entity_pages_and_activity_search_show_what_a_host_and_an_account_did() {
    let app = portal::router(store_with_incident());
    let (_, vic) = Client::login(&app, "vic", "vic-correct-horse").await;
    let (status, host, _) = vic.send("GET", "/hosts/10.77.0.20", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(host.contains("Password spray") && host.contains("&lt;script&gt;"), "{host}");
    let (_, json, _) = vic.send("GET", "/api/activity?protocol=kerberos&host=10.77.0.20", None, None).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    let (_, json, _) = vic.send("GET", "/api/activity?protocol=ntlm", None, None).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&json).unwrap()["events"], serde_json::json!([]));
    let (status, page, _) = vic.send("GET", "/activity?host=10.77.0.20", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("/hosts/10.77.0.20"));
    // A name with characters that mean something in a URL or in HTML still makes a page.
    let (status, account, _) = vic.send("GET", "/accounts/%3Cscript%3Ealert(1)%3C%2Fscript%3E", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!account.contains("<script>alert"), "{account}");
}

#[tokio::test]
async fn an_account_page_takes_wildcard_characters_in_the_name_literally() {
    let store = store_with_incident();
    let events: Vec<ActivityEvent> = ["a_b@LAB.EXAMPLE", "axb@LAB.EXAMPLE", "100%@LAB.EXAMPLE", "LAB\\a_b"]
        .iter()
        .enumerate()
        .map(|(i, account)| ActivityEvent {
            sensor_id: "s1".into(),
            seq: 8 + i as u64,
            time_unix_ns: 1_795_749_930_000_000_000 + i as i64,
            protocol: "kerberos".into(),
            account: account.to_string(),
            ..Default::default()
        })
        .collect();
    store.insert_events("s1", &events, &[]).unwrap();
    let app = portal::router(store);
    let (_, vic) = Client::login(&app, "vic", "vic-correct-horse").await;
    let seqs = |json: String| -> Vec<u64> {
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["activity"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect()
    };
    assert_eq!(seqs(vic.send("GET", "/api/accounts/a_b", None, None).await.1), vec![11, 8]);
    assert_eq!(seqs(vic.send("GET", "/api/accounts/100%25", None, None).await.1), vec![10]);
    assert_eq!(seqs(vic.send("GET", "/api/accounts/%25", None, None).await.1), Vec::<u64>::new());
    assert_eq!(seqs(vic.send("GET", "/api/accounts/_", None, None).await.1), Vec::<u64>::new());
}

#[tokio::test]
async fn a_viewer_reads_but_cannot_change() {
    let store = store_with_incident();
    let app = portal::router(Arc::clone(&store));
    let (_, vic) = Client::login(&app, "vic", "vic-correct-horse").await;
    let (status, page, _) = vic.send("GET", "/incidents/1", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Viewers cannot change incidents"));
    let csrf = csrf_of(&page); // the sign-out form's token
    let change = Some(("application/json", r#"{"status":"false_positive"}"#.to_string()));
    assert_eq!(vic.send("POST", "/api/incidents/1", change, Some(&csrf)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(store.incident(1).unwrap().unwrap().0.status, "new");
}

#[tokio::test]
async fn metrics_count_events_alerts_and_incidents() {
    let app = portal::metrics_router(store_with_incident());
    let resp = app.oneshot(Request::builder().uri("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = String::from_utf8(axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
    for line in [
        "dctap_cloud_events_stored 1",
        "dctap_cloud_alerts{severity=\"high\"} 1",
        "dctap_cloud_incidents{status=\"new\"} 1",
        "dctap_cloud_export_syslog_truncated_total 0",
    ] {
        assert!(text.contains(line), "{line} not in {text}");
    }
}

/// An event detection failed on (a bug some input met) is a cloud health alert: on the
/// sensors page, with its message escaped, and in the metrics.
#[tokio::test]
async fn detection_failures_show_as_cloud_health_on_the_sensors_page_and_in_the_metrics() {
    use tap_cloud::detect::runner::{DetectionFailure, DetectionFailures, DETECTION_FAILURES};
    let store = store_with_incident();
    let healthy = portal::metrics_router(Arc::clone(&store));
    let resp = healthy.oneshot(Request::builder().uri("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    let text = String::from_utf8(axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
    assert!(text.contains("dctap_cloud_detection_failures 0"), "{text}");
    let failures = DetectionFailures {
        count: 2,
        recent: vec![DetectionFailure {
            at_unix_ns: 1_795_749_927_000_000_000,
            sensor_id: "s1".into(),
            seq: 7,
            message: "attempt to subtract with overflow <img src=x onerror=alert(1)>".into(),
        }],
    };
    store.save_state(DETECTION_FAILURES, &serde_json::to_string(&failures).unwrap()).unwrap();
    let metrics = portal::metrics_router(Arc::clone(&store));
    let resp = metrics.oneshot(Request::builder().uri("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    let text = String::from_utf8(axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
    assert!(text.contains("dctap_cloud_detection_failures 2"), "{text}");
    let app = portal::router(store);
    let (_, ana) = Client::login(&app, "ana", "ana-correct-horse").await;
    let (status, page, _) = ana.send("GET", "/sensors", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("cloud health") && page.contains("failed on 2 event(s)") && page.contains("event 7"),
        "{page}"
    );
    assert!(page.contains("&lt;img src=x") && !page.contains("<img src=x"), "escaped");
}

/// The API routes the router serves, read from its source, so a route added without a
/// line in the OpenAPI document fails the test below.
fn routed_api_paths() -> Vec<String> {
    let source = include_str!("../src/portal/mod.rs");
    let mut paths: Vec<String> = source
        .split(".route(")
        .skip(1)
        .filter_map(|chunk| chunk.trim_start().strip_prefix('"')?.split('"').next().map(String::from))
        .filter(|p| p.starts_with("/api/"))
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

#[tokio::test]
async fn every_documented_endpoint_refuses_callers_without_a_session_and_answers_signed_in_ones() {
    let store = store_with_incident();
    let app = portal::router(Arc::clone(&store));
    let anon = Client { app: app.clone(), cookie: None };
    let forged = Client { app: app.clone(), cookie: Some("dctap_session=00ff00ff".into()) };
    let (_, ana) = Client::login(&app, "ana", "ana-correct-horse").await;
    let (status, doc, _) = ana.send("GET", "/api/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_str(&doc).expect("the OpenAPI document is JSON");
    let documented: Vec<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let mut routed = routed_api_paths();
    assert!(routed.len() >= 8, "routes not found in the router's source: {routed:?}");
    routed.sort();
    let mut sorted = documented.clone();
    sorted.sort();
    assert_eq!(routed, sorted, "the router's API routes and the OpenAPI paths differ");

    let (_, page, _) = ana.send("GET", "/incidents/1", None, None).await;
    let csrf = csrf_of(&page);
    let mut called = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let uri = path.replace("{id}", "1").replace("{name}", "alice").replace("{ip}", "10.77.0.20");
        for (method, op) in ops.as_object().unwrap() {
            let method = method.to_uppercase();
            let what = format!("{method} {path}");
            assert!(op["responses"]["401"].is_object(), "{what} does not document its refusal (401)");
            let body = || (method == "POST").then(|| ("application/json", r#"{"comment":"seen"}"#.to_string()));
            // Without a session, or with a made-up one, even with a CSRF token: refused.
            for (who, client) in [("no session", &anon), ("a forged session", &forged)] {
                let (status, answer, _) = client.send(&method, &uri, body(), Some(&csrf)).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{what} with {who}");
                assert!(answer.contains("sign in first"), "{what} with {who}: {answer}");
            }
            // What only an admin may call says so, and refuses the analyst.
            let admin_only = op["responses"]["403"]["description"].as_str().is_some_and(|d| d.contains("admin"));
            let caller = if admin_only {
                assert_eq!(ana.send(&method, &uri, body(), Some(&csrf)).await.0, StatusCode::FORBIDDEN, "{what}");
                let store = Arc::clone(&store);
                add_user(&store, "ada", "admin");
                Client::login(&app, "ada", "ada-correct-horse").await.1
            } else {
                Client { app: app.clone(), cookie: ana.cookie.clone() }
            };
            let (status, answer, _) = caller.send(&method, &uri, body(), Some(&csrf)).await;
            assert_eq!(status, StatusCode::OK, "{what} signed in: {answer}");
            if path.ends_with("/pcap") {
                // A file, not JSON (its headers and bytes are checked below).
                assert!(!answer.is_empty(), "{what}");
            } else {
                let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(v.is_object(), "{what}: {answer}");
            }
            called.push(what);
        }
    }
    assert_eq!(called.len(), 11, "{called:?}");
    // Only the signed-in analyst's change went through.
    let log = store.incident_comments(1).unwrap();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!((log[0].author.as_str(), log[0].text.as_str()), ("ana", "seen"));
}

#[tokio::test]
async fn the_api_answers_each_endpoint_with_the_data_the_pages_show() {
    let app = portal::router(store_with_incident());
    let (_, ana) = Client::login(&app, "ana", "ana-correct-horse").await;
    let get = |uri: &'static str| {
        let ana = &ana;
        async move {
            let (status, body, _) = ana.send("GET", uri, None, None).await;
            assert_eq!(status, StatusCode::OK, "{uri}: {body}");
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        }
    };
    let list = get("/api/incidents").await;
    let first = &list["incidents"][0];
    assert_eq!((first["id"].as_i64(), first["status"].as_str()), (Some(1), Some("new")));
    assert_eq!(first["detections"], serde_json::json!(["Password spray"]));
    assert_eq!(first["hosts"], serde_json::json!(["10.77.0.20"]));
    // The search matches entities, not only titles.
    assert_eq!(get("/api/incidents?q=10.77.0.20").await["incidents"].as_array().unwrap().len(), 1);
    assert_eq!(get("/api/incidents?q=kerberoast").await["incidents"], serde_json::json!([]));
    let alerts = get("/api/alerts").await;
    assert_eq!(alerts["alerts"][0]["mitre"], "T1110.003");
    assert_eq!(get("/api/sensors").await["sensors"], serde_json::json!([]));
    let host = get("/api/hosts/10.77.0.20").await;
    assert_eq!(host["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(host["accounts"], serde_json::json!(["<script>alert(1)</script>"]));
    let account = get("/api/accounts/nobody").await;
    assert_eq!((account["account"].as_str(), account["profile"].is_null()), (Some("nobody"), true));
    let activity = get("/api/activity?from=1795749927&to=1795749927").await;
    assert_eq!(activity["events"].as_array().unwrap().len(), 1);
    assert_eq!(get("/api/activity?to=1795749926").await["events"], serde_json::json!([]));
}

#[tokio::test]
async fn each_alert_offers_its_evidence_pcap_or_says_why_not() {
    let store = store_with_incident();
    // Three more alerts in the incident: one whose sensor has not answered yet, one whose
    // sensor could not cut it, one for which none was asked.
    let mut ids = Vec::new();
    for detection in ["brute_force", "account_enumeration", "asrep_roasting"] {
        let mut a = store.alerts().unwrap().remove(0);
        (a.id, a.detection, a.title) = (0, detection.into(), format!("Alert {detection}"));
        store.save_alert(&mut a, 3_600_000_000_000).unwrap();
        ids.push(a.id);
    }
    store.request_excerpt(&excerpt_of(ids[0])).unwrap();
    let failed = store.request_excerpt(&excerpt_of(ids[1])).unwrap();
    let error = Excerpt { id: failed, error: "rotated away <before> the request".into(), ..Default::default() };
    assert_eq!(store.save_excerpt("s1", &error, 3).unwrap(), ExcerptUpload::Saved);

    let app = portal::router(Arc::clone(&store));
    let (_, vic) = Client::login(&app, "vic", "vic-correct-horse").await;
    let (status, page, _) = vic.send("GET", "/incidents/1", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<a href=\"/api/alerts/1/pcap\" download>download</a> (2 frames)"), "{page}");
    assert!(page.contains("waiting for the sensor"), "{page}");
    assert!(page.contains("not available: rotated away &lt;before&gt; the request"), "escaped: {page}");
    assert_eq!(page.matches("Evidence pcap:").count(), 3, "nothing for the alert without one");

    // The download: the bytes the sensor sent, as a pcap attachment.
    let get = |uri: String| {
        let req = Request::builder().uri(uri).header(header::COOKIE, vic.cookie.clone().unwrap());
        app.clone().oneshot(req.body(Body::empty()).unwrap())
    };
    let resp = get("/api/alerts/1/pcap".into()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert_eq!(h[header::CONTENT_TYPE], "application/vnd.tcpdump.pcap");
    assert_eq!(h[header::CONTENT_DISPOSITION], "attachment; filename=\"alert-1.pcap\"");
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    assert_eq!(bytes.as_ref(), pcap_file(&[b"first frame", b"second frame"]).as_slice());
    // Not ready, not available, none, no such alert: 404 with the reason.
    for (id, why) in [
        (ids[0], "waiting for the sensor"),
        (ids[1], "not available: rotated away"),
        (ids[2], "has no pcap excerpt"),
        (99, "has no pcap excerpt"),
    ] {
        let resp = get(format!("/api/alerts/{id}/pcap")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "alert {id}");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains(why), "alert {id}: {body:?}");
    }
    // The API says the same.
    let (_, json, _) = vic.send("GET", "/api/alerts", None, None).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let pcaps: Vec<_> = v["alerts"].as_array().unwrap().iter().map(|a| a["pcap"]["status"].clone()).collect();
    assert_eq!(pcaps, [serde_json::json!("done"), "waiting".into(), "failed".into(), serde_json::Value::Null]);
    let (_, json, _) = vic.send("GET", "/api/incidents/1", None, None).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["alerts"][0]["pcap"]["url"], "/api/alerts/1/pcap");
    assert_eq!(v["alerts"][0]["pcap"]["frames"], 2);
}

#[tokio::test]
async fn malformed_and_misdirected_requests_are_refused_and_change_nothing() {
    let store = store_with_incident();
    let app = portal::router(Arc::clone(&store));
    let (_, ana) = Client::login(&app, "ana", "ana-correct-horse").await;
    let (_, page, _) = ana.send("GET", "/incidents/1", None, None).await;
    let csrf = csrf_of(&page);
    let json = |b: &str| Some(("application/json", b.to_string()));

    assert_eq!(ana.send("GET", "/api/incidents/99", None, None).await.0, StatusCode::NOT_FOUND);
    let (status, page, _) = ana.send("GET", "/incidents/99", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("<h1>Not Found</h1>") && page.contains("no such incident"), "a page, not JSON: {page}");
    assert_eq!(ana.send("GET", "/api/incidents/x", None, None).await.0, StatusCode::BAD_REQUEST);
    let change = json(r#"{"status":"resolved"}"#);
    assert_eq!(ana.send("POST", "/api/incidents/99", change, Some(&csrf)).await.0, StatusCode::NOT_FOUND);
    let long = format!(r#"{{"comment":"{}"}}"#, "x".repeat(4097));
    assert_eq!(ana.send("POST", "/api/incidents/1", json(&long), Some(&csrf)).await.0, StatusCode::BAD_REQUEST);
    let (status, _, _) = ana.send("POST", "/api/incidents/1", json("status=resolved"), Some(&csrf)).await;
    assert!(status.is_client_error(), "a body that is not JSON: {status}");
    let form = Some(("application/x-www-form-urlencoded", "status=resolved".to_string()));
    let (status, _, _) = ana.send("POST", "/api/incidents/1", form, Some(&csrf)).await;
    assert!(status.is_client_error(), "a form body on the JSON API: {status}");
    assert!(ana.send("GET", "/api/activity?limit=many", None, None).await.0.is_client_error());
    let (status, _, _) = ana.send("DELETE", "/api/incidents/1", None, Some(&csrf)).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(store.incident(1).unwrap().unwrap().0.status, "new");
    assert!(store.incident_comments(1).unwrap().is_empty());
    // The form path refuses a missing or forged token too.
    for body in ["status=resolved", "csrf=forged&status=resolved"] {
        let form = Some(("application/x-www-form-urlencoded", body.to_string()));
        assert_eq!(ana.send("POST", "/incidents/1", form, None).await.0.as_u16() / 100, 4, "{body}");
    }
    assert_eq!(store.incident(1).unwrap().unwrap().0.status, "new");
}

#[tokio::test]
async fn signing_out_needs_the_csrf_token_and_ends_the_session_on_the_server() {
    let app = portal::router(store_with_incident());
    let (_, ana) = Client::login(&app, "ana", "ana-correct-horse").await;
    let (_, page, _) = ana.send("GET", "/incidents", None, None).await;
    let csrf = csrf_of(&page);
    let form = |t: &str| Some(("application/x-www-form-urlencoded", format!("csrf={t}")));
    // A cross-site sign-out (no or wrong token) is refused and the session stays.
    assert_eq!(ana.send("POST", "/logout", form("forged"), None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(ana.send("GET", "/api/incidents", None, None).await.0, StatusCode::OK);
    let (status, location, cookies) = ana.send("POST", "/logout", form(&csrf), None).await;
    assert_eq!((status, location.as_str()), (StatusCode::SEE_OTHER, "/login"));
    assert!(cookies.iter().any(|c| c.starts_with("dctap_session=;") && c.contains("Max-Age=0")), "{cookies:?}");
    // The same cookie, replayed after signing out, opens nothing.
    assert_eq!(ana.send("GET", "/api/incidents", None, None).await.0, StatusCode::UNAUTHORIZED);
    let (status, location, _) = ana.send("GET", "/incidents", None, None).await;
    assert_eq!((status, location.as_str()), (StatusCode::SEE_OTHER, "/login"));
    // A sign-in form without its fields is refused, with no cookie.
    let c = Client { app: app.clone(), cookie: None };
    let (status, _, cookies) =
        c.send("POST", "/login", Some(("application/x-www-form-urlencoded", "username=ana".into())), None).await;
    assert!(status.is_client_error() && cookies.is_empty(), "{status} {cookies:?}");
}

/// The directives of a Content-Security-Policy, each with its sources.
fn csp_directives(policy: &str) -> std::collections::HashMap<String, Vec<String>> {
    policy
        .split(';')
        .filter_map(|d| {
            let mut words = d.split_whitespace();
            Some((words.next()?.to_ascii_lowercase(), words.map(String::from).collect()))
        })
        .collect()
}

/// What every answer of the portal carries, page, API call, error or redirect: a policy
/// that allows only the portal's own files (no inline script or style, no plugins, no
/// <base>, forms only to itself, never in a frame), no framing, no MIME sniffing, no
/// referrer, and nothing kept in a cache.
fn assert_hardened(what: &str, h: &HeaderMap) {
    let get = |name: header::HeaderName| {
        h.get(&name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("{what}: no {name} in {h:?}")).to_string()
    };
    let csp = csp_directives(&get(header::CONTENT_SECURITY_POLICY));
    for (directive, source) in [
        ("default-src", "'self'"),
        ("frame-ancestors", "'none'"),
        ("object-src", "'none'"),
        ("base-uri", "'none'"),
        ("form-action", "'self'"),
    ] {
        assert_eq!(csp.get(directive).map(Vec::as_slice), Some(&[source.to_string()][..]), "{what}: {directive}");
    }
    for directive in ["script-src", "style-src"] {
        let sources = csp.get(directive).or(csp.get("default-src")).unwrap();
        assert!(
            sources.iter().all(|s| s == "'self'" || s == "'none'" || s.starts_with("'nonce-")),
            "{what}: {directive} {sources:?}"
        );
    }
    assert_eq!(get(header::X_FRAME_OPTIONS), "DENY", "{what}");
    assert_eq!(get(header::X_CONTENT_TYPE_OPTIONS), "nosniff", "{what}");
    assert!(["no-referrer", "same-origin"].contains(&get(header::REFERRER_POLICY).as_str()), "{what}");
    assert_eq!(get(header::CACHE_CONTROL), "no-store", "{what}");
}

#[tokio::test]
async fn every_answer_carries_the_security_headers_and_the_policy_allows_no_inline_script() {
    let app = portal::router(store_with_incident());
    let (_, ana) = Client::login(&app, "ana", "ana-correct-horse").await;
    let anon = Client { app: app.clone(), cookie: None };
    let wrong = || Some(("application/x-www-form-urlencoded", "username=ana&password=not-it".to_string()));
    for (client, method, uri, body, status) in [
        (&ana, "GET", "/incidents/1", None, StatusCode::OK),
        (&ana, "GET", "/api/incidents", None, StatusCode::OK),
        (&ana, "GET", "/api/alerts/1/pcap", None, StatusCode::OK),
        (&anon, "GET", "/login", None, StatusCode::OK),
        (&anon, "POST", "/login", wrong(), StatusCode::UNAUTHORIZED),
        (&anon, "GET", "/incidents", None, StatusCode::SEE_OTHER),
        (&anon, "GET", "/api/incidents", None, StatusCode::UNAUTHORIZED),
        (&ana, "GET", "/no/such/page", None, StatusCode::NOT_FOUND),
        (&anon, "GET", "/no/such/page", None, StatusCode::NOT_FOUND),
        (&ana, "GET", "/api/no/such/call", None, StatusCode::NOT_FOUND),
        (&ana, "GET", "/incidents/99", None, StatusCode::NOT_FOUND),
        (&ana, "GET", "/api/incidents/x", None, StatusCode::BAD_REQUEST),
        (&ana, "DELETE", "/api/incidents/1", None, StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let what = format!("{method} {uri}");
        let (got, headers, _) = client.answer(method, uri, body).await;
        assert_eq!(got, status, "{what}");
        assert_hardened(&what, &headers);
    }
    let (_, headers, _) = anon.answer("GET", "/no/such/page", None).await;
    assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"), "a page for a browser");

    // No page holds inline script or style (the policy would block them): the style sheet
    // and the script are the portal's own files, served with their types.
    let mut files = Vec::new();
    for (client, uri) in [
        (&anon, "/login"),
        (&ana, "/incidents"),
        (&ana, "/incidents/1"),
        (&ana, "/incidents/99"),
        (&ana, "/activity?host=10.77.0.20"),
        (&ana, "/accounts/alice"),
        (&ana, "/hosts/10.77.0.20"),
        (&ana, "/sensors"),
        (&ana, "/no/such/page"),
    ] {
        let (_, _, page) = client.answer("GET", uri, None).await;
        let lower = page.to_ascii_lowercase();
        assert!(!lower.contains("<style") && !lower.contains(" style="), "{uri}: inline style");
        for tag in lower.split("<script").skip(1) {
            let tag = tag.split('>').next().unwrap();
            assert!(tag.contains(" src="), "{uri}: inline script <script{tag}>");
        }
        for attr in ["src=\"/static/", "href=\"/static/"] {
            for rest in page.split(attr).skip(1) {
                files.push(format!("/static/{}", rest.split('"').next().unwrap()));
            }
        }
    }
    files.sort();
    files.dedup();
    assert!(files.iter().any(|f| f.ends_with(".css")) && files.iter().any(|f| f.ends_with(".js")), "{files:?}");
    for file in &files {
        let (status, headers, body) = anon.answer("GET", file, None).await;
        assert_eq!(status, StatusCode::OK, "{file}");
        let ctype = headers[header::CONTENT_TYPE].to_str().unwrap();
        let want = if file.ends_with(".css") { "text/css" } else { "text/javascript" };
        assert!(ctype.starts_with(want) && !body.is_empty(), "{file}: {ctype}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{file}");
    }

    // The metrics endpoint: plain text, never sniffed into something else, never cached.
    let resp = portal::metrics_router(store_with_incident())
        .oneshot(Request::builder().uri("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
}

fn add_user(store: &Arc<dyn Store>, name: &str, role: &str) {
    let hash = portal::hash_password(&format!("{name}-correct-horse")).unwrap();
    store.add_user(&User { name: name.into(), password_hash: hash, role: role.into() }).unwrap();
}

/// A sign-in from a browser at `ip` (the connection's address, as `serve` gives it), with
/// the page answered and how long it took.
async fn sign_in_from(
    app: &axum::Router,
    ip: &str,
    user: &str,
    password: &str,
) -> (StatusCode, HeaderMap, String, std::time::Duration) {
    sign_in_via(app, ip, None, user, password).await
}

/// The same through a connection from `peer` with an X-Forwarded-For header.
async fn sign_in_via(
    app: &axum::Router,
    peer: &str,
    forwarded_for: Option<&str>,
    user: &str,
    password: &str,
) -> (StatusCode, HeaderMap, String, std::time::Duration) {
    let peer: SocketAddr = SocketAddr::new(peer.parse().unwrap(), 40_000);
    let form = format!("username={user}&password={password}");
    let mut req = Request::builder()
        .method("POST")
        .uri("/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .extension(ConnectInfo(peer));
    if let Some(xff) = forwarded_for {
        req = req.header("x-forwarded-for", xff);
    }
    let started = Instant::now();
    let resp = app.clone().oneshot(req.body(Body::from(form)).unwrap()).await.unwrap();
    let took = started.elapsed();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22).await.unwrap();
    (status, headers, String::from_utf8_lossy(&bytes).into_owned(), took)
}

/// The audit log as the API gives it: (event, user, source) of each line, oldest first.
async fn audit_lines(admin: &Client) -> Vec<(String, String, String)> {
    let (status, json, _) = admin.send("GET", "/api/audit", None, None).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut lines: Vec<_> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let f = |k: &str| e[k].as_str().unwrap().to_string();
            (f("event"), f("user"), f("source"))
        })
        .collect();
    lines.reverse();
    lines
}

#[tokio::test]
async fn repeated_failed_sign_ins_are_throttled_per_account_and_address_without_hashing_and_audited() {
    let store = store_with_incident();
    add_user(&store, "ada", "admin");
    add_user(&store, "bob", "analyst");
    let app = portal::router(Arc::clone(&store));
    let line = |event: &str, user: &str, source: &str| (event.to_string(), user.to_string(), source.to_string());

    // Five wrong passwords for ana: each one checked (an argon2 hash) and refused.
    let mut hash_time = std::time::Duration::MAX;
    for _ in 0..5 {
        let (status, _, page, took) = sign_in_from(&app, "192.0.2.1", "ana", "wrong-password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(page.contains("Wrong user name or password"));
        hash_time = hash_time.min(took);
    }
    // The sixth, even with the right password, is refused for a while, and says how long.
    let (status, headers, page, _) = sign_in_from(&app, "192.0.2.1", "ana", "ana-correct-horse").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert!(page.contains(&format!("try again in {retry} s")), "{page}");
    assert!(headers.get(header::SET_COOKIE).is_none());
    // Refusals cost no hash: twenty of them take less time than one password check.
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(sign_in_from(&app, "192.0.2.1", "ana", "guess").await.0, StatusCode::TOO_MANY_REQUESTS);
    }
    assert!(started.elapsed() < hash_time, "20 refusals took {:?}, one check {hash_time:?}", started.elapsed());
    // The account is locked from any address; another account signs in from another one.
    assert_eq!(sign_in_from(&app, "198.51.100.9", "ana", "ana-correct-horse").await.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(sign_in_from(&app, "198.51.100.9", "vic", "vic-correct-horse").await.0, StatusCode::SEE_OTHER);
    // The address is locked for any account.
    assert_eq!(sign_in_from(&app, "192.0.2.1", "vic", "vic-correct-horse").await.0, StatusCode::TOO_MANY_REQUESTS);
    // Per address: five made-up names from one address, then a real user's right password.
    for n in 0..5 {
        let (status, ..) = sign_in_from(&app, "203.0.113.5", &format!("nobody{n}"), "password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(sign_in_from(&app, "203.0.113.5", "vic", "vic-correct-horse").await.0, StatusCode::TOO_MANY_REQUESTS);
    // A success clears the account's count: four failures, a success, four more failures
    // (from another address, whose own count is its own) are all taken.
    for _ in 0..4 {
        assert_eq!(sign_in_from(&app, "192.0.2.50", "bob", "wrong").await.0, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(sign_in_from(&app, "192.0.2.50", "bob", "bob-correct-horse").await.0, StatusCode::SEE_OTHER);
    for _ in 0..4 {
        assert_eq!(sign_in_from(&app, "192.0.2.51", "bob", "wrong").await.0, StatusCode::UNAUTHORIZED);
    }

    // The admin reads all of it in the audit log: each failure, each lock's first refusal,
    // each sign-in, with the address it came from.
    assert_eq!(sign_in_from(&app, "192.0.2.99", "ada", "ada-correct-horse").await.0, StatusCode::SEE_OTHER);
    let (_, ada) = Client::login(&app, "ada", "ada-correct-horse").await;
    let lines = audit_lines(&ada).await;
    let mut want = vec![line("failed", "ana", "192.0.2.1"); 5];
    want.push(line("throttled", "ana", "192.0.2.1"));
    want.push(line("signed_in", "vic", "198.51.100.9"));
    want.extend((0..5).map(|n| line("failed", &format!("nobody{n}"), "203.0.113.5")));
    want.push(line("throttled", "vic", "203.0.113.5"));
    want.extend(vec![line("failed", "bob", "192.0.2.50"); 4]);
    want.push(line("signed_in", "bob", "192.0.2.50"));
    want.extend(vec![line("failed", "bob", "192.0.2.51"); 4]);
    want.push(line("signed_in", "ada", "192.0.2.99"));
    want.push(line("signed_in", "ada", ""));
    assert_eq!(lines, want);
    let (status, page, _) = ada.send("GET", "/audit", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<h1>Audit log</h1>") && page.contains("throttled") && page.contains("198.51.100.9"));
    assert!(page.contains("href=\"/audit\""), "the admin's navigation leads to it");
    // Nobody else reads it.
    let (_, vic) = Client::login(&app, "vic", "vic-correct-horse").await;
    assert_eq!(vic.send("GET", "/api/audit", None, None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(vic.send("GET", "/audit", None, None).await.0, StatusCode::FORBIDDEN);
    assert!(!vic.send("GET", "/incidents", None, None).await.1.contains("href=\"/audit\""));
    let anon = Client { app: app.clone(), cookie: None };
    assert_eq!(anon.send("GET", "/api/audit", None, None).await.0, StatusCode::UNAUTHORIZED);
    // Signing out is logged too.
    let (_, page, _) = vic.send("GET", "/incidents", None, None).await;
    let form = Some(("application/x-www-form-urlencoded", format!("csrf={}", csrf_of(&page))));
    assert_eq!(vic.send("POST", "/logout", form, None).await.0, StatusCode::SEE_OTHER);
    assert_eq!(audit_lines(&ada).await.last(), Some(&line("signed_out", "vic", "")));
}

#[tokio::test]
async fn an_oversized_user_name_is_refused_before_anything_else_and_logged_cut_short() {
    let store = store_with_incident();
    add_user(&store, "ada", "admin");
    let app = portal::router(Arc::clone(&store));
    // At the limit: looked up and checked like any other name.
    let (status, ..) = sign_in_from(&app, "192.0.2.8", &"a".repeat(256), "password").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Over it, by a byte or by 1.9 MB (with a terminal escape in it): refused, no hash.
    let huge = format!("%1B%5D0%3Bowned%07{}", "a".repeat(1_900_000));
    for name in ["a".repeat(257), huge] {
        let (status, _, page, took) = sign_in_from(&app, "192.0.2.8", &name, "password").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(page.contains("The user name is longer than 256 bytes."), "{}", &page[..page.len().min(2000)]);
        assert!(page.len() < 10_000, "the page does not echo the name: {} bytes", page.len());
        assert!(took < std::time::Duration::from_secs(5));
    }
    let (_, ada) = Client::login(&app, "ada", "ada-correct-horse").await;
    let (_, json, _) = ada.send("GET", "/api/audit", None, None).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let refused: Vec<&serde_json::Value> =
        v["entries"].as_array().unwrap().iter().filter(|e| e["event"] == "refused").collect();
    assert_eq!(refused.len(), 2, "{json}");
    let user = refused[0]["user"].as_str().unwrap();
    assert!(user.len() < 100 && user.starts_with("\\x1b]0;owned\\x07aaa"), "{user}");
    assert!(refused[0]["detail"].as_str().unwrap().contains("1900010 bytes"), "{json}");
    // They count against the address like failures: three more, and it is refused.
    for _ in 0..3 {
        assert_eq!(sign_in_from(&app, "192.0.2.8", &"b".repeat(300), "x").await.0, StatusCode::BAD_REQUEST);
    }
    assert_eq!(sign_in_from(&app, "192.0.2.8", "ada", "ada-correct-horse").await.0, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_client_is_the_connections_address_unless_a_trusted_proxy_names_it() {
    let store = store_with_incident();
    add_user(&store, "ada", "admin");
    let options = portal::PortalOptions { trusted_proxies: vec!["127.0.0.1".parse().unwrap()] };
    let app = portal::router_with(Arc::clone(&store), options);
    // Through the proxy: the address it appended; what the client wrote before it is not
    // believed.
    let (status, ..) = sign_in_via(&app, "127.0.0.1", Some("198.51.100.1, 203.0.113.7"), "vic", "wrong").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    sign_in_via(&app, "::ffff:127.0.0.1", Some("203.0.113.9"), "vic", "wrong").await;
    sign_in_via(&app, "127.0.0.1", None, "vic", "wrong").await;
    // Not from the proxy: the header is the client's word, ignored.
    sign_in_via(&app, "192.0.2.3", Some("203.0.113.8"), "vic", "wrong").await;
    // Throttling follows the forwarded address: one client locked out through the proxy
    // does not lock out the others behind it.
    for _ in 0..5 {
        sign_in_via(&app, "127.0.0.1", Some("203.0.113.66"), "nobody", "wrong").await;
    }
    let locked = sign_in_via(&app, "127.0.0.1", Some("203.0.113.66"), "ada", "ada-correct-horse").await;
    assert_eq!(locked.0, StatusCode::TOO_MANY_REQUESTS);
    let other = sign_in_via(&app, "127.0.0.1", Some("203.0.113.67"), "ada", "ada-correct-horse").await;
    assert_eq!(other.0, StatusCode::SEE_OTHER);

    let (_, ada) = Client::login(&app, "ada", "ada-correct-horse").await;
    let sources: Vec<String> = audit_lines(&ada).await.into_iter().map(|(_, _, source)| source).collect();
    assert_eq!(
        sources,
        [
            "203.0.113.7",
            "203.0.113.9",
            "127.0.0.1",
            "192.0.2.3",
            "203.0.113.66",
            "203.0.113.66",
            "203.0.113.66",
            "203.0.113.66",
            "203.0.113.66",
            "203.0.113.66",
            "203.0.113.67",
            "",
        ]
    );
}

#[tokio::test]
async fn an_incidents_assignee_and_comment_are_bounded_and_the_refusal_names_the_field() {
    let store = store_with_incident();
    let app = portal::router(Arc::clone(&store));
    let (_, ana) = Client::login(&app, "ana", "ana-correct-horse").await;
    let (_, page, _) = ana.send("GET", "/incidents/1", None, None).await;
    let csrf = csrf_of(&page);
    let json = |v: serde_json::Value| Some(("application/json", v.to_string()));
    // At the limits: stored.
    let (a, c) = ("a".repeat(256), "c".repeat(4096));
    let (status, answer, _) =
        ana.send("POST", "/api/incidents/1", json(serde_json::json!({"assignee": a, "comment": c})), Some(&csrf)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(store.incident(1).unwrap().unwrap().1, a);
    // A byte over, or 1.9 MB over, through the API or the form: 400 naming the field, and
    // nothing stored.
    for (body, why) in [
        (serde_json::json!({"assignee": "b".repeat(257)}), "assignee of 257 bytes (at most 256)"),
        (serde_json::json!({"assignee": "b".repeat(1_900_000)}), "assignee of 1900000 bytes (at most 256)"),
        (serde_json::json!({"comment": "d".repeat(4097)}), "comment of 4097 bytes (at most 4096)"),
        (serde_json::json!({"assignee": "b", "comment": "d".repeat(4097)}), "comment of 4097 bytes (at most 4096)"),
    ] {
        let (status, answer, _) = ana.send("POST", "/api/incidents/1", json(body), Some(&csrf)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{why}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&answer).unwrap()["error"], why);
    }
    let form = Some(("application/x-www-form-urlencoded", format!("csrf={csrf}&assignee={}", "b".repeat(257))));
    let (status, page, _) = ana.send("POST", "/incidents/1", form, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("assignee of 257 bytes (at most 256)"), "{page}");
    assert_eq!(store.incident(1).unwrap().unwrap().1, a);
    assert_eq!(store.incident_comments(1).unwrap().len(), 1, "only the change at the limits");
}
