//! Which hosts are DCs: the DC locator's DNS records, dynamic updates, promotions.

use super::*;

impl Rules {
    /// A dynamic update teaches DCs only once the DC answers that it applied it.
    pub(super) fn dns_update(&mut self, ev: &ActivityEvent, d: &crate::pb::Dns, out: &mut Vec<Finding>) {
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
    pub(super) fn learn_dcs_from_dns(&mut self, ev: &ActivityEvent, d: &crate::pb::Dns, out: &mut Vec<Finding>) {
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
    pub(super) fn flush_registrations(&mut self, now: i64, out: &mut Vec<Finding>) {
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
}
