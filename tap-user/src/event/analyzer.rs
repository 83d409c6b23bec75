//! The consumer of the reassembled streams: picks a parser per flow from the server port,
//! feeds it the flow's bytes or datagrams (across PDU boundaries and gaps), and turns what
//! it decodes into activity events.

use std::net::{IpAddr, SocketAddr};

use super::{pb, pb::activity_event::Detail, ActivityEvent, EventSink, Stamper};
use crate::{
    flow::{Direction, FlowMeta, StreamConsumer, StreamEvent, Transport},
    pipeline::summary::StreamSummary,
    proto::{dcerpc, dns, http, kerberos, ldap, ntlm, smb2},
};

/// LDAP requests waiting for their response, per flow: the oldest is reported without a
/// result when more are outstanding (clients pipeline a few; more is abuse).
const MAX_PENDING_LDAP: usize = 64;
/// Most privileged account names one search reports (proto: at most 256).
const MAX_PRIVILEGED_PER_SEARCH: usize = 256;
/// Most computer SPNs one search reports (proto: at most 1024).
const MAX_COMPUTER_SPNS_PER_SEARCH: usize = 1024;

crate::counter_set! {
    pub struct ParseCounters {
        events,
        kerberos_messages,
        /// Kerberos AP-REQs found in SMB, LDAP and DCE/RPC authentication.
        kerberos_ap_reqs,
        /// Records on a Kerberos port that did not decode as Kerberos.
        kerberos_malformed,
        /// TCP records longer than kerberos::MAX_TCP_MESSAGE, skipped.
        kerberos_oversized,
        /// TCP Kerberos directions that lost their place in a gap (framing resumes at the
        /// next plausible record).
        kerberos_framing_lost,
        dns_messages,
        dns_malformed,
        /// TCP DNS directions that lost their place in a gap (framing resumes at the next
        /// plausible message).
        dns_framing_lost,
        ldap_messages,
        ldap_malformed,
        /// NTLM messages found in any carrier.
        ntlm_messages,
        /// LDAP messages nested deeper than ldap::MAX_DEPTH (refused before parsing).
        ldap_too_deep,
        /// LDAP PDUs over ldap::MAX_PDU, skipped.
        ldap_oversized,
        /// LDAP directions that lost their place in a gap (framing resumes at the next
        /// LDAPMessage).
        ldap_framing_lost,
        /// LDAP sessions that turned SASL-sealed.
        ldap_sealed_sessions,
        smb2_messages,
        /// SMB3 messages in transform headers (encrypted; only counted).
        smb2_encrypted_messages,
        /// NetBIOS messages over smb2::MAX_MESSAGE, skipped.
        smb2_oversized,
        /// SMB directions that lost their place in a gap (framing resumes at the next SMB
        /// message) or gave up on a broken NetBIOS header.
        smb2_framing_lost,
        dcerpc_pdus,
        dcerpc_malformed,
        /// Dynamic RPC ports learned from endpoint-mapper replies (new ones only).
        epm_ports_learned,
        /// DCE/RPC streams (TCP or pipe) that lost their place in a gap or a broken header
        /// (framing resumes at the next PDU header).
        dcerpc_framing_lost,
        /// HTTP message heads seen (requests and responses).
        http_messages,
        /// HTTP heads over http::MAX_HEAD, skipped.
        http_oversized,
        /// HTTP directions that lost their place in a gap (parsing resumes at the next
        /// message head).
        http_framing_lost,
        /// Flows on ports no parser handles yet.
        flows_unparsed,
    }
}

/// Per-flow parser state, chosen on the flow's first event.
#[derive(Debug, Default)]
pub enum FlowState {
    #[default]
    Unclassified,
    // Boxed, as the other protocols' state: an entry of the flow table is as large as its
    // largest variant, and most flows (and every flow of a SYN flood) never get one.
    Kerberos {
        to_server: Box<kerberos::TcpFramer>,
        to_client: Box<kerberos::TcpFramer>,
    },
    Dns {
        to_server: Box<dns::TcpFramer>,
        to_client: Box<dns::TcpFramer>,
    },
    Ldap(Box<LdapFlow>),
    Smb2(Box<Smb2Flow>),
    DceRpc(Box<DceRpcConn>),
    Http(Box<HttpFlow>),
    /// An unknown port: decided on the client's first bytes (a DCE/RPC bind to a dynamic
    /// endpoint, or nothing the sensor parses).
    Probe,
    Unparsed,
}

/// Presentation contexts, outstanding calls and named pipes remembered per connection.
const MAX_DCE_CONTEXTS: usize = 32;
const MAX_PENDING_DCE: usize = 128;
const MAX_PIPES: usize = 32;
const MAX_PENDING_READS: usize = 64;

/// One DCE/RPC association: a TCP connection or one named pipe of an SMB connection.
#[derive(Debug, Default)]
pub struct DceRpcConn {
    to_server: dcerpc::StreamFramer,
    to_client: dcerpc::StreamFramer,
    /// Presentation context id to interface UUID, from binds and alter-contexts.
    contexts: Vec<(u16, String)>,
    /// Calls waiting for their response or fault: (call id, event).
    pending: Vec<(u32, ActivityEvent)>,
    /// "tcp" or the pipe's name.
    transport: String,
    /// The last auth verifier's (type, level): calls at privacy level are sealed.
    auth: Option<(u8, u8)>,
    /// Who the association acts for: from its auth verifier, or from the SMB session of
    /// the pipe it runs on; with where that came from (`account_source`).
    identity: Option<Identity>,
}

/// An account a connection authenticated as, and how the sensor learned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub account: String,
    pub source: &'static str,
}

impl Identity {
    fn new(account: String, source: &'static str) -> Option<Self> {
        (!account.is_empty()).then_some(Self { account, source })
    }

    /// Names the account on an event that does not name one itself.
    fn apply(identity: Option<&Self>, e: &mut ActivityEvent) {
        if let Some(id) = identity.filter(|_| e.account.is_empty()) {
            e.account = id.account.clone();
            e.account_source = id.source.into();
        }
    }
}

/// SMB sessions remembered per connection (one per user on a multi-user client).
const MAX_SMB_SESSIONS: usize = 16;

/// Trees and outstanding requests remembered per SMB connection; clients use a few of
/// each, so these small bounds only ever bite on abuse.
const MAX_SMB_TREES: usize = 64;
const MAX_PENDING_SMB: usize = 128;

