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

    fn kerberos(&mut self, cfg: &DetectConfig, ev: &ActivityEvent, k: &Kerberos, out: &mut Vec<Finding>) {
        // A reply to a FAST-armoured request names the anonymous armour in the clear (RFC
        // 6113 5.4.3), not the client.
        let client = if k.cname.starts_with("WELLKNOWN/ANONYMOUS") { String::new() } else { account_key(&k.cname) };
        match k.msg_type {
            // AS-REQ
            10 => {
                // sAMAccountName spoofing (noPac, CVE-2021-42278/42287): a TGT asked for a
                // DC's name without the `$`, after a computer account was renamed to it.
                if !client.is_empty() && !client.ends_with('$') && self.dc_accounts.contains(&client) {
                    out.push(finding(ev, "nopac", "sAMAccountName spoofing (noPac)", "high", "T1068", &client, format!(
                        "{} asked for a TGT for {}, which is the name of the domain controller {}$ without its '$': a computer account was renamed to it so that the KDC issues a ticket it will then mistake for the DC's (noPac, CVE-2021-42278 and CVE-2021-42287). Check the DC is patched (KB5008380, KB5008602), find the renamed computer account and who created it, and look for S4U2self requests from {}.",
                        ev.src_ip, k.cname, client, ev.src_ip
                    )));
                }
                // FAST (RFC 6113) carries the pre-authentication inside its armor, out of
                // sight: an armored request is not one without pre-authentication.
                if k.enc_timestamp_etype == 0 && !k.pk_as_req && !k.fast && !client.is_empty() {
                    if self.asreq_without_preauth.len() >= MAX_KEYS {
                        self.asreq_without_preauth.clear();
                    }
                    self.asreq_without_preauth.insert((ev.src_ip.clone(), ev.src_port), client.clone());
                } else {
                    // A pre-authenticated retry on the same connection answers for itself.
                    self.asreq_without_preauth.remove(&(ev.src_ip.clone(), ev.src_port));
                }
                if k.enc_timestamp_etype == RC4_HMAC && !k.requested_etypes.iter().any(|e| AES.contains(e)) {
                    out.push(finding(ev, "encryption_downgrade", "Kerberos encryption downgrade (overpass-the-hash)", "medium", "T1550.002", &client, format!(
                        "{} asked for a TGT for {} pre-authenticated with RC4 and offering no AES, which Windows clients do not do on their own: it looks like a ticket requested with a stolen NT hash (overpass-the-hash). Check the account's recent logons and reset its password.",
                        ev.src_ip, k.cname
                    )));
                }
            }
            // AS-REP: the DC issued a TGT.
            11 => {
                self.dcs.insert(ev.dc_ip.clone());
                self.remember_ticket(&k.ticket_fingerprint, &ev.src_ip, &client);
                let without_preauth = self.asreq_without_preauth.remove(&(ev.src_ip.clone(), ev.src_port));
                // Only a pre-authenticated AS exchange proves a password.
                if without_preauth.is_none() {
                    self.successful_logon(cfg, ev, &client, "Kerberos", out);
                }
                if let Some(name) = without_preauth {
                    out.push(finding(ev, "asrep_roasting", "AS-REP roasting", "high", "T1558.004", &name, format!(
                        "{} obtained an AS-REP for {name} without pre-authentication: the reply is encrypted with the account's password key and can be cracked offline. Require Kerberos pre-authentication on {name}, give it a long password, and find what on {} asked.",
                        ev.src_ip, ev.src_ip
                    )));
                }
            }
            // TGS-REQ: what it shows waits for the reply, which names the account (the
            // request does not: the client name is in the encrypted authenticator).
            12 => {
                let s4u_self = k.padata_types.iter().any(|p| matches!(*p, PA_FOR_USER | PA_S4U_X509_USER));
                let s4u_proxy = k.kdc_options & KDC_OPT_CNAME_IN_ADDL_TKT != 0;
                let s4u = s4u_self || s4u_proxy;
                self.delegation(cfg, ev, k, s4u_self, s4u_proxy, out);
                let rc4_only =
                    k.requested_etypes.contains(&RC4_HMAC) && !k.requested_etypes.iter().any(|e| AES.contains(e));
                // S4U2self asks for a ticket to the service itself on behalf of a user: the
                // reply names that user, who roasted nothing.
                let roast = cfg.roast_rc4_requests
                    && rc4_only
                    && !s4u
                    && user_service(&k.sname, &self.computers, &self.computer_spns);
                let forged = self.ticket_use(cfg, ev, k, out);
                let burst = !s4u && user_service(&k.sname, &self.computers, &self.computer_spns);
                if roast || forged || burst {
                    if self.tgs_requests.len() >= MAX_KEYS {
                        self.tgs_requests.clear();
                    }
                    let owner = self.ticket_owner(&k.ticket_fingerprint);
                    let user_service_offering_aes = burst && k.requested_etypes.iter().any(|e| AES.contains(e));
                    let request = TgsRequest {
                        event: ev.clone(),
                        owner,
                        sname: k.sname.clone(),
                        roast,
                        forged,
                        user_service_offering_aes,
                    };
                    self.tgs_requests.insert((ev.src_ip.clone(), ev.src_port), request);
                }
            }
            // TGS-REP: the reply to a waiting request names its account. An RC4 ticket
            // issued to a client that offered AES is the service account's configuration
            // (no AES keys), not an attack: nothing is raised for it.
            13 => {
                self.dcs.insert(ev.dc_ip.clone());
                if !k.ticket_fingerprint.is_empty() {
                    if self.service_tickets.len() >= MAX_TICKETS {
                        self.service_tickets.clear();
                    }
                    self.service_tickets.insert(k.ticket_fingerprint.clone());
                }
                let outcome = || format!("got a ticket encrypted with etype {}", k.ticket_etype);
                if let Some((request, account)) = self.answer_tgs(cfg, ev, &client, outcome, out) {
                    self.user_service_burst(cfg, ev, &account, &request.sname, out);
                    if request.user_service_offering_aes
                        && k.ticket_etype == RC4_HMAC
                        && self.rc4_services.len() < MAX_KEYS
                    {
                        self.rc4_services.push((lower(&request.sname), ev.time_unix_ns));
                    }
                }
            }
            // AP-REQ in SMB, LDAP, RPC or HTTP authentication to a DC: a service ticket no
            // watched DC issued is forged with the service's key (silver ticket), once every
            // DC that could have issued it is watched and for longer than a ticket lives.
            14 if cfg.all_dcs_watched
                && !k.ticket_fingerprint.is_empty()
                && self.dcs.contains(&ev.dc_ip)
                && !self.service_tickets.contains(&k.ticket_fingerprint)
                && !self.tgt_host.contains_key(&k.ticket_fingerprint) =>
            {
                let lifetime = (cfg.max_ticket_lifetime_hours as i64).saturating_mul(3_600_000_000_000);
                if self.watching_since.is_some_and(|s| ev.time_unix_ns.saturating_sub(s) > lifetime) {
                    out.push(finding(ev, "silver_ticket", "Forged service ticket (silver ticket)", "high", "T1558.002", &account_key(&ev.account), format!(
                        "{} presented a ticket for {} to the domain controller {} ({}) that no domain controller issued, although every DC is watched (all_dcs_watched) and has been for longer than a ticket lives: it was forged with the key of the service's account. Reset that machine account's password, and find how its key leaked (DCSync, a dump of the host).",
                        ev.src_ip, k.sname, ev.dc_ip, k.carrier
                    )));
                }
            }
            // KRB-ERROR
            30 => {
                self.dcs.insert(ev.dc_ip.clone());
                // A KRB-ERROR may name the client (RFC 4120 5.9.1 cname), as Samba's do.
                self.answer_tgs(cfg, ev, &client, || format!("the DC refused it (error {})", k.error_code), out);
                let name = if client.is_empty() { account_key(&ev.account) } else { client };
                match k.error_code {
                    KDC_ERR_PREAUTH_FAILED => self.failed_logon(cfg, ev, &name, "Kerberos", false, out),
                    KDC_ERR_C_PRINCIPAL_UNKNOWN => self.failed_logon(cfg, ev, &name, "Kerberos", true, out),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// The waiting TGS-REQ a reply or error answers, and the account it names (the reply's
    /// client name, else the owner of the TGT the request presented), after raising what
    /// the request showed.
    fn answer_tgs(
        &mut self,
        cfg: &DetectConfig,
        ev: &ActivityEvent,
        client: &str,
        outcome: impl FnOnce() -> String,
        out: &mut Vec<Finding>,
    ) -> Option<(TgsRequest, String)> {
        let request = self.tgs_requests.remove(&(ev.src_ip.clone(), ev.src_port))?;
        let account = if client.is_empty() { request.owner.clone() } else { client.to_string() };
        self.tgs_outcome(cfg, &request, &account, &outcome(), out);
        Some((request, account))
    }

    /// What a TGS-REQ showed, once its reply (or its absence) says who asked: `account`
    /// from the reply's client name, else the owner of the TGT it presented.
    fn tgs_outcome(
        &mut self,
        cfg: &DetectConfig,
        request: &TgsRequest,
        account: &str,
        outcome: &str,
        out: &mut Vec<Finding>,
    ) {
        let ev = &request.event;
        let sname = &request.sname;
        let who = if account.is_empty() { String::new() } else { format!(" as {account}") };
        if request.roast {
            let (spns, _) =
                self.roast_spns_by_src.add(ev.src_ip.clone(), ev.time_unix_ns, &lower(sname), cfg.window_ns());
            out.push(finding(ev, "kerberoasting", "Kerberoasting", if spns >= 3 { "high" } else { "medium" }, "T1558.003", account, format!(
                "{}{who} asked, offering only RC4, for a service ticket for {sname}; {outcome} ({spns} such service(s) within {} minutes). Modern clients offer AES; tools that roast ask for RC4 because its tickets crack fastest, offline, for the service account's password. Give the service account a long random password (or a managed service account) and AES keys, and find the tool on {}.",
                ev.src_ip, cfg.window_secs / 60, ev.src_ip
            )));
        }
        if request.forged {
            out.push(finding(ev, "golden_ticket", "Forged TGT (golden ticket)", "high", "T1558.001", account, format!(
                "{}{who} presented a TGT that no watched DC issued, although the sensor has watched longer than the longest ticket lifetime, asking for {sname}; {outcome}. The ticket was forged with the krbtgt key. Reset the krbtgt password twice and investigate how it leaked.",
                ev.src_ip
            )));
        }
    }

    /// One account asking for tickets to many distinct user services in a short time is
    /// mapping what it can roast, whatever encryption it asks for.
    fn user_service_burst(
        &mut self,
        cfg: &DetectConfig,
        ev: &ActivityEvent,
        account: &str,
        sname: &str,
        out: &mut Vec<Finding>,
    ) {
        if account.is_empty()
            || cfg.roast_burst_services == 0
            || !user_service(sname, &self.computers, &self.computer_spns)
        {
            return;
        }
        let window = (cfg.roast_burst_secs as i64).saturating_mul(1_000_000_000);
        let (services, _) = self.user_spns_by_account.add(account.to_string(), ev.time_unix_ns, &lower(sname), window);
        if services >= cfg.roast_burst_services {
            out.push(finding(ev, "kerberoasting", "Kerberoasting", "high", "T1558.003", account, format!(
                "{account} on {} asked for tickets to {services} different services of user accounts within {} seconds (last {sname}). Nobody needs that many services at once: it is collecting service tickets to crack offline. Find the tool on {} and check the passwords of those service accounts.",
                ev.src_ip, cfg.roast_burst_secs, ev.src_ip
            )));
        }
    }

    /// TGS-REQs whose reply never came (lost on the mirror, or the tool gave up) are
    /// reported without the account once they are this old.
    fn flush_tgs_requests(&mut self, cfg: &DetectConfig, now: i64, out: &mut Vec<Finding>) {
        if self.tgs_requests.is_empty() {
            return;
        }
        let stale: Vec<(String, u32)> = self
            .tgs_requests
            .iter()
            .filter(|(_, r)| now.saturating_sub(r.event.time_unix_ns) > TGS_REPLY_WAIT_NS)
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            if let Some(request) = self.tgs_requests.remove(&key) {
                let owner = request.owner.clone();
                self.tgs_outcome(cfg, &request, &owner, "no reply was seen", out);
            }
        }
    }

    /// The account a TGT was issued to, when its AS-REP was seen.
    fn ticket_owner(&self, fingerprint: &str) -> String {
        self.tgt_host.get(fingerprint).map(|(_, account)| account.clone()).unwrap_or_default()
    }

    fn remember_ticket(&mut self, fingerprint: &str, host: &str, account: &str) {
        if fingerprint.is_empty() {
            return;
        }
        if self.tgt_host.len() >= MAX_TICKETS {
            self.tgt_host.clear();
        }
        self.tgt_host.entry(fingerprint.to_string()).or_insert_with(|| (host.to_string(), account.to_string()));
    }

    /// A TGS-REQ presents a TGT: from another host than it was issued to (pass-the-ticket,
    /// raised at once), or one no watched KDC issued although the sensor has watched
    /// longer than any ticket lives (golden ticket: true, raised once the reply names the
    /// account).
    fn ticket_use(&mut self, cfg: &DetectConfig, ev: &ActivityEvent, k: &Kerberos, out: &mut Vec<Finding>) -> bool {
        if k.ticket_fingerprint.is_empty() {
            return false;
        }
        match self.tgt_host.get(&k.ticket_fingerprint) {
            Some((first, owner)) if *first != ev.src_ip => {
                let account = if owner.is_empty() { account_key(&k.cname) } else { owner.clone() };
                out.push(finding(ev, "pass_the_ticket", "Pass-the-ticket", "high", "T1550.003", &account, format!(
                    "The same TGT was used from {first} and from {}: a ticket was stolen from one host and replayed on the other. Isolate both hosts, and reset the account's password (twice for krbtgt-level compromise).",
                    ev.src_ip
                )));
                false
            }
            Some(_) => false,
            None => {
                let lifetime = (cfg.max_ticket_lifetime_hours as i64).saturating_mul(3_600_000_000_000);
                let forged = self.watching_since.is_some_and(|s| ev.time_unix_ns.saturating_sub(s) > lifetime);
                self.remember_ticket(&k.ticket_fingerprint, &ev.src_ip, "");
                forged
            }
        }
    }

    fn ldap(&mut self, cfg: &DetectConfig, ev: &ActivityEvent, l: &Ldap, out: &mut Vec<Finding>) {
        let account = account_key(&ev.account);
        for spn in &l.computer_spns {
            if self.computer_spns.len() >= MAX_KEYS {
                break;
            }
            self.computer_spns.insert(lower(spn));
        }
        if l.operation == "bind" {
            self.dcs.insert(ev.dc_ip.clone());
            if l.cleartext_password_sent {
                out.push(finding(ev, "cleartext_ldap_bind", "Password sent in clear text (LDAP simple bind)", "medium", "T1552", &account_key(&l.bind_name), format!(
                    "{} sent the password of {} in clear text in an LDAP simple bind to {}. Anyone on the path can read it. Move the application to LDAPS or signed SASL binds, then change that password.",
                    ev.src_ip, l.bind_name, ev.dc_ip
                )));
            }
            if ev.result == "failure" && l.result_code == 49 {
                let name = account_key(&l.bind_name);
                self.failed_logon(cfg, ev, &name, "LDAP", false, out);
            }
            if ev.result == "success" && l.cleartext_password_sent {
                self.successful_logon(cfg, ev, &account_key(&l.bind_name), "LDAP", out);
            }
            return;
        }
        if l.operation != "search" {
            return;
        }
        let Some(kind) = ldap_recon_kind(&l.filter) else { return };
        let (kinds, _) = self.ldap_kinds_by_src.add(ev.src_ip.clone(), ev.time_unix_ns, kind, cfg.window_ns());
        let roastable = kind.starts_with("accounts without") || kind.starts_with("accounts with service");
        if kinds >= cfg.ldap_recon_kinds || roastable {
            out.push(finding(ev, "ldap_recon", "Reconnaissance using LDAP", if roastable { "medium" } else { "low" }, "T1087.002", &account, format!(
                "{} queried the directory for {kind} ({kinds} kind(s) of enumeration within {} minutes, last filter {}). Attackers map users, groups, admins and roastable accounts this way. If {} is not an admin workstation or a known tool, find what ran the queries.",
                ev.src_ip, cfg.window_secs / 60, l.filter, ev.src_ip
            )));
        }
    }

    /// S4U2self for a TGT (a service asking the KDC for a TGT in a user's name), and
    /// S4U2proxy toward a DC's services by an account not seen delegating to them before.
    fn delegation(
        &mut self,
        cfg: &DetectConfig,
        ev: &ActivityEvent,
        k: &Kerberos,
        s4u_self: bool,
        s4u_proxy: bool,
        out: &mut Vec<Finding>,
    ) {
        let account = account_key(&ev.account);
        let service = lower(&k.sname);
        if s4u_self && service.starts_with("krbtgt") {
            out.push(finding(ev, "delegation_abuse", "Kerberos delegation abuse (S4U2self for a TGT)", "high", "T1558", &account, format!(
                "{} asked, through S4U2self, for a TGT in another user's name ({}): services ask S4U2self for tickets to themselves, never for krbtgt. This is a forged-ticket technique; find what on {} asked and check the account's delegation settings.",
                ev.src_ip, k.sname, ev.src_ip
            )));
            return;
        }
        let host = service.split('/').nth(1).unwrap_or("").split(['.', ':']).next().unwrap_or("");
        let to_dc = !host.is_empty() && self.dc_accounts.contains(host);
        if !s4u_proxy || !to_dc || account.is_empty() {
            return;
        }
        let key = (account.clone(), service.clone());
        if self.delegations.contains(&key) || self.delegations.len() >= MAX_KEYS {
            return;
        }
        self.delegations.insert(key);
        // What accounts delegate to while the profiles learn is their configuration.
        let learning_ns = cfg.learning_ns();
        let learning =
            learning_ns > 0 && self.watching_since.is_some_and(|s| ev.time_unix_ns.saturating_sub(s) < learning_ns);
        if !learning {
            out.push(finding(ev, "delegation_abuse", "Kerberos delegation to a DC's service (S4U2proxy)", "high", "T1550.003", &account, format!(
                "{account} on {} used S4U2proxy to get a ticket to {} in another user's name, which it had not done before. Delegation to a domain controller's services lets whoever holds {account}'s key act as any user there (resource-based or constrained delegation abuse). Check who configured that delegation and reset {account}'s password.",
                ev.src_ip, k.sname
            )));
        }
    }

    /// The user services seen issuing RC4 tickets to clients that offered AES since the
    /// last call: their accounts have no AES keys, so their tickets are the ones roasting
    /// cracks. Posture, not an alert.
    pub fn take_rc4_services(&mut self) -> Vec<(String, i64)> {
        std::mem::take(&mut self.rc4_services)
    }

    /// A dynamic update teaches DCs only once the DC answers that it applied it.
    fn dns_update(&mut self, ev: &ActivityEvent, d: &crate::pb::Dns, out: &mut Vec<Finding>) {
        let key = (ev.src_ip.clone(), ev.src_port, d.id);
        if !d.response {
            if !d.records.is_empty() && self.pending_updates.len() < MAX_KEYS {
                self.pending_updates.insert(key, ev.clone());
            }
            return;
        }
        let Some(request) = self.pending_updates.remove(&key) else { return };
        if d.rcode != 0 {
            return;
        }
        if let Some(Detail::Dns(update)) = request.detail.as_ref() {
            self.learn_dcs_from_dns(&request, update, out);
        }
    }

    /// The DC locator's SRV records name the DCs, and their address records give their
    /// addresses; a dynamic update that registers a DC not known yet is a new DC.
    fn learn_dcs_from_dns(&mut self, ev: &ActivityEvent, d: &crate::pb::Dns, out: &mut Vec<Finding>) {
        const A: u32 = DnsType::A.0;
        const AAAA: u32 = DnsType::AAAA.0;
        const SRV: u32 = DnsType::SRV.0;
        for r in d.records.iter().filter(|r| r.rtype == SRV) {
            let owner = lower(&r.name);
            let locator = (DC_LOCATOR_SERVICES.iter().any(|s| owner.starts_with(s)) && owner.contains("dc._msdcs."))
                || DC_ONLY_SERVICES.iter().any(|s| owner.starts_with(s));
            if locator && self.dc_names.len() < MAX_KEYS {
                let host = lower(r.data.trim_end_matches('.'));
                self.dc_accounts.insert(host.split('.').next().unwrap_or_default().to_string());
                self.dc_names.insert(host);
            }
        }
        let update = d.opcode == DNS_UPDATE;
        for r in d.records.iter().filter(|r| matches!(r.rtype, A | AAAA)) {
            if !self.dc_names.contains(&lower(r.name.trim_end_matches('.'))) || self.dcs.contains(&r.data) {
                continue;
            }
            self.dcs.insert(r.data.clone());
            if update {
                out.push(finding(ev, "new_domain_controller", "New domain controller registered", "info", "T1207", &account_key(&ev.account), format!(
                    "{} registered itself in DNS as a domain controller ({}, {}), through {}. Domain controllers are added rarely and on purpose: check that this promotion was planned; if not, treat it as a rogue DC.",
                    r.data, r.name, r.data, ev.dc_ip
                )));
            }
        }
    }

    /// Registrations (DRSAddEntry) not followed by replication within the wait were a
    /// rogue DC's.
    fn flush_registrations(&mut self, now: i64, out: &mut Vec<Finding>) {
        if self.registrations.is_empty() {
            return;
        }
        let stale: Vec<String> = self
            .registrations
            .iter()
            .filter(|(_, e)| now.saturating_sub(e.time_unix_ns) > PROMOTION_WAIT_NS)
            .map(|(k, _)| k.clone())
            .collect();
        for host in stale {
            if let Some(e) = self.registrations.remove(&host) {
                out.push(dcshadow(
                    &e,
                    "DRSAddEntry",
                    "and did not replicate the directory afterwards, as a promotion would",
                ));
            }
        }
    }

    fn dcerpc(&mut self, cfg: &DetectConfig, ev: &ActivityEvent, d: &DceRpc, out: &mut Vec<Finding>) {
        if d.operation != "call" {
            return;
        }
        let op = d.operation_name.as_str();
        let account = account_key(&ev.account);
        if d.interface == "drsuapi" {
            self.dcs.insert(ev.dc_ip.clone());
        }
        let from_dc = self.dcs.contains(&ev.src_ip);
        match (d.interface.as_str(), op) {
            // A host that just registered its DC object (DRSAddEntry) and now replicates
            // the directory is being promoted, as `samba-tool domain join DC` and dcpromo do.
            ("drsuapi", "DRSGetNCChanges") if !from_dc && self.registrations.contains_key(&ev.src_ip) => {
                let registered = self.registrations.remove(&ev.src_ip);
                self.dcs.insert(ev.src_ip.clone());
                let by =
                    registered.map(|r| account_key(&r.account)).filter(|a| !a.is_empty()).unwrap_or(account.clone());
                out.push(finding(ev, "new_domain_controller", "New domain controller promoted", "info", "T1207", &by, format!(
                    "{} registered a domain controller object (DRSAddEntry) and then replicated the directory from {}, as a DC being promoted does{}. Domain controllers are added rarely and on purpose: check that this promotion was planned; if not, treat {} as a rogue DC holding every password hash.",
                    ev.src_ip, ev.dc_ip, if by.is_empty() { String::new() } else { format!(" (as {by})") }, ev.src_ip
                )));
            }
            ("drsuapi", "DRSGetNCChanges") if !from_dc => {
                out.push(finding(ev, "dcsync", "DCSync: directory replication from a non-DC", "high", "T1003.006", &account, format!(
                    "{} asked {} to replicate directory data (DRSGetNCChanges) but is not a domain controller: this is how DCSync pulls password hashes, the krbtgt key included. Find the account that did it, remove its replication rights, and consider every domain credential exposed.",
                    ev.src_ip, ev.dc_ip
                )));
            }
            // A successful registration waits for what follows (a promotion replicates at
            // once); a refused one was an attempt.
            ("drsuapi", "DRSAddEntry") if !from_dc && ev.result == "success" && self.registrations.len() < MAX_KEYS => {
                self.registrations.entry(ev.src_ip.clone()).or_insert_with(|| ev.clone());
            }
            ("drsuapi", "DRSAddEntry" | "DRSReplicaAdd") if !from_dc => {
                let how = if let Some(r) = self.registrations.remove(&ev.src_ip) {
                    out.push(dcshadow(&r, "DRSAddEntry", "then asked the DC to replicate from it"));
                    "after registering a DC object"
                } else {
                    "which only domain controllers do"
                };
                out.push(dcshadow(ev, op, how));
            }
            ("efsrpc" | "lsarpc", o) if o.starts_with("EfsRpc") => {
                out.push(finding(ev, "forced_authentication", "Forced authentication (EFSRPC, PetitPotam)", "high", "T1187", &account, format!(
                    "{} called {o} on {}: the EFS RPC interface can make the DC authenticate to an attacker's host, whose NTLM is then relayed (PetitPotam). Block EFSRPC on DCs and require EPA/signing on the relay targets.",
                    ev.src_ip, ev.dc_ip
                )));
            }
            (
                "spoolss",
                "RpcRemoteFindFirstPrinterChangeNotification" | "RpcRemoteFindFirstPrinterChangeNotificationEx",
            ) => {
                out.push(finding(ev, "forced_authentication", "Forced authentication (print spooler)", "high", "T1187", &account, format!(
                    "{} asked the print spooler on {} for change notifications ({op}), the printer bug that makes the DC authenticate to another host. Disable the spooler on DCs.",
                    ev.src_ip, ev.dc_ip
                )));
            }
            // The sensor marks every way of creating, reconfiguring or starting a service and
            // of adding a job or task as remote_execution (PsExec uses the WOW64 variant);
            // the names also catch events of sensors that did not yet.
            _ if ev.category == "remote_execution"
                || matches!(
                    (d.interface.as_str(), op),
                    ("svcctl", "RCreateServiceW" | "RCreateServiceA" | "RStartServiceW" | "RChangeServiceConfigW")
                        | ("atsvc", "JobAdd" | "NetrJobAdd")
                        | ("tsch" | "itaskschedulerservice", "SchRpcRegisterTask")
                        | ("iwbemservices", "ExecMethod" | "ExecMethodAsync")
                        | ("iwbemlevel1login", "NTLMLogin")
                ) =>
            {
                out.push(finding(ev, "remote_execution", "Remote code execution on a DC", "high", "T1569.002", &account, format!(
                    "{} called {op} ({}) on the domain controller {}: services, scheduled tasks and WMI methods (Win32_Process.Create) are how tools like PsExec and wmiexec run code remotely. Unless this is known administration, treat the account as compromised and inspect the DC.",
                    ev.src_ip, d.interface, ev.dc_ip
                )));
            }
            ("netlogon", "NetrServerAuthenticate3" | "NetrServerAuthenticate2" | "NetrServerReqChallenge") => {
                let (_, attempts) =
                    self.netlogon_by_src.add(ev.src_ip.clone(), ev.time_unix_ns, "", cfg.window_ns() / 10);
                if attempts >= cfg.zerologon_attempts {
                    out.push(finding(ev, "zerologon", "Netlogon authentication bursts (ZeroLogon)", "high", "T1210", &account, format!(
                        "{} made {attempts} Netlogon authentication calls within {} seconds, the pattern of the ZeroLogon exploit (CVE-2020-1472), which can reset the DC's machine password. Patch the DC, enforce secure RPC, and check the DC account's password change time.",
                        ev.src_ip, cfg.window_secs / 10
                    )));
                }
            }
            ("srvsvc", "NetrSessionEnum") => {
                out.push(finding(ev, "session_enumeration", "Reconnaissance of user sessions (SMB)", "medium", "T1049", &account, format!(
                    "{} listed the SMB sessions on {} (NetSessionEnum): attackers use it to learn where admins are logged on. Restrict NetSessionEnum (NetCease) and check {}.",
                    ev.src_ip, ev.dc_ip, ev.src_ip
                )));
            }
            ("samr" | "lsarpc", o) if RPC_RECON_OPS.contains(&o) => {
                let (ops, _) = self.rpc_ops_by_src.add(ev.src_ip.clone(), ev.time_unix_ns, o, cfg.window_ns());
                if ops >= cfg.rpc_recon_ops {
                    out.push(finding(ev, "rpc_recon", "Reconnaissance using SAMR / LSARPC", "medium", "T1087.002", &account, format!(
                        "{} enumerated the domain over RPC ({ops} kinds of listing within {} minutes, last {o} on {}): users, groups, members or SIDs. If {} is not an admin tool, find what ran it.",
                        ev.src_ip, cfg.window_secs / 60, d.interface, ev.src_ip
                    )));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DetectConfig, Engine};
    use crate::pb::{activity_event::Detail, ActivityEvent, DceRpc, Dns, DnsQuestion, DnsRecord, Kerberos, Ldap, Ntlm};

    const S: i64 = 1_000_000_000;

    fn ev(t: i64, src: &str, detail: Detail) -> ActivityEvent {
        ActivityEvent {
            sensor_id: "s".into(),
            seq: t as u64,
            time_unix_ns: t * S,
            src_ip: src.into(),
            src_port: 50_000,
            dc_ip: "10.0.0.10".into(),
            detail: Some(detail),
            ..Default::default()
        }
    }

    fn krb(msg_type: u32) -> Kerberos {
        Kerberos { msg_type, sname: "krbtgt/LAB".into(), ..Default::default() }
    }

    fn krb_error(t: i64, src: &str, user: &str, code: i32) -> ActivityEvent {
        ev(t, src, Detail::Kerberos(Kerberos { cname: user.into(), error_code: code, ..krb(30) }))
    }

    fn rpc(t: i64, src: &str, interface: &str, op: &str) -> ActivityEvent {
        ev(
            t,
            src,
            Detail::Dcerpc(DceRpc {
                operation: "call".into(),
                interface: interface.into(),
                operation_name: op.into(),
                ..Default::default()
            }),
        )
    }

    fn ldap_search(t: i64, src: &str, filter: &str) -> ActivityEvent {
        ev(t, src, Detail::Ldap(Ldap { operation: "search".into(), filter: filter.into(), ..Default::default() }))
    }

    /// Detections raised by a sequence of events (each alert once).
    fn run(cfg: DetectConfig, events: &[ActivityEvent]) -> Vec<String> {
        let mut engine = Engine::new(cfg);
        let mut out: Vec<String> = Vec::new();
        for e in events {
            for a in engine.process(e) {
                if !out.contains(&a.detection) {
                    out.push(a.detection);
                }
            }
        }
        out
    }

    #[test]
    fn password_spray_fires_at_the_account_threshold_within_the_window_only() {
        let users = ["alice", "bob", "carol", "dave", "eve"];
        let spray: Vec<_> = users.iter().enumerate().map(|(i, u)| krb_error(i as i64, "10.1.1.1", u, 24)).collect();
        assert_eq!(run(DetectConfig::default(), &spray), vec!["password_spray"]);
        assert!(run(DetectConfig::default(), &spray[..4]).is_empty(), "four accounts is below the threshold");
        // The same five, spread over more than the window, are not a spray.
        let slow: Vec<_> =
            users.iter().enumerate().map(|(i, u)| krb_error(i as i64 * 200, "10.1.1.1", u, 24)).collect();
        assert!(run(DetectConfig::default(), &slow).is_empty());
        // Five sources with one failure each are five forgetful users.
        let spread: Vec<_> =
            users.iter().enumerate().map(|(i, u)| krb_error(i as i64, &format!("10.1.1.{i}"), u, 24)).collect();
        assert!(run(DetectConfig::default(), &spread).is_empty());
        let mut cfg = DetectConfig::default();
        cfg.exclusions.insert("password_spray".into(), vec!["10.1.1.1".into()]);
        assert!(run(cfg, &spray).is_empty(), "an excluded source raises nothing");
    }

    #[test]
    fn brute_force_and_enumeration_count_failures_per_account_and_unknown_names() {
        let brute: Vec<_> = (0..10).map(|i| krb_error(i, "10.1.1.1", "bob", 24)).collect();
        assert_eq!(run(DetectConfig::default(), &brute), vec!["brute_force"]);
        assert!(run(DetectConfig::default(), &brute[..9]).is_empty());
        let names: Vec<_> = (0..5).map(|i| krb_error(i, "10.1.1.1", &format!("guess{i}"), 6)).collect();
        assert_eq!(run(DetectConfig::default(), &names), vec!["account_enumeration"]);
        assert!(run(DetectConfig::default(), &names[..4]).is_empty());
        // NTLM failures count the same way.
        let ntlm: Vec<_> = (0..5)
            .map(|i| {
                let mut e = ev(
                    i,
                    "10.1.1.2",
                    Detail::Ntlm(Ntlm { message_type: 3, user: format!("u{i}"), ..Default::default() }),
                );
                e.account = format!("LAB\\u{i}");
                e.result = "failure".into();
                e.status_code = 0xC000_006A;
                e
            })
            .collect();
        assert_eq!(run(DetectConfig::default(), &ntlm), vec!["password_spray"]);
    }

    #[test]
    fn roasting_needs_rc4_only_requests_or_replies_without_preauth() {
        let tgs = |etypes: Vec<i32>, sname: &str| {
            ev(1, "10.1.1.1", Detail::Kerberos(Kerberos { requested_etypes: etypes, sname: sname.into(), ..krb(12) }))
        };
        // The request waits for its reply, which names the account.
        let reply = |etype: i32| {
            let k = Kerberos { cname: "alice".into(), sname: "MSSQLSvc/sql01".into(), ticket_etype: etype, ..krb(13) };
            ev(1, "10.1.1.1", Detail::Kerberos(k))
        };
        let mut engine = Engine::new(DetectConfig::default());
        assert!(engine.process(&tgs(vec![23], "MSSQLSvc/sql01")).is_empty());
        let alerts = engine.process(&reply(23));
        assert_eq!(alerts.len(), 1);
        assert_eq!((alerts[0].detection.as_str(), alerts[0].account.as_str()), ("kerberoasting", "alice"));
        // A refused request is still the tool's; one with no reply at all is reported later.
        let refused = ev(1, "10.1.1.1", Detail::Kerberos(Kerberos { error_code: 50, ..krb(30) }));
        assert_eq!(
            run(DetectConfig::default(), &[tgs(vec![23], "MSSQLSvc/sql01"), refused.clone()]),
            vec!["kerberoasting"]
        );
        let later = ev(30, "10.9.9.9", Detail::Kerberos(krb(10)));
        assert_eq!(run(DetectConfig::default(), &[tgs(vec![23], "MSSQLSvc/sql01"), later]), vec!["kerberoasting"]);
        assert!(run(DetectConfig::default(), &[tgs(vec![23], "MSSQLSvc/sql01")]).is_empty(), "still waiting");
        // The TGT a refused request carried names its account, when its AS-REP was seen.
        let as_rep = ev(
            0,
            "10.1.1.1",
            Detail::Kerberos(Kerberos { cname: "alice".into(), ticket_fingerprint: "fp1".into(), ..krb(11) }),
        );
        let mut with_tgt = tgs(vec![23], "MSSQLSvc/sql01");
        if let Some(Detail::Kerberos(k)) = &mut with_tgt.detail {
            k.ticket_fingerprint = "fp1".into();
        }
        let mut engine = Engine::new(DetectConfig::default());
        let alerts: Vec<_> = [as_rep, with_tgt, refused.clone()].iter().flat_map(|e| engine.process(e)).collect();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].account, "alice");
        // An AES request answered with an AES ticket is normal.
        assert!(run(DetectConfig::default(), &[tgs(vec![18, 17, 23], "MSSQLSvc/sql01"), reply(18)]).is_empty());
        assert!(run(DetectConfig::default(), &[tgs(vec![18, 17, 23], "MSSQLSvc/sql01")]).is_empty());
        assert!(run(DetectConfig::default(), &[tgs(vec![23], "krbtgt/LAB")]).is_empty());
        assert!(
            run(DetectConfig::default(), &[tgs(vec![23], "WS01$")]).is_empty(),
            "computer accounts are not roastable"
        );
        let asreq = |enc_ts: i32| {
            ev(
                1,
                "10.1.1.1",
                Detail::Kerberos(Kerberos { cname: "dave".into(), enc_timestamp_etype: enc_ts, ..krb(10) }),
            )
        };
        let asrep = ev(2, "10.1.1.1", Detail::Kerberos(krb(11)));
        assert_eq!(run(DetectConfig::default(), &[asreq(0), asrep.clone()]), vec!["asrep_roasting"]);
        assert!(run(DetectConfig::default(), &[asreq(18), asrep.clone()]).is_empty(), "pre-authenticated");
        assert!(run(DetectConfig::default(), &[asreq(0)]).is_empty(), "refused (KDC_ERR_PREAUTH_REQUIRED) is normal");
        // MIT kinit -T: the pre-authentication travels inside the FAST armor.
        let mut armored = asreq(0);
        if let Some(Detail::Kerberos(k)) = armored.detail.as_mut() {
            k.fast = true;
            k.padata_types = vec![136];
        }
        assert!(run(DetectConfig::default(), &[armored, asrep]).is_empty(), "FAST hides the pre-authentication");
    }

    /// Roasting is a client's request, not a service's configuration: a client that offers
    /// AES and gets an RC4 ticket (a service account without AES keys, common in real
    /// domains), tickets to the services every computer has, and S4U2self (whose reply
    /// names the impersonated user) raise nothing.
    #[test]
    fn kerberoasting_ignores_service_configuration_computer_services_and_s4u() {
        let d = DetectConfig::default;
        let exchange = |port: u32, etypes: Vec<i32>, sname: &str, padata: Vec<i32>, cname: &str, ticket: i32| {
            let mut req = ev(
                1,
                "10.1.1.1",
                Detail::Kerberos(Kerberos {
                    requested_etypes: etypes,
                    sname: sname.into(),
                    padata_types: padata,
                    ..krb(12)
                }),
            );
            req.src_port = port;
            let mut rep = ev(
                1,
                "10.1.1.1",
                Detail::Kerberos(Kerberos {
                    cname: cname.into(),
                    sname: sname.into(),
                    ticket_etype: ticket,
                    ..krb(13)
                }),
            );
            rep.src_port = port;
            [req, rep]
        };
        // Four ordinary users offering AES, an RC4-only service account answers with RC4.
        let benign: Vec<_> = ["alice", "bob", "carol", "dave"]
            .iter()
            .enumerate()
            .flat_map(|(i, u)| exchange(50_000 + i as u32, vec![18, 17, 23], "MSSQLSvc/sql01:1433", vec![], u, 23))
            .collect();
        assert!(run(d(), &benign).is_empty(), "an RC4 ticket to a client that offered AES");
        // That is the service account's configuration, kept for the posture: RC4 tickets.
        let mut engine = Engine::new(d());
        benign.iter().for_each(|e| drop(engine.process(e)));
        let rc4 = &engine.profiles.rc4_services["mssqlsvc/sql01:1433"];
        assert_eq!((rc4.tickets, rc4.first_seen_ns, rc4.last_seen_ns), (4, S, S));
        assert_eq!(engine.profiles.rc4_services.len(), 1);
        let rows = engine.profiles.take_changes();
        assert!(rows.iter().any(|r| r.kind == "rc4_service" && r.key == "mssqlsvc/sql01:1433"), "{rows:?}");
        // RC4-only requests (after an RC4 logon) to the DC's own services.
        for service in ["cifs/dc1.lab.example", "ldap/dc1.lab.example/lab.example", "HOST/dc1", "DC1$", "krbtgt/LAB"] {
            assert!(run(d(), &exchange(1, vec![23], service, vec![], "alice", 23)).is_empty(), "{service}");
        }
        // S4U2self by a service for a user, even offering RC4 only.
        let s4u = exchange(1, vec![23], "svc_web", vec![1, 129], "alice", 23);
        assert!(run(d(), &s4u).is_empty(), "S4U2self names the impersonated user, who roasted nothing");
        // The real thing: RC4 only for a user's service, named by the reply.
        let mut engine = Engine::new(d());
        let alerts: Vec<_> = exchange(1, vec![23], "MSSQLSvc/sql01:1433", vec![], "mallory", 23)
            .iter()
            .flat_map(|e| engine.process(e))
            .collect();
        assert_eq!(alerts.len(), 1);
        assert_eq!((alerts[0].detection.as_str(), alerts[0].account.as_str()), ("kerberoasting", "mallory"));
        // The same SPN held by a computer account, as an LDAP search answer showed: its
        // tickets use the machine's random key, nothing to crack.
        let search = ev(
            0,
            "10.1.1.2",
            Detail::Ldap(Ldap {
                operation: "search".into(),
                computer_spns: vec!["mssqlsvc/sql01:1433".into(), "http/app3".into()],
                ..Default::default()
            }),
        );
        let mut held = vec![search.clone()];
        held.extend(exchange(1, vec![23], "MSSQLSvc/sql01:1433@LAB.EXAMPLE", vec![], "mallory", 23));
        assert!(run(d(), &held).is_empty(), "a computer's SPN");
        // A burst of AES requests for many user services by one account is roasting too,
        // at the configured threshold and not below.
        let burst: Vec<_> = (0..8u32)
            .flat_map(|i| exchange(100 + i, vec![18, 17], &format!("http/app{i}"), vec![], "mallory", 18))
            .collect();
        let mut engine = Engine::new(d());
        let alerts: Vec<_> = burst.iter().flat_map(|e| engine.process(e)).collect();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        // One of the eight is a computer's: seven user services stay under the threshold.
        let mut seven = vec![search];
        seven.extend(burst.iter().cloned());
        assert!(run(d(), &seven).is_empty(), "http/app3 is a computer's");
        assert_eq!(alerts[0].account, "mallory");
        assert!(run(d(), &burst[..14]).is_empty(), "seven services are below the threshold of eight");
        let off = DetectConfig { roast_burst_services: 0, ..d() };
        assert!(run(off, &burst).is_empty());
        let no_rc4 = DetectConfig { roast_rc4_requests: false, ..d() };
        assert!(run(no_rc4, &exchange(1, vec![23], "MSSQLSvc/sql01:1433", vec![], "mallory", 23)).is_empty());
    }

    #[test]
    fn account_names_in_every_form_are_one_account() {
        for name in [
            "carol",
            "CAROL",
            "LAB\\carol",
            "carol@LAB.EXAMPLE",
            "Carol@lab.example",
            "cn=carol,cn=users,dc=lab,dc=example",
            "CN=Carol,CN=Users,DC=lab,DC=example",
        ] {
            assert_eq!(super::account_key(name), "carol", "{name}");
        }
        assert_eq!(super::account_key(""), "");
        assert_eq!(super::account_key("WS01$"), "ws01$");
    }

    /// A spray that finds a password: an account logs on from the spraying host (Kerberos,
    /// NTLM) after it failed for five others. The same logon from elsewhere, or after a few
    /// typos (below the spray threshold), is not one, nor is an account the spray did not
    /// try logging on from the sprayer.
    #[test]
    fn a_sprayed_account_logging_on_from_the_sprayer_is_spray_success() {
        let d = DetectConfig::default;
        let spray: Vec<_> = ["alice", "bob", "carol", "dave", "frank"]
            .iter()
            .enumerate()
            .map(|(i, u)| krb_error(i as i64, "10.1.1.1", u, 24))
            .collect();
        let as_rep = |src: &str, user: &str| {
            ev(20, src, Detail::Kerberos(Kerberos { cname: user.into(), ticket_fingerprint: "f".into(), ..krb(11) }))
        };
        let mut engine = Engine::new(d());
        let mut alerts: Vec<_> = spray.iter().flat_map(|e| engine.process(e)).collect();
        alerts.extend(engine.process(&as_rep("10.1.1.1", "frank")));
        let found: Vec<_> = alerts.iter().filter(|a| a.detection == "spray_success").collect();
        assert_eq!(found.len(), 1, "{alerts:?}");
        assert_eq!((found[0].account.as_str(), found[0].severity.as_str()), ("frank", "high"));
        let with = |logon: ActivityEvent| {
            let mut events = spray.clone();
            events.push(logon);
            run(d(), &events)
        };
        assert!(!with(as_rep("10.1.1.9", "frank")).contains(&"spray_success".to_string()), "another host");
        let mut mallory_ntlm =
            ev(21, "10.1.1.1", Detail::Ntlm(Ntlm { message_type: 3, user: "mallory".into(), ..Default::default() }));
        mallory_ntlm.account = "LAB\\mallory".into();
        mallory_ntlm.result = "success".into();
        assert!(
            !with(mallory_ntlm).contains(&"spray_success".to_string()),
            "an account the Kerberos spray did not try, logging on with NTLM: its own password"
        );
        assert!(
            with(as_rep("10.1.1.1", "grace")).contains(&"spray_success".to_string()),
            "the spray's next attempt, at an account it had not tried yet, succeeding"
        );
        let mut later = as_rep("10.1.1.1", "grace");
        later.time_unix_ns += 120 * S;
        assert!(!with(later).contains(&"spray_success".to_string()), "long after the spray, not one it tried");
        let mut typos = spray[..2].to_vec();
        typos.push(as_rep("10.1.1.1", "alice"));
        assert!(run(d(), &typos).is_empty(), "two typos, then the password");
        let mut ntlm =
            ev(21, "10.1.1.1", Detail::Ntlm(Ntlm { message_type: 3, user: "frank".into(), ..Default::default() }));
        ntlm.account = "LAB\\frank".into();
        ntlm.result = "success".into();
        assert!(with(ntlm).contains(&"spray_success".to_string()));
    }

    /// The DC locator names the DC dc1; a TGT asked for "dc1" (no '$') is noPac, for
    /// "DC1$" (the DC itself) or another name it is not.
    #[test]
    fn a_tgt_for_a_dcs_name_without_its_dollar_is_nopac() {
        let locator = ev(
            0,
            "10.1.1.1",
            Detail::Dns(Dns {
                response: true,
                records: vec![DnsRecord {
                    name: "_ldap._tcp.dc._msdcs.lab.example".into(),
                    rtype: 33,
                    data: "dc1.lab.example".into(),
                }],
                ..Default::default()
            }),
        );
        let as_req = |name: &str| ev(1, "10.1.1.5", Detail::Kerberos(Kerberos { cname: name.into(), ..krb(10) }));
        let mut engine = Engine::new(DetectConfig::default());
        engine.process(&locator);
        let alerts = engine.process(&as_req("DC1"));
        assert_eq!(alerts.len(), 1);
        assert_eq!((alerts[0].detection.as_str(), alerts[0].account.as_str()), ("nopac", "dc1"));
        for other in ["DC1$", "alice", "dc10"] {
            assert!(run(DetectConfig::default(), &[locator.clone(), as_req(other)]).is_empty(), "{other}");
        }
        assert!(run(DetectConfig::default(), &[as_req("DC1")]).is_empty(), "no DC name known yet");
    }

    /// S4U2self for krbtgt is abuse at once; S4U2proxy to a DC's service is abuse the first
    /// time an account does it after the learning period, and never twice for the same
    /// service.
    #[test]
    fn delegation_to_a_dcs_service_and_s4u2self_for_a_tgt_are_delegation_abuse() {
        let locator = ev(
            0,
            "10.1.1.1",
            Detail::Dns(Dns {
                response: true,
                records: vec![DnsRecord {
                    name: "_kerberos._tcp.dc._msdcs.lab.example".into(),
                    rtype: 33,
                    data: "dc1.lab.example".into(),
                }],
                ..Default::default()
            }),
        );
        let tgs = |t: i64, sname: &str, padata: Vec<i32>, kdc_options: u32| {
            let mut e = ev(
                t,
                "10.1.1.5",
                Detail::Kerberos(Kerberos { sname: sname.into(), padata_types: padata, kdc_options, ..krb(12) }),
            );
            e.account = "web01$@LAB.EXAMPLE".into();
            e
        };
        let d = || DetectConfig { learning_days: 0, ..DetectConfig::default() };
        let s4u_tgt = tgs(1, "krbtgt/LAB.EXAMPLE", vec![1, 129], 0);
        assert_eq!(run(d(), &[s4u_tgt]), vec!["delegation_abuse"]);
        let proxy = |t: i64, sname: &str| tgs(t, sname, vec![1], 1 << 17);
        let mut engine = Engine::new(d());
        engine.process(&locator);
        let first: Vec<_> = engine.process(&proxy(5, "cifs/dc1.lab.example"));
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].detection.as_str(), first[0].account.as_str()), ("delegation_abuse", "web01$"));
        assert!(engine.process(&proxy(6, "cifs/dc1.lab.example")).is_empty(), "the same delegation again");
        assert!(run(d(), &[locator.clone(), proxy(5, "cifs/files01.lab.example")]).is_empty(), "not a DC");
        let learning = DetectConfig { learning_seconds: Some(60), ..DetectConfig::default() };
        assert!(run(learning, &[locator, proxy(5, "cifs/dc1.lab.example")]).is_empty(), "learned");
    }

    /// A service ticket presented to a DC (an AP-REQ in SMB) that no watched DC issued is a
    /// silver ticket, only when every DC is watched and for longer than a ticket lives;
    /// a ticket whose TGS-REP was seen is not.
    #[test]
    fn a_service_ticket_no_dc_issued_is_a_silver_ticket_when_every_dc_is_watched() {
        let cfg = |all: bool| DetectConfig {
            all_dcs_watched: all,
            max_ticket_lifetime_hours: 1,
            dcs: vec!["10.0.0.10".into()],
            ..DetectConfig::default()
        };
        let start = ev(0, "10.1.1.2", Detail::Kerberos(krb(10)));
        let issued = ev(
            7200,
            "10.1.1.5",
            Detail::Kerberos(Kerberos { sname: "cifs/dc1".into(), ticket_fingerprint: "real".into(), ..krb(13) }),
        );
        let ap_req = |fp: &str| {
            let k =
                Kerberos { sname: "cifs/dc1".into(), ticket_fingerprint: fp.into(), carrier: "smb2".into(), ..krb(14) };
            ev(7300, "10.1.1.5", Detail::Kerberos(k))
        };
        assert_eq!(run(cfg(true), &[start.clone(), issued.clone(), ap_req("forged")]), vec!["silver_ticket"]);
        assert!(run(cfg(true), &[start.clone(), issued.clone(), ap_req("real")]).is_empty(), "issued");
        assert!(run(cfg(false), &[start.clone(), issued.clone(), ap_req("forged")]).is_empty(), "a DC is unwatched");
        let early = ev(
            600,
            "10.1.1.5",
            Detail::Kerberos(Kerberos { ticket_fingerprint: "f".into(), carrier: "smb2".into(), ..krb(14) }),
        );
        assert!(run(cfg(true), &[start, early]).is_empty(), "not watched for a ticket's life yet");
    }

    #[test]
    fn tickets_used_from_a_second_host_or_never_issued_are_flagged() {
        let tgt = |t: i64, src: &str, msg: u32| {
            ev(
                t,
                src,
                Detail::Kerberos(Kerberos { ticket_fingerprint: "ab12".into(), sname: "cifs/dc1".into(), ..krb(msg) }),
            )
        };
        assert!(run(DetectConfig::default(), &[tgt(1, "10.1.1.1", 11), tgt(2, "10.1.1.1", 12)]).is_empty());
        assert_eq!(
            run(DetectConfig::default(), &[tgt(1, "10.1.1.1", 11), tgt(2, "10.1.1.9", 12)]),
            vec!["pass_the_ticket"]
        );
        // A TGT nobody issued: only after watching longer than a ticket lives.
        let early = [ev(0, "10.1.1.5", Detail::Kerberos(krb(13))), tgt(3600, "10.1.1.1", 12)];
        assert!(run(DetectConfig::default(), &early).is_empty());
        let late = [ev(0, "10.1.1.5", Detail::Kerberos(krb(13))), tgt(11 * 3600, "10.1.1.1", 12)];
        assert!(run(DetectConfig::default(), &late).is_empty(), "waits for the reply that names the account");
        // The reply names the account the forged ticket claims.
        let reply = ev(
            11 * 3600,
            "10.1.1.1",
            Detail::Kerberos(Kerberos { cname: "Administrator".into(), sname: "cifs/dc1".into(), ..krb(13) }),
        );
        let mut engine = Engine::new(DetectConfig::default());
        let alerts: Vec<_> = [late[0].clone(), late[1].clone(), reply].iter().flat_map(|e| engine.process(e)).collect();
        assert_eq!(alerts.len(), 1);
        assert_eq!((alerts[0].detection.as_str(), alerts[0].account.as_str()), ("golden_ticket", "administrator"));
        // With no reply at all, it is reported without an account after a few seconds.
        let later = ev(11 * 3600 + 30, "10.9.9.9", Detail::Kerberos(krb(10)));
        assert_eq!(run(DetectConfig::default(), &[late[0].clone(), late[1].clone(), later]), vec!["golden_ticket"]);
    }

    #[test]
    fn replication_is_normal_from_dcs_and_dcsync_from_anything_else() {
        let mut cfg = DetectConfig::default();
        cfg.dcs.push("10.0.0.11".into());
        let from_dc = rpc(1, "10.0.0.11", "drsuapi", "DRSGetNCChanges");
        let from_ws = rpc(2, "10.1.1.1", "drsuapi", "DRSGetNCChanges");
        assert!(run(cfg.clone(), &[from_dc]).is_empty());
        assert_eq!(run(cfg.clone(), &[from_ws]), vec!["dcsync"]);
        // A DC learned from answering Kerberos replicates without alerts too.
        let answers = ev(0, "10.9.9.9", Detail::Kerberos(krb(13)));
        let mut learned = answers.clone();
        learned.dc_ip = "10.1.1.3".into();
        assert!(run(cfg, &[learned, rpc(3, "10.1.1.3", "drsuapi", "DRSGetNCChanges")]).is_empty());
    }

    /// A DC being promoted registers its DC object (DRSAddEntry) and replicates at once:
    /// a notice, not DCSync or DCShadow, and it replicates as a DC from then on. A DCSync
    /// from a workstation still alerts at once, one alert per account; a registration that
    /// is not followed by replication, or that asks the DC to replicate from it, is DCShadow.
    #[test]
    fn a_promotion_is_a_notice_and_dcsync_and_dcshadow_still_alert() {
        let mut cfg = DetectConfig::default();
        cfg.dcs.push("10.0.0.10".into());
        let call = |t: i64, src: &str, op: &str, account: &str, result: &str| {
            let mut e = rpc(t, src, "drsuapi", op);
            e.account = account.into();
            e.result = result.into();
            e
        };
        let join = [
            call(1, "10.0.0.11", "DRSAddEntry", "LAB\\Administrator", "success"),
            call(2, "10.0.0.11", "DRSGetNCChanges", "LAB\\Administrator", "success"),
            call(3, "10.0.0.11", "DRSGetNCChanges", "LAB\\Administrator", "success"),
            call(4, "10.0.0.11", "DRSReplicaUpdateRefs", "LAB\\Administrator", "success"),
            call(200, "10.0.0.11", "DRSGetNCChanges", "DC2$", "success"),
        ];
        let mut engine = Engine::new(cfg.clone());
        let alerts: Vec<_> = join.iter().flat_map(|e| engine.process(e)).collect();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(
            (alerts[0].detection.as_str(), alerts[0].severity.as_str(), alerts[0].account.as_str()),
            ("new_domain_controller", "info", "administrator")
        );
        // DCSync from a workstation, by two accounts: two alerts, each naming its account.
        let dcsync = [
            call(1, "10.1.1.5", "DRSGetNCChanges", "LAB\\bob", "failure"),
            call(2, "10.1.1.5", "DRSGetNCChanges", "LAB\\eve.admin", "success"),
        ];
        let mut engine = Engine::new(cfg.clone());
        let alerts: Vec<_> = dcsync.iter().flat_map(|e| engine.process(e)).collect();
        let named: Vec<_> = alerts.iter().map(|a| (a.detection.as_str(), a.account.as_str())).collect();
        assert_eq!(named, [("dcsync", "bob"), ("dcsync", "eve.admin")]);
        // A registration with no replication after it: DCShadow, once the wait is over.
        let rogue = [
            call(1, "10.1.1.6", "DRSAddEntry", "LAB\\eve.admin", "success"),
            ev(30, "10.9.9.9", Detail::Kerberos(krb(10))),
        ];
        assert!(run(cfg.clone(), &rogue).is_empty(), "a promotion replicates within the wait");
        let later = ev(120, "10.9.9.9", Detail::Kerberos(krb(10)));
        assert_eq!(run(cfg.clone(), &[rogue[0].clone(), later]), vec!["dcshadow"]);
        // A registration followed by asking the DC to replicate from it: DCShadow at once.
        let push = [
            call(1, "10.1.1.6", "DRSAddEntry", "LAB\\eve.admin", "success"),
            call(2, "10.1.1.6", "DRSReplicaAdd", "LAB\\eve.admin", "success"),
        ];
        assert_eq!(run(cfg.clone(), &push), vec!["dcshadow"]);
        // A refused registration is the attempt itself.
        assert_eq!(run(cfg, &[call(1, "10.1.1.6", "DRSAddEntry", "", "failure")]), vec!["dcshadow"]);
    }

    /// The DC locator's records name the DCs: a locator answer teaches them silently, a
    /// dynamic update registering an unknown DC is a notice; either way its replication is
    /// then a DC's.
    #[test]
    fn dcs_are_learned_from_the_dc_locator_records() {
        let record = |name: &str, rtype: u32, data: &str| DnsRecord { name: name.into(), rtype, data: data.into() };
        let dns = |response: bool, opcode: u32| {
            ev(
                1,
                "10.0.0.12",
                Detail::Dns(Dns {
                    id: 7,
                    response,
                    opcode,
                    records: vec![
                        record("_ldap._tcp.dc._msdcs.lab.example", 33, "dc2.lab.example"),
                        record("dc2.lab.example", 1, "10.0.0.12"),
                        record("www.lab.example", 1, "10.0.0.99"),
                    ],
                    ..Default::default()
                }),
            )
        };
        let pull = |src: &str| rpc(5, src, "drsuapi", "DRSGetNCChanges");
        assert!(run(DetectConfig::default(), &[dns(true, 0), pull("10.0.0.12")]).is_empty());
        assert_eq!(run(DetectConfig::default(), &[dns(true, 0), pull("10.0.0.99")]), vec!["dcsync"]);
        // A dynamic update counts once the DC answers that it applied it.
        let answer = |id: u32, rcode: u32| {
            ev(1, "10.0.0.12", Detail::Dns(Dns { id, response: true, opcode: 5, rcode, ..Default::default() }))
        };
        let update = dns(false, 5);
        assert_eq!(
            run(DetectConfig::default(), &[update.clone(), answer(7, 0), pull("10.0.0.12")]),
            vec!["new_domain_controller"]
        );
        const REFUSED: u32 = 5;
        for unanswered in [vec![update.clone()], vec![update.clone(), answer(7, REFUSED)], vec![update, answer(8, 0)]] {
            let mut events = unanswered;
            events.push(pull("10.0.0.12"));
            assert_eq!(run(DetectConfig::default(), &events), vec!["dcsync"], "an update the DC did not apply");
        }
        // A site's locator record counts too.
        let mut site = dns(true, 0);
        if let Some(Detail::Dns(d)) = site.detail.as_mut() {
            d.records[0].name = "_kerberos._tcp.Default-First-Site-Name._sites.dc._msdcs.lab.example".into();
        }
        assert!(run(DetectConfig::default(), &[site, pull("10.0.0.12")]).is_empty());
        // The KDC records MIT clients look up are the DCs' too; the domain's plain LDAP
        // record may name another LDAP server.
        let named = |owner: &str| {
            let mut e = dns(true, 0);
            if let Some(Detail::Dns(d)) = e.detail.as_mut() {
                d.records[0].name = owner.into();
            }
            e
        };
        assert!(run(DetectConfig::default(), &[named("_kerberos._tcp.lab.example"), pull("10.0.0.12")]).is_empty());
        assert!(run(DetectConfig::default(), &[named("_kpasswd._udp.lab.example"), pull("10.0.0.12")]).is_empty());
        assert_eq!(run(DetectConfig::default(), &[named("_ldap._tcp.lab.example"), pull("10.0.0.12")]), vec!["dcsync"]);
    }

    #[test]
    fn dcshadow_and_rc4_preauthentication_are_flagged() {
        let d = DetectConfig::default;
        assert_eq!(run(d(), &[rpc(1, "10.1.1.1", "drsuapi", "DRSAddEntry")]), vec!["dcshadow"]);
        assert_eq!(run(d(), &[rpc(1, "10.1.1.1", "drsuapi", "DRSReplicaAdd")]), vec!["dcshadow"]);
        let mut with_dc = d();
        with_dc.dcs.push("10.1.1.1".into());
        assert!(run(with_dc, &[rpc(1, "10.1.1.1", "drsuapi", "DRSAddEntry")]).is_empty(), "DCs do this");
        let asreq = |etypes: Vec<i32>, enc_ts: i32| {
            ev(
                1,
                "10.1.1.1",
                Detail::Kerberos(Kerberos {
                    cname: "alice".into(),
                    requested_etypes: etypes,
                    enc_timestamp_etype: enc_ts,
                    ..krb(10)
                }),
            )
        };
        assert_eq!(run(d(), &[asreq(vec![23], 23)]), vec!["encryption_downgrade"]);
        assert!(run(d(), &[asreq(vec![18, 17, 23], 23)]).is_empty(), "AES offered: an old client, not a hash");
        assert!(run(d(), &[asreq(vec![18, 17, 23], 18)]).is_empty());
    }

    #[test]
    fn rpc_abuse_and_recon_detections_fire_on_their_operations() {
        let d = DetectConfig::default;
        assert_eq!(run(d(), &[rpc(1, "10.1.1.1", "efsrpc", "EfsRpcOpenFileRaw")]), vec!["forced_authentication"]);
        assert_eq!(
            run(d(), &[rpc(1, "10.1.1.1", "spoolss", "RpcRemoteFindFirstPrinterChangeNotificationEx")]),
            vec!["forced_authentication"]
        );
        assert_eq!(run(d(), &[rpc(1, "10.1.1.1", "svcctl", "RCreateServiceW")]), vec!["remote_execution"]);
        assert_eq!(run(d(), &[rpc(1, "10.1.1.1", "atsvc", "JobAdd")]), vec!["remote_execution"]);
        assert_eq!(run(d(), &[rpc(1, "10.1.1.1", "atsvc", "NetrJobAdd")]), vec!["remote_execution"]);
        assert_eq!(run(d(), &[rpc(1, "10.1.1.1", "iwbemservices", "ExecMethod")]), vec!["remote_execution"], "WMI");
        assert!(run(d(), &[rpc(1, "10.1.1.1", "isystemactivator", "RemoteCreateInstance")]).is_empty());
        let mut psexec = rpc(1, "10.1.1.1", "svcctl", "RCreateServiceWOW64W");
        psexec.category = "remote_execution".into();
        assert_eq!(run(d(), &[psexec]), vec!["remote_execution"], "whatever the sensor marks as such");
        assert!(run(d(), &[rpc(1, "10.1.1.1", "svcctl", "ROpenSCManagerW")]).is_empty());
        assert_eq!(run(d(), &[rpc(1, "10.1.1.1", "srvsvc", "NetrSessionEnum")]), vec!["session_enumeration"]);
        assert!(run(d(), &[rpc(1, "10.1.1.1", "srvsvc", "NetrShareEnum")]).is_empty());
        let recon = [
            rpc(1, "10.1.1.1", "samr", "SamrEnumerateUsersInDomain"),
            rpc(2, "10.1.1.1", "samr", "SamrEnumerateGroupsInDomain"),
        ];
        assert_eq!(run(d(), &recon), vec!["rpc_recon"]);
        assert!(run(d(), &recon[..1]).is_empty(), "one listing is below the threshold");
        let zerologon: Vec<_> = (0..10).map(|i| rpc(i, "10.1.1.1", "netlogon", "NetrServerAuthenticate3")).collect();
        assert_eq!(run(d(), &zerologon), vec!["zerologon"]);
        assert!(run(d(), &zerologon[..9]).is_empty());
    }

    #[test]
    fn ldap_recon_counts_kinds_of_query_but_flags_roastable_account_searches_at_once() {
        let d = DetectConfig::default;
        let kinds = [
            ldap_search(1, "10.1.1.1", "(&(objectCategory=person)(objectClass=user))"),
            ldap_search(2, "10.1.1.1", "(objectClass=group)"),
            ldap_search(3, "10.1.1.1", "(objectClass=trustedDomain)"),
        ];
        assert_eq!(run(d(), &kinds), vec!["ldap_recon"]);
        assert!(run(d(), &kinds[..2]).is_empty());
        assert!(run(d(), &[ldap_search(1, "10.1.1.1", "(sAMAccountName=alice)")]).is_empty(), "a lookup is not recon");
        let spn = ldap_search(1, "10.1.1.1", "(&(servicePrincipalName=*)(objectCategory=person))");
        assert_eq!(run(d(), &[spn]), vec!["ldap_recon"]);
        let bind = ev(
            1,
            "10.1.1.1",
            Detail::Ldap(Ldap {
                operation: "bind".into(),
                bind_name: "alice".into(),
                cleartext_password_sent: true,
                ..Default::default()
            }),
        );
        assert_eq!(run(d(), &[bind]), vec!["cleartext_ldap_bind"]);
    }

    #[test]
    fn a_dc_authenticating_to_a_non_dc_was_coerced() {
        let mut cfg = DetectConfig::default();
        cfg.dcs.push("10.0.0.10".into());
        let auth = |server: &str, account: &str| {
            let mut e = ev(1, "10.0.0.10", Detail::Ntlm(Ntlm { message_type: 3, ..Default::default() }));
            e.dc_ip = server.into();
            e.account = account.into();
            e.result = "failure".into();
            e
        };
        assert_eq!(run(cfg.clone(), &[auth("10.1.1.66", "LAB\\DC1$")]), vec!["forced_authentication"]);
        assert!(run(cfg.clone(), &[auth("10.1.1.66", "LAB\\admin")]).is_empty(), "an admin on the DC is not coercion");
        let mut two_dcs = cfg;
        two_dcs.dcs.push("10.0.0.11".into());
        assert!(run(two_dcs, &[auth("10.0.0.11", "LAB\\DC1$")]).is_empty(), "DC to DC is replication business");
        // Anonymous failures are not guesses at an account.
        let anonymous: Vec<_> = (0..20)
            .map(|i| {
                let mut e = ev(i, "10.1.1.1", Detail::Ntlm(Ntlm { message_type: 3, ..Default::default() }));
                e.result = "failure".into();
                e
            })
            .collect();
        assert!(run(DetectConfig::default(), &anonymous).is_empty());
    }

    #[test]
    fn zone_transfers_and_honeytokens_alert_on_the_first_event() {
        let axfr = ev(
            1,
            "10.1.1.1",
            Detail::Dns(Dns {
                questions: vec![DnsQuestion { name: "lab.example".into(), qtype: 252 }],
                ..Default::default()
            }),
        );
        assert_eq!(run(DetectConfig::default(), &[axfr]), vec!["dns_zone_transfer"]);
        let mut cfg = DetectConfig::default();
        cfg.honeytokens.push("LAB\\honey.admin".into());
        let mut logon = ev(1, "10.1.1.1", Detail::Kerberos(krb(10)));
        logon.account = "honey.admin@LAB.EXAMPLE".into();
        assert_eq!(run(cfg, &[logon]), vec!["honeytoken"]);
    }

    #[test]
    fn accounts_directory_results_show_as_admins_are_learned_as_sensitive() {
        let mut engine = Engine::new(DetectConfig::default());
        // An RC4-only request for a user's service: a medium alert for an ordinary account.
        let roast = |engine: &mut Engine, account: &str| -> Vec<super::super::Alert> {
            let request = ev(
                1,
                "10.1.1.1",
                Detail::Kerberos(Kerberos { requested_etypes: vec![23], sname: "http/web".into(), ..krb(12) }),
            );
            let mut e = ev(
                1,
                "10.1.1.1",
                Detail::Kerberos(Kerberos {
                    ticket_etype: 23,
                    sname: "http/web".into(),
                    cname: account.into(),
                    ..krb(13)
                }),
            );
            e.account = account.into();
            engine.process(&request);
            engine.process(&e)
        };
        let first = roast(&mut engine, "eve.admin");
        assert!(!first.is_empty() && first.iter().all(|a| a.severity == "medium"), "nothing learned yet: {first:?}");
        let search = ev(
            20,
            "10.1.1.2",
            Detail::Ldap(Ldap {
                operation: "search".into(),
                privileged_accounts: vec!["eve.admin".into(), "Administrator".into()],
                ..Default::default()
            }),
        );
        engine.process(&search);
        assert!(engine.profiles.privileged.contains("administrator"));
        let mut later = Engine::new(DetectConfig::default());
        later.profiles = engine.profiles.clone();
        let alerts = roast(&mut later, "LAB\\eve.admin");
        assert!(!alerts.is_empty());
        assert!(alerts.iter().all(|a| a.severity == "high" && a.description.contains("administrative group")));
        assert!(roast(&mut later, "bob").iter().all(|a| a.severity == "medium"), "others keep their severity");
    }

    #[test]
    fn alerts_on_sensitive_accounts_are_high() {
        let cfg = DetectConfig { sensitive_accounts: vec!["LAB\\svc_backup".into()], ..Default::default() };
        let brute: Vec<_> = (0..10).map(|i| krb_error(i, "10.1.1.1", "svc_backup", 24)).collect();
        let mut engine = Engine::new(cfg);
        let alerts: Vec<_> = brute.iter().flat_map(|e| engine.process(e)).collect();
        assert!(alerts.iter().all(|a| a.severity == "high" && a.description.ends_with("marked sensitive.")));
        let mut plain = Engine::new(DetectConfig::default());
        let tgs = ev(
            1,
            "10.1.1.1",
            Detail::Kerberos(Kerberos { requested_etypes: vec![23], sname: "http/web".into(), ..krb(12) }),
        );
        let reply =
            ev(1, "10.1.1.1", Detail::Kerberos(Kerberos { ticket_etype: 23, sname: "http/web".into(), ..krb(13) }));
        assert!(plain.process(&tgs).is_empty());
        assert_eq!(plain.process(&reply)[0].severity, "medium", "others keep their severity");
    }

    #[test]
    fn repeated_findings_extend_one_alert() {
        let mut engine = Engine::new(DetectConfig::default());
        let mut ids = std::collections::BTreeSet::new();
        for i in 0..20 {
            for mut a in engine.process(&krb_error(i, "10.1.1.1", &format!("u{}", i % 6), 24)) {
                if a.id == 0 {
                    a.id = ids.len() as i64 + 1;
                    engine.saved(&a);
                }
                ids.insert((a.detection.clone(), a.id));
            }
        }
        assert_eq!(ids.len(), 1, "{ids:?}");
    }
}
