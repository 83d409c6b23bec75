//! `cargo xtask lab up|scenarios|down`: the project's own Active Directory lab (`lab/`): a
//! Samba AD DC and two workstations in network namespaces, the DC's switch port mirrored
//! with tc to the sensor namespace, where `tap-sensor capture` runs with XDP and streams to
//! `tap-cloud serve` on that namespace's loopback; real tools run the scenarios, each
//! recorded to its own labelled pcap. The shell scripts in `lab/` do the lab itself; this
//! module installs what they need, builds and starts dctap, and runs the end-to-end suite
//! of `cargo xtask test` (`e2e`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    install::Need,
    setup::Env,
    util::{note, step, Cmd},
};

/// What the lab runs, from Debian: Samba as an AD DC (with its DNS, KDC and DRSUAPI), the
/// workstation tools (MIT Kerberos, smbclient/rpcclient, ldapsearch, dig), and what the
/// scripts use around them. tcpdump, tcpreplay and iproute2 come from the global set-up.
const LAB_NEEDS: &[Need] = &[
    Need::program("samba", &["--version"], "samba-ad-dc"),
    Need::program("samba-tool", &["--version"], "samba"),
    Need::program("smbd", &["--version"], "samba"),
    Need::package("samba-ad-provision"),
    Need::package("samba-dsdb-modules"),
    Need::package("samba-vfs-modules"),
    Need::program("winbindd", &["--version"], "winbind"),
    Need::program("kinit", &[], "krb5-user"),
    Need::program("kvno", &[], "krb5-user"),
    Need::program("ldapsearch", &[], "ldap-utils"),
    Need::program("ldbsearch", &["--version"], "ldb-tools"),
    Need::program("smbclient", &["--version"], "smbclient"),
    Need::program("rpcclient", &["--version"], "smbclient"),
    Need::program("dig", &["-v"], "bind9-dnsutils"),
    Need::program("ethtool", &["--version"], "ethtool"),
    Need::program("ping", &["-V"], "iputils-ping"),
    Need::package("python3-venv"),
    Need::package("libsasl2-modules-gssapi-mit"),
    Need::program("setfacl", &["--version"], "acl"),
    Need::program("setfattr", &["--version"], "attr"),
];
/// Samba's packages are built from one source package and must share its version.
const LAB_SETS: &[&[&str]] = &[&[
    "samba",
    "samba-ad-dc",
    "samba-ad-provision",
    "samba-dsdb-modules",
    "samba-vfs-modules",
    "samba-common",
    "samba-common-bin",
    "smbclient",
    "winbind",
]];
/// impacket from PyPI, the version the lab's shim (lab/tools/impacket_samba.py) was written for.
const IMPACKET: &str = "impacket==0.13.1";

#[derive(clap::Subcommand)]
pub enum Which {
    /// Install what the lab needs, build dctap (release), start the lab, and the cloud (with
    /// a fresh database) and the sensor on the SPAN port.
    Up,
    /// Run the scenarios (all, or those whose key contains one of NAMES), one pcap each,
    /// then list the alerts the cloud raised.
    Scenarios {
        names: Vec<String>,
        /// Copy the recorded pcaps and labels.json into lab/pcaps (the committed fixtures).
        #[arg(long)]
        save: bool,
    },
    /// Stop the sensor, the cloud and Samba, delete the namespaces.
    Down {
        /// Also delete the lab's state folder (DC database, captures, cloud database).
        #[arg(long)]
        purge: bool,
    },
    /// What is running.
    Status,
    /// The end-to-end suite of `cargo xtask test` alone: lab up, every scenario, the
    /// cloud's alerts against the expectations, lab down.
    Test,
}

