//! The `switchyard-echo` binary writes its ready file and serves what the library serves.

use std::process::Stdio;
use std::time::Duration;

use switchyard_test_support::echo::EchoReady;
use switchyard_test_support::{eventually, grpc_echo, http_get};

#[tokio::test]
async fn binary_serves_http_and_grpc_on_port_zero() {
    let dir = tempfile::tempdir().unwrap();
    let ready_file = dir.path().join("ready.json");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard-echo"))
        .args([
            "--name",
            "bin-1",
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
        ])
        .arg("--ready-file")
        .arg(&ready_file)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let ready = eventually(Duration::from_secs(10), "echo ready file", || async {
        EchoReady::read(&ready_file).ok()
    })
    .await;
    assert_eq!(ready.name, "bin-1");

    let response = http_get(ready.http.unwrap(), "a.example", "/p")
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.backend(), Some("bin-1"));
    assert_eq!(response.echo().unwrap().host, "a.example");

    let reply = grpc_echo(ready.grpc.unwrap(), "echo:9090", "hi")
        .await
        .unwrap();
    assert_eq!(reply.backend, "bin-1");

    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

#[test]
fn binary_requires_a_listener() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard-echo"))
        .args(["--name", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--http"), "{stderr}");
}