#[derive(Debug, Default)]
pub struct Smb2Flow {
    to_server: smb2::TcpFramer,
    to_client: smb2::TcpFramer,
    dialect: u16,
    /// Tree id to share path, from tree connect responses.
    trees: Vec<(u32, String)>,
    /// Requests waiting for their response status: (message id, tree path for a tree
    /// connect, event).
    pending: Vec<(u64, Option<String>, ActivityEvent)>,
    ntlm_target: String,
    encrypted_messages: u64,
    encrypted_bytes: u64,
    /// Open named pipes: file id and the DCE/RPC association on it.
    pipes: Vec<([u8; 16], DceRpcConn)>,
    /// Read requests on pipes waiting for their data: (message id, file id).
    pending_reads: Vec<(u64, [u8; 16])>,
    /// Session id to the account its setup authenticated (NTLM, or Kerberos through the
    /// ticket's TGS-REP), from the setup's successful reply, which carries the session id
    /// (a one-leg Kerberos setup asks with session id 0).
    sessions: Vec<(u64, Identity)>,
    /// Session setups waiting for their reply: (message id, identity).
    setups: Vec<(u64, Identity)>,
}

impl Smb2Flow {
    fn session(&self, id: u64) -> Option<&Identity> {
        self.sessions.iter().find(|(s, _)| *s == id).map(|(_, i)| i)
    }
}

#[derive(Debug, Default)]
pub struct LdapFlow {
    to_server: ldap::TcpFramer,
    to_client: ldap::TcpFramer,
    /// Requests waiting for their response: (message id, event); a bind carrying NTLM
    /// waits twice under one id, as an LDAP and as an NTLM event.
    pending: Vec<(u32, ActivityEvent)>,
    /// Target name of the last NTLM CHALLENGE the server sent on this flow.
    ntlm_target: String,
    /// Who the last successful bind authenticated: later searches and changes act for it.
    bound: Option<Identity>,
    /// The identity an unfinished multi-leg SASL bind carried in an earlier leg (GSSAPI
    /// sends its AP-REQ first and finishes with a leg that names nobody).
    binding: Option<Identity>,
}

/// Requests waiting for their response per HTTP connection (responses come in request
/// order, so a queue pairs them).
const MAX_PENDING_HTTP: usize = 64;

#[derive(Debug, Default)]
pub struct HttpFlow {
    to_server: http::HeadFramer,
    to_client: http::HeadFramer,
    /// One entry per request in flight: the authentication event it carried, if any.
    pending: std::collections::VecDeque<Option<ActivityEvent>>,
    ntlm_target: String,
}

/// HTTP ports where DCs and their neighbours take Windows authentication: certificate
/// enrollment (80, 8080) and WinRM (5985). TLS ports hide it.
pub const HTTP_PORTS: [u16; 3] = [80, 5985, 8080];

fn classify(flow: &FlowMeta) -> FlowState {
    match flow.server.port() {
        88 => FlowState::Kerberos { to_server: Default::default(), to_client: Default::default() },
        53 => FlowState::Dns { to_server: Default::default(), to_client: Default::default() },
        389 | 3268 => FlowState::Ldap(Box::default()),
        445 => FlowState::Smb2(Box::default()),
        135 => FlowState::DceRpc(Box::new(DceRpcConn { transport: "tcp".into(), ..DceRpcConn::default() })),
        p if HTTP_PORTS.contains(&p) && flow.transport == Transport::Tcp => FlowState::Http(Box::default()),
        _ => FlowState::Probe,
    }
}

/// Most dynamic RPC ports remembered per worker (a DC exposes a few dozen).
const MAX_LEARNED_PORTS: usize = 1024;

/// RPC endpoints remembered (a DC exposes a few dozen; many DCs, a few thousand).
const MAX_ENDPOINTS: usize = 4096;

/// The interface behind each dynamic RPC endpoint (server address, TCP port), learned
/// from endpoint-mapper replies and from binds seen on any connection to it. A connection
/// whose bind the sensor missed (opened before the capture started, or lost in a gap) is
/// named from it: a DCSync on it is still a DCSync. Shared by the workers, since the
/// connection that taught it may belong to another client.
#[derive(Default)]
pub struct Endpoints(std::sync::Mutex<std::collections::HashMap<(IpAddr, u16), String>>);

impl Endpoints {
    fn learn(&self, server: IpAddr, port: u16, uuid: &str) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() < MAX_ENDPOINTS || m.contains_key(&(server, port)) {
                m.insert((server, port), uuid.to_string());
            }
        }
    }

    fn interface(&self, server: IpAddr, port: u16) -> Option<String> {
        self.0.lock().ok()?.get(&(server, port)).cloned()
    }
}

/// Tickets remembered per worker with the account they were issued to: a day of a large
/// site's TGS-REPs is far more, but a ticket is presented within seconds of its issue.
const MAX_TICKET_NAMES: usize = 65_536;

/// Ticket fingerprint -> the client name of the AS-REP or TGS-REP that issued it. A ticket
/// presented later (AP-REQ in SMB, LDAP, RPC or HTTP; a TGT in a TGS-REQ) hides its client
/// name in encrypted parts, but its cipher is the one the reply carried in the clear.
/// Client and DC share an address pair, so both land on this worker.
#[derive(Default)]
struct TicketNames {
    names: std::collections::HashMap<String, String>,
    order: std::collections::VecDeque<String>,
}

impl TicketNames {
    fn learn(&mut self, fingerprint: &str, account: &str) {
        // A reply to a FAST-armoured request names the anonymous armour in the clear (RFC
        // 6113 5.4.3); the real client is in the encrypted FAST response.
        let anonymous = account.starts_with("WELLKNOWN/ANONYMOUS");
        if fingerprint.is_empty() || account.is_empty() || anonymous || self.names.contains_key(fingerprint) {
            return;
        }
        if self.order.len() >= MAX_TICKET_NAMES {
            if let Some(old) = self.order.pop_front() {
                self.names.remove(&old);
            }
        }
        self.order.push_back(fingerprint.to_string());
        self.names.insert(fingerprint.to_string(), account.to_string());
    }

    fn name(&self, fingerprint: &str) -> Option<&str> {
        self.names.get(fingerprint).map(String::as_str)
    }
}

pub struct Analyzer {
    sink: Box<dyn EventSink>,
    stamper: Stamper,
    /// Where newly learned dynamic RPC ports go (the capture stage adds them to the XDP
    /// port map); None in offline mode, where they are only counted.
    port_sink: Option<Box<dyn FnMut(u16) + Send>>,
    learned_ports: std::collections::BTreeSet<u16>,
    tickets: TicketNames,
    endpoints: std::sync::Arc<Endpoints>,
    /// Reassemble and count the streams, parse nothing (benchmarks of the stages below).
    streams_only: bool,
    pub counters: ParseCounters,
    pub streams: StreamSummary,
}

/// `ip.to_string()`, without the formatting machinery for IPv4 (every event has two).
fn ip_string(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else { return ip.to_string() };
    let mut s = String::with_capacity(15);
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if o >= 100 {
            s.push((b'0' + o / 100) as char);
        }
        if o >= 10 {
            s.push((b'0' + o / 10 % 10) as char);
        }
        s.push((b'0' + o % 10) as char);
    }
    s
}

