//! `cargo xtask`: one-command set-up, the demo, every test, and the benchmarks.
//!
//! Every command first runs the idempotent set-up (`setup.rs`): what is present is skipped,
//! what is missing is installed with a line saying so.

mod appliance;
mod bench;
mod bench_detect;
mod bench_e2e;
mod bench_floods;
mod bench_uplink;
mod demo;
mod eval;
mod fuzz;
mod install;
mod lab;
mod setup;
mod util;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "dctap build, demo, test and benchmark tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing (nightly rust-src, bpf-linker, Debian packages, bpffs).
    Setup,
    /// The main job: the project's lab (Samba AD DC, two workstations, the DC's port
    /// mirrored), the sensor with XDP on the mirror port streaming to the cloud, a short
    /// attack story with real tools (recon, Kerberoasting, spray, DCSync), the incidents
    /// found, and the portal on localhost with a sign-in until Ctrl-C tears it all down.
    Demo {
        /// Instead: replay a capture through the XDP filter on a veth SPAN stand-in and show
        /// what was kept and dropped, parsed and detected (no lab needed).
        #[arg(long)]
        replay: bool,
        /// With --replay: the capture (default: a generated mix plus ../shared/adlab's
        /// captures when present).
        #[arg(long, requires = "replay")]
        pcap: Option<std::path::PathBuf>,
        /// With --replay --pcap: the DC addresses (default: the lab DC and the mix's DCs).
        #[arg(long, requires = "replay")]
        dc: Option<String>,
        /// Print the portal's address and sign-in, then tear down at once instead of
        /// waiting for Ctrl-C (for scripts).
        #[arg(long)]
        no_wait: bool,
    },
    /// Every test: rustfmt check, clippy with warnings denied, unit and live XDP tests.
    Test,
    /// Compare the sensor's events with ../shared/corpus: tshark's ground truth, Zeek's
    /// expected logs and suricata-verify's checks, printing agreement per protocol and
    /// every disagreement.
    Conformance,
    /// Replay the labelled captures of eval/labels.toml through sensor and cloud and score
    /// the alerts per detection (true/false positives, false negatives).
    Eval,
    /// Run every cargo-fuzz target (not part of `test`).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Run only these targets (repeatable; default: all).
        #[arg(long = "target", value_name = "NAME")]
        targets: Vec<String>,
    },
    /// Build the sensor appliance: a bootable qcow2 VM image (Debian 12, tap-sensor enabled,
    /// management NIC eth0 on DHCP, capture NIC eth1 without an address), in
    /// target/appliance/dctap-sensor.qcow2.
    Appliance {
        /// Boot the image under qemu afterwards and check the sensor gets ready and captures.
        #[arg(long)]
        boot_test: bool,
        /// Where to write the image.
        #[arg(long, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
        /// The sensor configuration to install as /etc/dctap/sensor.toml (default:
        /// deploy/sensor.toml with iface = "eth1").
        #[arg(long, value_name = "FILE")]
        sensor_config: Option<std::path::PathBuf>,
        /// An SSH public key (authorized_keys line) that may log in as root.
        #[arg(long, value_name = "FILE")]
        ssh_key: Option<std::path::PathBuf>,
        /// A directory tree copied onto the image's root, e.g. etc/dctap/pki/* and
        /// etc/dctap/access.key (made root:dctap 0640 under etc/dctap).
        #[arg(long, value_name = "DIR")]
        overlay: Option<std::path::PathBuf>,
        /// Size of the virtual disk (the qcow2 file holds only what is used).
        #[arg(long, value_name = "GIB", default_value_t = 8)]
        disk_gib: u64,
        /// Build the cached Debian root file system again (it is otherwise kept as long as
        /// the recipe does not change): Debian's latest updates, for an image to ship.
        #[arg(long)]
        refresh_base: bool,
        /// Only the step of `cargo xtask test`: a test image (the debug sensor, credentials
        /// for a tap-cloud started on this host) booted, checked and deleted.
        #[arg(long, conflicts_with_all = ["boot_test", "output", "sensor_config", "ssh_key", "overlay", "refresh_base"])]
        test: bool,
        /// The same test with bookworm's own kernel (6.1, what a plain Debian 12 host runs)
        /// in place of the appliance's backports kernel: the XDP program must pass the
        /// oldest verifier the sensor meets.
        #[arg(long, conflicts_with_all = ["test", "boot_test", "output", "sensor_config", "ssh_key", "overlay", "refresh_base"])]
        kernel_6_1_test: bool,
    },
    /// The project's AD lab (lab/): Samba AD DC, two workstations, the sensor with XDP on
    /// a SPAN port and the cloud on loopback; real attack tools, labelled captures.
    Lab {
        #[command(subcommand)]
        which: lab::Which,
    },
    /// Benchmarks (not part of `test`).
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = setup::ensure().and_then(|env| match cli.command {
        Command::Setup => Ok(()),
        Command::Demo { replay: true, pcap, dc, .. } => demo::replay(&env, pcap, dc),
        Command::Demo { replay: false, no_wait, .. } => demo::run(&env, !no_wait),
        Command::Test => test(&env),
        Command::Bench { which } => bench::run(&env, which),
        Command::Appliance { test: true, .. } => appliance::test(&env, false),
        Command::Appliance { kernel_6_1_test: true, .. } => appliance::test(&env, true),
        Command::Appliance {
            boot_test,
            output,
            sensor_config,
            ssh_key,
            overlay,
            disk_gib,
            refresh_base,
            test: false,
            kernel_6_1_test: false,
        } => {
            let opts = appliance::Options {
                output,
                sensor_config,
                ssh_key,
                overlay,
                disk_gib,
                boot_test,
                debug_sensor: false,
                refresh_base,
                stock_kernel: false,
            };
            appliance::run(&env, &opts)
        }
        Command::Fuzz { seconds, targets } => fuzz::run(&env, seconds, &targets),
        Command::Eval => eval::run(&env),
        Command::Lab { which } => lab::run(&env, which),
        Command::Conformance => env
            .cargo()
            .args(["test", "-q", "-p", "tap-user", "--test", "corpus_conformance", "--test", "zeek_baselines"])
            .args(["--test", "suricata_baselines", "--", "--nocapture", "--test-threads", "1"])
            .env("DCTAP_CONFORMANCE_VERBOSE", "1")
            .run(),
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes says what failed; a backtrace of xtask itself never helps.
            eprintln!("\nerror: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What a clean `cargo xtask test` writes: target/ (about 4 GB with the dev profile's
/// line tables), the appliance images and the lab's state. A CI run once died of a full
/// disk half-way, in a linker; this says so before the first build.
const TEST_NEEDS_FREE_BYTES: u64 = 6 << 30;

fn test(env: &setup::Env) -> anyhow::Result<()> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| env.root.join("target"));
    let probe = if target.exists() { target.as_path() } else { env.root.as_path() };
    let free = util::free_bytes(probe)?;
    anyhow::ensure!(
        free >= TEST_NEEDS_FREE_BYTES,
        "only {:.1} GB free on the file system of {}; `cargo xtask test` needs about {} GB (build artefacts, appliance images, lab). \
         Free some space (e.g. `cargo clean` in other checkouts) and re-run.",
        free as f64 / 1e9,
        probe.display(),
        TEST_NEEDS_FREE_BYTES >> 30
    );
    util::note(&format!("disk: {:.1} GB free for target/", free as f64 / 1e9));
    // Every test that skips writes one line here (tap_testkit::skip); the summary below
    // repeats them, so no skip passes unseen.
    std::fs::create_dir_all(&target).with_context(|| format!("create {}", target.display()))?;
    let skip_log = target.join("dctap-skipped-tests.txt");
    let _ = std::fs::remove_file(&skip_log);
    let result = test_steps(env, &skip_log);
    let skips = std::fs::read_to_string(&skip_log).unwrap_or_default();
    let skips: std::collections::BTreeSet<&str> = skips.lines().filter(|l| !l.trim().is_empty()).collect();
    util::step(&format!(
        "skipped tests: {}",
        if skips.is_empty() { "none".to_string() } else { skips.len().to_string() }
    ));
    for line in &skips {
        util::note(line);
    }
    if !skips.is_empty() && tap_shared_present(&env.root) {
        util::note("(../shared is here: every skip above is a fault of this machine's set-up)");
    }
    result?;
    util::step("all tests passed");
    Ok(())
}

/// Whether `../shared` is beside the workspace (the tests that read it then run in full).
fn tap_shared_present(root: &std::path::Path) -> bool {
    root.join("../shared").is_dir()
}

fn test_steps(env: &setup::Env, skip_log: &std::path::Path) -> anyhow::Result<()> {
    if !tap_shared_present(&env.root) {
        util::note("../shared is not beside the workspace: the tests run on the project's own fixtures; those that need its public captures report a skip");
    }
    util::step("rustfmt check");
    env.cargo().args(["fmt", "--all", "--", "--check"]).run()?;
    util::step("clippy (warnings denied)");
    env.cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]).run()?;
    util::step("unit, integration and live XDP tests");
    // Live tests fail instead of skipping when a prerequisite is missing here.
    env.cargo()
        .args(["test", "--workspace"])
        .env("DCTAP_REQUIRE_LIVE", "1")
        .env("DCTAP_SKIP_LOG", skip_log)
        .env("DCTAP_PLAYWRIGHT_DIR", setup::playwright_dir())
        .run()?;
    util::step("appliance: image with the debug sensor booted under qemu, ready line and capture checked");
    appliance::test(env, false)?;
    // About 70 s more: the host runs a newer kernel, and 6.1's verifier refuses what
    // newer ones accept.
    util::step("appliance on bookworm's own kernel (6.1, a plain Debian 12 host): the XDP program passes its verifier");
    appliance::test(env, true)?;
    util::step("lab end-to-end: Samba AD DC, real attack tools, sensor with XDP on the SPAN port, cloud");
    lab::e2e(env)?;
    Ok(())
}
