//! DCE/RPC: replication (DCSync, DCShadow), enumeration, coercion, remote execution, ZeroLogon.

use super::*;

impl Rules {
    pub(super) fn dcerpc(&mut self, cfg: &DetectConfig, ev: &ActivityEvent, d: &DceRpc, out: &mut Vec<Finding>) {
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
