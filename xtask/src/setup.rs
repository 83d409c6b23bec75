//! Idempotent set-up of a fresh machine: root and BPF checks, the nightly toolchain's
//! rust-src (for `-Z build-std=core`), bpf-linker built against the LLVM library that the
//! nightly toolchain ships, Debian packages for the tests and benchmarks,
//! the BPF filesystem, and playwright-core from npm for the portal's browser test.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};

use crate::{
    install::{self, Need},
    util::{note, step, Cmd},
};

/// bpf-linker release known to work with aya 0.14 and the nightly's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// What the tests, demo and benchmarks run, from Debian: tcpreplay/trafgen generate
/// traffic, tcpdump is the benchmark's peer, bpftool inspects programs, iproute2 builds the
/// veth lab, tshark is the reference the reassembly is checked against, editcap writes the
/// pcapng files the reader is tested on and capinfos reads their resolution, GNU time measures peak RSS, systemd-analyze
/// checks the units, chromium is the headless browser the portal's browser test drives.
const DEBIAN_NEEDS: &[Need] = &[
    Need::program("tcpreplay", &["-V"], "tcpreplay"),
    Need::program("tcpdump", &["--version"], "tcpdump"),
    Need::program("trafgen", &[], "netsniff-ng"),
    Need::program("bpftool", &["version"], "bpftool"),
    Need::program("ip", &["-V"], "iproute2"),
    Need::program("tshark", &["--version"], "tshark"),
    Need::program("editcap", &["--version"], "wireshark-common"),
    Need::program("capinfos", &["--version"], "wireshark-common"),
    Need::file("/usr/bin/time", "time"),
    Need::program("systemd-analyze", &["--version"], "systemd"),
    Need::program("systemd-run", &["--version"], "systemd"),
    Need::program("chromium", &["--version"], "chromium"),
];
/// playwright-core (npm) drives Debian's chromium in `tap-cloud/tests/browser.rs`; it
/// downloads no browser of its own. Installed outside the source tree (`playwright_dir`).
const PLAYWRIGHT_CORE_VERSION: &str = "1.65.1";

/// What later steps need from the set-up: a PATH with bpf-linker on it.
pub struct Env {
    pub path: OsString,
    pub root: PathBuf,
}

impl Env {
    /// `cargo` with the set-up PATH, run from the workspace root.
    pub fn cargo(&self) -> Cmd {
        let mut c = Cmd::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        c.0.env("PATH", &self.path).current_dir(&self.root);
        c
    }

    /// Any program with the set-up PATH, run from the workspace root.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Cmd {
        let mut c = Cmd::new(program);
        c.0.env("PATH", &self.path).current_dir(&self.root);
        c
    }
}

fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DCTAP_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/dctap/toolchain")
}

/// Where playwright-core is installed: `$DCTAP_PLAYWRIGHT_DIR`, or
/// `~/.cache/dctap/playwright` (the browser test looks in the same places).
pub fn playwright_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DCTAP_PLAYWRIGHT_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/dctap/playwright")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

pub fn ensure() -> anyhow::Result<Env> {
    step("set-up (each step is skipped when already done)");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?.to_path_buf();
    if !is_root() {
        bail!(
            "dctap's tasks load XDP programs, create network namespaces and install packages, which needs root.\n  \
             Run as root, e.g.: sudo -E env PATH=\"$PATH\" cargo xtask <command>"
        );
    }
    if !Path::new("/proc/sys/kernel/unprivileged_bpf_disabled").exists() {
        bail!(
            "this kernel has no BPF system call (CONFIG_BPF_SYSCALL is off): the sensor cannot run here.\n  \
             Use a kernel built with CONFIG_BPF_SYSCALL, CONFIG_BPF_JIT and CONFIG_XDP_SOCKETS (any distribution kernel since 5.8)."
        );
    }
    ensure_bpffs()?;
    ensure_apt_packages()?;
    ensure_playwright()?;
    ensure_rust_src()?;
    let tools = tools_dir();
    ensure_bpf_linker(&tools)?;
    let mut paths = vec![tools.join("bin")];
    paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    let path = std::env::join_paths(paths).context("build PATH")?;
    Ok(Env { path, root })
}

fn ensure_bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    if mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("bpf")) {
        note("bpf filesystem: mounted");
        return Ok(());
    }
    note("bpf filesystem: mounting on /sys/fs/bpf");
    Cmd::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]).run()
}

fn ensure_apt_packages() -> anyhow::Result<()> {
    install::ensure("Debian packages", DEBIAN_NEEDS, &[])
}

