//! Giving up capabilities once the XDP program is attached.
//!
//! Loading and attaching need CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_RESOURCE;
//! everything after works through file descriptors the sensor already holds: the ring
//! buffers are mapped, map updates (a DC list reload, a learned RPC port) check the map
//! descriptor's mode, and the program is detached by closing its bpf_link. A sensor that
//! parses hostile traffic all day should hold nothing a parser bug could abuse, so it
//! keeps only what its kernel still asks for (see [`still_needed`]).
//!
//! Capabilities belong to threads: this must run before the sensor starts any thread, and
//! every thread started later inherits the empty sets.

use std::collections::HashSet;

use anyhow::Context as _;
use caps::{CapSet, Capability};

/// What a kernel of this version still checks after attach:
/// - before 5.9 XDP is attached over netlink, and detaching needs CAP_NET_ADMIN;
/// - before 6.5, with unprivileged BPF disabled (Debian's default), every bpf() command
///   needs CAP_BPF, map updates included.
pub fn still_needed(kernel: (u32, u32)) -> HashSet<Capability> {
    let mut keep = HashSet::new();
    if kernel < (5, 9) {
        keep.insert(Capability::CAP_NET_ADMIN);
    }
    if kernel < (6, 5) {
        keep.insert(Capability::CAP_BPF);
    }
    keep
}

/// The running kernel's (major, minor) from uname.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Drops every capability this kernel does not still need from the calling thread's
/// effective, permitted, inheritable and ambient sets; returns what was kept.
pub fn drop_after_attach() -> anyhow::Result<HashSet<Capability>> {
    // An unknown kernel keeps what an old one would.
    let keep = still_needed(kernel_version().unwrap_or((0, 0)));
    caps::clear(None, CapSet::Ambient).context("clear the ambient capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("clear the inheritable capabilities")?;
    let held = caps::read(None, CapSet::Permitted).context("read the permitted capabilities")?;
    let keep: HashSet<Capability> = keep.intersection(&held).copied().collect();
    // Effective first: it must stay a subset of permitted at every step.
    caps::set(None, CapSet::Effective, &keep).context("lower the effective capabilities")?;
    caps::set(None, CapSet::Permitted, &keep).context("lower the permitted capabilities")?;
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_kernels_need_nothing_after_attach_old_ones_keep_what_they_check() {
        assert!(still_needed((6, 18)).is_empty());
        assert_eq!(still_needed((6, 1)), HashSet::from([Capability::CAP_BPF]));
        assert_eq!(still_needed((5, 4)), HashSet::from([Capability::CAP_BPF, Capability::CAP_NET_ADMIN]));
    }

    #[test]
    fn the_kernel_version_is_read() {
        let (major, _) = kernel_version().expect("osrelease");
        assert!(major >= 5);
    }
}