fn venv_dir() -> PathBuf {
    if let Some(v) = std::env::var_os("DCTAP_LAB_VENV") {
        return PathBuf::from(v);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/dctap/lab-venv")
}

/// Idempotent, printed: the Debian packages (without letting their scripts start Samba's
/// daemons on the host) and impacket in a venv outside the source tree.
pub fn ensure_installed() -> anyhow::Result<()> {
    crate::install::ensure_with("lab Debian packages", LAB_NEEDS, LAB_SETS, PolicyRcD::install)?;
    let venv = venv_dir();
    if venv.join("bin/GetUserSPNs.py").exists() {
        note(&format!("impacket: present in {}", venv.display()));
    } else {
        note(&format!("impacket: installing {IMPACKET} from PyPI into {}", venv.display()));
        Cmd::new("python3").arg("-m").arg("venv").arg(&venv).run()?;
        Cmd::new(venv.join("bin/pip")).args(["install", "-q", IMPACKET]).run()?;
        if !venv.join("bin/GetUserSPNs.py").exists() {
            bail!(
                "impacket: pip reported success but {} has no GetUserSPNs.py; fix: rm -rf {} and re-run",
                venv.display(),
                venv.display()
            );
        }
    }
    Ok(())
}

/// `/usr/sbin/policy-rc.d` answering 101 while packages install, so their scripts do not
/// start smbd, nmbd or samba on the host; removed on drop when it made it.
struct PolicyRcD(Option<PathBuf>);

impl PolicyRcD {
    fn install() -> anyhow::Result<Self> {
        let policy = Path::new("/usr/sbin/policy-rc.d");
        if policy.exists() {
            return Ok(Self(None));
        }
        std::fs::write(policy, "#!/bin/sh\nexit 101\n")?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(Self(Some(policy.to_path_buf())))
    }
}

impl Drop for PolicyRcD {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The lab's state folder and the environment its scripts run with.
pub(crate) struct Lab {
    script: PathBuf,
    pub(crate) state: PathBuf,
    bin: PathBuf,
    /// CPU the lab's processes are pinned to (lab.sh: DCTAP_LAB_CPU), if any.
    cpu: Option<&'static str>,
}

impl Lab {
    pub(crate) fn new(env: &Env, state: PathBuf, bin: PathBuf) -> Self {
        Self { script: env.root.join("lab/lab.sh"), state, bin, cpu: None }
    }

    fn cmd(&self, args: &[&str]) -> Cmd {
        let mut c = Cmd::new(&self.script);
        c.0.args(args)
            .env("DCTAP_LAB_DIR", &self.state)
            .env("DCTAP_LAB_VENV", venv_dir())
            .env("TAP_BIN_DIR", &self.bin);
        if let Some(cpu) = self.cpu {
            c.0.env("DCTAP_LAB_CPU", cpu);
        }
        c
    }

    pub(crate) fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        self.cmd(args).run()
    }

    pub(crate) fn cloud(&self) -> PathBuf {
        self.bin.join("tap-cloud")
    }

    pub(crate) fn db(&self) -> PathBuf {
        self.state.join("tap/cloud.db")
    }

    /// Every alert the cloud holds, by id.
    fn alerts(&self) -> anyhow::Result<BTreeMap<i64, Alert>> {
        let out = Cmd::new(self.cloud()).args(["alerts", "--json", "--db"]).arg(self.db()).output()?;
        let mut all = BTreeMap::new();
        for line in String::from_utf8(out.stdout)?.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            let a = Alert {
                detection: s("detection"),
                src: s("src_ip"),
                account: s("account"),
                last_seen: v["last_seen_ns"].as_i64().unwrap_or(0),
                evidence: v["evidence"].as_array().map_or(0, |e| e.len()),
                dcs: v["dcs"].as_array().map_or(0, |d| d.len()),
            };
            all.insert(v["id"].as_i64().unwrap_or(0), a);
        }
        Ok(all)
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Alert {
    detection: String,
    src: String,
    account: String,
    last_seen: i64,
    evidence: usize,
    /// DCs its evidence was seen at.
    dcs: usize,
}

pub(crate) fn default_state(env: &Env) -> PathBuf {
    std::env::var_os("DCTAP_LAB_DIR").map(PathBuf::from).unwrap_or_else(|| env.root.join("target/lab"))
}

pub fn run(env: &Env, which: Which) -> anyhow::Result<()> {
    let lab = Lab::new(env, default_state(env), env.root.join("target/release"));
    match which {
        Which::Up => {
            step("lab set-up");
            ensure_installed()?;
            step("build the sensor and the cloud (release)");
            env.cargo().args(["build", "--release", "-p", "tap-user", "-p", "tap-cloud"]).run()?;
            step("lab: namespaces, SPAN port, Samba AD DC, workstations");
            let t0 = Instant::now();
            lab.run(&["up"])?;
            step("dctap: tap-cloud on the sensor namespace's loopback, tap-sensor (XDP) on the SPAN port");
            lab.run(&["tap-up", "--fresh"])?;
            note(&format!("lab up in {:.0} s; state in {}", t0.elapsed().as_secs_f64(), lab.state.display()));
            note("next: cargo xtask lab scenarios   (or: lab/lab.sh list)");
        }
        Which::Scenarios { names, save } => {
            step("scenarios");
            let t0 = Instant::now();
            let mut args = vec!["scenarios"];
            args.extend(names.iter().map(String::as_str));
            lab.run(&args)?;
            note(&format!("scenarios took {:.0} s", t0.elapsed().as_secs_f64()));
            if save {
                save_fixtures(env, &lab, &names)?;
            }
            step("what the cloud raised");
            std::thread::sleep(Duration::from_secs(2));
            match Cmd::new(lab.cloud()).args(["alerts", "--db"]).arg(lab.db()).output() {
                Ok(out) => print!("{}", String::from_utf8_lossy(&out.stdout)),
                Err(e) => note(&format!("no alerts to show ({e:#}); is the cloud up (cargo xtask lab up)?")),
            }
        }
        Which::Down { purge } => {
            step("lab down");
            lab.run(if purge { &["down", "--purge"] } else { &["down"] })?;
        }
        Which::Status => lab.run(&["status"])?,
        Which::Test => e2e(env)?,
    }
    Ok(())
}

/// Largest capture committed as a fixture.
const MAX_FIXTURE: u64 = 450_000;

/// Copies the recorded captures and the labels into lab/pcaps; the labels of scenarios not
/// re-run are kept (labels.json always describes every scenario recorded so far).
fn save_fixtures(env: &Env, lab: &Lab, names: &[String]) -> anyhow::Result<()> {
    step("save the captures as fixtures in lab/pcaps");
    let dest = env.root.join("lab/pcaps");
    std::fs::create_dir_all(&dest)?;
    let src = lab.state.join("out/pcaps");
    for e in std::fs::read_dir(&src).with_context(|| src.display().to_string())? {
        let path = e?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if !name.ends_with(".pcap") || !(names.is_empty() || names.iter().any(|n| name.contains(n.as_str()))) {
            continue;
        }
        let mut size = std::fs::metadata(&path)?.len();
        let mut from = path.clone();
        if size > MAX_FIXTURE {
            // A promotion replicates the whole domain (tens of MB): keep its requests and
            // results, not the replicated data (lab/tools/thin_bulk.py says what goes).
            let thin = lab.state.join("out").join(format!("thin-{name}"));
            Cmd::new("python3").arg(env.root.join("lab/tools/thin_bulk.py")).arg(&path).arg(&thin).run()?;
            size = std::fs::metadata(&thin)?.len();
            from = thin;
        }
        if size > MAX_FIXTURE {
            bail!("{name} is {size} bytes: keep fixtures under {MAX_FIXTURE} bytes (shorten the scenario)");
        }
        std::fs::copy(&from, dest.join(&name))?;
        note(&format!("{name}: {size} bytes"));
    }
    std::fs::copy(lab.state.join("out/labels.json"), dest.join("labels.json"))?;
    note("labels.json");
    Ok(())
}

/// What one scenario must raise in the live cloud, and what it is known not to raise yet.
struct Expect {
    scenario: &'static str,
    /// (detection, source address, account the alert must name or "" when the detection
    /// names none by design, e.g. a spray over many accounts).
    fires: &'static [(&'static str, &'static str, &'static str)],
    /// Detections that may also fire because the scenario really does that too.
    allow: &'static [&'static str],
    /// Detections the scenario should raise but does not yet on live traffic, with why.
    known_misses: &'static [(&'static str, &'static str)],
    /// Run the scenario against a fresh cloud whose profiles learn for this many seconds
    /// (learned detections cannot fire within a scenario with a learning period in days).
    learning_seconds: Option<u64>,
    /// Start a fresh cloud (and sensor) for this scenario: the scenarios before it left
    /// state that would colour it (a spray makes the spraying host's later logons spray
    /// successes, as they would be in a real domain within the window).
    fresh: bool,
    /// The cloud is told every DC is watched (`all_dcs_watched`): true of the lab until
    /// the second DC joins (the sensor watches the first only).
    all_dcs_watched: bool,
}