/// The fields every event of a flow shares.
fn base(flow: &FlowMeta, protocol: &str, category: &str) -> ActivityEvent {
    let ip = |a: SocketAddr| ip_string(a.ip());
    ActivityEvent {
        time_unix_ns: flow.last_seen.as_nanos() as i64,
        src_ip: ip(flow.client),
        src_port: flow.client.port() as u32,
        dc_ip: ip(flow.server),
        dc_port: flow.server.port() as u32,
        protocol: protocol.into(),
        category: category.into(),
        ..ActivityEvent::default()
    }
}

const KDC_ERR_PREAUTH_REQUIRED: i32 = pb::vocab::KrbErrorCode::PREAUTH_REQUIRED.0;
const KRB_ERR_RESPONSE_TOO_BIG: i32 = pb::vocab::KrbErrorCode::RESPONSE_TOO_BIG.0;

fn kerberos_event(flow: &FlowMeta, m: kerberos::KerberosMessage) -> ActivityEvent {
    let mut e = base(flow, "kerberos", "logon");
    if !m.cname.is_empty() {
        e.account = if m.crealm.is_empty() { m.cname.clone() } else { format!("{}@{}", m.cname, m.crealm) };
    }
    e.result = match m.msg_type {
        kerberos::msg::AS_REP | kerberos::msg::TGS_REP => "success".into(),
        // Steps of a normal exchange, not failures: "pre-authentication required" answers
        // every first AS-REQ of a Windows client, "response too big" sends it to TCP.
        kerberos::msg::ERROR if matches!(m.error_code, KDC_ERR_PREAUTH_REQUIRED | KRB_ERR_RESPONSE_TOO_BIG) => {
            "continue".into()
        }
        kerberos::msg::ERROR => "failure".into(),
        _ => String::new(),
    };
    e.status_code = m.error_code as i64;
    e.detail = Some(Detail::Kerberos(pb::Kerberos {
        msg_type: m.msg_type,
        cname: m.cname,
        crealm: m.crealm,
        sname: m.sname,
        realm: m.realm,
        requested_etypes: m.requested_etypes,
        ticket_etype: m.ticket_etype,
        enc_part_etype: m.enc_part_etype,
        padata_types: m.padata_types,
        enc_timestamp_etype: m.enc_timestamp_etype,
        pac_requested: m.pac_requested,
        pk_as_req: m.pk_as_req,
        fast: m.fast,
        kdc_options: m.kdc_options,
        error_code: m.error_code,
        ticket_fingerprint: m.ticket_fingerprint,
        over_tcp: flow.transport == Transport::Tcp,
        carrier: String::new(),
    }));
    e
}

/// A Kerberos AP-REQ found in another protocol's authentication (SMB session setup, LDAP
/// SASL bind, DCE/RPC auth verifier).
fn ap_req_event(flow: &FlowMeta, m: kerberos::KerberosMessage, carrier: &str) -> ActivityEvent {
    let mut e = kerberos_event(flow, m);
    e.result = String::new();
    if let Some(Detail::Kerberos(k)) = e.detail.as_mut() {
        k.carrier = carrier.into();
        k.over_tcp = true;
    }
    e
}

fn dns_event(flow: &FlowMeta, m: dns::DnsMessage) -> ActivityEvent {
    let mut e = base(flow, "dns", "query");
    if m.response {
        e.result = if m.rcode == 0 { "success".into() } else { "failure".into() };
        e.status_code = m.rcode as i64;
    }
    e.detail = Some(Detail::Dns(pb::Dns {
        id: m.id as u32,
        response: m.response,
        opcode: m.opcode as u32,
        rcode: m.rcode as u32,
        questions: m.questions.into_iter().map(|(name, qtype)| pb::DnsQuestion { name, qtype: qtype as u32 }).collect(),
        answers: m.answers as u32,
        over_tcp: flow.transport == Transport::Tcp,
        records: m
            .records
            .into_iter()
            .map(|(name, rtype, data)| pb::DnsRecord { name, rtype: rtype as u32, data })
            .collect(),
    }));
    e
}

/// An NTLM AUTHENTICATE as an event; `carrier` is the protocol that carried it.
fn ntlm_event(flow: &FlowMeta, m: &ntlm::NtlmMessage, carrier: &str, target_name: &str) -> ActivityEvent {
    let mut e = base(flow, "ntlm", "logon");
    e.account = if m.domain.is_empty() { m.user.clone() } else { format!("{}\\{}", m.domain, m.user) };
    e.detail = Some(Detail::Ntlm(pb::Ntlm {
        message_type: m.message_type,
        domain: m.domain.clone(),
        user: m.user.clone(),
        workstation: m.workstation.clone(),
        version: m.version.into(),
        flags: m.flags,
        target_name: target_name.into(),
        carrier: carrier.into(),
    }));
    e
}

fn ldap_request_event(flow: &FlowMeta, message_id: u32, op: ldap::LdapOp) -> Option<ActivityEvent> {
    let mut detail = pb::Ldap { message_id, ..pb::Ldap::default() };
    let (category, account) = match op {
        ldap::LdapOp::Bind { name, method, sasl_mechanism, cleartext_password_sent, .. } => {
            detail.operation = "bind".into();
            detail.bind_name = name.clone();
            detail.bind_method = method.into();
            detail.sasl_mechanism = sasl_mechanism;
            detail.cleartext_password_sent = cleartext_password_sent;
            ("logon", name)
        }
        ldap::LdapOp::Search { base, scope, filter, attributes } => {
            detail.operation = "search".into();
            detail.base_dn = base;
            detail.scope = scope;
            detail.filter = filter;
            detail.attributes = attributes;
            ("query", String::new())
        }
        ldap::LdapOp::Modify { target, attributes } => {
            detail.operation = "modify".into();
            detail.target_dn = target;
            detail.modified_attributes = attributes;
            ("directory_operation", String::new())
        }
        ldap::LdapOp::Add { target, attributes } => {
            detail.operation = "add".into();
            detail.target_dn = target;
            detail.modified_attributes = attributes;
            ("directory_operation", String::new())
        }
        ldap::LdapOp::Delete { target } => {
            detail.operation = "delete".into();
            detail.target_dn = target;
            ("directory_operation", String::new())
        }
        ldap::LdapOp::ModifyDn { target } => {
            detail.operation = "modify_dn".into();
            detail.target_dn = target;
            ("directory_operation", String::new())
        }
        ldap::LdapOp::Extended { name } => {
            // A password change is a change to the directory; StartTLS and the rest are not.
            let category = if name == "PasswordModify" { "directory_operation" } else { "other" };
            detail.operation = "extended".into();
            detail.extended_name = name;
            (category, String::new())
        }
        _ => return None,
    };
    let mut e = base(flow, "ldap", category);
    e.account = account;
    e.detail = Some(Detail::Ldap(detail));
    Some(e)
}

