//! Server-rendered HTML: plain pages, one small script that polls for new incidents.
//! Everything from the store or the wire is escaped.

use axum::{
    extract::{Path, Query, State},
    response::Html,
};

use super::{
    account_detail, activity_events, filtered_incidents, host_detail, incident_detail, ActivityParams, IncidentFilter,
    Portal, PortalResult, Session, STATUSES,
};

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

fn time(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
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

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:.6em 1.5em;display:flex;gap:1.5em;align-items:center}
header a{color:#cfd6e4;text-decoration:none}header b{margin-right:1em}main{padding:1.5em;max-width:1100px}
table{border-collapse:collapse;width:100%;background:#fff}td,th{padding:.45em .6em;border-bottom:1px solid #e3e6eb;text-align:left;vertical-align:top}
.high{color:#b3261e;font-weight:600}.medium{color:#b25e00;font-weight:600}.low{color:#44617b}
.card{background:#fff;border:1px solid #e3e6eb;border-radius:6px;padding:1em 1.2em;margin:.8em 0}
.timeline{border-left:3px solid #cfd6e4;margin-left:.5em;padding-left:1.2em}.muted{color:#6b7280;font-size:.9em}
form.inline{display:inline}input,select,button{font:inherit;padding:.25em .5em}code{font-size:.85em}";

fn layout(title: &str, session: Option<&Session>, body: &str) -> Html<String> {
    let nav = match session {
        Some(s) => format!(
            "<a href=/incidents>Incidents</a><a href=/activity>Activity</a><a href=/sensors>Sensors</a><a href=/api/openapi.json>API</a>\
             <span style=margin-left:auto>{} ({})</span><form class=inline method=post action=/logout>\
             <input type=hidden name=csrf value=\"{}\"><button>Sign out</button></form>",
            esc(&s.user),
            esc(&s.role),
            esc(&s.csrf)
        ),
        None => String::new(),
    };
    Html(format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{} · dctap</title><style>{STYLE}</style></head>\
         <body><header><b>dctap</b>{nav}</header><main>{body}</main></body></html>",
        esc(title)
    ))
}

pub fn login_page(error: Option<&str>) -> String {
    let err = error.map(|e| format!("<p class=high>{}</p>", esc(e))).unwrap_or_default();
    layout(
        "Sign in",
        None,
        &format!(
            "<div class=card style=max-width:22em><h2>Sign in</h2>{err}<form method=post action=/login>\
             <p><label>User name<br><input name=username autocomplete=username required></label></p>\
             <p><label>Password<br><input name=password type=password autocomplete=current-password required></label></p>\
             <button>Sign in</button></form></div>"
        ),
    )
    .0
}

pub async fn login_form() -> Html<String> {
    Html(login_page(None))
}

pub async fn incidents(
    State(portal): State<Portal>,
    session: Session,
    Query(filter): Query<IncidentFilter>,
) -> PortalResult<Html<String>> {
    let list = filtered_incidents(&portal, &filter).await?;
    let mut rows = String::new();
    for i in &list {
        rows.push_str(&format!(
            "<tr><td><a href=/incidents/{id}>#{id}</a></td><td class={sev}>{sev}</td><td>{status}</td><td><a href=/incidents/{id}>{title}</a></td>\
             <td>{alerts}</td><td class=muted>{first}<br>{last}</td></tr>",
            id = i.id,
            sev = esc(&i.severity),
            status = esc(&i.status),
            title = esc(&i.title),
            alerts = i.alerts,
            first = time(i.first_seen_ns),
            last = time(i.last_seen_ns),
        ));
    }
    if list.is_empty() {
        rows.push_str("<tr><td colspan=6 class=muted>No incidents match.</td></tr>");
    }
    let status_options: String = std::iter::once("")
        .chain(STATUSES)
        .map(|s| {
            let sel = if filter.status.as_deref() == Some(s) { " selected" } else { "" };
            format!("<option value=\"{s}\"{sel}>{}</option>", if s.is_empty() { "any status" } else { s })
        })
        .collect();
    let body = format!(
        "<h2>Incidents</h2><form method=get><select name=status>{status_options}</select> \
         <input name=q placeholder=\"search titles\" value=\"{q}\"> <button>Filter</button></form><p></p>\
         <table><tr><th>id</th><th>severity</th><th>status</th><th>incident</th><th>alerts</th><th>first / last seen</th></tr>{rows}</table>\
         <p class=muted id=fresh></p>\
         <script>let known={count};setInterval(async()=>{{const r=await fetch('/api/incidents');if(!r.ok)return;\
         const n=(await r.json()).incidents.length;if(n!==known){{document.getElementById('fresh').textContent=\
         (n-known)+' new incident(s): reload to see them';}}}},10000);</script>",
        q = esc(filter.q.as_deref().unwrap_or_default()),
        count = list.len(),
    );
    Ok(layout("Incidents", Some(&session), &body))
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
    format!("<a href=\"/accounts/{}\">{}</a>", url_segment(a), esc(a))
}

fn host_link(h: &str) -> String {
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

fn event_line(e: &serde_json::Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
    let detail = e["detail"].as_object().and_then(|d| d.iter().next()).map(|(k, v)| {
        let fields: Vec<String> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| !is_empty_value(v))
            .take(8)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{k}: {}", fields.join(" "))
    });
    format!(
        "<li><span class=muted>{}</span> {} {} → {} {} <b>{}</b> {}<br><code>{}</code></li>",
        time(e["time_unix_ns"].as_i64().unwrap_or(0)),
        esc(&s("protocol")),
        host_link(&s("src_ip")),
        esc(&s("dc_ip")),
        account_link(&s("account")),
        esc(&s("result")),
        esc(&s("category")),
        esc(&detail.unwrap_or_default())
    )
}

pub async fn incident(
    State(portal): State<Portal>,
    session: Session,
    Path(id): Path<i64>,
) -> PortalResult<Html<String>> {
    let d = incident_detail(&portal, id).await?;
    let inc = &d["incident"];
    let text = |v: &serde_json::Value| esc(v.as_str().unwrap_or_default());
    let mut timeline = String::new();
    for a in d["alerts"].as_array().into_iter().flatten() {
        let events: String = a["evidence_events"].as_array().into_iter().flatten().map(event_line).collect();
        timeline.push_str(&format!(
            "<div class=card><div class=muted>{} – {}</div><h3><span class={sev}>{sev}</span> {title}</h3>\
             <p>{desc}</p><p class=muted>MITRE ATT&amp;CK {mitre} · detection <code>{det}</code> · source {src} · account {acct} · DC {dc}</p>\
             <details><summary>Evidence ({n} events)</summary><ul>{events}</ul></details></div>",
            time(a["first_seen_ns"].as_i64().unwrap_or(0)),
            time(a["last_seen_ns"].as_i64().unwrap_or(0)),
            sev = text(&a["severity"]),
            title = text(&a["title"]),
            desc = text(&a["description"]),
            mitre = text(&a["mitre"]),
            det = text(&a["detection"]),
            src = host_link(a["src_ip"].as_str().unwrap_or_default()),
            acct = account_link(a["account"].as_str().unwrap_or_default()),
            dc = text(&a["dc_ip"]),
            n = a["evidence_events"].as_array().map_or(0, Vec::len),
        ));
    }
    let comments: String = d["comments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "<li><span class=muted>{} {}</span> {}</li>",
                time(c["at_unix_ns"].as_i64().unwrap_or(0)),
                text(&c["author"]),
                text(&c["text"])
            )
        })
        .collect();
    let change = if session.can_change() {
        let options: String = STATUSES
            .iter()
            .map(|s| format!("<option{}>{s}</option>", if inc["status"] == *s { " selected" } else { "" }))
            .collect();
        format!(
            "<form method=post action=/incidents/{id} class=card><input type=hidden name=csrf value=\"{}\">\
             Status <select name=status>{options}</select> Assignee <input name=assignee value=\"{}\"> \
             <br><textarea name=comment rows=2 cols=70 placeholder=\"comment\"></textarea><br><button>Save</button></form>",
            esc(&session.csrf),
            text(&d["assignee"])
        )
    } else {
        "<p class=muted>Viewers cannot change incidents.</p>".into()
    };
    let body = format!(
        "<h2>#{id} {title}</h2><p><span class={sev}>{sev}</span> · {status} · assigned to {assignee} · {first} – {last}</p>\
         {change}<h3>Timeline</h3><div class=timeline>{timeline}</div><h3>Log</h3><ul>{comments}</ul>",
        title = text(&inc["title"]),
        sev = text(&inc["severity"]),
        status = text(&inc["status"]),
        assignee = if d["assignee"] == "" { "nobody".to_string() } else { text(&d["assignee"]) },
        first = time(inc["first_seen_ns"].as_i64().unwrap_or(0)),
        last = time(inc["last_seen_ns"].as_i64().unwrap_or(0)),
    );
    Ok(layout(&format!("Incident {id}"), Some(&session), &body))
}

fn alert_rows(alerts: &[serde_json::Value]) -> String {
    let mut rows = String::new();
    for a in alerts {
        let t = |k: &str| esc(a[k].as_str().unwrap_or_default());
        rows.push_str(&format!(
            "<tr><td class={sev}>{sev}</td><td><a href=/incidents/{inc}>{title}</a></td><td>{src}</td><td>{acct}</td><td class=muted>{first}</td></tr>",
            sev = t("severity"),
            inc = a["incident_id"].as_i64().unwrap_or(0),
            title = t("title"),
            src = host_link(a["src_ip"].as_str().unwrap_or_default()),
            acct = account_link(a["account"].as_str().unwrap_or_default()),
            first = time(a["first_seen_ns"].as_i64().unwrap_or(0)),
        ));
    }
    if rows.is_empty() {
        rows.push_str("<tr><td colspan=5 class=muted>None.</td></tr>");
    }
    format!("<table><tr><th>severity</th><th>alert</th><th>source</th><th>account</th><th>first seen</th></tr>{rows}</table>")
}

fn activity_list(events: &[serde_json::Value]) -> String {
    if events.is_empty() {
        return "<p class=muted>No activity.</p>".into();
    }
    format!("<ul>{}</ul>", events.iter().map(event_line).collect::<String>())
}

pub async fn activity(
    State(portal): State<Portal>,
    session: Session,
    Query(p): Query<ActivityParams>,
) -> PortalResult<Html<String>> {
    let events = activity_events(&portal, &p).await?;
    let v = |o: &Option<String>| esc(o.as_deref().unwrap_or_default());
    let body = format!(
        "<h2>Activity</h2><form method=get>Account <input name=account value=\"{}\"> Host <input name=host value=\"{}\"> \
         Protocol <select name=protocol>{}</select> <button>Search</button></form>{}",
        v(&p.account),
        v(&p.host),
        ["", "kerberos", "ntlm", "ldap", "smb2", "dcerpc", "dns"]
            .iter()
            .map(|x| format!(
                "<option value=\"{x}\"{}>{}</option>",
                if p.protocol.as_deref() == Some(x) { " selected" } else { "" },
                if x.is_empty() { "any" } else { x }
            ))
            .collect::<String>(),
        activity_list(&events)
    );
    Ok(layout("Activity", Some(&session), &body))
}

pub async fn account(
    State(portal): State<Portal>,
    session: Session,
    Path(name): Path<String>,
) -> PortalResult<Html<String>> {
    let d = account_detail(&portal, &name).await?;
    let list = |k: &str| {
        let items: Vec<String> =
            d["profile"][k].as_array().into_iter().flatten().filter_map(|x| x.as_str()).map(esc).collect();
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(", ")
        }
    };
    let hours = d["profile"]["hours"].as_u64().unwrap_or(0);
    let active: Vec<String> = (0..24).filter(|h| hours & (1 << h) != 0).map(|h| format!("{h:02}")).collect();
    let profile = if d["profile"].is_null() {
        "<p class=muted>Nothing learned yet (learning runs for the configured period from the first event).</p>"
            .to_string()
    } else {
        format!(
            "<div class=card><b>Learned profile</b><p>Hosts: {}</p><p>Services: {}</p><p>Protocols: {}</p><p>Active hours (UTC): {}</p></div>",
            list("hosts"),
            list("services"),
            list("protocols"),
            if active.is_empty() { "-".into() } else { active.join(" ") }
        )
    };
    let body = format!(
        "<h2>Account {}</h2>{profile}<h3>Alerts</h3>{}<h3>Recent activity</h3>{}",
        esc(d["account"].as_str().unwrap_or_default()),
        alert_rows(d["alerts"].as_array().map(Vec::as_slice).unwrap_or_default()),
        activity_list(d["activity"].as_array().map(Vec::as_slice).unwrap_or_default())
    );
    Ok(layout("Account", Some(&session), &body))
}

pub async fn host(
    State(portal): State<Portal>,
    session: Session,
    Path(ip): Path<String>,
) -> PortalResult<Html<String>> {
    let d = host_detail(&portal, &ip).await?;
    let accounts: Vec<String> =
        d["accounts"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).map(account_link).collect();
    let body = format!(
        "<h2>Computer {}</h2><p>Accounts seen on it: {}</p><h3>Alerts</h3>{}<h3>Recent activity</h3>{}",
        esc(&ip),
        if accounts.is_empty() { "-".into() } else { accounts.join(", ") },
        alert_rows(d["alerts"].as_array().map(Vec::as_slice).unwrap_or_default()),
        activity_list(d["activity"].as_array().map(Vec::as_slice).unwrap_or_default())
    );
    Ok(layout("Computer", Some(&session), &body))
}

pub async fn sensors(State(portal): State<Portal>, session: Session) -> PortalResult<Html<String>> {
    let store = std::sync::Arc::clone(&portal.store);
    let list = super::blocking(move || store.sensors()).await?;
    let now = crate::unix_ns();
    let mut rows = String::new();
    for s in &list {
        let beat =
            s.last_heartbeat_unix_ns.map_or("never".to_string(), |t| format!("{} s ago", (now - t) / 1_000_000_000));
        let health = if s.health_alerts.is_empty() { "ok".to_string() } else { s.health_alerts.join(", ") };
        let counters: Vec<String> =
            ["xdp_kept", "xdp_ring_full", "parse_events", "spool_unacked_events", "uplink_events_acked"]
                .iter()
                .filter_map(|k| s.health_counters.get(*k).map(|v| format!("{k} {v}")))
                .collect();
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{beat}</td><td class={}>{}</td><td class=muted>{}</td></tr>",
            esc(&s.id),
            if s.revoked_unix_ns.is_some() { "revoked" } else { "active" },
            esc(&s.version),
            esc(&s.monitored_dcs.join(", ")),
            if health == "ok" { "low" } else { "high" },
            esc(&health),
            esc(&counters.join(" · "))
        ));
    }
    let body = format!(
        "<h2>Sensors</h2><table><tr><th>sensor</th><th>state</th><th>version</th><th>monitored DCs</th>\
         <th>last heartbeat</th><th>health</th><th>counters</th></tr>{rows}</table>"
    );
    Ok(layout("Sensors", Some(&session), &body))
}

#[cfg(test)]
mod tests {
    #[test]
    fn escaping_and_dates() {
        assert_eq!(super::esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(super::time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::time(1_795_749_927_000_000_000), "2026-11-27 03:25:27 UTC");
    }
}
