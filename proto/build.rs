//! Compiles `proto/fedmark.proto` with protox (a pure-Rust protobuf compiler), so building
//! fedmark never needs a system `protoc`.

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let proto = "proto/fedmark.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"]).context("compiling fedmark.proto")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Model chunks are slices of one shared buffer, so broadcasting a model to many
        // partners does not copy it once per partner.
        .bytes(".fedmark.v1.ModelChunk.values")
        .compile_fds(descriptors)
        .context("generating Rust code for fedmark.proto")?;
    Ok(())
}