/// Node.js 20 or later (playwright-core's minimum) and playwright-core in `playwright_dir()`.
fn ensure_playwright() -> anyhow::Result<()> {
    let node_major = || {
        let out = Cmd::new("node").arg("--version").output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().trim_start_matches('v').split('.').next()?.parse::<u32>().ok()
    };
    if node_major().is_none() || !Cmd::new("npm").arg("--version").succeeds() {
        // nodejs and npm as one set: a machine's nodejs may come from elsewhere than Debian.
        install::ensure(
            "Node.js",
            &[Need::program("node", &["--version"], "nodejs"), Need::program("npm", &["--version"], "npm")],
            &[&["nodejs", "npm"]],
        )?;
    }
    match node_major() {
        Some(major) if major >= 20 => note(&format!("Node.js: present (major version {major})")),
        other => bail!("playwright-core needs Node.js 20 or later, found {other:?}: install a newer nodejs and re-run"),
    }
    let dir = playwright_dir();
    let manifest = dir.join("node_modules/playwright-core/package.json");
    let installed = std::fs::read_to_string(&manifest)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(String::from));
    if installed.as_deref() == Some(PLAYWRIGHT_CORE_VERSION) {
        note(&format!("playwright-core: present ({PLAYWRIGHT_CORE_VERSION} in {})", dir.display()));
        return Ok(());
    }
    note(&format!("playwright-core: installing {PLAYWRIGHT_CORE_VERSION} into {}", dir.display()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Cmd::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .arg(format!("playwright-core@{PLAYWRIGHT_CORE_VERSION}"))
        .run()
        .context("npm install playwright-core failed")?;
    if !manifest.is_file() {
        bail!(
            "playwright-core: npm reported success but {} is missing; fix: npm install --prefix {} playwright-core@{PLAYWRIGHT_CORE_VERSION}",
            manifest.display(),
            dir.display()
        );
    }
    Ok(())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let out = Cmd::new("rustc").args(["+nightly", "--print", "sysroot"]).output().context(
        "the nightly toolchain is missing; install it with `rustup toolchain install nightly --profile minimal` \
         (the eBPF program is built with -Z build-std)",
    )?;
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn ensure_rust_src() -> anyhow::Result<()> {
    if !Cmd::new("rustup").args(["run", "nightly", "rustc", "--version"]).succeeds() {
        note("nightly toolchain: installing (minimal profile)");
        Cmd::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]).run()?;
    }
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        note("nightly rust-src: present");
        return Ok(());
    }
    note("nightly rust-src: installing");
    Cmd::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]).run()?;
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        bail!(
            "nightly rust-src: rustup reported success but {} has no library/core; fix: rustup component add rust-src --toolchain nightly",
            sysroot.display()
        );
    }
    Ok(())
}

/// The nightly's LLVM shared library (`libLLVM.so.<major>.<minor>-rust-…`) and its major
/// version. Found by listing, never hard-coded: it changes with the nightly.
fn nightly_llvm() -> anyhow::Result<(PathBuf, u32)> {
    let lib = nightly_sysroot()?.join("lib");
    let entries = std::fs::read_dir(&lib).with_context(|| format!("list {}", lib.display()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("libLLVM.so.") {
            let major = version.split('.').next().and_then(|m| m.parse().ok());
            if let Some(major) = major {
                return Ok((e.path(), major));
            }
        }
    }
    bail!("no libLLVM.so.* in {}: the nightly toolchain looks incomplete (reinstall it with rustup)", lib.display())
}

fn ensure_bpf_linker(tools: &Path) -> anyhow::Result<()> {
    let (llvm, major) = nightly_llvm()?;
    let llvm_name = llvm.file_name().context("LLVM file name")?.to_owned();
    let stamp = tools.join("bpf-linker.stamp");
    let want_stamp = format!("bpf-linker {BPF_LINKER_VERSION} llvm {}", llvm_name.to_string_lossy());
    let bin = tools.join("bin/bpf-linker");
    let lib = tools.join("lib");
    let stamp_ok = std::fs::read_to_string(&stamp).map(|s| s.trim() == want_stamp).unwrap_or(false);
    if stamp_ok && lib.join(&llvm_name).exists() && Cmd::new(&bin).arg("--version").succeeds() {
        note(&format!("bpf-linker: present ({want_stamp})"));
        return Ok(());
    }
    note(&format!("bpf-linker: building {BPF_LINKER_VERSION} against {} (about a minute)", llvm.display()));
    std::fs::create_dir_all(&lib).with_context(|| format!("create {}", lib.display()))?;
    // bpf-linker's build links libLLVM.so; the binary's rpath then asks for the versioned
    // name in the same directory, so both names point at the nightly's library.
    for name in [OsString::from("libLLVM.so"), llvm_name.clone()] {
        let link = lib.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link).with_context(|| format!("link {}", link.display()))?;
    }
    Cmd::new("cargo")
        .env("LLVM_PREFIX", tools)
        .args(["install", "bpf-linker", "--force", "--version", BPF_LINKER_VERSION, "--no-default-features"])
        .arg("--features")
        .arg(format!("llvm-{major}"))
        .arg("--root")
        .arg(tools)
        .run()
        .context("building bpf-linker failed")?;
    if !Cmd::new(&bin).arg("--version").succeeds() {
        bail!("bpf-linker was built but does not run: {} --version failed", bin.display());
    }
    std::fs::write(&stamp, want_stamp).with_context(|| format!("write {}", stamp.display()))?;
    Ok(())
}
