//! Builds the XDP program for bpfel-unknown-none with the nightly toolchain (aya-build),
//! leaving the object in OUT_DIR where `capture::loader` embeds it, and compiles
//! proto/dctap.proto with protox (no system protoc) into prost types with serde
//! and the uplink's gRPC client (and the server side, for a stand-in cloud in tests), for
//! `event::pb`.
fn main() -> anyhow::Result<()> {
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    println!("cargo:rerun-if-changed={proto_dir}");
    let fds = protox::compile(["dctap.proto"], [proto_dir])?;
    tonic_prost_build::configure()
        // The server side only for the uplink's tests (a stand-in cloud); unused code is not linked.
        .build_server(true)
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;

    let package = aya_build::Package {
        name: "tap-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../tap-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
