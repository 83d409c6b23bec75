//! Server-rendered HTML, written with maud: every value a page shows goes through its
//! escaping, so nothing from the store or the wire becomes markup. The style sheet and the
//! one script (the incidents page's poll for new alerts) are files of their own under
//! `/static/`, which the Content-Security-Policy allows where it allows no inline script or
//! style.

use axum::{
    extract::{Path, Query, State},
    http::{header, StatusCode, Uri},
    response::{Html, IntoResponse, Response},
};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use crate::pb::vocab::{DnsType, EncryptionType, KrbErrorCode};

use super::{
    account_detail, activity_events, audit_entries, filtered_incidents, host_detail, incident_detail, ActivityParams,
    AuditParams, IncidentFilter, Portal, PortalError, Session, STATUSES,
};

/// An error met by a page, shown as a page with its status (the API's errors stay JSON).
pub struct PageError(PortalError);

impl From<PortalError> for PageError {
    fn from(e: PortalError) -> Self {
        PageError(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let PortalError(status, message) = self.0;
        let title = status.canonical_reason().unwrap_or("Error");
        let page = layout(
            title,
            None,
            "",
            html! {
                div.card.signin {
                    h1 { (title) }
                    p { (message) "." }
                    p { a href="/incidents" { "Back to the incidents" } }
                }
            },
        );
        (status, page).into_response()
    }
}

pub type PageResult = Result<Html<String>, PageError>;

/// What no route answers: a page for a browser, JSON under `/api/`.
pub async fn not_found(uri: Uri) -> Response {
    if uri.path().starts_with("/api/") {
        PortalError(StatusCode::NOT_FOUND, "no such API call".into()).into_response()
    } else {
        PageError(PortalError(StatusCode::NOT_FOUND, "no such page".into())).into_response()
    }
}

const STYLE: &str = include_str!("static/portal.css");
const INCIDENTS_SCRIPT: &str = include_str!("static/incidents.js");

/// The portal's style sheet and script. Served without a session: the sign-in page needs
/// the style sheet, and neither holds anything of the site's data.
pub async fn static_file(Path(name): Path<String>) -> Response {
    let (ctype, body) = match name.as_str() {
        "portal.css" => ("text/css; charset=utf-8", STYLE),
        "incidents.js" => ("text/javascript; charset=utf-8", INCIDENTS_SCRIPT),
        _ => return not_found(Uri::from_static("/static")).await,
    };
    ([(header::CONTENT_TYPE, ctype)], body).into_response()
}

/// Days since 1970-01-01 of a civil date, and back (Howard Hinnant's algorithms).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn time(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// "YYYY-MM-DD", "YYYY-MM-DD HH:MM", "YYYY-MM-DDTHH:MM:SS" (UTC; a trailing "UTC" or "Z"
/// is allowed, as the pages print times) to Unix seconds.
fn parse_utc(s: &str) -> Option<i64> {
    let s = s.trim().trim_end_matches("UTC").trim_end_matches('Z').trim();
    let (date, clock) = s.split_once(['T', ' ']).unwrap_or((s, "00:00"));
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut c = clock.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (c.next()??, c.next().unwrap_or(Some(0))?, c.next().unwrap_or(Some(0))?);
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(days_from_civil(y, m, day) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// How long ago, in the largest unit that fits.
fn ago(ns: i64) -> String {
    let s = crate::unix_ns().saturating_sub(ns) / 1_000_000_000;
    match s {
        s if s < 0 => "in the future (clock skew)".into(),
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s if s < 172_800 => format!("{} h ago", s / 3600),
        s => format!("{} days ago", s / 86_400),
    }
}

/// Navigation entries: the section key a page names, where, and the label.
const NAV: [(&str, &str, &str); 4] = [
    ("incidents", "/incidents", "Incidents"),
    ("activity", "/activity", "Activity search"),
    ("sensors", "/sensors", "Sensors"),
    ("api", "/api/openapi.json", "API"),
];
/// The entry only an admin sees.
const ADMIN_NAV: (&str, &str, &str) = ("audit", "/audit", "Audit log");

/// The page around `body`; `section` marks the navigation entry it belongs to.
fn layout(title: &str, session: Option<&Session>, section: &str, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width";
                    title { (title) " · dctap" }
                    link rel="stylesheet" href="/static/portal.css";
                }
                body {
                    header {
                        span.brand { "dctap" small { "identity threat detection" } }
                        @if let Some(s) = session {
                            nav {
                                @for (key, href, label) in NAV.into_iter().chain(s.is_admin().then_some(ADMIN_NAV)) {
                                    a href=(href) class=[(key == section).then_some("on")] { (label) }
                                }
                            }
                            span.who {
                                "Signed in as " b { (s.user) } " (" (s.role) ")"
                                form.inline method="post" action="/logout" {
                                    input type="hidden" name="csrf" value=(s.csrf);
                                    button { "Sign out" }
                                }
                            }
                        }
                    }
                    main { (body) }
                }
            }
        }
        .into_string(),
    )
}

