//! `tests/python/grpc_xds_client.py` speaks the echo proto: checked against the in-process
//! echo backend with a direct (non-xDS) target, and with an xDS bootstrap whose server is
//! down (it must report errors per call, not crash). Needs the venv from scripts/setup.sh.

use serde_json::{Map, Value};
use switchyard_test_support::echo::LOCALHOST_ANY_PORT;
use switchyard_test_support::{grpc_xds_client_script, python, spawn_echo, write_grpc_bootstrap};

async fn run_client(args: &[&str], bootstrap: Option<&std::path::Path>) -> Vec<Value> {
    let python = python();
    assert!(
        python.is_file(),
        "{} missing: run scripts/setup.sh",
        python.display()
    );
    let mut command = tokio::process::Command::new(&python);
    command
        .arg(grpc_xds_client_script())
        .args(args)
        .kill_on_drop(true);
    match bootstrap {
        Some(path) => command.env("GRPC_XDS_BOOTSTRAP", path),
        None => command.env_remove("GRPC_XDS_BOOTSTRAP"),
    };
    let out = command.output().await.expect("running the python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

#[tokio::test]
async fn client_decodes_echo_replies() {
    let backend = spawn_echo("py-1", None, Some(LOCALHOST_ANY_PORT)).await;
    let target = backend.grpc_addr().unwrap().to_string();
    let lines = run_client(
        &[
            "--target",
            &target,
            "--count",
            "2",
            "--interval-ms",
            "10",
            "--deadline-s",
            "5",
        ],
        None,
    )
    .await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in lines {
        assert_eq!(line["ok"], true, "{line}");
        assert_eq!(line["backend"], "py-1", "{line}");
        assert_eq!(line["message"], "ping", "{line}");
    }
}

#[tokio::test]
async fn client_reports_errors_when_xds_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut metadata = Map::new();
    metadata.insert("DATAPLANE_KIND".into(), "grpc".into());
    let bootstrap = write_grpc_bootstrap(
        dir.path(),
        dead,
        "grpc~127.0.0.1~client.default~default.svc.cluster.local",
        &metadata,
    )
    .unwrap();
    let lines = run_client(
        &[
            "--target",
            "xds:///echo.default.svc.cluster.local:9090",
            "--count",
            "2",
            "--interval-ms",
            "10",
            "--deadline-s",
            "2",
        ],
        Some(&bootstrap),
    )
    .await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in lines {
        assert_eq!(line["ok"], false, "{line}");
        let error = line["error"].as_str().unwrap();
        assert!(error.starts_with("UNAVAILABLE"), "{error}");
    }
}
