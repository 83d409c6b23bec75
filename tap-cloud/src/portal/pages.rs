//! Server-rendered HTML: plain pages, one small script that polls for new incidents.
//! Everything from the store or the wire is escaped.

use axum::{
    extract::{Path, Query, State},
    response::{Html, IntoResponse, Response},
};
use serde::Deserialize;

use super::{
    account_detail, activity_events, filtered_incidents, host_detail, incident_detail, ActivityParams, IncidentFilter,
    Portal, PortalError, Session, STATUSES,
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
            &format!(
                "<div class=\"card signin\"><h1>{}</h1><p>{}.</p><p><a href=/incidents>Back to the incidents</a></p></div>",
                esc(title),
                esc(&message)
            ),
        );
        (status, page).into_response()
    }
}

pub type PageResult = Result<Html<String>, PageError>;

pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
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

const STYLE: &str = r#"
:root{--ink:#1b2230;--muted:#5f6b7a;--line:#e1e5ea;--bg:#f3f4f7;--accent:#2457c5}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:var(--ink);background:var(--bg)}
header{background:#151a24;color:#fff;padding:0 2em;display:flex;gap:1.4em;align-items:center;height:50px}
header .brand{font-weight:700;font-size:1.05em;letter-spacing:.02em;margin-right:1.2em;white-space:nowrap}
header .brand small{font-weight:400;color:#8793ab;margin-left:.6em;font-size:.8em}
header nav{display:flex;gap:1.4em;height:100%}
header nav a{color:#c3cad8;text-decoration:none;display:flex;align-items:center;border-bottom:3px solid transparent;padding-top:3px}
header nav a:hover{color:#fff}header nav a.on{color:#fff;border-bottom-color:#5b8def}
header .who{margin-left:auto;color:#c3cad8;white-space:nowrap}
header .who b{color:#fff;font-weight:600}
header button{background:transparent;color:#dfe4ee;border:1px solid #4a5468;margin-left:.8em}
main{padding:1.4em 2em 3em;max-width:1280px}
h1{font-size:1.5em;margin:.3em 0 .3em;line-height:1.25}h2{font-size:1.1em;margin:1.6em 0 .6em}h3{font-size:1.05em;margin:.35em 0 .5em}
a{color:var(--accent)}
table{border-collapse:separate;border-spacing:0;width:100%;background:#fff;border:1px solid var(--line);border-radius:6px;overflow:hidden}
th{font-size:.75em;text-transform:uppercase;letter-spacing:.05em;color:var(--muted);background:#f8f9fb;font-weight:600}
td,th{padding:.55em .75em;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
tr:last-child td{border-bottom:0}
.sev,.badge{display:inline-block;border-radius:10px;padding:.1em .65em;font-size:.8em;font-weight:600;white-space:nowrap;line-height:1.5}
.sev.high{background:#fde4e3;color:#a11a1e}.sev.medium{background:#ffeed6;color:#8f4700}.sev.low{background:#e4ecf6;color:#2c4a6e}.sev.info{background:#eef0f2;color:#4a5560}
.st-new{background:#e4ecfd;color:#1d4cb0}.st-in_progress{background:#fff3cf;color:#725300}
.st-resolved{background:#def3e5;color:#1b6633}.st-false_positive{background:#eaecef;color:#474f5c}
.ok{background:#def3e5;color:#1b6633}.bad{background:#fde4e3;color:#a11a1e}.quiet{background:#eaecef;color:#474f5c}
.card{background:#fff;border:1px solid var(--line);border-radius:6px;padding:1em 1.3em;margin:.8em 0}
.muted{color:var(--muted)}.small{font-size:.85em}.nowrap{white-space:nowrap}
.crumbs{font-size:.85em;color:var(--muted)}.crumbs a{color:var(--muted)}
.meta{display:flex;flex-wrap:wrap;gap:.4em 1.4em;align-items:center;margin:.2em 0 1em;color:var(--muted)}
.meta b{color:var(--ink);font-weight:600}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:.35em 1.4em;margin:0}
.facts dt{color:var(--muted)}.facts dd{margin:0}
.tags{display:flex;flex-wrap:wrap;gap:.3em}.tag{background:#eef1f6;border-radius:4px;padding:0 .45em;font-size:.85em;color:#33405a}
.timeline{position:relative;margin-left:.5em;padding-left:1.5em;border-left:2px solid #cdd4e0}
.timeline .alert{position:relative}
.timeline .alert::before{content:"";position:absolute;left:calc(-1.5em - 8px);top:1.25em;width:10px;height:10px;border-radius:50%;background:#fff;border:2px solid #8793ab}
.timeline .alert.high::before{border-color:#a11a1e;background:#fde4e3}.timeline .alert.medium::before{border-color:#b15d00;background:#ffeed6}
.timeline .alert.low::before{border-color:#2c4a6e;background:#e4ecf6}
.timeline .alert.info::before{border-color:#4a5560;background:#eef0f2}
.alert .desc{font-size:1.02em;margin:.3em 0 .7em;max-width:75em}
.mitre{font-weight:600;color:var(--ink)}
details summary{cursor:pointer;color:var(--accent);margin:.4em 0}
table.events td{font-size:.92em}
.raw{font:11.5px/1.4 ui-monospace,"DejaVu Sans Mono",monospace;color:var(--muted);word-break:break-all;margin-top:.2em}
code{font:12.5px ui-monospace,"DejaVu Sans Mono",monospace;background:#eef1f6;padding:0 .3em;border-radius:3px}
.empty{padding:1.4em;text-align:center;color:var(--muted);background:#fff;border:1px dashed #cdd4e0;border-radius:6px}
table .empty{border:0}
form.filters{display:flex;gap:.7em;align-items:flex-end;flex-wrap:wrap;margin:.6em 0 1em}
form.filters label,form.change label{display:flex;flex-direction:column;gap:.2em;font-size:.8em;color:var(--muted)}
form.change .row{display:flex;gap:1em;align-items:flex-end;flex-wrap:wrap}
form.change textarea{width:100%;margin:.7em 0}
input,select,textarea,button{font:inherit;font-size:14px;padding:.35em .6em;border:1px solid #c3cad6;border-radius:4px;background:#fff;color:var(--ink)}
button{background:var(--accent);color:#fff;border-color:var(--accent);cursor:pointer}
.notice{background:#e4ecfd;color:#1d4cb0;padding:.5em .8em;border-radius:6px;margin:.5em 0;display:none}
.hours{display:grid;grid-template-columns:repeat(24,1fr);gap:2px;max-width:36em}
.hours span{font-size:.7em;text-align:center;padding:.25em 0;background:#eef1f6;color:#8793ab;border-radius:2px}
.hours span.on{background:#2457c5;color:#fff}
ul.log{list-style:none;padding:0;margin:0}ul.log li{padding:.45em 0;border-bottom:1px solid var(--line)}ul.log li:last-child{border-bottom:0}
.signin{max-width:24em;margin:6vh auto}
.signin input{width:100%}.signin button{width:100%;padding:.5em}
"#;

/// The page around `body`; `section` marks the navigation entry it belongs to.
fn layout(title: &str, session: Option<&Session>, section: &str, body: &str) -> Html<String> {
    let nav = match session {
        Some(s) => {
            let links: String =
                [("incidents", "/incidents", "Incidents"), ("activity", "/activity", "Activity search")]
                    .iter()
                    .chain(&[("sensors", "/sensors", "Sensors"), ("api", "/api/openapi.json", "API")])
                    .map(|(key, href, label)| {
                        format!("<a href={href}{}>{label}</a>", if *key == section { " class=on" } else { "" })
                    })
                    .collect();
            format!(
                "<nav>{links}</nav><span class=who>Signed in as <b>{}</b> ({})<form class=inline style=display:inline \
                 method=post action=/logout><input type=hidden name=csrf value=\"{}\"><button>Sign out</button></form></span>",
                esc(&s.user),
                esc(&s.role),
                esc(&s.csrf)
            )
        }
        None => String::new(),
    };
    Html(format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
         <title>{} · dctap</title><style>{STYLE}</style></head>\
         <body><header><span class=brand>dctap<small>identity threat detection</small></span>{nav}</header><main>{body}</main></body></html>",
        esc(title)
    ))
}

pub fn login_page(error: Option<&str>) -> String {
    let err = error.map(|e| format!("<p class=\"badge bad\">{}</p>", esc(e))).unwrap_or_default();
    layout(
        "Sign in",
        None,
        "",
        &format!(
            "<div class=\"card signin\"><h1>Sign in</h1><p class=muted>Domain controller activity, alerts and incidents.</p>{err}\
             <form method=post action=/login>\
             <p><label>User name<br><input name=username autocomplete=username required autofocus></label></p>\
             <p><label>Password<br><input name=password type=password autocomplete=current-password required></label></p>\
             <button>Sign in</button></form></div>"
        ),
    )
    .0
}

pub async fn login_form() -> Html<String> {
    Html(login_page(None))
}

fn sev_badge(sev: &str) -> String {
    format!("<span class=\"sev {0}\">{0}</span>", esc(sev))
}

fn status_label(status: &str) -> String {
    status.replace('_', " ")
}

fn status_badge(status: &str) -> String {
    format!("<span class=\"badge st-{}\">{}</span>", esc(status), esc(&status_label(status)))
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
    let mut rows = String::new();
    for s in &list {
        let i = &s.incident;
        let detections: String = s.detections.iter().map(|d| format!("<span class=tag>{}</span>", esc(d))).collect();
        let entities: Vec<String> = s
            .hosts
            .iter()
            .map(|h| format!("<span class=\"muted small\">host</span> {}", host_link(h)))
            .chain(s.accounts.iter().map(|a| format!("<span class=\"muted small\">account</span> {}", account_link(a))))
            .collect();
        rows.push_str(&format!(
            "<tr><td>{sev}</td><td><a href=/incidents/{id}><b>{title}</b></a> <span class=muted>#{id}</span>\
             <div class=tags style=margin-top:.35em>{detections}</div></td><td>{entities}</td><td class=alerts>{alerts}</td>\
             <td>{status}</td><td class=\"small nowrap\">{first}<br><span class=muted>{last}</span></td></tr>",
            id = i.id,
            sev = sev_badge(&i.severity),
            status = status_badge(&i.status),
            title = esc(&i.title),
            entities = if entities.is_empty() { "-".into() } else { entities.join("<br>") },
            alerts = i.alerts,
            first = time(i.first_seen_ns),
            last = time(i.last_seen_ns),
        ));
    }
    if list.is_empty() {
        let why = if all.is_empty() {
            "No incidents yet. Alerts the detections raise on the sensors' activity are grouped into incidents here."
        } else {
            "No incident matches this filter."
        };
        rows.push_str(&format!("<tr><td colspan=6 class=empty>{why}</td></tr>"));
    }
    let status_options: String = std::iter::once("")
        .chain(STATUSES)
        .map(|s| {
            let sel = if filter.status.as_deref() == Some(s) { " selected" } else { "" };
            let label = if s.is_empty() { "any status".to_string() } else { status_label(s) };
            format!("<option value=\"{s}\"{sel}>{label}</option>")
        })
        .collect();
    let body = format!(
        "<h1>Incidents</h1><div class=meta><span><b>{open}</b> open</span><span><b>{total}</b> in all</span></div>\
         <form method=get class=filters><label>Status<select name=status>{status_options}</select></label>\
         <label>Search<input name=q size=32 placeholder=\"title, detection, host or account\" value=\"{q}\"></label>\
         <button>Filter</button></form><p class=notice id=fresh></p>\
         <table><tr><th>severity</th><th>incident</th><th>entities</th><th>alerts</th><th>status</th><th>first / last seen</th></tr>{rows}</table>\
         <script>const known={{incidents:{count},alerts:{alerts}}};\
         setInterval(async()=>{{const r=await fetch('/api/incidents');if(!r.ok)return;const l=(await r.json()).incidents;\
         const a=l.reduce((s,i)=>s+i.alerts,0)-known.alerts,n=l.length-known.incidents;if(a<=0&&n<=0)return;\
         const f=document.getElementById('fresh');f.style.display='block';\
         f.innerHTML=`<b>${{a}} new alert${{a===1?'':'s'}}</b>${{n>0?` in ${{n}} new incident${{n===1?'':'s'}}`:''}} since this page was loaded. \
         <a href=\"\">Reload</a>`;}},{POLL_MS});</script>",
        total = all.len(),
        q = esc(filter.q.as_deref().unwrap_or_default()),
        count = all.len(),
        alerts = all.iter().map(|i| i.incident.alerts).sum::<u64>(),
    );
    Ok(layout("Incidents", Some(&session), "incidents", &body))
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

fn account_link(a: &str) -> String {
    if a.is_empty() {
        return "-".into();
    }
    // One account however the wire wrote its name (DOMAIN\\user, user@REALM, a DN): the
    // link and the text are its one name, the form seen is in the title.
    let key = crate::detect::rules::account_key(a);
    format!("<a href=\"/accounts/{}\" title=\"{}\">{}</a>", url_segment(&key), esc(a), esc(&key))
}

fn host_link(h: &str) -> String {
    if h.is_empty() {
        return "-".into();
    }
    format!("<a href=\"/hosts/{}\">{}</a>", url_segment(h), esc(h))
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
    match n {
        1 => "DES-CBC-CRC".into(),
        3 => "DES-CBC-MD5".into(),
        16 => "3DES".into(),
        17 => "AES128".into(),
        18 => "AES256".into(),
        19 => "AES128-SHA256".into(),
        20 => "AES256-SHA384".into(),
        23 => "RC4-HMAC".into(),
        24 => "RC4-HMAC-EXP".into(),
        25 => "Camellia128".into(),
        26 => "Camellia256".into(),
        n => format!("etype {n}"),
    }
}

fn krb_error(code: i64) -> String {
    let name = match code {
        6 => "client unknown",
        7 => "service unknown",
        12 => "policy",
        13 => "bad option",
        14 => "encryption type not supported",
        18 => "client revoked (disabled or locked out)",
        23 => "password expired",
        24 => "pre-authentication failed (wrong password)",
        25 => "pre-authentication required",
        31 => "integrity check failed",
        32 => "ticket expired",
        37 => "clock skew too great",
        41 => "modified message",
        50 => "inappropriate checksum",
        52 => "response too big (retry over TCP)",
        60 => "generic",
        68 => "wrong realm",
        _ => "",
    };
    if name.is_empty() {
        format!("error {code}")
    } else {
        format!("error {code}: {name}")
    }
}

fn dns_type(t: i64) -> String {
    match t {
        1 => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        251 => "IXFR".into(),
        252 => "AXFR".into(),
        255 => "ANY".into(),
        256 => "URI".into(),
        t => format!("type {t}"),
    }
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

fn result_badge(r: &str) -> String {
    match r {
        "success" => "<span class=\"badge ok\">success</span>".into(),
        "failure" => "<span class=\"badge bad\">failure</span>".into(),
        "continue" => "<span class=muted title=\"a normal step of an exchange that goes on\">continue</span>".into(),
        "" => "<span class=muted title=\"the reply was not seen\">-</span>".into(),
        r => esc(r),
    }
}

/// Events as a table; `fields` adds each event's stored fields under its summary (evidence),
/// otherwise they are the summary's tooltip.
fn event_table(events: &[serde_json::Value], fields: bool) -> String {
    let mut rows = String::new();
    for e in events {
        let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
        let raw = event_fields(e);
        let summary = esc(&event_summary(e));
        let what = if fields {
            format!("{summary}<div class=raw>{}</div>", esc(&raw))
        } else {
            format!("<span title=\"{}\">{summary}</span>", esc(&raw))
        };
        rows.push_str(&format!(
            "<tr class=event><td class=\"small nowrap muted\">{}</td><td>{}</td><td class=nowrap>{} → {}</td><td>{}</td><td>{}</td><td>{what}</td></tr>",
            time(e["time_unix_ns"].as_i64().unwrap_or(0)),
            esc(&s("protocol")),
            host_link(&s("src_ip")),
            esc(&s("dc_ip")),
            account_link(&s("account")),
            result_badge(&s("result")),
        ));
    }
    format!(
        "<table class=events><tr><th>time</th><th>protocol</th><th>source → DC</th><th>account</th><th>result</th><th>what happened</th></tr>{rows}</table>"
    )
}

pub async fn incident(State(portal): State<Portal>, session: Session, Path(id): Path<i64>) -> PageResult {
    let d = incident_detail(&portal, id).await?;
    let inc = &d["incident"];
    let text = |v: &serde_json::Value| esc(v.as_str().unwrap_or_default());
    let alerts = d["alerts"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut timeline = String::new();
    let (mut hosts, mut accounts) = (Vec::new(), Vec::new());
    for a in alerts {
        for (list, key) in [(&mut hosts, "src_ip"), (&mut accounts, "account")] {
            let v = a[key].as_str().unwrap_or_default().to_string();
            if !v.is_empty() && !list.contains(&v) {
                list.push(v);
            }
        }
        let events = a["evidence_events"].as_array().map(Vec::as_slice).unwrap_or_default();
        let sev = a["severity"].as_str().unwrap_or_default();
        timeline.push_str(&format!(
            "<div class=\"card alert {sevc}\"><div class=\"muted small\">{first} – {last}</div><h3>{sevb} {title}</h3>\
             <p class=desc>{desc}</p><div class=meta><span>MITRE ATT&amp;CK {mitre}</span>\
             <span>source <b>{src}</b></span><span>account <b>{acct}</b></span><span>DC <b>{dc}</b></span>\
             <span>detection <code>{det}</code></span></div>{pcap}\
             <details><summary>Evidence: {n} event{plural}</summary>{events}</details></div>",
            pcap = pcap_line(a),
            sevc = esc(sev),
            sevb = sev_badge(sev),
            first = time(a["first_seen_ns"].as_i64().unwrap_or(0)),
            last = time(a["last_seen_ns"].as_i64().unwrap_or(0)),
            title = text(&a["title"]),
            desc = text(&a["description"]),
            mitre = mitre(a["mitre"].as_str().unwrap_or_default()),
            det = text(&a["detection"]),
            src = host_link(a["src_ip"].as_str().unwrap_or_default()),
            acct = account_link(a["account"].as_str().unwrap_or_default()),
            dc = if a["dc_ip"] == "" { "-".into() } else { text(&a["dc_ip"]) },
            n = events.len(),
            plural = if events.len() == 1 { "" } else { "s" },
            events = if events.is_empty() {
                "<p class=muted>The events behind this alert are no longer stored.</p>".into()
            } else {
                event_table(events, true)
            },
        ));
    }
    if alerts.is_empty() {
        timeline.push_str("<p class=empty>This incident has no alerts.</p>");
    }
    let mut comments: String = d["comments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "<li><span class=\"muted small\">{} · <b>{}</b></span><br>{}</li>",
                time(c["at_unix_ns"].as_i64().unwrap_or(0)),
                text(&c["author"]),
                text(&c["text"])
            )
        })
        .collect();
    if comments.is_empty() {
        comments = "<li class=muted>No changes or comments yet.</li>".into();
    }
    let change = if session.can_change() {
        let options: String = STATUSES
            .iter()
            .map(|s| {
                format!(
                    "<option value=\"{s}\"{}>{}</option>",
                    if inc["status"] == *s { " selected" } else { "" },
                    status_label(s)
                )
            })
            .collect();
        format!(
            "<form method=post action=/incidents/{id} class=\"card change\"><input type=hidden name=csrf value=\"{}\">\
             <div class=row><label>Status<select name=status>{options}</select></label>\
             <label>Assignee<input name=assignee value=\"{}\" placeholder=\"user name\"></label></div>\
             <textarea name=comment rows=2 placeholder=\"Comment for the incident log (what you checked, what you did)\"></textarea>\
             <button>Save</button></form>",
            esc(&session.csrf),
            text(&d["assignee"])
        )
    } else {
        "<p class=muted>Viewers cannot change incidents.</p>".into()
    };
    let entities: Vec<String> =
        hosts.iter().map(|h| host_link(h)).chain(accounts.iter().map(|a| account_link(a))).collect();
    let body = format!(
        "<div class=crumbs><a href=/incidents>Incidents</a> / #{id}</div><h1>{title}</h1>\
         <div class=meta>{sev}<span class=incident-status>{status}</span><span>assigned to <b>{assignee}</b></span>\
         <span>{first} – {last}</span><span><b>{n}</b> alert{plural}</span><span>entities: {entities}</span></div>\
         {change}<h2>Timeline</h2><div class=timeline>{timeline}</div><h2>Incident log</h2><div class=card><ul class=log>{comments}</ul></div>",
        title = text(&inc["title"]),
        sev = sev_badge(inc["severity"].as_str().unwrap_or_default()),
        status = status_badge(inc["status"].as_str().unwrap_or_default()),
        assignee = if d["assignee"] == "" { "nobody".to_string() } else { text(&d["assignee"]) },
        first = time(inc["first_seen_ns"].as_i64().unwrap_or(0)),
        last = time(inc["last_seen_ns"].as_i64().unwrap_or(0)),
        n = alerts.len(),
        plural = if alerts.len() == 1 { "" } else { "s" },
        entities = if entities.is_empty() { "-".into() } else { entities.join(", ") },
    );
    Ok(layout(&format!("Incident {id}"), Some(&session), "incidents", &body))
}

/// An alert's evidence pcap: a download when the sensor sent it, else why not (nothing when
/// none was asked for).
fn pcap_line(alert: &serde_json::Value) -> String {
    let p = &alert["pcap"];
    let what = match p["status"].as_str() {
        Some("done") => {
            let frames = p["frames"].as_u64().unwrap_or(0);
            format!(
                "<a href=\"{}\" download>download</a> ({frames} frame{}{})",
                esc(p["url"].as_str().unwrap_or_default()),
                if frames == 1 { "" } else { "s" },
                if p["truncated"] == true { ", cut at 8 MiB" } else { "" }
            )
        }
        Some("failed") => format!("not available: {}", esc(p["error"].as_str().unwrap_or_default())),
        Some(_) => "<span class=muted>waiting for the sensor</span>".into(),
        None => return String::new(),
    };
    format!("<p class=pcap>Evidence pcap: {what}</p>")
}

/// The MITRE ATT&CK technique's name beside its id, for the techniques the detections use.
fn mitre(id: &str) -> String {
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
    if name.is_empty() {
        format!("<span class=mitre>{}</span>", esc(id))
    } else {
        format!("<span class=mitre>{}</span> {}", esc(id), esc(name))
    }
}

fn alert_rows(alerts: &[serde_json::Value]) -> String {
    let mut rows = String::new();
    for a in alerts {
        let t = |k: &str| esc(a[k].as_str().unwrap_or_default());
        rows.push_str(&format!(
            "<tr><td>{sev}</td><td><a href=/incidents/{inc}>{title}</a></td><td><span class=mitre>{mitre}</span></td><td>{src}</td><td>{acct}</td><td class=\"small nowrap muted\">{first}</td></tr>",
            sev = sev_badge(a["severity"].as_str().unwrap_or_default()),
            inc = a["incident_id"].as_i64().unwrap_or(0),
            title = t("title"),
            mitre = t("mitre"),
            src = host_link(a["src_ip"].as_str().unwrap_or_default()),
            acct = account_link(a["account"].as_str().unwrap_or_default()),
            first = time(a["first_seen_ns"].as_i64().unwrap_or(0)),
        ));
    }
    if rows.is_empty() {
        rows.push_str("<tr><td colspan=6 class=empty>No alerts.</td></tr>");
    }
    format!("<table><tr><th>severity</th><th>alert</th><th>MITRE</th><th>source</th><th>account</th><th>first seen</th></tr>{rows}</table>")
}

/// How many events the entity pages show; the activity search has the rest.
const RECENT: usize = 50;

fn recent_activity(events: &[serde_json::Value], more: &str) -> String {
    if events.is_empty() {
        return "<div class=\"activity empty\">No activity stored.</div>".into();
    }
    let shown = &events[..events.len().min(RECENT)];
    format!(
        "<p class=\"muted small\">The latest {} events, newest first. <a href=\"{more}\">Search all of them</a></p><div class=activity>{}</div>",
        shown.len(),
        event_table(shown, false)
    )
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
    let v = |o: &Option<String>| esc(o.as_deref().unwrap_or_default());
    let results = if !bad.is_empty() {
        format!("<div class=empty>Not a date and time: {}. Use YYYY-MM-DD HH:MM (UTC).</div>", esc(&bad.join(", ")))
    } else if events.is_empty() {
        "<div class=\"activity empty\">No activity matches. Clear a field or widen the time range.</div>".into()
    } else {
        format!(
            "<p class=\"muted small\">{} event{}, newest first{}.</p><div class=activity>{}</div>",
            events.len(),
            if events.len() == 1 { "" } else { "s" },
            if events.len() == 200 { " (the first 200: narrow the search to see older ones)" } else { "" },
            event_table(&events, false)
        )
    };
    let body = format!(
        "<h1>Activity search</h1><p class=muted>Every authentication, directory query and remote call the sensors saw on the domain controllers.</p>\
         <form method=get class=filters><label>Account<input name=account value=\"{}\" placeholder=\"alice\"></label>\
         <label>Host (source address)<input name=host value=\"{}\" placeholder=\"10.0.0.5\"></label>\
         <label>Protocol<select name=protocol>{}</select></label>\
         <label>From (UTC)<input name=since size=17 placeholder=\"YYYY-MM-DD HH:MM\" value=\"{}\"></label>\
         <label>To (UTC)<input name=until size=17 placeholder=\"YYYY-MM-DD HH:MM\" value=\"{}\"></label>\
         <button>Search</button></form>{results}",
        v(&f.account),
        v(&f.host),
        ["", "kerberos", "ntlm", "ldap", "smb2", "dcerpc", "dns"]
            .iter()
            .map(|x| format!(
                "<option value=\"{x}\"{}>{}</option>",
                if f.protocol.as_deref() == Some(x) { " selected" } else { "" },
                if x.is_empty() { "any" } else { x }
            ))
            .collect::<String>(),
        v(&f.since),
        v(&f.until),
    );
    Ok(layout("Activity", Some(&session), "activity", &body))
}

pub async fn account(State(portal): State<Portal>, session: Session, Path(name): Path<String>) -> PageResult {
    let d = account_detail(&portal, &name).await?;
    let key = d["account"].as_str().unwrap_or_default().to_string();
    let list = |k: &str, link: fn(&str) -> String| {
        let items: Vec<String> =
            d["profile"][k].as_array().into_iter().flatten().filter_map(|x| x.as_str()).map(link).collect();
        if items.is_empty() {
            "-".to_string()
        } else {
            format!(
                "<div class=tags>{}</div>",
                items.iter().map(|i| format!("<span class=tag>{i}</span>")).collect::<String>()
            )
        }
    };
    let hours = d["profile"]["hours"].as_u64().unwrap_or(0);
    let hour_cells: String = (0..24)
        .map(|h| format!("<span{}>{h:02}</span>", if hours & (1 << h) != 0 { " class=on" } else { "" }))
        .collect();
    let profile = if d["profile"].is_null() {
        "<div class=empty>Nothing learned about this account yet: its profile fills in from its activity during the learning period.</div>"
            .to_string()
    } else {
        format!(
            "<div class=card><dl class=facts><dt>Hosts it logs on from</dt><dd>{}{}</dd><dt>Services it uses</dt><dd>{}</dd>\
             <dt>Protocols</dt><dd>{}</dd><dt>Active hours (UTC)</dt><dd><div class=hours>{hour_cells}</div></dd></dl></div>",
            list("hosts", host_link),
            if d["profile"]["roaming"] == true { " <span class=muted>(roaming: many hosts)</span>" } else { "" },
            list("services", esc),
            list("protocols", esc),
        )
    };
    let alerts = d["alerts"].as_array().map(Vec::as_slice).unwrap_or_default();
    let body = format!(
        "<div class=crumbs>Accounts</div><h1>Account {}</h1><div class=meta><span><b>{}</b> alert{}</span></div>\
         <h2>Learned profile</h2>{profile}<h2>Alerts</h2>{}<h2>Recent activity</h2>{}",
        esc(&key),
        alerts.len(),
        if alerts.len() == 1 { "" } else { "s" },
        alert_rows(alerts),
        recent_activity(
            d["activity"].as_array().map(Vec::as_slice).unwrap_or_default(),
            &format!("/activity?account={}", url_segment(&key))
        )
    );
    Ok(layout("Account", Some(&session), "", &body))
}

pub async fn host(State(portal): State<Portal>, session: Session, Path(ip): Path<String>) -> PageResult {
    let d = host_detail(&portal, &ip).await?;
    let accounts: Vec<String> = d["accounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .map(|a| format!("<span class=tag>{}</span>", account_link(a)))
        .collect();
    let alerts = d["alerts"].as_array().map(Vec::as_slice).unwrap_or_default();
    let body = format!(
        "<div class=crumbs>Computers</div><h1>Computer {}</h1><div class=meta><span><b>{}</b> alert{}</span></div>\
         <div class=card><dl class=facts><dt>Accounts seen on it</dt><dd>{}</dd></dl></div>\
         <h2>Alerts</h2>{}<h2>Recent activity</h2>{}",
        esc(&ip),
        alerts.len(),
        if alerts.len() == 1 { "" } else { "s" },
        if accounts.is_empty() { "-".into() } else { format!("<div class=tags>{}</div>", accounts.concat()) },
        alert_rows(alerts),
        recent_activity(
            d["activity"].as_array().map(Vec::as_slice).unwrap_or_default(),
            &format!("/activity?host={}", url_segment(&ip))
        )
    );
    Ok(layout("Computer", Some(&session), "", &body))
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
    let (list, failures) =
        super::blocking(move || Ok((store.sensors()?, crate::detect::runner::DetectionFailures::load(store.as_ref()))))
            .await?;
    let now = crate::unix_ns();
    let mut rows = String::new();
    for s in &list {
        let silent = s.last_heartbeat_unix_ns.is_none_or(|t| now.saturating_sub(t) > SILENT_AFTER_NS);
        let state = if s.revoked_unix_ns.is_some() {
            "<span class=\"badge quiet\">revoked</span>"
        } else if s.last_heartbeat_unix_ns.is_none() {
            "<span class=\"badge quiet\">never connected</span>"
        } else if silent {
            "<span class=\"badge bad\">silent</span>"
        } else {
            "<span class=\"badge ok\">connected</span>"
        };
        let beat = s
            .last_heartbeat_unix_ns
            .map_or("never".to_string(), |t| format!("{}<br><span class=\"muted small\">{}</span>", ago(t), time(t)));
        let health = if s.health_alerts.is_empty() {
            "<span class=\"badge ok\">no health alerts</span>".to_string()
        } else {
            s.health_alerts.iter().map(|a| format!("<span class=\"badge bad\">{}</span> ", esc(a))).collect()
        };
        let counters: Vec<String> = SENSOR_COUNTERS
            .iter()
            .filter_map(|(k, label)| {
                s.health_counters.get(*k).map(|v| {
                    let warn = (label.starts_with("dropped") || k.ends_with("failures")) && *v > 0;
                    format!("<dt>{label}</dt><dd{}>{v}</dd>", if warn { " class=\"badge bad\"" } else { "" })
                })
            })
            .collect();
        rows.push_str(&format!(
            "<tr><td><b>{}</b><br><span class=\"muted small\">{}</span></td><td>{state}</td><td>{}</td><td>{}</td><td class=nowrap>{beat}</td><td>{health}</td><td><dl class=\"facts small\">{}</dl></td></tr>",
            esc(&s.id),
            esc(&s.hostname),
            if s.version.is_empty() { "-".to_string() } else { esc(&s.version) },
            if s.monitored_dcs.is_empty() {
                "<span class=muted>none registered</span>".to_string()
            } else {
                esc(&s.monitored_dcs.join(", "))
            },
            if counters.is_empty() { "<dt>-</dt>".to_string() } else { counters.concat() }
        ));
    }
    if list.is_empty() {
        rows.push_str(
            "<tr><td colspan=7 class=empty>No sensors yet. Add one with <code>tap-cloud sensors add NAME</code>.</td></tr>",
        );
    }
    let cloud_health = match failures.recent.last() {
        None => String::new(),
        Some(last) => format!(
            "<p><span class=\"badge bad\">cloud health</span> Detection failed on {} event(s) and skipped them; \
             the rest was examined. Latest: event {} of sensor <b>{}</b>, {}: <code>{}</code>. The cloud's log \
             has each; please report it.</p>",
            failures.count,
            last.seq,
            esc(&last.sensor_id),
            ago(last.at_unix_ns),
            esc(&last.message)
        ),
    };
    let body = format!(
        "<h1>Sensors</h1>{cloud_health}<p class=muted>Each sensor's last report: heartbeats every 10 s carry its counters and health alerts.</p>\
         <table><tr><th>sensor</th><th>state</th><th>version</th><th>monitored DCs</th>\
         <th>last heartbeat</th><th>health</th><th>counters</th></tr>{rows}</table>"
    );
    Ok(layout("Sensors", Some(&session), "sensors", &body))
}

#[cfg(test)]
mod tests {
    #[test]
    fn escaping_and_dates() {
        assert_eq!(super::esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
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