pub fn login_page(error: Option<&str>) -> String {
    layout(
        "Sign in",
        None,
        "",
        html! {
            div.card.signin {
                h1 { "Sign in" }
                p.muted { "Domain controller activity, alerts and incidents." }
                @if let Some(e) = error {
                    p.badge.bad { (e) }
                }
                form method="post" action="/login" {
                    p { label { "User name" br; input name="username" autocomplete="username" required autofocus; } }
                    p {
                        label {
                            "Password" br;
                            input name="password" type="password" autocomplete="current-password" required;
                        }
                    }
                    button { "Sign in" }
                }
            }
        },
    )
    .0
}

pub async fn login_form() -> Html<String> {
    Html(login_page(None))
}

fn sev_badge(sev: &str) -> Markup {
    html! { span class={ "sev " (sev) } { (sev) } }
}

fn status_label(status: &str) -> String {
    status.replace('_', " ")
}

fn status_badge(status: &str) -> Markup {
    html! { span class={ "badge st-" (status) } { (status_label(status)) } }
}

/// Items one after the other with `sep` between them, or "-" when there are none.
fn joined(items: &[Markup], sep: Markup) -> Markup {
    html! {
        @if items.is_empty() {
            "-"
        }
        @for (n, item) in items.iter().enumerate() {
            @if n > 0 {
                (sep)
            }
            (item)
        }
    }
}

/// How often the incidents page asks for new alerts.
const POLL_MS: u32 = 5000;

pub async fn incidents(
    State(portal): State<Portal>,
    session: Session,
    Query(filter): Query<IncidentFilter>,
) -> PageResult {
    let all = filtered_incidents(&portal, &IncidentFilter::default()).await?;
    let list = filtered_incidents(&portal, &filter).await?;
    let open = all.iter().filter(|i| i.incident.status == "new" || i.incident.status == "in_progress").count();
    let why = if all.is_empty() {
        "No incidents yet. Alerts the detections raise on the sensors' activity are grouped into incidents here."
    } else {
        "No incident matches this filter."
    };
    let body = html! {
        h1 { "Incidents" }
        div.meta { span { b { (open) } " open" } span { b { (all.len()) } " in all" } }
        form.filters method="get" {
            label {
                "Status"
                select name="status" {
                    @for s in std::iter::once("").chain(STATUSES) {
                        option value=(s) selected[filter.status.as_deref() == Some(s)] {
                            @if s.is_empty() { "any status" } @else { (status_label(s)) }
                        }
                    }
                }
            }
            label {
                "Search"
                input name="q" size="32" placeholder="title, detection, host or account"
                    value=(filter.q.as_deref().unwrap_or_default());
            }
            button { "Filter" }
        }
        p.notice #fresh data-incidents=(all.len()) data-alerts=(all.iter().map(|i| i.incident.alerts).sum::<u64>())
            data-poll-ms=(POLL_MS) {}
        table {
            tr {
                th { "severity" } th { "incident" } th { "entities" } th { "alerts" } th { "status" }
                th { "first / last seen" }
            }
            @for s in &list {
                @let i = &s.incident;
                @let entities: Vec<Markup> = s
                    .hosts
                    .iter()
                    .map(|h| html! { span.muted.small { "host" } " " (host_link(h)) })
                    .chain(s.accounts.iter().map(|a| html! { span.muted.small { "account" } " " (account_link(a)) }))
                    .collect();
                tr {
                    td { (sev_badge(&i.severity)) }
                    td {
                        a href={ "/incidents/" (i.id) } { b { (i.title) } }
                        " " span.muted { "#" (i.id) }
                        div.tags.under { @for d in &s.detections { span.tag { (d) } } }
                    }
                    td { (joined(&entities, html! { br; })) }
                    td.alerts { (i.alerts) }
                    td { (status_badge(&i.status)) }
                    td.small.nowrap { (time(i.first_seen_ns)) br; span.muted { (time(i.last_seen_ns)) } }
                }
            }
            @if list.is_empty() {
                tr { td.empty colspan="6" { (why) } }
            }
        }
        script src="/static/incidents.js" {}
    };
    Ok(layout("Incidents", Some(&session), "incidents", body))
}

/// Path segments are percent-encoded so any name makes a valid, unambiguous link.
fn url_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn account_link(a: &str) -> Markup {
    if a.is_empty() {
        return html! { "-" };
    }
    // One account however the wire wrote its name (DOMAIN\\user, user@REALM, a DN): the
    // link and the text are its one name, the form seen is in the title.
    let key = crate::detect::rules::account_key(a);
    html! { a href={ "/accounts/" (url_segment(&key)) } title=(a) { (key) } }
}

fn host_link(h: &str) -> Markup {
    if h.is_empty() {
        return html! { "-" };
    }
    html! { a href={ "/hosts/" (url_segment(h)) } { (h) } }
}

/// Text as markup (escaped), for the lists that take a link maker.
fn plain(s: &str) -> Markup {
    html! { (s) }
}

/// Fields left at their defaults say nothing about the event.
fn is_empty_value(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::Bool(b) => !b,
        serde_json::Value::Number(n) => n.as_f64() == Some(0.0),
        serde_json::Value::String(s) => s.is_empty(),
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
    }
}

