//! A SPAN port on one machine: two network namespaces joined by a veth pair. Frames
//! replayed into the generator end arrive at the mirror end, where the sensor attaches.
//! Both namespaces have IPv6 disabled and no addresses, so the kernel itself sends nothing
//! and counts stay exact.

use std::{
    path::Path,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context as _};

/// Interface names inside the namespaces.
pub const GEN_IF: &str = "gen0";
pub const MIRROR_IF: &str = "mir0";
/// Room for a QinQ-tagged 1500-byte payload and a little more; native XDP on veth allows
/// up to about 3.5 KB.
pub const LINK_MTU: u32 = 1600;

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

pub struct SpanPair {
    pub gen_ns: String,
    pub mirror_ns: String,
}

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

impl SpanPair {
    /// Creates the pair; `tag` keeps names unique per caller (tests run in parallel).
    pub fn create(tag: &str) -> anyhow::Result<Self> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let base = format!("dctap-{tag}-{}-{id}", std::process::id());
        let pair = Self { gen_ns: format!("{base}-g"), mirror_ns: format!("{base}-m") };
        pair.delete();
        for ns in [&pair.gen_ns, &pair.mirror_ns] {
            run(Command::new("ip").args(["netns", "add", ns]))?;
            run(Command::new("ip")
                .args(["netns", "exec", ns, "sysctl", "-qw"])
                .args(["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]))?;
        }
        run(Command::new("ip").args([
            "-n",
            &pair.gen_ns,
            "link",
            "add",
            GEN_IF,
            "type",
            "veth",
            "peer",
            "name",
            MIRROR_IF,
            "netns",
            &pair.mirror_ns,
        ]))?;
        let mtu = LINK_MTU.to_string();
        run(Command::new("ip").args(["-n", &pair.gen_ns, "link", "set", GEN_IF, "mtu", &mtu, "up"]))?;
        run(Command::new("ip").args(["-n", &pair.mirror_ns, "link", "set", MIRROR_IF, "mtu", &mtu, "up"]))?;
        Ok(pair)
    }

    /// A command that runs inside `ns`.
    pub fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// Replays a pcap out of the generator end. `pps` limits the rate (exact counts need a
    /// rate the consumer keeps up with); `None` sends at top speed. Returns frames sent.
    pub fn replay(&self, pcap: &Path, pps: Option<u32>, loops: u32) -> anyhow::Result<u64> {
        let mut cmd = Self::command_in(&self.gen_ns, "tcpreplay");
        cmd.args(["-i", GEN_IF, "--loop", &loops.max(1).to_string()]);
        match pps {
            Some(p) => cmd.arg(format!("--pps={p}")),
            None => cmd.arg("--topspeed"),
        };
        cmd.arg(pcap);
        let out = run(&mut cmd)?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_tcpreplay_sent(&text).with_context(|| format!("tcpreplay output not understood:\n{text}"))
    }

    /// Sends `frames` out of the generator end from this process, one by one, each from the
    /// CPU `cpu_of(i)` says: on veth the peer's XDP program runs on the sending CPU, so this
    /// chooses which per-CPU ring each frame lands in. Runs on a thread of its own that
    /// enters the generator namespace.
    pub fn send_from_cpus(&self, frames: Vec<Vec<u8>>, cpu_of: fn(usize) -> usize) -> anyhow::Result<()> {
        let ns = self.gen_ns.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            let ns_file = std::fs::File::open(format!("/var/run/netns/{ns}"))?;
            // SAFETY: plain syscalls on descriptors and buffers owned here; setns moves only
            // this thread into the namespace.
            unsafe {
                if libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns_file), libc::CLONE_NEWNET) != 0 {
                    anyhow::bail!("setns {ns}: {}", std::io::Error::last_os_error());
                }
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                if fd < 0 {
                    anyhow::bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
                }
                let name = std::ffi::CString::new(GEN_IF)?;
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
                for (i, f) in frames.iter().enumerate() {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu_of(i), &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                    let sent = libc::sendto(
                        fd,
                        f.as_ptr().cast(),
                        f.len(),
                        0,
                        (&addr as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    );
                    if sent < 0 {
                        let e = std::io::Error::last_os_error();
                        libc::close(fd);
                        anyhow::bail!("send frame {i}: {e}");
                    }
                }
                libc::close(fd);
            }
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))?
    }

    fn delete(&self) {
        for ns in [&self.gen_ns, &self.mirror_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl Drop for SpanPair {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Frames tcpreplay reports as sent ("Actual: N packets …"), after checking that none
/// failed ("Failed packets: 0").
pub fn parse_tcpreplay_sent(text: &str) -> anyhow::Result<u64> {
    let mut sent = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Actual:") {
            sent = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        }
        if let Some(rest) = line.strip_prefix("Failed packets:") {
            let failed: u64 = rest.trim().parse().unwrap_or(u64::MAX);
            if failed != 0 {
                bail!("tcpreplay failed to send {failed} packets");
            }
        }
    }
    sent.context("no 'Actual:' line")
}

/// Whether live tests (root, network namespaces, tcpreplay) can run here. Returns the
/// reason when they cannot.
pub fn live_prerequisites() -> Result<(), String> {
    let uid = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1).map(String::from))
    });
    if uid.as_deref() != Some("0") {
        return Err("not running as root (network namespaces and XDP need it)".into());
    }
    for tool in ["ip", "tcpreplay"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Err(format!("{tool} is not installed (cargo xtask test installs it)"));
        }
    }
    Ok(())
}

/// For a live test: returns false (and reports the skip) when it cannot run here; panics
/// instead under `cargo xtask test` (`DCTAP_REQUIRE_LIVE=1`), so CI never skips.
pub fn live_or_skip(test: &str) -> bool {
    crate::skip::unless_missing(test, live_prerequisites().err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcpreplay_summary_is_read() {
        let text = "Actual: 1234 packets (567890 bytes) sent in 0.25 seconds\nRated: 1.0 Bps\nStatistics for network device: gen0\n\tSuccessful packets:        1234\n\tFailed packets:            0\n";
        assert_eq!(parse_tcpreplay_sent(text).unwrap(), 1234);
        let failed = text.replace("Failed packets:            0", "Failed packets:            3");
        assert!(parse_tcpreplay_sent(&failed).is_err());
        assert!(parse_tcpreplay_sent("nothing").is_err());
    }
}
