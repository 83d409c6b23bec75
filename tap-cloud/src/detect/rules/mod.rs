//! The detections, each a few lines over shared, bounded
//! state. Every finding names the detection, the entities and a plain-language account of
//! what happened and what to do.

use std::collections::{HashMap, HashSet};

use super::{config::DetectConfig, Finding, Windows};
use crate::pb::{
    activity_event::Detail,
    vocab::{DnsType, EncryptionType, KrbErrorCode},
    ActivityEvent, DceRpc, Kerberos, Ldap,
};

const MAX_KEYS: usize = 100_000;
const MAX_PER_KEY: usize = 1_000;
/// TGT fingerprints remembered (issued, and the host that first used each).
const MAX_TICKETS: usize = 200_000;

/// Kerberos error codes (RFC 4120 7.5.9).
const KDC_ERR_C_PRINCIPAL_UNKNOWN: i32 = KrbErrorCode::C_PRINCIPAL_UNKNOWN.0;
const KDC_ERR_PREAUTH_FAILED: i32 = KrbErrorCode::PREAUTH_FAILED.0;
/// NTSTATUS of a failed NTLM logon for a name that does not exist.
const STATUS_NO_SUCH_USER: i64 = 0xC000_0064;
const RC4_HMAC: i32 = EncryptionType::RC4_HMAC.0;
/// The AES types clients offer first (the SHA-1 ones, what AD issues).
const AES: [i32; 2] = [EncryptionType::AES128_CTS_HMAC_SHA1.0, EncryptionType::AES256_CTS_HMAC_SHA1.0];
/// How long a TGS-REQ waits for its reply (which names the account) before what it
/// showed is reported without one.
const TGS_REPLY_WAIT_NS: i64 = 5_000_000_000;
/// PA-DATA of S4U2self (MS-SFU 2.2.1 PA-FOR-USER, 2.2.2 PA-S4U-X509-USER): a service asks
/// for a ticket to itself on behalf of a user, and the reply names that user.
const PA_FOR_USER: i32 = 129;
const PA_S4U_X509_USER: i32 = 130;
/// KDC option cname-in-addl-tkt (bit 14, MS-SFU 2.2.3): an S4U2proxy request.
const KDC_OPT_CNAME_IN_ADDL_TKT: u32 = 1 << (31 - 14);
/// Service classes of the SPNs every computer account registers (MS-ADTS 6.1.1.2.7.8,
/// and the DRS replication GUID): tickets for them are encrypted with a machine
/// password of 120 random characters, which nobody cracks.
const COMPUTER_SERVICE_CLASSES: [&str; 14] = [
    "host",
    "cifs",
    "ldap",
    "gc",
    "rpcss",
    "dns",
    "wsman",
    "termsrv",
    "restrictedkrbhost",
    "nfs",
    "ipp",
    "kadmin",
    "e3514235-4b06-11d1-ab04-00c04fc2dcd2",
    "dfsr-12f9a27c-bf97-4787-9364-d31b6c55eb04",
];

/// How long a host that registered a DC object (DRSAddEntry) has to start replicating
/// the directory from a DC, as a promotion does at once, before the registration is taken
/// for a rogue DC's (DCShadow).
const PROMOTION_WAIT_NS: i64 = 60_000_000_000;
/// DNS names under which domain controllers register (MS-ADTS 6.3.2.3): an SRV record for
/// one of these services under `dc._msdcs.` (the domain's or a site's) names a DC.
const DC_LOCATOR_SERVICES: [&str; 2] = ["_ldap._tcp.", "_kerberos._tcp."];
/// Services only DCs register in an AD domain, in the domain's own zone as well as under
/// `dc._msdcs` (the KDC and password-change records MIT clients look up, and the global
/// catalog). `_ldap._tcp.<domain>` is left out: other LDAP servers may hold it.
const DC_ONLY_SERVICES: [&str; 5] =
    ["_kerberos._tcp.", "_kerberos._udp.", "_kpasswd._tcp.", "_kpasswd._udp.", "_gc._tcp."];
/// Accounts a spray's description names; the rest are counted.
const MAX_NAMED_ACCOUNTS: usize = 20;
/// A logon this close after a source's last failure, over the same protocol, is one more
/// attempt of the same spray.
const SPRAY_BURST_NS: i64 = 60_000_000_000;
/// DNS opcode of a dynamic update (RFC 2136).
const DNS_UPDATE: u32 = 5;