/// Who a successful LDAP bind authenticated, from the events of its last leg: the NTLM
/// AUTHENTICATE or the Kerberos ticket it carried, else the bind name (a simple bind, or a
/// SASL bind naming an identity).
fn bind_identity(events: &[ActivityEvent]) -> Option<Identity> {
    let carried = events.iter().find_map(|e| match &e.detail {
        Some(Detail::Ntlm(_)) => Identity::new(e.account.clone(), "ldap_ntlm"),
        Some(Detail::Kerberos(_)) => Identity::new(e.account.clone(), "ldap_kerberos"),
        _ => None,
    });
    carried.or_else(|| {
        events.iter().find_map(|e| match &e.detail {
            // A simple bind without a password is anonymous (RFC 4513 5.1.2), whatever name.
            Some(Detail::Ldap(l)) if l.operation == "bind" && l.bind_method == "simple" => {
                l.cleartext_password_sent.then(|| Identity::new(l.bind_name.clone(), "ldap_simple")).flatten()
            }
            Some(Detail::Ldap(l)) if l.operation == "bind" => Identity::new(l.bind_name.clone(), "ldap_sasl"),
            _ => None,
        })
    })
}

fn ldap_detail(e: &mut ActivityEvent) -> Option<&mut pb::Ldap> {
    match e.detail.as_mut() {
        Some(Detail::Ldap(l)) => Some(l),
        _ => None,
    }
}

impl Analyzer {
    pub fn new(sink: Box<dyn EventSink>, stamper: Stamper) -> Self {
        Self {
            sink,
            stamper,
            port_sink: None,
            streams_only: false,
            learned_ports: Default::default(),
            tickets: TicketNames::default(),
            endpoints: Default::default(),
            counters: ParseCounters::default(),
            streams: StreamSummary::default(),
        }
    }

    /// Parses nothing: every flow is only counted (how `bench pipeline` measures decode
    /// and reassembly alone).
    pub fn streams_only(mut self) -> Self {
        self.streams_only = true;
        self
    }

    /// Shares what RPC endpoints serve with the other workers' analyzers.
    pub fn with_endpoints(mut self, endpoints: std::sync::Arc<Endpoints>) -> Self {
        self.endpoints = endpoints;
        self
    }

    /// Hands each port learned from an endpoint-mapper reply to `learned`, once.
    pub fn with_port_sink(mut self, learned: impl FnMut(u16) + Send + 'static) -> Self {
        self.port_sink = Some(Box::new(learned));
        self
    }

    fn learn_port(&mut self, port: u16) {
        if self.learned_ports.len() >= MAX_LEARNED_PORTS || !self.learned_ports.insert(port) {
            return;
        }
        self.counters.epm_ports_learned += 1;
        if let Some(learned) = &mut self.port_sink {
            learned(port);
        }
    }

    fn emit(&mut self, mut event: ActivityEvent) {
        self.stamper.stamp(&mut event);
        self.counters.events += 1;
        self.sink.emit(event);
    }

    fn kerberos(&mut self, flow: &FlowMeta, bytes: &[u8]) {
        match kerberos::parse_message(bytes) {
            Ok(m) => {
                self.counters.kerberos_messages += 1;
                let mut e = kerberos_event(flow, m);
                self.name_ticket(&mut e);
                self.emit(e);
            }
            Err(_) => self.counters.kerberos_malformed += 1,
        }
    }

    /// Remembers who an AS-REP or TGS-REP issued its ticket to, and names the account of
    /// a TGS-REQ or AP-REQ that presents a ticket whose issue was seen.
    fn name_ticket(&mut self, e: &mut ActivityEvent) {
        let Some(Detail::Kerberos(k)) = e.detail.as_ref() else { return };
        match k.msg_type {
            kerberos::msg::AS_REP | kerberos::msg::TGS_REP => self.tickets.learn(&k.ticket_fingerprint, &e.account),
            _ if e.account.is_empty() => {
                if let Some(name) = self.tickets.name(&k.ticket_fingerprint) {
                    e.account = name.to_string();
                    e.account_source = "kerberos_ticket".into();
                }
            }
            _ => {}
        }
    }

    /// An AP-REQ found in another protocol's authentication, named through its ticket.
    fn ap_req(&mut self, flow: &FlowMeta, k: kerberos::KerberosMessage, carrier: &str) -> ActivityEvent {
        self.counters.kerberos_ap_reqs += 1;
        let mut e = ap_req_event(flow, k, carrier);
        self.name_ticket(&mut e);
        e
    }

    fn dns(&mut self, flow: &FlowMeta, bytes: &[u8]) {
        match dns::parse_message(bytes) {
            Ok(m) => {
                self.counters.dns_messages += 1;
                // GSS-TSIG (RFC 3645): a TKEY query carries the client's GSS-API token, a
                // Kerberos AP-REQ when a DC or a client signs its dynamic updates.
                let tkey = !m.response && m.questions.iter().any(|(_, t)| *t == dns::qtype::TKEY);
                let ap_req = if tkey { kerberos::find_ap_req(bytes) } else { None };
                self.emit(dns_event(flow, m));
                if let Some(k) = ap_req {
                    let e = self.ap_req(flow, k, "dns");
                    self.emit(e);
                }
            }
            Err(_) => self.counters.dns_malformed += 1,
        }
    }
}

