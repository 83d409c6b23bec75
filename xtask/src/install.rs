//! Debian packages for a set-up step, installed so that no tool can end up missing: what a
//! step needs is a list of tools (a program, a file, or only a package), each with the
//! package that brings it. Missing ones are installed in one `apt-get install`, packages
//! that must match as a set go in together at one version, and every tool of the step is
//! checked again afterwards. A tool still missing stops the command and says which tool,
//! which package, and the command that fixes it.
//!
//! Why sets: a machine may carry a newer package from backports (e.g. `qemu-utils` 10.0)
//! than the release's own (`qemu-system-x86` 7.2); installing the second alone made apt
//! remove the first, and with it `qemu-img`.

use std::path::Path;

use anyhow::{bail, Context as _};

use crate::util::{note, Cmd};

/// What a step needs, and the Debian package that provides it.
#[derive(Clone, Copy, Debug)]
pub struct Need {
    pub what: Check,
    pub package: &'static str,
}

#[derive(Clone, Copy, Debug)]
pub enum Check {
    /// A program on PATH (or in /usr/sbin, /sbin) that starts and exits 0 with these
    /// arguments (a version query); an empty list checks only that the file is there.
    Program(&'static str, &'static [&'static str]),
    /// A file the step reads (a boot loader's code, a plug-in).
    File(&'static str),
    /// Only that the package is installed (data, modules, libraries).
    Package,
}

impl Need {
    pub const fn program(name: &'static str, probe: &'static [&'static str], package: &'static str) -> Self {
        Self { what: Check::Program(name, probe), package }
    }
    pub const fn file(path: &'static str, package: &'static str) -> Self {
        Self { what: Check::File(path), package }
    }
    pub const fn package(package: &'static str) -> Self {
        Self { what: Check::Package, package }
    }

    fn name(&self) -> &'static str {
        match self.what {
            Check::Program(name, _) => name,
            Check::File(path) => path,
            Check::Package => self.package,
        }
    }

    fn present(&self) -> bool {
        match self.what {
            Check::Program(name, probe) => match find_program(name) {
                Some(path) if probe.is_empty() => path.is_file(),
                Some(path) => Cmd::new(path).args(probe).succeeds(),
                None => false,
            },
            Check::File(path) => Path::new(path).is_file(),
            Check::Package => deb_installed(self.package),
        }
    }
}

/// Where a program is: PATH, then the sbin directories a non-login root shell may lack.
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Makes every need of `step` present: installs the packages of the missing ones (with the
/// rest of any set in `sets` they belong to) in one `apt-get install`, then checks every
/// need again.
pub fn ensure(step: &str, needs: &[Need], sets: &[&[&'static str]]) -> anyhow::Result<()> {
    ensure_with(step, needs, sets, || Ok(()))
}

/// [`ensure`], with `before_install` run only when something is to be installed; what it
/// returns is dropped once the install is over (the lab's guard that keeps package scripts
/// from starting Samba's daemons on the host).
pub fn ensure_with<G>(
    step: &str,
    needs: &[Need],
    sets: &[&[&'static str]],
    before_install: impl FnOnce() -> anyhow::Result<G>,
) -> anyhow::Result<()> {
    let mut packages: Vec<&'static str> = Vec::new();
    for n in needs.iter().filter(|n| !n.present()) {
        for p in sets.iter().find(|s| s.contains(&n.package)).map(|s| s.to_vec()).unwrap_or_else(|| vec![n.package]) {
            if !packages.contains(&p) {
                packages.push(p);
            }
        }
    }
    let names = || needs.iter().map(Need::name).collect::<Vec<_>>().join(", ");
    if packages.is_empty() {
        note(&format!("{step}: present ({})", names()));
        return Ok(());
    }
    note(&format!("{step}: installing {}", packages.join(", ")));
    let guard = before_install()?;
    let installed = apt_install_set(&packages, sets);
    drop(guard);
    verify(step, needs).with_context(|| match installed {
        Ok(()) => "apt-get reported success".to_string(),
        Err(e) => format!("apt-get failed: {e:#}"),
    })?;
    note(&format!("{step}: checked after installing ({})", names()));
    Ok(())
}

/// Every need present, or an error naming each missing tool, its package, and the fix.
pub fn verify(step: &str, needs: &[Need]) -> anyhow::Result<()> {
    let missing: Vec<String> = needs
        .iter()
        .filter(|n| !n.present())
        .map(|n| {
            let what = match n.what {
                Check::Program(name, []) => format!("program `{name}` not found on PATH"),
                Check::Program(name, probe) => {
                    format!("program `{name}` missing or `{name} {}` fails", probe.join(" "))
                }
                Check::File(path) => format!("file {path} missing"),
                Check::Package => format!("package {} not installed", n.package),
            };
            format!(
                "  - {what} (Debian package {p}); fix: apt-get update && apt-get install --reinstall {p}",
                p = n.package
            )
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    bail!("{step}: still missing after the install:\n{}", missing.join("\n"))
}

/// Whether a Debian package is installed (dpkg's status).
pub fn deb_installed(package: &str) -> bool {
    Cmd::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// `apt-get update`, then installs `packages` without recommends and without questions;
/// the one way every set-up step installs Debian packages. Members of a set in `sets` are
/// pinned to one version that every member of the set has (see the module's doc), with
/// downgrades allowed for that.
pub fn apt_install_set(packages: &[&str], sets: &[&[&str]]) -> anyhow::Result<()> {
    Cmd::new("apt-get").args(["update", "-qq"]).run()?;
    let mut args: Vec<String> = Vec::new();
    let mut pinned = false;
    for p in packages {
        let version = sets.iter().find(|s| s.contains(p)).and_then(|set| common_version(set));
        match version {
            Some(v) => {
                args.push(format!("{p}={v}"));
                pinned = true;
            }
            None => args.push(p.to_string()),
        }
    }
    let mut cmd = Cmd::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive").args([
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
    ]);
    if pinned {
        cmd = cmd.arg("--allow-downgrades");
    }
    cmd.args(&args).run().context("apt-get install failed")
}

/// The newest version that apt can install for every package of `set` (apt-cache
/// madison), or None when they share none.
fn common_version(set: &[&str]) -> Option<String> {
    let mut common: Option<Vec<String>> = None;
    for p in set {
        let out = Cmd::new("apt-cache").args(["madison", p]).output().ok()?;
        let mut versions: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split('|').nth(1).map(|v| v.trim().to_string()))
            .filter(|v| !v.is_empty())
            .collect();
        // Installed versions count too: a set may match what is already there.
        if let Ok(o) = Cmd::new("dpkg-query").args(["-W", "-f=${Version}", p]).output() {
            let v = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if !v.is_empty() && deb_installed(p) {
                versions.push(v);
            }
        }
        versions.sort();
        versions.dedup();
        common = Some(match common {
            None => versions,
            Some(c) => c.into_iter().filter(|v| versions.contains(v)).collect(),
        });
    }
    let mut common = common?;
    common.dedup();
    // madison lists newest first; keep apt's order by asking dpkg to compare.
    common.sort_by(|a, b| {
        if Cmd::new("dpkg").args(["--compare-versions", a, "gt", b]).succeeds() {
            std::cmp::Ordering::Less
        } else {
            std::cmp::Ordering::Greater
        }
    });
    common.into_iter().next()
}