/// A TGS-REQ waiting for its reply: the reply (not the request) names the account.
struct TgsRequest {
    event: ActivityEvent,
    /// The account of the TGT it presented, when that TGT's AS-REP was seen.
    owner: String,
    sname: String,
    /// Offers RC4 and no AES for a service of a user account: the ticket roasting tools want.
    roast: bool,
    /// Presents a TGT no watched DC issued, after watching longer than a ticket lives.
    forged: bool,
    /// Asks for a user account's service offering AES: an RC4 ticket in reply is the
    /// service account's configuration.
    user_service_offering_aes: bool,
}

pub struct Rules {
    failed_accounts_by_src: Windows<String>,
    /// The DCs each source's failed logons went to, in the window (a spray's DCs).
    failed_dcs_by_src: Windows<String>,
    /// Each source's latest failed logon: when, and over which protocol.
    last_failure_by_src: HashMap<String, (i64, String)>,
    failures_by_src_account: Windows<(String, String)>,
    unknown_by_src: Windows<String>,
    ldap_kinds_by_src: Windows<String>,
    rpc_ops_by_src: Windows<String>,
    netlogon_by_src: Windows<String>,
    roast_spns_by_src: Windows<String>,
    /// Distinct user services each account asked tickets for (the burst rule).
    user_spns_by_account: Windows<String>,
    /// AS-REQs without pre-authentication waiting for their reply: (client, port) → name.
    asreq_without_preauth: HashMap<(String, u32), String>,
    /// TGS-REQs that would raise something, waiting for the reply that names the
    /// requesting account (the request does not): (client, port) → the request.
    tgs_requests: HashMap<(String, u32), TgsRequest>,
    /// Host names (first label, lower case) of computer accounts seen authenticating
    /// (`NAME$`), and of the DCs: their SPNs belong to machine accounts.
    computers: HashSet<String>,
    /// SPNs LDAP search results showed held by computer accounts (lower case).
    computer_spns: HashSet<String>,
    /// User services whose tickets came encrypted with RC4 to a client that offered AES,
    /// with when, since the engine last took them (see [`Rules::take_rc4_services`]).
    rc4_services: Vec<(String, i64)>,
    /// TGT fingerprint → the host it was issued to (or first used from) and the account it
    /// was issued for (from the AS-REP; TGS-REQs do not name their client in the clear).
    tgt_host: HashMap<String, (String, String)>,
    /// Domain controllers: configured, and learned from who answers Kerberos and LDAP, the
    /// DC locator's DNS records, and promotions.
    dcs: HashSet<String>,
    /// Host names the DC locator's SRV records name (lower case).
    dc_names: HashSet<String>,
    /// The DCs' machine account names without `$` (lower case): the first labels of the
    /// DC locator's names, and `NAME$` accounts that log on from a DC's address.
    dc_accounts: HashSet<String>,
    /// (account, service) pairs seen in S4U2proxy requests: constrained delegation an
    /// account already does.
    delegations: HashSet<(String, String)>,
    /// Fingerprints of the service tickets watched DCs issued (TGS-REPs).
    service_tickets: HashSet<String>,
    /// Hosts that registered a DC object (a successful DRSAddEntry) and are not yet known
    /// as DCs: a promotion if they replicate next, DCShadow if not.
    registrations: HashMap<String, ActivityEvent>,
    /// Dynamic updates waiting for their answer, by (source, port, DNS id): a record counts
    /// only once the DC accepted it, or anyone could register themselves as a DC.
    pending_updates: HashMap<(String, u32, u32), ActivityEvent>,
    /// Time of the first event seen: the sensor's watch started then.
    watching_since: Option<i64>,
    honeytokens: HashSet<String>,
}

fn lower(s: &str) -> String {
    s.to_lowercase()
}

/// "user@REALM", "DOMAIN\user", a UPN, an LDAP DN ("CN=user,CN=Users,DC=...") and "user",
/// in any case, name the same account.
pub fn account_key(account: &str) -> String {
    let a = account.trim();
    // A DN names the object by its first RDN; for accounts that is the CN (or uid).
    if let Some((attr, value)) = a.split(',').next().and_then(|rdn| rdn.split_once('=')) {
        if matches!(attr.trim().to_ascii_lowercase().as_str(), "cn" | "uid") {
            return lower(value.trim());
        }
    }
    let a = a.rsplit('\\').next().unwrap_or(a);
    lower(a.split('@').next().unwrap_or(a))
}

