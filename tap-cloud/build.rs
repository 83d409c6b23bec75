//! Compiles proto/dctap.proto (the same file the sensor compiles) with protox, so no system
//! protoc is needed: prost types with serde for the events, and the gRPC ingest server.
fn main() -> anyhow::Result<()> {
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    println!("cargo:rerun-if-changed={proto_dir}");
    let fds = protox::compile(["dctap.proto"], [proto_dir])?;
    tonic_prost_build::configure()
        .build_client(false)
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
