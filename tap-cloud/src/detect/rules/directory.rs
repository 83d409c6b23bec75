//! LDAP: binds in the clear, directory reconnaissance, what search results teach.

use super::*;

impl Rules {
    pub(super) fn ldap(&mut self, cfg: &DetectConfig, ev: &ActivityEvent, l: &Ldap, out: &mut Vec<Finding>) {
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
}