/// Kerberos encryption types by number (RFC 3961, 4757, 8009).
fn etype(n: i64) -> String {
    let named = i32::try_from(n).ok().and_then(|n| EncryptionType(n).name());
    named.map_or_else(|| format!("etype {n}"), str::to_string)
}

fn krb_error(code: i64) -> String {
    match i32::try_from(code).ok().and_then(|c| KrbErrorCode(c).meaning()) {
        Some(name) => format!("error {code}: {name}"),
        None => format!("error {code}"),
    }
}

fn dns_type(t: i64) -> String {
    let named = u32::try_from(t).ok().and_then(|t| DnsType(t).name());
    named.map_or_else(|| format!("type {t}"), str::to_string)
}

/// One line an analyst reads: what the event was, in the protocol's own words.
fn event_summary(e: &serde_json::Value) -> String {
    let Some((kind, d)) = e["detail"].as_object().and_then(|d| d.iter().next()) else {
        return e["category"].as_str().unwrap_or_default().replace('_', " ");
    };
    let s = |k: &str| d[k].as_str().unwrap_or_default().to_string();
    let n = |k: &str| d[k].as_i64().unwrap_or(0);
    let etypes = |k: &str| {
        d[k].as_array().map(|a| a.iter().map(|x| etype(x.as_i64().unwrap_or(0))).collect::<Vec<_>>().join(", "))
    };
    let or_dash = |x: String| if x.is_empty() { "-".to_string() } else { x };
    match kind.as_str() {
        "Kerberos" => match n("msg_type") {
            10 => {
                let pre = match n("enc_timestamp_etype") {
                    0 => "no pre-authentication".to_string(),
                    t => format!("pre-authenticated with {}", etype(t)),
                };
                format!(
                    "AS-REQ: TGT for {}, {pre}, offers {}",
                    or_dash(s("cname")),
                    etypes("requested_etypes").unwrap_or_default()
                )
            }
            11 => format!("AS-REP: TGT issued for {}, ticket {}", or_dash(s("cname")), etype(n("ticket_etype"))),
            12 => format!(
                "TGS-REQ: service ticket for {}, offers {}",
                or_dash(s("sname")),
                etypes("requested_etypes").unwrap_or_default()
            ),
            13 => format!("TGS-REP: ticket for {} encrypted with {}", or_dash(s("sname")), etype(n("ticket_etype"))),
            14 => format!("AP-REQ over {}: ticket for {} presented", or_dash(s("carrier")), or_dash(s("sname"))),
            30 => format!("KRB-ERROR {} for {}", krb_error(n("error_code")), or_dash(s("sname"))),
            t => format!("Kerberos message {t}"),
        },
        "Ntlm" => {
            let who = match (s("domain"), s("user")) {
                (dom, u) if dom.is_empty() => u,
                (dom, u) => format!("{dom}\\{u}"),
            };
            match n("message_type") {
                3 => format!(
                    "NTLM{} logon as {} from workstation {} over {}",
                    if s("version").is_empty() { String::new() } else { format!(" {}", s("version")) },
                    or_dash(who),
                    or_dash(s("workstation")),
                    or_dash(s("carrier"))
                ),
                2 => format!("NTLM challenge from {}", or_dash(s("target_name"))),
                t => format!("NTLM message {t} over {}", or_dash(s("carrier"))),
            }
        }
        "Ldap" => match s("operation").as_str() {
            "bind" => format!(
                "LDAP bind as {} ({}{}){}",
                or_dash(s("bind_name")),
                s("bind_method"),
                if s("sasl_mechanism").is_empty() { String::new() } else { format!(" {}", s("sasl_mechanism")) },
                if d["cleartext_password_sent"] == true { ", password sent in clear text" } else { "" }
            ),
            "search" => format!(
                "LDAP search of {} for {} → {} entries",
                or_dash(s("base_dn")),
                or_dash(s("filter")),
                n("entries_returned")
            ),
            "sealed" => format!("LDAP session sealed by SASL ({} bytes, not readable)", n("sealed_bytes")),
            "extended" => format!("LDAP extended operation {}", or_dash(s("extended_name"))),
            op => format!("LDAP {} {}", op.replace('_', " "), s("target_dn")),
        },
        "Smb2" => match s("command").as_str() {
            "tree_connect" => format!("SMB connect to share {}", or_dash(s("tree"))),
            "create" => format!("SMB open of {} on {}", or_dash(s("file")), or_dash(s("tree"))),
            "encrypted" => format!(
                "SMB3 encrypted session: {} messages, {} bytes (not readable)",
                n("encrypted_messages"),
                n("encrypted_bytes")
            ),
            c => format!("SMB {c}"),
        },
        "Dcerpc" => match s("operation").as_str() {
            "bind" => format!("RPC bind to {}", or_dash(s("interface"))),
            _ => format!(
                "RPC {} {}{}",
                or_dash(s("interface")),
                if s("operation_name").is_empty() { format!("opnum {}", n("opnum")) } else { s("operation_name") },
                if d["sealed"] == true { " (sealed)" } else { "" }
            ),
        },
        "Dns" => {
            let q: Vec<String> = d["questions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|q| {
                    format!("{} {}", dns_type(q["qtype"].as_i64().unwrap_or(0)), q["name"].as_str().unwrap_or_default())
                })
                .collect();
            if d["response"] == true {
                let rcode = match n("rcode") {
                    0 => "NOERROR".to_string(),
                    1 => "FORMERR".to_string(),
                    2 => "SERVFAIL".to_string(),
                    3 => "NXDOMAIN".to_string(),
                    4 => "NOTIMP".to_string(),
                    5 => "REFUSED".to_string(),
                    9 => "NOTAUTH".to_string(),
                    r => format!("rcode {r}"),
                };
                let answers = n("answers");
                format!(
                    "DNS answer to {}: {answers} answer{} ({rcode})",
                    q.join(", "),
                    if answers == 1 { "" } else { "s" }
                )
            } else {
                format!("DNS query {}", q.join(", "))
            }
        }
        other => other.to_string(),
    }
}