/// Whether a service principal name belongs to a user account (a service account whose
/// password a person chose), as far as the name tells: not krbtgt, not a `NAME$` account
/// or a computer seen authenticating as one, not an SPN LDAP results showed a computer
/// holding, and not a service class every computer registers (a DC's `cifs/`, `ldap/`,
/// `host/`).
fn user_service(sname: &str, computers: &HashSet<String>, computer_spns: &HashSet<String>) -> bool {
    let s = lower(sname);
    if s.is_empty() || s.starts_with("krbtgt") || s.starts_with("kadmin/") || s.ends_with('$') {
        return false;
    }
    if computer_spns.contains(s.split('@').next().unwrap_or(&s)) {
        return false;
    }
    match s.split_once('/') {
        Some((class, _)) => !COMPUTER_SERVICE_CLASSES.contains(&class),
        // A bare name is an account name (a ticket to an account by name or UPN).
        None => !computers.contains(s.split('@').next().unwrap_or(&s)),
    }
}

fn dcshadow(ev: &ActivityEvent, op: &str, how: &str) -> Finding {
    finding(ev, "dcshadow", "DCShadow: a non-DC registering or pushing replication", "high", "T1207", &account_key(&ev.account), format!(
        "{} called {op} on {}, {how}: a rogue DC may be registering to push changes (DCShadow). Check for new nTDSDSA objects and recent changes to sensitive attributes.",
        ev.src_ip, ev.dc_ip
    ))
}

fn finding(
    ev: &ActivityEvent,
    detection: &'static str,
    title: &'static str,
    severity: &'static str,
    mitre: &'static str,
    account: &str,
    description: String,
) -> Finding {
    Finding {
        detection,
        title,
        severity,
        mitre,
        account: account.to_string(),
        src_ip: ev.src_ip.clone(),
        dc_ip: ev.dc_ip.clone(),
        description,
        dcs: Vec::new(),
    }
}

/// What kind of directory reconnaissance an LDAP filter is, if any.
fn ldap_recon_kind(filter: &str) -> Option<&'static str> {
    let f = lower(filter);
    let kinds: [(&str, &[&str]); 9] = [
        ("accounts without Kerberos pre-authentication", &["4194304"]),
        ("accounts with service principal names", &["serviceprincipalname="]),
        ("delegation settings", &["msds-allowedtodelegateto", "524288", "trustedfordelegation"]),
        ("privileged accounts", &["admincount=1", "domain admins", "enterprise admins"]),
        ("domain trusts", &["objectclass=trusteddomain"]),
        ("computers", &["objectclass=computer", "objectcategory=computer"]),
        ("groups", &["objectclass=group", "objectcategory=group"]),
        ("users", &["objectcategory=person", "objectclass=user", "samaccounttype=805306368"]),
        ("the domain object", &["objectclass=domain)"]),
    ];
    kinds.iter().find(|(_, needles)| needles.iter().any(|n| f.contains(n))).map(|(k, _)| *k)
}

/// SAMR and LSARPC operations that list what the domain holds.
const RPC_RECON_OPS: [&str; 12] = [
    "SamrEnumerateDomainsInSamServer",
    "SamrEnumerateUsersInDomain",
    "SamrEnumerateGroupsInDomain",
    "SamrEnumerateAliasesInDomain",
    "SamrGetMembersInGroup",
    "SamrGetMembersInAlias",
    "SamrQueryDisplayInformation",
    "SamrQueryDisplayInformation2",
    "SamrQueryDisplayInformation3",
    "LsarLookupSids",
    "LsarEnumerateAccounts",
    "LsarEnumerateTrustedDomainsEx",
];

impl Rules {
    pub fn new(cfg: &DetectConfig) -> Self {
        let w = || Windows::new(MAX_KEYS, MAX_PER_KEY);
        Self {
            failed_accounts_by_src: w(),
            failed_dcs_by_src: w(),
            last_failure_by_src: HashMap::new(),
            failures_by_src_account: Windows::new(MAX_KEYS, MAX_PER_KEY),
            unknown_by_src: w(),
            ldap_kinds_by_src: w(),
            rpc_ops_by_src: w(),
            netlogon_by_src: w(),
            roast_spns_by_src: w(),
            user_spns_by_account: w(),
            asreq_without_preauth: HashMap::new(),
            tgs_requests: HashMap::new(),
            computers: HashSet::new(),
            computer_spns: HashSet::new(),
            rc4_services: Vec::new(),
            tgt_host: HashMap::new(),
            dcs: cfg.dcs.iter().cloned().collect(),
            dc_names: HashSet::new(),
            dc_accounts: HashSet::new(),
            delegations: HashSet::new(),
            service_tickets: HashSet::new(),
            registrations: HashMap::new(),
            pending_updates: HashMap::new(),
            watching_since: None,
            honeytokens: cfg.honeytokens.iter().map(|a| account_key(a)).collect(),
        }
    }