impl Analyzer {
    fn ldap_pdu(&mut self, flow: &FlowMeta, st: &mut LdapFlow, dir: Direction, bytes: &[u8]) {
        let pdu = match ldap::parse_pdu(bytes) {
            Ok(p) => p,
            Err(ldap::LdapError::TooDeep) => return self.counters.ldap_too_deep += 1,
            Err(_) => return self.counters.ldap_malformed += 1,
        };
        self.counters.ldap_messages += 1;
        if dir == Direction::ToServer {
            if let ldap::LdapOp::Bind { ap_req: Some(k), .. } = &pdu.op {
                let e = self.ap_req(flow, k.as_ref().clone(), "ldap");
                st.pending.push((pdu.message_id, e));
            }
            if let ldap::LdapOp::Bind { ntlm: Some(m), .. } = &pdu.op {
                self.counters.ntlm_messages += 1;
                if m.message_type == 3 {
                    let e = ntlm_event(flow, m, "ldap", &st.ntlm_target);
                    st.pending.push((pdu.message_id, e));
                }
            }
            if let Some(mut e) = ldap_request_event(flow, pdu.message_id, pdu.op) {
                if ldap_detail(&mut e).is_some_and(|l| l.operation != "bind") {
                    Identity::apply(st.bound.as_ref(), &mut e);
                }
                if st.pending.len() >= MAX_PENDING_LDAP {
                    let (_, oldest) = st.pending.remove(0);
                    self.emit(oldest);
                }
                st.pending.push((pdu.message_id, e));
            }
            return;
        }
        let code = match pdu.op {
            ldap::LdapOp::SearchEntry { privileged, computer_spns } => {
                if let Some((_, e)) = st.pending.iter_mut().find(|(id, _)| *id == pdu.message_id) {
                    if let Some(l) = ldap_detail(e) {
                        l.entries_returned += 1;
                        for name in privileged {
                            if l.privileged_accounts.len() < MAX_PRIVILEGED_PER_SEARCH
                                && !l.privileged_accounts.contains(&name)
                            {
                                l.privileged_accounts.push(name);
                            }
                        }
                        for spn in computer_spns {
                            if l.computer_spns.len() < MAX_COMPUTER_SPNS_PER_SEARCH && !l.computer_spns.contains(&spn) {
                                l.computer_spns.push(spn);
                            }
                        }
                    }
                }
                return;
            }
            ldap::LdapOp::BindResult { code, ntlm } => {
                if let Some(m) = ntlm {
                    self.counters.ntlm_messages += 1;
                    if m.message_type == 2 {
                        st.ntlm_target = m.target_name;
                    }
                }
                code
            }
            ldap::LdapOp::SearchDone { code } | ldap::LdapOp::Result { code } => code,
            _ => return,
        };
        let mut answered = Vec::new();
        while let Some(i) = st.pending.iter().position(|(id, _)| *id == pdu.message_id) {
            let (_, mut e) = st.pending.remove(i);
            // 14 is saslBindInProgress: a step of a multi-leg SASL bind, not a failure.
            e.result = match code {
                0 => "success".into(),
                14 => String::new(),
                _ => "failure".into(),
            };
            e.status_code = code as i64;
            if let Some(l) = ldap_detail(&mut e) {
                l.result_code = code;
            }
            answered.push(e);
        }
        let is_bind = |e: &ActivityEvent| matches!(&e.detail, Some(Detail::Ldap(l)) if l.operation == "bind");
        if answered.iter().any(is_bind) {
            let carried = bind_identity(&answered);
            match code {
                14 => st.binding = carried.or(st.binding.take()),
                0 => st.bound = carried.or(st.binding.take()),
                _ => (st.bound, st.binding) = (None, None),
            }
            if code == 0 {
                for e in answered.iter_mut().filter(|e| is_bind(e)) {
                    Identity::apply(st.bound.as_ref(), e);
                }
            }
        }
        for e in answered {
            self.emit(e);
        }
    }

    fn ldap_close(&mut self, flow: &FlowMeta, st: &mut LdapFlow) {
        for (_, e) in std::mem::take(&mut st.pending) {
            self.emit(e);
        }
        let sealed = st.to_server.sealed_bytes + st.to_client.sealed_bytes;
        if sealed > 0 {
            self.counters.ldap_sealed_sessions += 1;
            let mut e = base(flow, "ldap", "other");
            e.detail = Some(Detail::Ldap(pb::Ldap {
                operation: "sealed".into(),
                sealed_bytes: sealed,
                ..pb::Ldap::default()
            }));
            self.emit(e);
        }
    }
}

fn dcerpc_event(flow: &FlowMeta, conn: &DceRpcConn, detail: pb::DceRpc, category: &str) -> ActivityEvent {
    let mut e = base(flow, "dcerpc", category);
    Identity::apply(conn.identity.as_ref(), &mut e);
    let mut detail = detail;
    detail.transport = conn.transport.clone();
    if let Some((t, l)) = conn.auth {
        detail.auth_type = t as u32;
        detail.auth_level = l as u32;
        detail.sealed = l == dcerpc::LEVEL_PRIVACY;
    }
    e.detail = Some(Detail::Dcerpc(detail));
    e
}

impl Analyzer {
    fn dcerpc_bytes(&mut self, flow: &FlowMeta, conn: &mut DceRpcConn, dir: Direction, data: &[u8]) {
        let framer = if dir == Direction::ToServer { &mut conn.to_server } else { &mut conn.to_client };
        let was_lost = framer.lost();
        // The framer is taken out of the connection while it hands PDUs on straight from
        // the stream's bytes (no copy); the PDU handler never touches the framers.
        let mut framer = std::mem::take(framer);
        framer.push(data, &mut |p| self.dcerpc_pdu(flow, conn, dir, p));
        if !was_lost && framer.lost() {
            self.counters.dcerpc_framing_lost += 1;
        }
        *(if dir == Direction::ToServer { &mut conn.to_server } else { &mut conn.to_client }) = framer;
    }

