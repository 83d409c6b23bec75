//! Detection settings: thresholds, windows, exclusions, honeytokens and known DCs, from the
//! `[detect]` table of the cloud's TOML configuration. Unknown keys are errors, so a typo
//! cannot silently leave a default in force.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    /// Sliding window of the count-based detections, in seconds.
    pub window_secs: u64,
    /// Password spray: failed logons from one source against this many distinct accounts.
    pub spray_accounts: usize,
    /// Brute force: this many failed logons from one source against one account.
    pub brute_failures: usize,
    /// Account enumeration: this many distinct unknown account names from one source.
    pub enum_accounts: usize,
    /// LDAP reconnaissance: this many distinct kinds of directory query (users, groups,
    /// computers, admins, trusts, ...) from one source.
    pub ldap_recon_kinds: usize,
    /// SAMR/LSARPC reconnaissance: this many distinct enumeration operations from one source.
    pub rpc_recon_ops: usize,
    /// ZeroLogon: this many NETLOGON authentication attempts from one source.
    pub zerologon_attempts: usize,
    /// Kerberoasting: raise on a service-ticket request for a user account's service that
    /// offers RC4 and no AES (what roasting tools send; Windows since 2008 offers AES).
    pub roast_rc4_requests: bool,
    /// Kerberoasting, whatever the encryption: one account asking for tickets to this many
    /// distinct services of user accounts within `roast_burst_secs`. 0 turns it off.
    pub roast_burst_services: usize,
    pub roast_burst_secs: u64,
    /// Longest ticket lifetime in the domain: after watching this long, a TGT the sensor
    /// never saw issued is forged (golden ticket).
    pub max_ticket_lifetime_hours: u64,
    /// Days, from the first event, during which behaviour is learned: which hosts each
    /// account uses (and its services and hours), and which hosts normally enumerate the
    /// directory. Afterwards, first-seen behaviour raises low-severity alerts and
    /// enumeration from the learned hosts is quiet. 0 turns learning off.
    pub learning_days: u64,
    /// The learning period in seconds instead of days: for labs and replayed captures,
    /// whose whole story lasts seconds. Overrides `learning_days` when set.
    pub learning_seconds: Option<u64>,
    /// Accounts nobody should use; any activity alerts.
    pub honeytokens: Vec<String>,
    /// Sensitive accounts (domain admins, service accounts with wide rights): alerts
    /// naming them are raised to high severity.
    pub sensitive_accounts: Vec<String>,
    /// Domain controllers' addresses (replication from them is normal); addresses that
    /// answer Kerberos or LDAP are learned as DCs too.
    pub dcs: Vec<String>,
    /// Every DC of the domain is watched by a sensor: then a service ticket presented to a
    /// DC that no DC issued is forged (silver ticket). Off by default, since a ticket
    /// issued by an unwatched DC would look the same.
    pub all_dcs_watched: bool,
    /// Per detection, source addresses allowed to do it (e.g. a vulnerability scanner
    /// doing LDAP reconnaissance); "*" as the detection applies to all.
    pub exclusions: BTreeMap<String, Vec<String>>,
    /// Events of every sensor are examined in event-time order: an event is examined once
    /// each active sensor has delivered events this many seconds later than it (the
    /// allowed lateness: how far apart sensors' and workers' deliveries may be).
    pub allowed_lateness_secs: u64,
    /// A sensor that delivered nothing for this many seconds (wall clock) no longer holds
    /// the others back; its later events are examined as late.
    pub sensor_idle_secs: u64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            window_secs: 600,
            spray_accounts: 5,
            brute_failures: 10,
            enum_accounts: 5,
            ldap_recon_kinds: 3,
            rpc_recon_ops: 2,
            zerologon_attempts: 10,
            roast_rc4_requests: true,
            roast_burst_services: 8,
            roast_burst_secs: 60,
            max_ticket_lifetime_hours: 10,
            learning_days: 7,
            learning_seconds: None,
            honeytokens: Vec::new(),
            sensitive_accounts: Vec::new(),
            dcs: Vec::new(),
            all_dcs_watched: false,
            exclusions: BTreeMap::new(),
            allowed_lateness_secs: 5,
            sensor_idle_secs: 10,
        }
    }
}

impl DetectConfig {
    pub fn learning_ns(&self) -> i64 {
        match self.learning_seconds {
            Some(s) => (s as i64).saturating_mul(1_000_000_000),
            None => (self.learning_days as i64).saturating_mul(86_400_000_000_000),
        }
    }

    pub fn window_ns(&self) -> i64 {
        (self.window_secs as i64).saturating_mul(1_000_000_000)
    }

    pub fn allowed_lateness_ns(&self) -> i64 {
        (self.allowed_lateness_secs as i64).saturating_mul(1_000_000_000)
    }

    /// True when `source` (or `account`) is excluded from `detection`.
    pub fn excluded(&self, detection: &str, source: &str, account: &str) -> bool {
        [detection, "*"].iter().filter_map(|d| self.exclusions.get(*d)).flatten().any(|x| x == source || x == account)
    }

    /// Reads the `[detect]` table of a TOML file; a missing table is the defaults.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            detect: Option<DetectConfig>,
        }
        let file: File = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let cfg = file.detect.unwrap_or_default();
        for (name, v) in [
            ("spray_accounts", cfg.spray_accounts),
            ("brute_failures", cfg.brute_failures),
            ("enum_accounts", cfg.enum_accounts),
            ("ldap_recon_kinds", cfg.ldap_recon_kinds),
            ("rpc_recon_ops", cfg.rpc_recon_ops),
            ("zerologon_attempts", cfg.zerologon_attempts),
        ] {
            if v == 0 {
                anyhow::bail!("detect.{name} = 0: a threshold must be at least 1");
            }
        }
        if cfg.window_secs == 0 {
            anyhow::bail!("detect.window_secs = 0: give the window in seconds (default 600)");
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_typos_and_zeroes() {
        let cfg = DetectConfig::from_toml(
            "[detect]\nspray_accounts = 3\nhoneytokens = [\"honey.admin\"]\nexclusions = { ldap_recon = [\"10.0.0.5\"] }\n",
        )
        .unwrap();
        assert_eq!(cfg.spray_accounts, 3);
        assert_eq!(cfg.learning_ns(), 7 * 86_400_000_000_000, "a week by default");
        let lab = DetectConfig::from_toml("[detect]\nlearning_seconds = 60\n").unwrap();
        assert_eq!(lab.learning_ns(), 60_000_000_000, "seconds override days");
        assert_eq!(cfg.brute_failures, 10);
        assert!(cfg.excluded("ldap_recon", "10.0.0.5", ""));
        assert!(!cfg.excluded("password_spray", "10.0.0.5", ""));
        let err = DetectConfig::from_toml("[detect]\nspray_acounts = 3\n").unwrap_err().to_string();
        assert!(err.contains("spray_acounts"), "{err}");
        let err = DetectConfig::from_toml("[detect]\nbrute_failures = 0\n").unwrap_err().to_string();
        assert!(err.contains("detect.brute_failures"), "{err}");
        assert_eq!(DetectConfig::from_toml("").unwrap(), DetectConfig::default());
        // The documented sample is valid and says the defaults.
        let sample = include_str!("../../../deploy/cloud.toml");
        assert_eq!(DetectConfig::from_toml(sample).unwrap(), DetectConfig::default());
    }
}
