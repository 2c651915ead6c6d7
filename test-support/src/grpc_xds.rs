//! Helpers for the proxyless-gRPC tests: the venv's Python (with `grpcio`), the client
//! script in `tests/python/`, and the gRPC xDS bootstrap file it reads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::{Map, Value, json};

use crate::workspace_root;

/// The venv's Python interpreter, `<workspace>/.venv/bin/python` (created by
/// `scripts/setup.sh`, with `grpcio` installed). Not checked for existence: running it
/// fails with "No such file" when the venv is missing.
pub fn python() -> PathBuf {
    workspace_root().join(".venv/bin/python")
}

/// The proxyless gRPC client script, `<workspace>/tests/python/grpc_xds_client.py`.
pub fn grpc_xds_client_script() -> PathBuf {
    workspace_root().join("tests/python/grpc_xds_client.py")
}

/// The gRPC xDS bootstrap (the file named by `GRPC_XDS_BOOTSTRAP`) for a client whose
/// control plane listens on `xds`, plaintext.
pub fn grpc_bootstrap(xds: SocketAddr, node_id: &str, metadata: &Map<String, Value>) -> Value {
    json!({
        "xds_servers": [{
            "server_uri": xds.to_string(),
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {
            "id": node_id,
            "metadata": metadata,
        },
    })
}

/// Writes [`grpc_bootstrap`] to `<dir>/grpc-xds-bootstrap.json` and returns its path; set
/// it as `GRPC_XDS_BOOTSTRAP` for the client process.
pub fn write_grpc_bootstrap(
    dir: &Path,
    xds: SocketAddr,
    node_id: &str,
    metadata: &Map<String, Value>,
) -> anyhow::Result<PathBuf> {
    let path = dir.join("grpc-xds-bootstrap.json");
    let text = serde_json::to_string_pretty(&grpc_bootstrap(xds, node_id, metadata))?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_has_the_shape_grpc_expects() {
        let dir = tempfile::tempdir().unwrap();
        let mut metadata = Map::new();
        metadata.insert("DATAPLANE_KIND".into(), "grpc".into());
        let path = write_grpc_bootstrap(
            dir.path(),
            "127.0.0.1:15010".parse().unwrap(),
            "grpc~127.0.0.1~client.default~default.svc.cluster.local",
            &metadata,
        )
        .unwrap();
        let value: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(value["xds_servers"][0]["server_uri"], "127.0.0.1:15010");
        assert_eq!(
            value["xds_servers"][0]["channel_creds"][0]["type"],
            "insecure"
        );
        assert_eq!(value["xds_servers"][0]["server_features"][0], "xds_v3");
        assert_eq!(value["node"]["metadata"]["DATAPLANE_KIND"], "grpc");
    }

    #[test]
    fn paths_are_under_the_workspace() {
        assert!(python().ends_with(".venv/bin/python"));
        assert!(
            grpc_xds_client_script().is_file(),
            "{}",
            grpc_xds_client_script().display()
        );
    }
}
