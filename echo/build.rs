//! Compiles the echo proto with the vendored `protoc`, as `protos/build.rs` does.

use std::error::Error;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(&protoc);

    let proto = PathBuf::from("proto/switchyard/test/v1/echo.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    tonic_prost_build::configure().compile_with_config(
        config,
        &[proto],
        &[PathBuf::from("proto")],
    )?;
    Ok(())
}
