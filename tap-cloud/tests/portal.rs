//! The portal through its router, as a browser and an API client use it: nothing without
//! signing in, sign-in with the argon2-checked password, pages and API showing the incident
//! with its timeline and evidence, changes needing the CSRF token and a role that may
//! change, and whatever came off the wire escaped.

use std::sync::Arc;

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
};
use tap_cloud::{
    detect::Alert,
    pb::{activity_event::Detail, ActivityEvent, Kerberos},
    portal,
    store::{SqliteStore, Store, User},
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
        first_seen_ns: 1_795_749_927_000_000_000,
        last_seen_ns: 1_795_749_928_000_000_000,
        description: "10.77.0.20 failed to log on as 5 different accounts".into(),
        evidence: vec![("s1".into(), 7)],
        incident_id: 0,
    };
    store.save_alert(&mut alert, 3_600_000_000_000).unwrap();
    Arc::new(store)
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
    let at = page.find("name=csrf value=\"").expect("a CSRF field") + "name=csrf value=\"".len();
    page[at..].split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn nothing_is_readable_without_signing_in() {
    let app = portal::router(store_with_incident());
    let anon = Client { app: app.clone(), cookie: None };
    for page in ["/incidents", "/incidents/1", "/sensors"] {
        let (status, location, _) = anon.send("GET", page, None, None).await;
        assert_eq!((status, location.as_str()), (StatusCode::SEE_OTHER, "/login"), "{page}");
    }
    for api in
        ["/api/incidents", "/api/incidents/1", "/api/alerts", "/api/sensors", "/api/activity", "/api/hosts/10.77.0.20"]
    {
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
    ] {
        assert!(text.contains(line), "{line} not in {text}");
    }
}
