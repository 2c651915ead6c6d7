//! Compiles Switchyard's own protos and collects the descriptor sets the JSON decoder needs.

use std::error::Error;
use std::path::PathBuf;

const ENVOY_TYPES_VERSION: &str = "0.7.7";

fn main() -> Result<(), Box<dyn Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let wkt_include = protoc_bin_vendored::include_path()?;

    let mut config = prost_build::Config::new();
    config.protoc_executable(&protoc);
    // Drops prost-types as the default home of google.protobuf so the extern path below wins.
    config.compile_well_known_types();
    config.enable_type_names();
    // Maps encode in key order, so content-hash versions are stable.
    config.btree_map(["."]);
    config.type_name_domain(["."], "type.googleapis.com");

    let protos = [
        PathBuf::from("proto/switchyard/workload/v1/workload.proto"),
        PathBuf::from("proto/switchyard/ca/v1/ca.proto"),
    ];
    tonic_prost_build::configure()
        // The Envoy crate carries its own google.protobuf types; ours must be the same ones so
        // an `Any` built here packs into an Envoy `DiscoveryResponse`.
        .extern_path(".google.protobuf", "::envoy_types::pb::google::protobuf")
        .file_descriptor_set_path(out.join("switchyard_descriptors.bin"))
        .compile_with_config(config, &protos, &[PathBuf::from("proto"), wkt_include])?;

    // The Envoy descriptor set ships inside the envoy-types crate source; it lets admin and
    // debug tools print any Envoy resource as JSON (prost-reflect) without a second codegen.
    let envoy_fds = find_envoy_descriptors().ok_or(
        "could not find envoy-types' generated/types.bin in the cargo registry; \
         set SWITCHYARD_ENVOY_DESCRIPTORS to its path",
    )?;
    println!("cargo:rerun-if-env-changed=SWITCHYARD_ENVOY_DESCRIPTORS");
    println!("cargo:rerun-if-changed={}", envoy_fds.display());
    std::fs::copy(&envoy_fds, out.join("envoy_descriptors.bin"))?;
    Ok(())
}

fn find_envoy_descriptors() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SWITCHYARD_ENVOY_DESCRIPTORS") {
        return Some(PathBuf::from(p));
    }
    let mut homes = Vec::new();
    if let Ok(h) = std::env::var("CARGO_HOME") {
        homes.push(PathBuf::from(h));
    }
    if let Ok(h) = std::env::var("HOME") {
        homes.push(PathBuf::from(h).join(".cargo"));
    }
    let dir_name = format!("envoy-types-{ENVOY_TYPES_VERSION}");
    for home in homes {
        let Ok(entries) = std::fs::read_dir(home.join("registry").join("src")) else {
            continue;
        };
        for entry in entries.flatten() {
            let candidate = entry.path().join(&dir_name).join("src/generated/types.bin");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}
