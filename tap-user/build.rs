//! Builds the XDP program for bpfel-unknown-none with the nightly toolchain (aya-build),
//! leaving the object in OUT_DIR where `capture::loader` embeds it. (The wire schema is
//! compiled once, in `tap-schema`.)
fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "tap-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../tap-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
