//! Generates the tonic services from `proto/convoy/v1/*.proto`. protoc comes from the
//! `protoc-bin-vendored` crate unless `PROTOC` is set, so a plain `cargo build` needs nothing
//! installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    let protos = [
        "proto/convoy/v1/client.proto",
        "proto/convoy/v1/worker.proto",
        "proto/convoy/v1/peer.proto",
    ];
    tonic_prost_build::configure().compile_protos(&protos, &["proto"])?;
    for p in protos.iter().chain(&[
        "proto/convoy/v1/common.proto",
        "proto/convoy/v1/checkpoint.proto",
    ]) {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