    fn dcerpc_pdu(&mut self, flow: &FlowMeta, conn: &mut DceRpcConn, dir: Direction, bytes: &[u8]) {
        let m = match dcerpc::parse_pdu(bytes) {
            Ok(m) => m,
            Err(_) => return self.counters.dcerpc_malformed += 1,
        };
        self.counters.dcerpc_pdus += 1;
        if let Some(a) = &m.auth {
            conn.auth = Some((a.auth_type, a.level));
            if let (Some(k), Direction::ToServer) = (&a.ap_req, dir) {
                let e = self.ap_req(flow, k.clone(), "dcerpc");
                // The association acts for whom its own authentication names, over the SMB
                // session's identity when it runs on a pipe.
                if let Some(id) = Identity::new(e.account.clone(), "dcerpc_kerberos") {
                    conn.identity = Some(id);
                }
                self.emit(e);
            }
            if let Some(n) = &a.ntlm {
                self.counters.ntlm_messages += 1;
                if n.message_type == 3 && dir == Direction::ToServer {
                    let e = ntlm_event(flow, n, "dcerpc", "");
                    if let Some(id) = Identity::new(e.account.clone(), "dcerpc_ntlm").filter(|_| !n.user.is_empty()) {
                        conn.identity = Some(id);
                    }
                    self.emit(e);
                }
            }
        }
        match (dir, m.pdu) {
            (Direction::ToServer, dcerpc::Pdu::Bind { contexts }) => {
                let bind_contexts = contexts.len() as u32;
                for (id, uuid) in contexts {
                    let name = dcerpc::interface_name(&uuid).unwrap_or("").to_string();
                    conn.contexts.retain(|(c, _)| *c != id);
                    if conn.contexts.len() >= MAX_DCE_CONTEXTS {
                        conn.contexts.remove(0);
                    }
                    conn.contexts.push((id, uuid.clone()));
                    if conn.transport == "tcp" && flow.server.port() != 135 {
                        self.endpoints.learn(flow.server.ip(), flow.server.port(), &uuid);
                    }
                    let detail = pb::DceRpc {
                        operation: "bind".into(),
                        interface: if name.is_empty() { uuid.clone() } else { name },
                        interface_uuid: uuid,
                        call_id: m.call_id,
                        bind_contexts,
                        ..pb::DceRpc::default()
                    };
                    let e = dcerpc_event(flow, conn, detail, "other");
                    self.emit(e);
                }
            }
            (Direction::ToServer, dcerpc::Pdu::Request { context_id, opnum }) => {
                // A call in several request fragments is one call: the first fragment counts.
                if !m.first_fragment {
                    return;
                }
                // A call id reused before the last call with it was answered: that one is
                // reported without a result.
                if let Some(i) = conn.pending.iter().position(|(id, _)| *id == m.call_id) {
                    let (_, unanswered) = conn.pending.remove(i);
                    self.emit(unanswered);
                }
                let mut uuid =
                    conn.contexts.iter().find(|(c, _)| *c == context_id).map(|(_, u)| u.clone()).unwrap_or_default();
                // The bind was not seen: the endpoint says which interface it serves.
                if uuid.is_empty() && conn.transport == "tcp" {
                    if let Some(known) = self.endpoints.interface(flow.server.ip(), flow.server.port()) {
                        uuid = known;
                        if conn.contexts.len() < MAX_DCE_CONTEXTS {
                            conn.contexts.push((context_id, uuid.clone()));
                        }
                    }
                }
                let name = dcerpc::interface_name(&uuid).unwrap_or("");
                let detail = pb::DceRpc {
                    operation: "call".into(),
                    interface: if name.is_empty() { uuid.clone() } else { name.to_string() },
                    interface_uuid: uuid.clone(),
                    opnum: opnum as u32,
                    operation_name: dcerpc::operation_name(name, opnum).unwrap_or("").into(),
                    call_id: m.call_id,
                    ..pb::DceRpc::default()
                };
                let e = dcerpc_event(flow, conn, detail, dcerpc::category(name, opnum));
                if conn.pending.len() >= MAX_PENDING_DCE {
                    let (_, oldest) = conn.pending.remove(0);
                    self.emit(oldest);
                }
                conn.pending.push((m.call_id, e));
            }
            (Direction::ToClient, pdu @ (dcerpc::Pdu::Response | dcerpc::Pdu::Fault { .. })) => {
                if let Some(i) = conn.pending.iter().position(|(id, _)| *id == m.call_id) {
                    let (_, mut e) = conn.pending.remove(i);
                    let is_ept_map =
                        matches!(&e.detail, Some(Detail::Dcerpc(d)) if d.interface == "epm" && d.opnum == 3);
                    if is_ept_map {
                        let stub = dcerpc::response_stub(bytes).unwrap_or_default();
                        for (_, port) in dcerpc::epm_tcp_endpoints(stub) {
                            self.learn_port(port);
                        }
                        for (uuid, port) in dcerpc::epm_tcp_interfaces(stub) {
                            self.endpoints.learn(flow.server.ip(), port, &uuid);
                        }
                    }
                    match pdu {
                        dcerpc::Pdu::Fault { status } => {
                            e.result = "failure".into();
                            e.status_code = status as i64;
                        }
                        _ => e.result = "success".into(),
                    }
                    self.emit(e);
                }
            }
            _ => {}
        }
    }

    fn dcerpc_close(&mut self, conn: &mut DceRpcConn) {
        for (_, e) in std::mem::take(&mut conn.pending) {
            self.emit(e);
        }
    }
}

fn smb2_event(
    flow: &FlowMeta,
    st: &Smb2Flow,
    command: &str,
    tree: String,
    file: String,
    session_id: u64,
) -> ActivityEvent {
    let mut e = base(flow, "smb2", "other");
    e.detail = Some(Detail::Smb2(pb::Smb2 {
        command: command.into(),
        dialect: st.dialect as u32,
        tree,
        file,
        session_id,
        ..pb::Smb2::default()
    }));
    e
}

/// An RPC association on a pipe acts for the SMB session's account, learned as the session
/// learned it.
fn smb_source(session_source: &str) -> &'static str {
    if session_source == "smb_kerberos" {
        "smb_kerberos"
    } else {
        "smb_ntlm"
    }
}

impl Analyzer {
    fn smb2_unit(&mut self, flow: &FlowMeta, st: &mut Smb2Flow, dir: Direction, unit: &[u8]) {
        let messages = match smb2::parse_unit(unit) {
            smb2::Smb2Unit::Encrypted { len } => {
                self.counters.smb2_encrypted_messages += 1;
                st.encrypted_messages += 1;
                st.encrypted_bytes += len as u64;
                return;
            }
            smb2::Smb2Unit::NotSmb2 => return,
            smb2::Smb2Unit::Messages(m) => m,
        };
        for m in messages {
            self.counters.smb2_messages += 1;
            self.smb2_pipe_data(flow, st, dir, &m);
            if dir == Direction::ToServer {
                let pending = match &m.body {
                    smb2::Smb2Body::SessionSetup { security_blob } => {
                        let carrier = if m.smb1 { "smb1" } else { "smb2" };
                        let auth = match ntlm::find_message(security_blob) {
                            Some(n) => {
                                self.counters.ntlm_messages += 1;
                                (n.message_type == 3)
                                    .then(|| (ntlm_event(flow, &n, carrier, &st.ntlm_target), "smb_ntlm"))
                            }
                            None => kerberos::find_ap_req(security_blob)
                                .map(|k| (self.ap_req(flow, k, carrier), "smb_kerberos")),
                        };
                        // The session acts for this account once the setup succeeds.
                        // An anonymous NTLM logon (no user) names nobody.
                        let named = auth
                            .as_ref()
                            .filter(|(e, _)| !matches!(&e.detail, Some(Detail::Ntlm(n)) if n.user.is_empty()));
                        if let Some(id) = named.and_then(|(e, how)| Identity::new(e.account.clone(), how)) {
                            if st.setups.len() >= MAX_SMB_SESSIONS {
                                st.setups.remove(0);
                            }
                            st.setups.push((m.message_id, id));
                        }
                        auth.map(|(e, _)| (None, e))
                    }
                    smb2::Smb2Body::TreeConnect { path } => {
                        let mut e = smb2_event(flow, st, "tree_connect", path.clone(), String::new(), m.session_id);
                        Identity::apply(st.session(m.session_id), &mut e);
                        Some((Some(path.clone()), e))
                    }
                    smb2::Smb2Body::Create { name } => {
                        let tree = st
                            .trees
                            .iter()
                            .find(|(id, _)| *id == m.tree_id)
                            .map(|(_, p)| p.clone())
                            .unwrap_or_default();
                        let mut e = smb2_event(flow, st, "create", tree, name.clone(), m.session_id);
                        Identity::apply(st.session(m.session_id), &mut e);
                        Some((None, e))
                    }
                    _ => None,
                };
                if let Some((path, e)) = pending {
                    if st.pending.len() >= MAX_PENDING_SMB {
                        let (_, _, oldest) = st.pending.remove(0);
                        self.emit(oldest);
                    }
                    st.pending.push((m.message_id, path, e));
                }
                continue;
            }
            match &m.body {
                smb2::Smb2Body::NegotiateResponse { dialect } => st.dialect = *dialect,
                smb2::Smb2Body::SessionSetup { security_blob } => {
                    if let Some(n) = ntlm::find_message(security_blob) {
                        self.counters.ntlm_messages += 1;
                        if n.message_type == 2 {
                            st.ntlm_target = n.target_name;
                        }
                    }
                    if let Some(i) = st.setups.iter().position(|(id, _)| *id == m.message_id) {
                        let (_, identity) = st.setups.remove(i);
                        if m.status == smb2::status::SUCCESS {
                            st.sessions.retain(|(s, _)| *s != m.session_id);
                            if st.sessions.len() >= MAX_SMB_SESSIONS {
                                st.sessions.remove(0);
                            }
                            st.sessions.push((m.session_id, identity));
                        }
                    }
                }
                _ => {}
            }
            // An interim "pending" response (async) is followed by the final one.
            if m.status == 0x0000_0103 {
                continue;
            }
            while let Some(i) = st.pending.iter().position(|(id, _, _)| *id == m.message_id) {
                let (_, path, mut e) = st.pending.remove(i);
                // A named pipe opened: DCE/RPC may follow on its file id.
                if let (smb2::Smb2Body::CreateResponse { file_id }, Some(Detail::Smb2(d))) =
                    (&m.body, e.detail.as_ref())
                {
                    if !d.file.is_empty() {
                        if st.pipes.len() >= MAX_PIPES {
                            let (_, mut old) = st.pipes.remove(0);
                            self.dcerpc_close(&mut old);
                        }
                        let identity = Identity::new(e.account.clone(), smb_source(&e.account_source));
                        let conn = DceRpcConn { transport: d.file.to_lowercase(), identity, ..DceRpcConn::default() };
                        st.pipes.push((*file_id, conn));
                    }
                }
                if let (Some(path), smb2::status::SUCCESS) = (path, m.status) {
                    if st.trees.len() >= MAX_SMB_TREES {
                        st.trees.remove(0);
                    }
                    st.trees.push((m.tree_id, path));
                }
                e.result = match m.status {
                    smb2::status::SUCCESS => "success".into(),
                    smb2::status::MORE_PROCESSING_REQUIRED => String::new(),
                    _ => "failure".into(),
                };
                e.status_code = m.status as i64;
                self.emit(e);
            }
        }
    }