/// Why DRSUAPI and Netlogon over TCP are missed live (not in `cargo xtask eval`, which
/// reads the recorded capture): the tools connect to the dynamic port the endpoint mapper
/// gave them within milliseconds, before the sensor has added that port to the XDP filter,
/// so the connection's start (and its bind) is dropped and its calls are never named.
const WS01: &str = "10.78.0.20";
const WS02: &str = "10.78.0.21";

/// The expectations of the end-to-end suite: the labels of lab/pcaps/labels.json, per
/// scenario. Benign scenarios fire nothing.
const EXPECTATIONS: &[Expect] = &[
    Expect {
        scenario: "01_normal_logons",
        fires: &[],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "02_password_spray",
        fires: &[("password_spray", WS01, ""), ("brute_force", WS01, "bob"), ("brute_force", WS01, "carol")],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        // A new story: after the spray, WS01's own logons would be spray successes.
        scenario: "03_kerberoasting",
        fires: &[("kerberoasting", WS01, "alice")],
        // impacket pre-authenticates with RC4 (an encryption downgrade) and queries SPNs.
        allow: &["encryption_downgrade", "ldap_recon"],
        known_misses: &[],
        learning_seconds: None,
        fresh: true,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "04_asrep_roasting",
        fires: &[("asrep_roasting", WS01, "dave")],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "05_ldap_recon",
        fires: &[("ldap_recon", WS01, "alice"), ("cleartext_ldap_bind", WS01, "alice")],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "06_samr_lsarpc_recon",
        fires: &[("rpc_recon", WS01, "alice")],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "07_dns_recon",
        fires: &[("dns_zone_transfer", WS01, "")],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "08_dcsync",
        fires: &[("dcsync", WS01, "eve.admin")],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "09_pass_the_hash",
        // eve.admin's WS01 logon falls in a 2-second learning period; her hash is used
        // from WS02 three seconds later.
        fires: &[("pass_the_hash", WS02, "eve.admin")],
        allow: &[],
        known_misses: &[],
        learning_seconds: Some(2),
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "10_overpass_the_hash",
        fires: &[("encryption_downgrade", WS02, "bob")],
        // cifs/dc1 is the DC's own service: an RC4-only request for it is not roasting.
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "11_pass_the_ticket",
        fires: &[("pass_the_ticket", WS02, "carol")],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "12_golden_ticket",
        fires: &[("golden_ticket", WS01, "")],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "13_honeytoken",
        fires: &[("honeytoken", WS01, "hr.backup")],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "14_account_enumeration",
        fires: &[("account_enumeration", WS01, "")],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "15_forced_authentication",
        fires: &[("forced_authentication", WS01, "alice")],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "16_remote_execution",
        fires: &[("remote_execution", WS01, "eve.admin")],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "17_zerologon",
        fires: &[("zerologon", WS01, "")],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "18_dcshadow",
        fires: &[("dcshadow", WS01, "eve.admin")],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "24_silver_ticket",
        // Before the second DC joins, every DC is watched: a ticket no DC issued is forged.
        fires: &[("silver_ticket", WS01, "")],
        // Its preparation replicates the DC's keys with secretsdump before the recording;
        // the live sensor sees that DCSync (the recorded fixture does not hold it).
        allow: &["dcsync"],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: true,
    },
    // Benign look-alikes of the attacks above: they must stay silent.
    Expect {
        scenario: "19_busy_hours",
        fires: &[],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "20_dc_promotion",
        fires: &[],
        // A legitimate promotion: at most the notice that a DC was added.
        allow: &["new_domain_controller"],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "21_busy_hours_two_dcs",
        fires: &[],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "22_spray_success",
        fires: &[("password_spray", WS01, ""), ("spray_success", WS01, "frank")],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "23_nopac_s4u",
        // delegation_abuse is first-seen behaviour: a 2-second learning period, as for
        // pass-the-hash, which also makes the operator's first LDAP ticket unusual.
        fires: &[("nopac", WS01, "dc1"), ("delegation_abuse", WS01, "nopac01$")],
        allow: &["unusual_service", "unusual_source", "unusual_time"],
        known_misses: &[],
        learning_seconds: Some(2),
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "25_kerberos_fast",
        // FAST-armored logons are not AS-REP roasting; the refused S4U2proxy to the DC is
        // svc_sql's first delegation (first-seen behaviour, as for 23).
        fires: &[("delegation_abuse", WS01, "svc_sql")],
        allow: &["unusual_service", "unusual_source", "unusual_time"],
        known_misses: &[],
        learning_seconds: Some(2),
        fresh: false,
        all_dcs_watched: false,
    },
    // Two DCs, each watched by its own sensor, both streaming to the cloud. Last: the spray
    // makes later logons of its accounts from WS01 spray successes (as they would be).
    Expect {
        scenario: "26_tgt_two_dcs",
        // DC1's sensor saw the TGT issued; DC2's sees it used: not forged, not stolen. A
        // fresh cloud learning for days (the scenario before learned for two seconds).
        fires: &[],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: true,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "27_spray_two_dcs",
        fires: &[("password_spray", WS01, "")],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "28_dcsync_dc2",
        fires: &[("dcsync", WS01, "eve.admin")],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
    Expect {
        scenario: "29_replication",
        fires: &[],
        allow: &[],
        known_misses: &[],
        learning_seconds: None,
        fresh: false,
        all_dcs_watched: false,
    },
];

/// The scenario whose attack is spread over both DCs: its alert must name both.
const SPRAY_OVER_TWO_DCS: &str = "27_spray_two_dcs";

/// Alerts new or extended since `before`.
fn changed(before: &BTreeMap<i64, Alert>, after: &BTreeMap<i64, Alert>) -> Vec<Alert> {
    after.iter().filter(|(id, a)| before.get(id) != Some(a)).map(|(_, a)| a.clone()).collect()
}

/// Events the cloud has stored.
fn stored_events(lab: &Lab) -> anyhow::Result<u64> {
    let out = Cmd::new(lab.cloud()).args(["events", "stats", "--db"]).arg(lab.db()).output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["events"].as_u64().unwrap_or(0))
}