    /// Takes the honeytokens and DCs of a new configuration (learned DCs stay).
    pub fn reconfigure(&mut self, cfg: &DetectConfig) {
        self.honeytokens = cfg.honeytokens.iter().map(|a| account_key(a)).collect();
        self.dcs.extend(cfg.dcs.iter().cloned());
    }

    /// DCs a sensor says it monitors.
    pub fn add_dcs<'a>(&mut self, dcs: impl IntoIterator<Item = &'a String>) {
        // Subnets ("10.0.0.0/24") are filter entries, not hosts.
        self.dcs.extend(dcs.into_iter().filter(|d| !d.contains('/')).cloned());
    }

    pub fn observe(&mut self, cfg: &DetectConfig, ev: &ActivityEvent, out: &mut Vec<Finding>) {
        let t = ev.time_unix_ns;
        self.watching_since = Some(self.watching_since.map_or(t, |s| s.min(t)));
        self.flush_tgs_requests(cfg, t, out);
        self.flush_registrations(t, out);
        let account = account_key(&ev.account);
        if let Some(computer) = account.strip_suffix('$').filter(|c| !c.is_empty()) {
            if self.computers.len() < MAX_KEYS {
                self.computers.insert(computer.to_string());
            }
            if self.dcs.contains(&ev.src_ip) && self.dc_accounts.len() < MAX_KEYS {
                self.dc_accounts.insert(computer.to_string());
            }
        }
        if !account.is_empty() && self.honeytokens.contains(&account) {
            out.push(finding(ev, "honeytoken", "Honeytoken account used", "high", "T1078", &account, format!(
                "The honeytoken account {} was used from {} ({} {}). Nobody has a reason to use it: treat {} as compromised, find who runs what there, and reset the credentials it may have taken.",
                ev.account, ev.src_ip, ev.protocol, ev.category, ev.src_ip
            )));
        }
        match &ev.detail {
            Some(Detail::Kerberos(k)) => self.kerberos(cfg, ev, k, out),
            Some(Detail::Ntlm(n)) if n.message_type == 3 && ev.result == "success" => {
                self.successful_logon(cfg, ev, &account, "NTLM", out);
            }
            Some(Detail::Ntlm(n)) if n.message_type == 3 => {
                // A DC authenticating with its own machine account to a host that is not a
                // DC: it was made to (PetitPotam, printer bug), and the NTLM is being relayed.
                if self.dcs.contains(&ev.src_ip) && account.ends_with('$') && !self.dcs.contains(&ev.dc_ip) {
                    out.push(finding(ev, "forced_authentication", "Forced authentication of a DC", "high", "T1187", &account, format!(
                        "The domain controller {} authenticated as {} to {}, which is not a domain controller. DCs do not do that on their own: something coerced it (EFSRPC, print spooler, DFS) and {} may be relaying the authentication to take over the domain. Isolate {} and check certificate enrollment and LDAP for what it did.",
                        ev.src_ip, ev.account, ev.dc_ip, ev.dc_ip, ev.dc_ip
                    )));
                }
                if ev.result == "failure" {
                    let unknown = ev.status_code == STATUS_NO_SUCH_USER;
                    self.failed_logon(cfg, ev, &account, "NTLM", unknown, out);
                }
            }
            Some(Detail::Ldap(l)) => self.ldap(cfg, ev, l, out),
            Some(Detail::Dcerpc(d)) => self.dcerpc(cfg, ev, d, out),
            Some(Detail::Dns(d)) if d.opcode == DNS_UPDATE => self.dns_update(ev, d, out),
            Some(Detail::Dns(d)) if !d.records.is_empty() => self.learn_dcs_from_dns(ev, d, out),
            Some(Detail::Dns(d)) if !d.response => {
                let transfer = [DnsType::AXFR, DnsType::IXFR];
                if let Some(q) = d.questions.iter().find(|q| transfer.contains(&DnsType(q.qtype))) {
                    out.push(finding(ev, "dns_zone_transfer", "DNS zone transfer attempt", "medium", "T1590.002", "", format!(
                        "{} asked the DC {} for a zone transfer of {} ({}). Zone transfers hand over every name in the zone; only secondary DNS servers should ask. If {} is not one, find what on it made the request.",
                        ev.src_ip, ev.dc_ip, q.name, if q.qtype == 252 { "AXFR" } else { "IXFR" }, ev.src_ip
                    )));
                }
            }
            _ => {}
        }
    }

    /// A logon that succeeded from a source that has just sprayed: the spray found a
    /// password. (The account that works never fails first: the failures are the other
    /// accounts of the spray.)
    fn successful_logon(
        &mut self,
        cfg: &DetectConfig,
        ev: &ActivityEvent,
        account: &str,
        protocol: &str,
        out: &mut Vec<Finding>,
    ) {
        if account.is_empty() {
            return;
        }
        let failed = self.failed_accounts_by_src.items(&ev.src_ip, ev.time_unix_ns, cfg.window_ns());
        // The spray found this account's password if the spray tried it: the account failed
        // before, or this logon is one more attempt of the spray itself (the same protocol,
        // while it goes on). Another account's own logon from that host is not.
        let in_burst = self
            .last_failure_by_src
            .get(&ev.src_ip)
            .is_some_and(|(t, p)| p == protocol && ev.time_unix_ns.saturating_sub(*t) <= SPRAY_BURST_NS);
        if failed.len() >= cfg.spray_accounts && (failed.contains(&account) || in_burst) {
            out.push(finding(ev, "spray_success", "Password spray succeeded", "high", "T1110.003", account, format!(
                "{} failed to log on as {} accounts within {} minutes and then logged on successfully as {account} ({protocol}): the spray found a password. Reset {account}'s password now, check what it did since, and isolate {}.",
                ev.src_ip, failed.len(), cfg.window_secs / 60, ev.src_ip
            )));
        }
    }

    fn failed_logon(
        &mut self,
        cfg: &DetectConfig,
        ev: &ActivityEvent,
        account: &str,
        protocol: &str,
        unknown: bool,
        out: &mut Vec<Finding>,
    ) {
        // Anonymous attempts name no account to guess for; and a failure at a server that is
        // not a DC (a DC coerced into authenticating elsewhere) is not a guess against the
        // domain.
        if account.is_empty() || (!self.dcs.is_empty() && !self.dcs.contains(&ev.dc_ip)) {
            return;
        }
        let (t, w, src) = (ev.time_unix_ns, cfg.window_ns(), ev.src_ip.clone());
        if unknown {
            let (names, _) = self.unknown_by_src.add(src, t, account, w);
            if names >= cfg.enum_accounts {
                out.push(finding(ev, "account_enumeration", "Account enumeration", "medium", "T1087.002", "", format!(
                    "{} tried {names} account names that do not exist ({protocol}) within {} minutes: it is guessing which accounts exist. Find the tool running on {} and what it learned.",
                    ev.src_ip, cfg.window_secs / 60, ev.src_ip
                )));
            }
            return;
        }
        let (accounts, _) = self.failed_accounts_by_src.add(src.clone(), t, account, w);
        self.failed_dcs_by_src.add(src.clone(), t, &ev.dc_ip, w);
        if self.last_failure_by_src.len() >= MAX_KEYS && !self.last_failure_by_src.contains_key(&src) {
            self.last_failure_by_src.clear();
        }
        self.last_failure_by_src.insert(src.clone(), (t, protocol.to_string()));
        if accounts >= cfg.spray_accounts {
            let dcs: Vec<String> = self.failed_dcs_by_src.items(&src, t, w).into_iter().map(str::to_string).collect();
            let tried = self.failed_accounts_by_src.items(&src, t, w);
            let named = tried.iter().take(MAX_NAMED_ACCOUNTS).copied().collect::<Vec<_>>().join(", ");
            let more = tried.len().saturating_sub(MAX_NAMED_ACCOUNTS);
            let mut f = finding(ev, "password_spray", "Password spray", "high", "T1110.003", "", format!(
                "{} failed to log on ({protocol}) as {accounts} different accounts within {} minutes{} ({named}{}): someone is trying a few passwords against many accounts. Check which of them later logged on successfully from {}, reset those passwords, and isolate the host.",
                ev.src_ip, cfg.window_secs / 60,
                if dcs.len() > 1 { format!(", at {} DCs ({})", dcs.len(), dcs.join(", ")) } else { String::new() },
                if more > 0 { format!(" and {more} more") } else { String::new() },
                ev.src_ip
            ));
            f.dcs = dcs;
            out.push(f);
        }
        let (_, failures) = self.failures_by_src_account.add((src, account.to_string()), t, "", w);
        if failures >= cfg.brute_failures {
            out.push(finding(ev, "brute_force", "Brute force against an account", "high", "T1110.001", account, format!(
                "{} failed to log on as {account} {failures} times ({protocol}) within {} minutes: someone is guessing its password. If a success follows, reset the password; consider a lockout policy.",
                ev.src_ip, cfg.window_secs / 60
            )));
        }
    }
}

mod directory;
mod domain_controllers;
mod kerberos;
mod rpc;

#[cfg(test)]
mod tests;