    /// Routes pipe data (writes, reads, transceives) to the DCE/RPC association on the pipe.
    fn smb2_pipe_data(&mut self, flow: &FlowMeta, st: &mut Smb2Flow, dir: Direction, m: &smb2::Smb2Message) {
        let (file_id, data) = match (&m.body, dir) {
            (smb2::Smb2Body::Write { file_id, data }, Direction::ToServer) => (*file_id, data),
            (smb2::Smb2Body::Transceive { file_id, data }, _) => (*file_id, data),
            (smb2::Smb2Body::Read { file_id }, Direction::ToServer) => {
                if st.pending_reads.len() >= MAX_PENDING_READS {
                    st.pending_reads.remove(0);
                }
                st.pending_reads.push((m.message_id, *file_id));
                return;
            }
            (smb2::Smb2Body::ReadResponse { data }, Direction::ToClient) => {
                let Some(i) = st.pending_reads.iter().position(|(id, _)| *id == m.message_id) else { return };
                let (_, file_id) = st.pending_reads.remove(i);
                (file_id, data)
            }
            _ => return,
        };
        if data.is_empty() {
            return;
        }
        if let Some((_, conn)) = st.pipes.iter_mut().find(|(id, _)| *id == file_id) {
            self.dcerpc_bytes(flow, conn, dir, data);
        }
    }

    fn smb2_close(&mut self, flow: &FlowMeta, st: &mut Smb2Flow) {
        for (_, _, e) in std::mem::take(&mut st.pending) {
            self.emit(e);
        }
        for (_, mut conn) in std::mem::take(&mut st.pipes) {
            self.dcerpc_close(&mut conn);
        }
        if st.encrypted_messages > 0 {
            let mut e = smb2_event(flow, st, "encrypted", String::new(), String::new(), 0);
            if let Some(Detail::Smb2(d)) = e.detail.as_mut() {
                d.encrypted_messages = st.encrypted_messages;
                d.encrypted_bytes = st.encrypted_bytes;
            }
            self.emit(e);
        }
    }
}

impl Analyzer {
    fn http_head(&mut self, flow: &FlowMeta, st: &mut HttpFlow, head: http::Head) {
        self.counters.http_messages += 1;
        match head {
            http::Head::Request { auth, .. } => {
                let event = auth.and_then(|token| match ntlm::find_message(&token) {
                    Some(n) => {
                        self.counters.ntlm_messages += 1;
                        (n.message_type == 3).then(|| ntlm_event(flow, &n, "http", &st.ntlm_target))
                    }
                    None => kerberos::find_ap_req(&token).map(|k| self.ap_req(flow, k, "http")),
                });
                if st.pending.len() >= MAX_PENDING_HTTP {
                    if let Some(Some(oldest)) = st.pending.pop_front() {
                        self.emit(oldest);
                    }
                }
                st.pending.push_back(event);
            }
            http::Head::Response { status, auth } => {
                if let Some(n) = auth.as_deref().and_then(ntlm::find_message) {
                    self.counters.ntlm_messages += 1;
                    if n.message_type == 2 {
                        st.ntlm_target = n.target_name;
                    }
                }
                // 1xx are interim; the final response follows.
                if status < 200 {
                    return;
                }
                if let Some(Some(mut e)) = st.pending.pop_front() {
                    e.result = if status < 400 { "success" } else { "failure" }.into();
                    e.status_code = i64::from(status);
                    self.emit(e);
                }
            }
        }
    }

    fn http_close(&mut self, st: &mut HttpFlow) {
        while let Some(e) = st.pending.pop_front() {
            if let Some(e) = e {
                self.emit(e);
            }
        }
    }
}

impl StreamConsumer for Analyzer {
    type State = FlowState;

    /// DNS and Kerberos over UDP answer each request once; a client's next request comes
    /// from a new port, or opens a new flow here.
    fn answer_ends_flow(&self, flow: &FlowMeta) -> bool {
        matches!(flow.server.port(), 53 | 88)
    }

    fn finish(&mut self) {
        self.sink.flush();
    }

    /// Sessions whose later events are named or understood only through what the sensor
    /// saw at their start: an SMB session's setup, an RPC association's bind and auth, an
    /// LDAP bind. Evicting one would leave a DCSync on it without its interface or account.
    fn keeps(&self, state: &FlowState) -> bool {
        match state {
            FlowState::DceRpc(c) => !c.contexts.is_empty() || c.identity.is_some(),
            FlowState::Smb2(f) => !f.sessions.is_empty() || !f.pipes.is_empty(),
            FlowState::Ldap(f) => f.bound.is_some(),
            _ => false,
        }
    }