/// Waits until the cloud has caught up with a scenario: neither the stored events nor the
/// alerts change for five seconds (the uplink and the detection thread run within a
/// second; detection holds the last second of events until the sensor is silent for 3 s,
/// the lab's `sensor_idle_secs`).
fn settle(lab: &Lab) -> anyhow::Result<BTreeMap<i64, Alert>> {
    std::thread::sleep(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (stored_events(lab)?, lab.alerts()?);
    let mut stable_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = (stored_events(lab)?, lab.alerts()?);
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_secs(5) {
            break;
        }
    }
    Ok(last.1)
}

/// The end-to-end lab suite of `cargo xtask test`: lab up, the sensor with XDP on the SPAN
/// port and the cloud on loopback, every scenario, and per scenario the alerts the cloud
/// raised against `EXPECTATIONS`; lab down whatever happens.
pub fn e2e(env: &Env) -> anyhow::Result<()> {
    // Never skipped: a machine where the set-up succeeded can run the lab.
    ensure_installed().context("the lab end-to-end suite needs Samba and impacket")?;
    // Debug builds: `cargo test` has just built them under `cargo xtask test`.
    let bin = env.root.join("target/debug");
    env.cargo().args(["build", "-p", "tap-user", "-p", "tap-cloud"]).run()?;
    let lab = Lab::new(env, env.root.join("target/lab-e2e"), bin);
    // Not pinned: the mirror delivers each direction on its sender's CPU, and the sensor
    // must merge its per-CPU rings in capture order (it does since it reads them with one
    // thread); DCTAP_LAB_CPU stays available for experiments.
    // One lab at a time on a machine (its namespace names are fixed).
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open("/tmp/dctap-lab.lock")?;
    if lock.try_lock().is_err() {
        note("another lab run holds /tmp/dctap-lab.lock: waiting for it");
        lock.lock()?;
    }
    // The lab's namespace names are fixed: a lab left up by `cargo xtask lab up` goes down.
    let _ = lab.cmd(&["down"]).output();
    let t0 = Instant::now();
    let result = e2e_inner(&lab);
    let _ = lab.cmd(&["down", "--purge"]).output();
    note(&format!("lab end-to-end suite: {:.0} s, lab down", t0.elapsed().as_secs_f64()));
    result
}

