//! Loading the embedded XDP object, sizing its rings, attaching it to the mirror port and
//! detaching it again.

use anyhow::{anyhow, bail, Context as _};
use aya::{
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray},
    programs::{xdp::XdpLinkId, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use log::{info, warn};
use tap_common::{
    config::CONFIG_MAP,
    counters::{CounterSet, COUNTERS_MAP},
    filter::{DC_V4_HOSTS_MAP, DC_V4_NETS_MAP, DC_V6_HOSTS_MAP, DC_V6_NETS_MAP, PORTS_MAP},
    record::{RING_COUNT, RING_MAPS},
    PROGRAM_NAME,
};

use super::{counters::XdpCounters, filter::FilterMaps, ring::MappedRing};
use crate::time::WallClock;

/// The XDP object built by `build.rs` (aya-build) for bpfel-unknown-none.
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tap-ebpf"));

/// How to attach. `Auto` tries native (driver) mode and falls back to generic mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    Auto,
    Native,
    Generic,
}

pub struct XdpCapture {
    ebpf: Ebpf,
    /// Which program of the object is loaded: the filter, or the benchmark's floor.
    program_name: &'static str,
    link: Option<XdpLinkId>,
    iface: String,
    /// The mode the program ended up attached in.
    pub attached_native: bool,
    pub filter: FilterMaps,
    counters: PerCpuArray<MapData, CounterSet>,
}

impl XdpCapture {
    /// Loads the program with `ring_bytes` per used ring (a power of two, at least one page).
    /// Rings beyond the CPU count get one page: the program only writes to `cpu % RING_COUNT`.
    pub fn load(ring_bytes: u32) -> anyhow::Result<(Self, Vec<MappedRing>)> {
        Self::load_program(ring_bytes, PROGRAM_NAME)
    }

    /// Loads `program_name` from the object (`PROGRAM_NAME` or `FLOOR_PROGRAM_NAME`).
    pub fn load_program(ring_bytes: u32, program_name: &'static str) -> anyhow::Result<(Self, Vec<MappedRing>)> {
        raise_memlock_limit();
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| anyhow!("count CPUs: {e}"))?;
        let used = cpus.min(RING_COUNT);
        let page = page_size();
        let mut loader = EbpfLoader::new();
        for (i, name) in RING_MAPS.iter().enumerate() {
            loader.map_max_entries(name, if i < used { ring_bytes } else { page });
        }
        let mut ebpf = loader.load(XDP_OBJECT).map_err(|e| {
            anyhow!(
                "load the XDP program: {e}\n  the sensor needs root or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, \
                 and Linux 5.18 or newer (BPF ring buffers, bpf_xdp_load_bytes)"
            )
        })?;
        let program: &mut Xdp = program_mut(&mut ebpf, program_name)?;
        program.load().with_context(|| format!("verify and load the XDP program {program_name}"))?;

        let mut filter = FilterMaps::new(
            HashMap::try_from(take(&mut ebpf, DC_V4_HOSTS_MAP)?)?,
            HashMap::try_from(take(&mut ebpf, DC_V6_HOSTS_MAP)?)?,
            LpmTrie::try_from(take(&mut ebpf, DC_V4_NETS_MAP)?)?,
            LpmTrie::try_from(take(&mut ebpf, DC_V6_NETS_MAP)?)?,
            Array::try_from(take(&mut ebpf, PORTS_MAP)?)?,
            Array::try_from(take(&mut ebpf, CONFIG_MAP)?)?,
        );
        filter.set_clock(WallClock::sample()).context("set the program's clock offset")?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, COUNTERS_MAP)?)?;
        let mut rings = Vec::with_capacity(used);
        for name in &RING_MAPS[..used] {
            let aya::maps::Map::RingBuf(map) = take(&mut ebpf, name)? else {
                bail!("map {name} of the XDP object is not a ring buffer");
            };
            rings.push(MappedRing::new(map, ring_bytes).with_context(|| format!("map the ring buffer {name}"))?);
        }
        let capture =
            Self { ebpf, program_name, link: None, iface: String::new(), attached_native: false, filter, counters };
        Ok((capture, rings))
    }

    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> anyhow::Result<()> {
        if self.link.is_some() {
            bail!("already attached to {}", self.iface);
        }
        let program = program_mut(&mut self.ebpf, self.program_name)?;
        let (link, native) = match mode {
            AttachMode::Native => (program.attach(iface, XdpMode::Driver), true),
            AttachMode::Generic => (program.attach(iface, XdpMode::Skb), false),
            AttachMode::Auto => match program.attach(iface, XdpMode::Driver) {
                Ok(link) => (Ok(link), true),
                Err(e) => {
                    warn!("native XDP attach to {iface} failed ({e}); falling back to generic (SKB) mode, which costs more per frame");
                    (program.attach(iface, XdpMode::Skb), false)
                }
            },
        };
        let link = link.with_context(|| {
            format!("attach XDP to {iface} (does the interface exist and is no other XDP program attached?)")
        })?;
        self.link = Some(link);
        self.iface = iface.to_owned();
        self.attached_native = native;
        info!("XDP program attached to {iface} in {} mode", if native { "native" } else { "generic" });
        Ok(())
    }

    /// Detaches from the interface; the maps stay readable.
    pub fn detach(&mut self) -> anyhow::Result<()> {
        if let Some(link) = self.link.take() {
            program_mut(&mut self.ebpf, self.program_name)?
                .detach(link)
                .with_context(|| format!("detach XDP from {}", self.iface))?;
            info!("XDP program detached from {}", self.iface);
        }
        Ok(())
    }

    pub fn counters(&self) -> anyhow::Result<XdpCounters> {
        XdpCounters::read(&self.counters).context("read XDP counters")
    }

    /// Runs the program once per `repeat` on `frame` without a network (BPF_PROG_TEST_RUN)
    /// and returns the XDP action and the kernel's mean time per run. Kept frames land in
    /// the rings like captured ones.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, std::time::Duration)> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let result = self
            .program()?
            .test_run(TestRunOptions { data_in: Some(frame), repeat: repeat.max(1), ..TestRunOptions::default() })
            .context("BPF_PROG_TEST_RUN")?;
        Ok((result.return_value, result.duration))
    }

    /// The loaded program, for run-time statistics (bpf_stats).
    pub fn program_info(&self) -> anyhow::Result<aya::programs::ProgramInfo> {
        Ok(self.program()?.info()?)
    }

    fn program(&self) -> anyhow::Result<&Xdp> {
        let name = self.program_name;
        let program = self.ebpf.program(name).ok_or_else(|| anyhow!("program {name} missing from the XDP object"))?;
        Ok(program.try_into()?)
    }
}

impl Drop for XdpCapture {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            warn!("{e:#}");
        }
    }
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    let program = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the XDP object"))?;
    Ok(program.try_into()?)
}

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing from the XDP object"))
}

pub(crate) fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u32
    } else {
        4096
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels with memcg accounting");
    }
}