/// The event's non-default fields, as stored (for the analyst who wants the wire's words).
fn event_fields(e: &serde_json::Value) -> String {
    e["detail"]
        .as_object()
        .and_then(|d| d.iter().next())
        .map(|(_, v)| {
            v.as_object()
                .into_iter()
                .flatten()
                .filter(|(_, v)| !is_empty_value(v))
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn result_badge(r: &str) -> Markup {
    match r {
        "success" => html! { span.badge.ok { "success" } },
        "failure" => html! { span.badge.bad { "failure" } },
        "continue" => html! { span.muted title="a normal step of an exchange that goes on" { "continue" } },
        "" => html! { span.muted title="the reply was not seen" { "-" } },
        r => html! { (r) },
    }
}

/// Events as a table; `fields` adds each event's stored fields under its summary (evidence),
/// otherwise they are the summary's tooltip.
fn event_table(events: &[serde_json::Value], fields: bool) -> Markup {
    html! {
        table.events {
            tr {
                th { "time" } th { "protocol" } th { "source → DC" } th { "account" } th { "result" }
                th { "what happened" }
            }
            @for e in events {
                @let s = |k: &str| e[k].as_str().unwrap_or_default();
                @let raw = event_fields(e);
                @let summary = event_summary(e);
                tr.event {
                    td.small.nowrap.muted { (time(e["time_unix_ns"].as_i64().unwrap_or(0))) }
                    td { (s("protocol")) }
                    td.nowrap { (host_link(s("src_ip"))) " → " (s("dc_ip")) }
                    td { (account_link(s("account"))) }
                    td { (result_badge(s("result"))) }
                    td {
                        @if fields {
                            (summary) div.raw { (raw) }
                        } @else {
                            span title=(raw) { (summary) }
                        }
                    }
                }
            }
        }
    }
}

pub async fn incident(State(portal): State<Portal>, session: Session, Path(id): Path<i64>) -> PageResult {
    let d = incident_detail(&portal, id).await?;
    let inc = &d["incident"];
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let alerts = d["alerts"].as_array().map(Vec::as_slice).unwrap_or_default();
    let (mut hosts, mut accounts) = (Vec::new(), Vec::new());
    for a in alerts {
        for (list, key) in [(&mut hosts, "src_ip"), (&mut accounts, "account")] {
            let v = a[key].as_str().unwrap_or_default().to_string();
            if !v.is_empty() && !list.contains(&v) {
                list.push(v);
            }
        }
    }
    let timeline = html! {
        @for a in alerts {
            @let events = a["evidence_events"].as_array().map(Vec::as_slice).unwrap_or_default();
            @let sev = a["severity"].as_str().unwrap_or_default();
            div class={ "card alert " (sev) } {
                div.muted.small {
                    (time(a["first_seen_ns"].as_i64().unwrap_or(0))) " – " (time(a["last_seen_ns"].as_i64().unwrap_or(0)))
                }
                h3 { (sev_badge(sev)) " " (text(&a["title"])) }
                p.desc { (text(&a["description"])) }
                div.meta {
                    span { "MITRE ATT&CK " (mitre(a["mitre"].as_str().unwrap_or_default())) }
                    span { "source " b { (host_link(a["src_ip"].as_str().unwrap_or_default())) } }
                    span { "account " b { (account_link(a["account"].as_str().unwrap_or_default())) } }
                    @let dcs: Vec<&str> = a["dcs"].as_array().map(|d| d.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
                    @if dcs.len() > 1 {
                        span { "DCs " b { (dcs.join(", ")) } }
                    } @else {
                        span { "DC " b { @if a["dc_ip"] == "" { "-" } @else { (text(&a["dc_ip"])) } } }
                    }
                    span { "detection " code { (text(&a["detection"])) } }
                }
                (pcap_line(a))
                details {
                    summary { "Evidence: " (events.len()) " event" @if events.len() != 1 { "s" } }
                    @if events.is_empty() {
                        p.muted { "The events behind this alert are no longer stored." }
                    } @else {
                        (event_table(events, true))
                    }
                }
            }
        }
        @if alerts.is_empty() {
            p.empty { "This incident has no alerts." }
        }
    };
    let comments: Vec<&serde_json::Value> = d["comments"].as_array().into_iter().flatten().collect();
    let change = html! {
        @if session.can_change() {
            form.card.change method="post" action={ "/incidents/" (id) } {
                input type="hidden" name="csrf" value=(session.csrf);
                div.row {
                    label {
                        "Status"
                        select name="status" {
                            @for s in STATUSES {
                                option value=(s) selected[inc["status"] == s] { (status_label(s)) }
                            }
                        }
                    }
                    label { "Assignee" input name="assignee" value=(text(&d["assignee"])) placeholder="user name"; }
                }
                textarea name="comment" rows="2"
                    placeholder="Comment for the incident log (what you checked, what you did)" {}
                button { "Save" }
            }
        } @else {
            p.muted { "Viewers cannot change incidents." }
        }
    };
    let entities: Vec<Markup> =
        hosts.iter().map(|h| host_link(h)).chain(accounts.iter().map(|a| account_link(a))).collect();
    let body = html! {
        div.crumbs { a href="/incidents" { "Incidents" } " / #" (id) }
        h1 { (text(&inc["title"])) }
        div.meta {
            (sev_badge(inc["severity"].as_str().unwrap_or_default()))
            span.incident-status { (status_badge(inc["status"].as_str().unwrap_or_default())) }
            span { "assigned to " b { @if d["assignee"] == "" { "nobody" } @else { (text(&d["assignee"])) } } }
            span {
                (time(inc["first_seen_ns"].as_i64().unwrap_or(0))) " – " (time(inc["last_seen_ns"].as_i64().unwrap_or(0)))
            }
            span { b { (alerts.len()) } " alert" @if alerts.len() != 1 { "s" } }
            span { "entities: " (joined(&entities, html! { ", " })) }
        }
        (change)
        h2 { "Timeline" }
        div.timeline { (timeline) }
        h2 { "Incident log" }
        div.card {
            ul.log {
                @for c in &comments {
                    li {
                        span.muted.small { (time(c["at_unix_ns"].as_i64().unwrap_or(0))) " · " b { (text(&c["author"])) } }
                        br;
                        (text(&c["text"]))
                    }
                }
                @if comments.is_empty() {
                    li.muted { "No changes or comments yet." }
                }
            }
        }
    };
    Ok(layout(&format!("Incident {id}"), Some(&session), "incidents", body))
}

/// An alert's evidence pcap: a download when the sensor sent it, else why not (nothing when
/// none was asked for).
fn pcap_line(alert: &serde_json::Value) -> Markup {
    let p = &alert["pcap"];
    let frames = p["frames"].as_u64().unwrap_or(0);
    html! {
        @match p["status"].as_str() {
            Some("done") => p.pcap {
                "Evidence pcap: " a href=(p["url"].as_str().unwrap_or_default()) download { "download" }
                " (" (frames) " frame" @if frames != 1 { "s" } @if p["truncated"] == true { ", cut at 8 MiB" } ")"
            },
            Some("failed") => p.pcap { "Evidence pcap: not available: " (p["error"].as_str().unwrap_or_default()) },
            Some(_) => p.pcap { "Evidence pcap: " span.muted { "waiting for the sensor" } },
            None => {},
        }
    }
}

/// The MITRE ATT&CK technique's name beside its id, for the techniques the detections use.
fn mitre(id: &str) -> Markup {
    let name = match id {
        "T1003.006" => "OS Credential Dumping: DCSync",
        "T1049" => "System Network Connections Discovery",
        "T1078" => "Valid Accounts",
        "T1087.002" => "Account Discovery: Domain Account",
        "T1110.001" => "Brute Force: Password Guessing",
        "T1110.003" => "Brute Force: Password Spraying",
        "T1187" => "Forced Authentication",
        "T1207" => "Rogue Domain Controller",
        "T1210" => "Exploitation of Remote Services",
        "T1550.002" => "Use Alternate Authentication Material: Pass the Hash",
        "T1550.003" => "Use Alternate Authentication Material: Pass the Ticket",
        "T1552" => "Unsecured Credentials",
        "T1558.001" => "Steal or Forge Kerberos Tickets: Golden Ticket",
        "T1558.003" => "Steal or Forge Kerberos Tickets: Kerberoasting",
        "T1558.004" => "Steal or Forge Kerberos Tickets: AS-REP Roasting",
        "T1569.002" => "System Services: Service Execution",
        "T1590.002" => "Gather Victim Network Information: DNS",
        _ => "",
    };
    html! {
        span.mitre { (id) }
        @if !name.is_empty() {
            " " (name)
        }
    }
}

fn alert_rows(alerts: &[serde_json::Value]) -> Markup {
    html! {
        table {
            tr { th { "severity" } th { "alert" } th { "MITRE" } th { "source" } th { "account" } th { "first seen" } }
            @for a in alerts {
                @let t = |k: &str| a[k].as_str().unwrap_or_default();
                tr {
                    td { (sev_badge(t("severity"))) }
                    td { a href={ "/incidents/" (a["incident_id"].as_i64().unwrap_or(0)) } { (t("title")) } }
                    td { span.mitre { (t("mitre")) } }
                    td { (host_link(t("src_ip"))) }
                    td { (account_link(t("account"))) }
                    td.small.nowrap.muted { (time(a["first_seen_ns"].as_i64().unwrap_or(0))) }
                }
            }
            @if alerts.is_empty() {
                tr { td.empty colspan="6" { "No alerts." } }
            }
        }
    }
}

/// How many events the entity pages show; the activity search has the rest.
const RECENT: usize = 50;

fn recent_activity(events: &[serde_json::Value], more: &str) -> Markup {
    let shown = &events[..events.len().min(RECENT)];
    html! {
        @if events.is_empty() {
            div.activity.empty { "No activity stored." }
        } @else {
            p.muted.small {
                "The latest " (shown.len()) " events, newest first. " a href=(more) { "Search all of them" }
            }
            div.activity { (event_table(shown, false)) }
        }
    }
}

/// The activity search form's fields: times as the form sends them (UTC date and time).
#[derive(Deserialize, Default)]
pub struct ActivityForm {
    pub account: Option<String>,
    pub host: Option<String>,
    pub protocol: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
}

/// The protocols the activity search offers ("" is any).
const PROTOCOLS: [&str; 7] = ["", "kerberos", "ntlm", "ldap", "smb2", "dcerpc", "dns"];

pub async fn activity(State(portal): State<Portal>, session: Session, Query(f): Query<ActivityForm>) -> PageResult {
    fn when(s: &Option<String>) -> Option<(&str, Option<i64>)> {
        s.as_deref().filter(|s| !s.trim().is_empty()).map(|s| (s, parse_utc(s)))
    }
    let (since, until) = (when(&f.since), when(&f.until));
    let bad: Vec<&str> = [since, until].into_iter().flatten().filter(|(_, t)| t.is_none()).map(|(s, _)| s).collect();
    let p = ActivityParams {
        account: f.account.clone(),
        host: f.host.clone(),
        protocol: f.protocol.clone(),
        from: since.and_then(|(_, t)| t),
        to: until.and_then(|(_, t)| t),
        limit: Some(200),
    };
    let events = activity_events(&portal, &p).await?;
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    let body = html! {
        h1 { "Activity search" }
        p.muted { "Every authentication, directory query and remote call the sensors saw on the domain controllers." }
        form.filters method="get" {
            label { "Account" input name="account" value=(v(&f.account)) placeholder="alice"; }
            label { "Host (source address)" input name="host" value=(v(&f.host)) placeholder="10.0.0.5"; }
            label {
                "Protocol"
                select name="protocol" {
                    @for x in PROTOCOLS {
                        option value=(x) selected[f.protocol.as_deref() == Some(x)] {
                            @if x.is_empty() { "any" } @else { (x) }
                        }
                    }
                }
            }
            label { "From (UTC)" input name="since" size="17" placeholder="YYYY-MM-DD HH:MM" value=(v(&f.since)); }
            label { "To (UTC)" input name="until" size="17" placeholder="YYYY-MM-DD HH:MM" value=(v(&f.until)); }
            button { "Search" }
        }
        @if !bad.is_empty() {
            div.empty { "Not a date and time: " (bad.join(", ")) ". Use YYYY-MM-DD HH:MM (UTC)." }
        } @else if events.is_empty() {
            div.activity.empty { "No activity matches. Clear a field or widen the time range." }
        } @else {
            p.muted.small {
                (events.len()) " event" @if events.len() != 1 { "s" } ", newest first"
                @if events.len() == 200 { " (the first 200: narrow the search to see older ones)" }
                "."
            }
            div.activity { (event_table(&events, false)) }
        }
    };
    Ok(layout("Activity", Some(&session), "activity", body))
}

pub async fn account(State(portal): State<Portal>, session: Session, Path(name): Path<String>) -> PageResult {
    let d = account_detail(&portal, &name).await?;
    let key = d["account"].as_str().unwrap_or_default().to_string();
    let list = |k: &str, link: fn(&str) -> Markup| {
        let items: Vec<&str> = d["profile"][k].as_array().into_iter().flatten().filter_map(|x| x.as_str()).collect();
        html! {
            @if items.is_empty() {
                "-"
            } @else {
                div.tags { @for i in items { span.tag { (link(i)) } } }
            }
        }
    };
    let hours = d["profile"]["hours"].as_u64().unwrap_or(0);
    let alerts = d["alerts"].as_array().map(Vec::as_slice).unwrap_or_default();
    let body = html! {
        div.crumbs { "Accounts" }
        h1 { "Account " (key) }
        div.meta { span { b { (alerts.len()) } " alert" @if alerts.len() != 1 { "s" } } }
        h2 { "Learned profile" }
        @if d["profile"].is_null() {
            div.empty {
                "Nothing learned about this account yet: its profile fills in from its activity during the learning period."
            }
        } @else {
            div.card {
                dl.facts {
                    dt { "Hosts it logs on from" }
                    dd {
                        (list("hosts", host_link))
                        @if d["profile"]["roaming"] == true { " " span.muted { "(roaming: many hosts)" } }
                    }
                    dt { "Services it uses" }
                    dd { (list("services", plain)) }
                    dt { "Protocols" }
                    dd { (list("protocols", plain)) }
                    dt { "Active hours (UTC)" }
                    dd {
                        div.hours {
                            @for h in 0..24 {
                                span class=[(hours & (1 << h) != 0).then_some("on")] { (format!("{h:02}")) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Alerts" }
        (alert_rows(alerts))
        h2 { "Recent activity" }
        (recent_activity(
            d["activity"].as_array().map(Vec::as_slice).unwrap_or_default(),
            &format!("/activity?account={}", url_segment(&key))
        ))
    };
    Ok(layout("Account", Some(&session), "", body))
}

pub async fn host(State(portal): State<Portal>, session: Session, Path(ip): Path<String>) -> PageResult {
    let d = host_detail(&portal, &ip).await?;
    let accounts: Vec<&str> = d["accounts"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect();
    let alerts = d["alerts"].as_array().map(Vec::as_slice).unwrap_or_default();
    let body = html! {
        div.crumbs { "Computers" }
        h1 { "Computer " (ip) }
        div.meta { span { b { (alerts.len()) } " alert" @if alerts.len() != 1 { "s" } } }
        div.card {
            dl.facts {
                dt { "Accounts seen on it" }
                dd {
                    @if accounts.is_empty() {
                        "-"
                    } @else {
                        div.tags { @for a in &accounts { span.tag { (account_link(a)) } } }
                    }
                }
            }
        }
        h2 { "Alerts" }
        (alert_rows(alerts))
        h2 { "Recent activity" }
        (recent_activity(
            d["activity"].as_array().map(Vec::as_slice).unwrap_or_default(),
            &format!("/activity?host={}", url_segment(&ip))
        ))
    };
    Ok(layout("Computer", Some(&session), "", body))
}

/// The audit log's events as the page names them, with their badge.
fn audit_badge(event: &str) -> Markup {
    let (class, label) = match event {
        "signed_in" => ("badge ok", "signed in"),
        "signed_out" => ("badge quiet", "signed out"),
        "failed" => ("badge bad", "failed"),
        "throttled" => ("badge bad", "throttled"),
        "refused" => ("badge bad", "refused"),
        other => ("badge quiet", other),
    };
    html! { span class=(class) { (label) } }
}

pub async fn audit(State(portal): State<Portal>, session: Session, Query(p): Query<AuditParams>) -> PageResult {
    let entries = audit_entries(&portal, &session, p.limit.unwrap_or(500)).await?;
    let body = html! {
        h1 { "Audit log" }
        p.muted {
            "Sign-ins, failed sign-ins, sign-ins refused (after repeated failures, or for a user name over "
            (super::MAX_USER_NAME) " bytes) and sign-outs, newest first. The cloud keeps the last "
            (crate::store::AUDIT_KEEP) "."
        }
        table {
            tr { th { "time" } th { "event" } th { "user" } th { "source" } th { "detail" } }
            @for e in &entries {
                tr {
                    td.small.nowrap.muted { (time(e.at_unix_ns)) }
                    td { (audit_badge(&e.event)) }
                    td { (crate::text::visible(&e.user)) }
                    td { @if e.source.is_empty() { "-" } @else { (e.source) } }
                    td { (e.detail) }
                }
            }
            @if entries.is_empty() {
                tr { td.empty colspan="5" { "Nothing yet." } }
            }
        }
    };
    Ok(layout("Audit log", Some(&session), "audit", body))
}

/// A sensor sends a heartbeat every 10 s; after this long without one it is shown as silent.
const SILENT_AFTER_NS: i64 = 60_000_000_000;

/// Counters worth a glance on the sensors page, with what they mean.
const SENSOR_COUNTERS: &[(&str, &str)] = &[
    ("xdp_seen", "frames seen"),
    ("xdp_kept", "frames kept"),
    ("xdp_ring_full", "dropped: ring full"),
    ("user_frames_channel_full", "dropped: pipeline busy"),
    ("parse_events", "events"),
    ("spool_unacked_events", "events not yet acknowledged"),
    ("spool_overflow_dropped", "dropped: spool full"),
    ("uplink_events_acked", "events acknowledged"),
    ("uplink_failures", "uplink failures"),
];

pub async fn sensors(State(portal): State<Portal>, session: Session) -> PageResult {
    let store = std::sync::Arc::clone(&portal.store);
    let (list, failures, not_waited) = super::blocking(move || {
        Ok((
            store.sensors()?,
            crate::detect::runner::DetectionFailures::load(store.as_ref()),
            crate::detect::runner::not_waited_for(store.as_ref()),
        ))
    })
    .await?;
    let now = crate::unix_ns();
    let body = html! {
        h1 { "Sensors" }
        @for (sensor, since) in &not_waited {
            p {
                span.badge.bad { "cloud health" }
                " Detection no longer waits for sensor " b { (sensor) } ": it has delivered nothing since "
                (ago(*since)) " while others did. What it sends later is examined as late, and its alerts say so."
            }
        }
        @if let Some(last) = failures.recent.last() {
            p {
                span.badge.bad { "cloud health" }
                " Detection failed on " (failures.count) " event(s) and skipped them; the rest was examined. Latest: event "
                (last.seq) " of sensor " b { (last.sensor_id) } ", " (ago(last.at_unix_ns)) ": " code { (last.message) }
                ". The cloud's log has each; please report it."
            }
        }
        p.muted { "Each sensor's last report: heartbeats every 10 s carry its counters and health alerts." }
        table {
            tr {
                th { "sensor" } th { "state" } th { "version" } th { "monitored DCs" } th { "last heartbeat" }
                th { "health" } th { "counters" }
            }
            @for s in &list {
                @let silent = s.last_heartbeat_unix_ns.is_none_or(|t| now.saturating_sub(t) > SILENT_AFTER_NS);
                @let counters: Vec<(&str, u64, bool)> = SENSOR_COUNTERS
                    .iter()
                    .filter_map(|(k, label)| {
                        s.health_counters.get(*k).map(|v| {
                            (*label, *v, (label.starts_with("dropped") || k.ends_with("failures")) && *v > 0)
                        })
                    })
                    .collect();
                tr {
                    td { b { (s.id) } br; span.muted.small { (s.hostname) } }
                    td {
                        @if s.revoked_unix_ns.is_some() {
                            span.badge.quiet { "revoked" }
                        } @else if s.last_heartbeat_unix_ns.is_none() {
                            span.badge.quiet { "never connected" }
                        } @else if silent {
                            span.badge.bad { "silent" }
                        } @else {
                            span.badge.ok { "connected" }
                        }
                    }
                    td { @if s.version.is_empty() { "-" } @else { (s.version) } }
                    td {
                        @if s.monitored_dcs.is_empty() {
                            span.muted { "none registered" }
                        } @else {
                            (s.monitored_dcs.join(", "))
                        }
                    }
                    td.nowrap {
                        @match s.last_heartbeat_unix_ns {
                            None => "never",
                            Some(t) => { (ago(t)) br; span.muted.small { (time(t)) } },
                        }
                    }
                    td {
                        @if s.health_alerts.is_empty() {
                            span.badge.ok { "no health alerts" }
                        }
                        @for a in &s.health_alerts {
                            span.badge.bad { (a) } " "
                        }
                    }
                    td {
                        dl.facts.small {
                            @if counters.is_empty() {
                                dt { "-" }
                            }
                            @for (label, v, warn) in &counters {
                                dt { (label) }
                                dd class=[warn.then_some("badge bad")] { (v) }
                            }
                        }
                    }
                }
            }
            @if list.is_empty() {
                tr { td.empty colspan="7" { "No sensors yet. Add one with " code { "tap-cloud sensors add NAME" } "." } }
            }
        }
    };
    Ok(layout("Sensors", Some(&session), "sensors", body))
}

#[cfg(test)]
mod tests {
    #[test]
    fn wire_text_is_escaped_and_dates_read() {
        // A name that tries to close the attribute and the element stays text.
        let link = super::account_link("LAB\\\"><script>x</script>").into_string();
        assert_eq!(
            link,
            "<a href=\"/accounts/%22%3E%3Cscript%3Ex%3C%2Fscript%3E\" title=\"LAB\\&quot;&gt;&lt;script&gt;x&lt;/script&gt;\">\
             &quot;&gt;&lt;script&gt;x&lt;/script&gt;</a>"
        );
        assert_eq!(super::time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::time(1_795_749_927_000_000_000), "2026-11-27 03:25:27 UTC");
        assert_eq!(super::parse_utc("2026-11-27T03:25:27"), Some(1_795_749_927));
        assert_eq!(super::parse_utc("2026-11-27 03:25"), Some(1_795_749_900));
        assert_eq!(super::parse_utc("1970-01-01"), Some(0));
        assert_eq!(super::parse_utc("2026-13-01"), None);
        assert_eq!(super::parse_utc("yesterday"), None);
    }

    #[test]
    fn events_read_as_sentences() {
        let e = serde_json::json!({"detail": {"Kerberos": {"msg_type": 12, "sname": "MSSQLSvc/sql01", "requested_etypes": [23]}}});
        assert_eq!(super::event_summary(&e), "TGS-REQ: service ticket for MSSQLSvc/sql01, offers RC4-HMAC");
        let e = serde_json::json!({"detail": {"Kerberos": {"msg_type": 30, "error_code": 24, "sname": "krbtgt/LAB"}}});
        assert_eq!(
            super::event_summary(&e),
            "KRB-ERROR error 24: pre-authentication failed (wrong password) for krbtgt/LAB"
        );
        let e = serde_json::json!({"detail": {"Dns": {"questions": [{"name": "lab.example", "qtype": 252}]}}});
        assert_eq!(super::event_summary(&e), "DNS query AXFR lab.example");
    }
}