fn e2e_inner(lab: &Lab) -> anyhow::Result<()> {
    lab.cmd(&["up"]).output().context("lab up")?;
    lab.cmd(&["tap-up", "--fresh"]).output().context("tap-sensor and tap-cloud in the lab")?;
    note("lab up; tap-sensor (XDP) on the SPAN port, tap-cloud on the sensor namespace's loopback");
    let mut failures = Vec::new();
    let mut misses = Vec::new();
    let mut before = lab.alerts()?;
    let (mut learning, mut all_watched) = (None, false);
    for e in EXPECTATIONS {
        let t = Instant::now();
        if (e.learning_seconds, e.all_dcs_watched) != (learning, all_watched) || e.fresh {
            // A fresh cloud (and sensor) with this scenario's learning period.
            let mut c = lab.cmd(&["tap-up", "--fresh"]);
            if let Some(secs) = e.learning_seconds {
                c.0.env("DCTAP_LAB_LEARNING_SECONDS", secs.to_string());
            }
            if e.all_dcs_watched {
                c.0.env("DCTAP_LAB_ALL_DCS_WATCHED", "1");
            }
            c.output().context("restart tap-sensor and tap-cloud")?;
            learning = e.learning_seconds;
            all_watched = e.all_dcs_watched;
            before = lab.alerts()?;
        }
        lab.cmd(&["scenarios", e.scenario]).output().with_context(|| format!("scenario {}", e.scenario))?;
        let after = settle(lab)?;
        let got = changed(&before, &after);
        before = after;
        for (det, src, account) in e.fires {
            let raised: Vec<&Alert> = got.iter().filter(|a| a.detection == *det && a.src == *src).collect();
            if raised.is_empty() {
                failures.push(format!("{}: {det} from {src} was not raised", e.scenario));
            } else if !account.is_empty() && !raised.iter().any(|a| a.account.eq_ignore_ascii_case(account)) {
                let named: Vec<&str> = raised.iter().map(|a| a.account.as_str()).collect();
                failures
                    .push(format!("{}: {det} from {src} names account(s) {named:?}, expected '{account}'", e.scenario));
            } else if e.scenario == SPRAY_OVER_TWO_DCS && !raised.iter().any(|a| a.dcs >= 2) {
                failures.push(format!("{}: {det} from {src} does not name both DCs", e.scenario));
            }
        }
        for a in &got {
            let expected = e.fires.iter().any(|(d, s, _)| *d == a.detection && *s == a.src);
            if !expected && !e.allow.contains(&a.detection.as_str()) {
                let known = e.known_misses.iter().any(|(d, _)| *d == a.detection);
                if known {
                    note(&format!("{}: {} fired this time (listed as a known miss)", e.scenario, a.detection));
                } else {
                    failures.push(format!(
                        "{}: unexpected {} from {} (account '{}')",
                        e.scenario, a.detection, a.src, a.account
                    ));
                }
            }
        }
        for (d, why) in e.known_misses {
            if !got.iter().any(|a| a.detection == *d) {
                misses.push(format!("{}: {d} ({why})", e.scenario));
            }
        }
        let fired: Vec<String> = got.iter().map(|a| format!("{}@{}", a.detection, a.src)).collect();
        note(&format!(
            "{:<28} {:>4.0} s  raised: {}",
            e.scenario,
            t.elapsed().as_secs_f64(),
            if fired.is_empty() { "nothing".to_string() } else { fired.join(", ") }
        ));
    }
    if !misses.is_empty() {
        note("known misses on live traffic (not failures; the detections' issue tracks them):");
        for m in &misses {
            note(&format!("  - {m}"));
        }
    }
    if !failures.is_empty() {
        bail!("lab end-to-end suite: {} failure(s):\n  {}", failures.len(), failures.join("\n  "));
    }
    note("lab end-to-end suite passed");
    Ok(())
}
