//! A real gRPC library (Python `grpcio`, xDS client built in) calls a gRPC backend through
//! `xds:///echo.default.svc.cluster.local:9090` using Switchyard as its xDS server, and follows
//! an endpoint change.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use switchyard_test_support::manifests::{grpc, namespace, service};
use switchyard_test_support::{
    grpc_xds_client_script, python, try_spawn_echo, write_grpc_bootstrap,
};
use switchyard_tests::ControlPlane;
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(30);

fn pod(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: echo\nspec:\n  containers:\n  - name: echo\n    image: echo\nstatus:\n  podIP: {ip}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_xds_client_follows_endpoints() {
    // two backends on 127.4.0.11 and .12 sharing one port
    let (port, _b1, _b2) = loop {
        let probe = std::net::TcpListener::bind(("127.4.0.11", 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let a = try_spawn_echo(
            "echo-1",
            None,
            Some(SocketAddr::from(([127, 4, 0, 11], port))),
        )
        .await;
        let b = try_spawn_echo(
            "echo-2",
            None,
            Some(SocketAddr::from(([127, 4, 0, 12], port))),
        )
        .await;
        if let (Ok(a), Ok(b)) = (a, b) {
            break (port, a, b);
        }
    };
    let cp = ControlPlane::start(&[
        (
            "mesh.yaml",
            vec![
                namespace("default", None),
                service("default", "echo", "10.96.0.10", &[grpc(9090, port)]),
            ],
        ),
        (
            "pods.yaml",
            vec![pod("echo-1", "127.4.0.11"), pod("echo-2", "127.4.0.12")],
        ),
    ])
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node_id = "grpc~127.4.0.2~client.default~default.svc.cluster.local";
    let bootstrap =
        write_grpc_bootstrap(dir.path(), cp.xds(), node_id, &serde_json::Map::new()).unwrap();
    let mut child = tokio::process::Command::new(python())
        .arg(grpc_xds_client_script())
        .args([
            "--target",
            "xds:///echo.default.svc.cluster.local:9090",
            "--count",
            "2000",
            "--interval-ms",
            "20",
            "--deadline-s",
            "5",
        ])
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python from .venv (run scripts/setup.sh)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("grpc client output")
            .unwrap()
            .expect("grpc client ended early");
        serde_json::from_str(&line).unwrap()
    };

    // phase 1: calls reach both backends
    let mut seen = BTreeSet::new();
    let mut errors = Vec::new();
    while seen.len() < 2 {
        let v = next().await;
        match v["ok"].as_bool() {
            Some(true) => {
                seen.insert(v["backend"].as_str().unwrap().to_string());
            }
            _ => errors.push(v["error"].to_string()),
        }
        assert!(
            errors.len() < 200,
            "grpc calls keep failing: {:?}",
            errors.last()
        );
    }
    // the gRPC client really used xDS: its stream is in syncz with every type ACKed
    let z = cp.syncz().await.unwrap();
    let row = z
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == node_id)
        .unwrap()
        .clone();
    for t in ["lds", "rds", "cds", "eds"] {
        assert_eq!(row["types"][t]["state"], "SYNCED", "{t}: {row}");
    }
    assert_eq!(
        row["types"]["lds"]["subscription"][0],
        "echo.default.svc.cluster.local:9090"
    );

    // phase 2: remove echo-1; calls end up at echo-2 only (40 in a row)
    cp.manifests
        .write("pods.yaml", &[pod("echo-2", "127.4.0.12")])
        .unwrap();
    let mut streak = 0;
    let mut total = 0;
    while streak < 40 {
        let v = next().await;
        total += 1;
        assert!(total < 1500, "calls never settled on echo-2");
        if v["ok"] == true && v["backend"] == "echo-2" {
            streak += 1;
        } else {
            streak = 0;
        }
    }
    let _ = child.kill().await;
}