    fn event(&mut self, flow: &FlowMeta, state: &mut FlowState, event: StreamEvent<'_>) {
        self.streams.event(
            flow,
            &mut (),
            match &event {
                StreamEvent::Data { dir, data } => StreamEvent::Data { dir: *dir, data },
                StreamEvent::Gap { dir, len } => StreamEvent::Gap { dir: *dir, len: *len },
                StreamEvent::Datagram { dir, data } => StreamEvent::Datagram { dir: *dir, data },
                StreamEvent::Closed(r) => StreamEvent::Closed(*r),
            },
        );
        if matches!(state, FlowState::Unclassified) {
            *state = if self.streams_only { FlowState::Unparsed } else { classify(flow) };
        }
        if matches!(state, FlowState::Probe) {
            match &event {
                StreamEvent::Data { data, .. } if dcerpc::looks_like_pdu(data) => {
                    *state =
                        FlowState::DceRpc(Box::new(DceRpcConn { transport: "tcp".into(), ..DceRpcConn::default() }));
                }
                StreamEvent::Data { .. } | StreamEvent::Datagram { .. } => {
                    *state = FlowState::Unparsed;
                    self.counters.flows_unparsed += 1;
                }
                _ => {}
            }
        }
        match (state, event) {
            (FlowState::Kerberos { .. }, StreamEvent::Datagram { data, .. }) => self.kerberos(flow, data),
            (FlowState::Kerberos { to_server, to_client }, StreamEvent::Data { dir, data }) => {
                let framer = if dir == Direction::ToServer { to_server } else { to_client };
                let mut oversized = 0;
                framer.push(data, &mut oversized, &mut |r| self.kerberos(flow, r));
                self.counters.kerberos_oversized += oversized;
            }
            (FlowState::Kerberos { to_server, to_client }, StreamEvent::Gap { dir, .. }) => {
                let framer = if dir == Direction::ToServer { to_server } else { to_client };
                if !framer.lost() {
                    self.counters.kerberos_framing_lost += 1;
                }
                framer.gap();
            }
            (FlowState::Dns { .. }, StreamEvent::Datagram { data, .. }) => self.dns(flow, data),
            (FlowState::Dns { to_server, to_client }, StreamEvent::Data { dir, data }) => {
                let framer = if dir == Direction::ToServer { to_server } else { to_client };
                framer.push(data, &mut |r| self.dns(flow, r));
            }
            (FlowState::Dns { to_server, to_client }, StreamEvent::Gap { dir, .. }) => {
                let framer = if dir == Direction::ToServer { to_server } else { to_client };
                if !framer.lost() {
                    self.counters.dns_framing_lost += 1;
                }
                framer.gap();
            }
            (FlowState::Ldap(st), StreamEvent::Datagram { dir, data }) => {
                // CLDAP: the reply's entries and searchResDone share one datagram.
                for m in ldap::datagram_messages(data) {
                    self.ldap_pdu(flow, st, dir, m);
                }
            }
            (FlowState::Ldap(st), StreamEvent::Data { dir, data }) => {
                let framer = if dir == Direction::ToServer { &mut st.to_server } else { &mut st.to_client };
                if framer.sealed() {
                    framer.count_sealed(data.len());
                    return;
                }
                // Taken out of the flow while PDUs are handed on uncopied (ldap_pdu never
                // touches the framers).
                let mut framer = std::mem::take(framer);
                framer.push(data, &mut |f| match f {
                    ldap::Frame::Pdu(p) => self.ldap_pdu(flow, st, dir, p),
                    ldap::Frame::Oversized => self.counters.ldap_oversized += 1,
                });
                *(if dir == Direction::ToServer { &mut st.to_server } else { &mut st.to_client }) = framer;
            }
            (FlowState::Ldap(st), StreamEvent::Gap { dir, .. }) => {
                let framer = if dir == Direction::ToServer { &mut st.to_server } else { &mut st.to_client };
                if !framer.sealed() && !framer.lost() {
                    self.counters.ldap_framing_lost += 1;
                }
                framer.gap();
            }
            (FlowState::Ldap(st), StreamEvent::Closed(_)) => self.ldap_close(flow, st),
            (FlowState::Smb2(st), StreamEvent::Data { dir, data }) => {
                let framer = if dir == Direction::ToServer { &mut st.to_server } else { &mut st.to_client };
                let was_lost = framer.lost();
                // Taken out of the flow while units are handed on uncopied (smb2_unit never
                // touches the framers).
                let mut framer = std::mem::take(framer);
                framer.push(data, &mut |f| match f {
                    smb2::Frame::Unit(u) => self.smb2_unit(flow, st, dir, u),
                    smb2::Frame::Oversized { head, len } => {
                        self.counters.smb2_oversized += 1;
                        // A large encrypted message is still an encrypted message.
                        if head.starts_with(b"\xfdSMB") {
                            st.encrypted_messages += 1;
                            st.encrypted_bytes += len as u64;
                        }
                    }
                });
                if !was_lost && framer.lost() {
                    self.counters.smb2_framing_lost += 1;
                }
                *(if dir == Direction::ToServer { &mut st.to_server } else { &mut st.to_client }) = framer;
            }
            (FlowState::Smb2(st), StreamEvent::Gap { dir, .. }) => {
                let framer = if dir == Direction::ToServer { &mut st.to_server } else { &mut st.to_client };
                if !framer.lost() {
                    self.counters.smb2_framing_lost += 1;
                }
                framer.gap();
            }
            (FlowState::Smb2(st), StreamEvent::Closed(_)) => self.smb2_close(flow, st),
            (FlowState::DceRpc(conn), StreamEvent::Data { dir, data }) => self.dcerpc_bytes(flow, conn, dir, data),
            (FlowState::DceRpc(conn), StreamEvent::Gap { dir, .. }) => {
                let framer = if dir == Direction::ToServer { &mut conn.to_server } else { &mut conn.to_client };
                if !framer.lost() {
                    self.counters.dcerpc_framing_lost += 1;
                }
                framer.gap();
            }
            (FlowState::DceRpc(conn), StreamEvent::Closed(_)) => self.dcerpc_close(conn),
            (FlowState::Http(st), StreamEvent::Data { dir, data }) => {
                let framer = if dir == Direction::ToServer { &mut st.to_server } else { &mut st.to_client };
                let before = framer.oversized;
                let mut heads = Vec::new();
                framer.push(data, &mut |h| heads.push(h));
                self.counters.http_oversized += framer.oversized - before;
                for h in heads {
                    self.http_head(flow, st, h);
                }
            }
            (FlowState::Http(st), StreamEvent::Gap { dir, .. }) => {
                let framer = if dir == Direction::ToServer { &st.to_server } else { &st.to_client };
                if !framer.lost() {
                    self.counters.http_framing_lost += 1;
                }
                if dir == Direction::ToServer {
                    st.to_server.gap()
                } else {
                    // Responses lost: the pairing is lost with them.
                    st.to_client.gap();
                    self.http_close(st);
                }
            }
            (FlowState::Http(st), StreamEvent::Closed(_)) => self.http_close(st),
            _ => {}
        }
    }
}
