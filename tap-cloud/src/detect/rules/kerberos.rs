//! Kerberos: logons and their failures, roasting, forged and stolen tickets, delegation.

use super::*;

impl Rules {
    pub(super) fn kerberos(&mut self, cfg: &DetectConfig, ev: &ActivityEvent, k: &Kerberos, out: &mut Vec<Finding>) {
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
            // A DC asks its own KDC for its service tickets, out of every sensor's sight.
            14 if cfg.all_dcs_watched
                && !k.ticket_fingerprint.is_empty()
                && self.dcs.contains(&ev.dc_ip)
                && !self.dcs.contains(&ev.src_ip)
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
    pub(super) fn answer_tgs(
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
    pub(super) fn tgs_outcome(
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
    pub(super) fn user_service_burst(
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
    pub(super) fn flush_tgs_requests(&mut self, cfg: &DetectConfig, now: i64, out: &mut Vec<Finding>) {
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
    pub(super) fn ticket_owner(&self, fingerprint: &str) -> String {
        self.tgt_host.get(fingerprint).map(|(_, account)| account.clone()).unwrap_or_default()
    }

    pub(super) fn remember_ticket(&mut self, fingerprint: &str, host: &str, account: &str) {
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
    pub(super) fn ticket_use(
        &mut self,
        cfg: &DetectConfig,
        ev: &ActivityEvent,
        k: &Kerberos,
        out: &mut Vec<Finding>,
    ) -> bool {
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
                // A DC's own TGT comes from its own KDC, on the DC itself, where no sensor
                // sees it issued: unseen is not forged when a DC presents it.
                let from_dc = self.dcs.contains(&ev.src_ip);
                let forged =
                    !from_dc && self.watching_since.is_some_and(|s| ev.time_unix_ns.saturating_sub(s) > lifetime);
                self.remember_ticket(&k.ticket_fingerprint, &ev.src_ip, "");
                forged
            }
        }
    }

    /// S4U2self for a TGT (a service asking the KDC for a TGT in a user's name), and
    /// S4U2proxy toward a DC's services by an account not seen delegating to them before.
    pub(super) fn delegation(
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
}
