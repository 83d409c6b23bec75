//! Compiles proto/dctap.proto with protox (no system protoc): prost types with serde for
//! every message, and the gRPC ingest client and server as the features ask.
fn main() -> anyhow::Result<()> {
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    println!("cargo:rerun-if-changed={proto_dir}");
    let fds = protox::compile(["dctap.proto"], [proto_dir])?;
    tonic_prost_build::configure()
        .build_client(std::env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
