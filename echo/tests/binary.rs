//! The `switchyard-echo` binary: `serve` writes its ready file and serves what the library
//! serves; `load` prints one JSON report and exits 0 even when requests failed.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use switchyard_echo::{EchoReady, LoadReport, grpc_echo, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard-echo");

async fn wait_ready(path: &Path, child: &mut tokio::process::Child) -> EchoReady {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(ready) = EchoReady::read(path) {
            return ready;
        }
        if let Some(status) = child.try_wait().expect("polling switchyard-echo") {
            panic!("switchyard-echo exited before listening: {status}");
        }
        assert!(Instant::now() < deadline, "no ready file after 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn serve_answers_http_and_grpc_on_port_zero() {
    let dir = tempfile::tempdir().unwrap();
    let ready_file = dir.path().join("ready.json");
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "serve",
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
    let ready = wait_ready(&ready_file, &mut child).await;
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

    // the load subcommand against it: JSON on stdout only
    let out = tokio::process::Command::new(BIN)
        .args(["load", "--http"])
        .arg(format!("http://{}/status/503", ready.http.unwrap()))
        .args(["--duration", "200ms", "--rate", "50"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: LoadReport = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report.requests > 0, "{report:?}");
    assert_eq!(report.error_kinds.get("http_503"), Some(&report.requests));
    assert_eq!(report.backends.get("bin-1"), Some(&report.requests));

    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

#[tokio::test]
async fn serve_name_defaults_to_pod_name() {
    let dir = tempfile::tempdir().unwrap();
    let ready_file = dir.path().join("ready.json");
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--http", "127.0.0.1:0", "--ready-file"])
        .arg(&ready_file)
        .env("POD_NAME", "pod-7")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ready = wait_ready(&ready_file, &mut child).await;
    assert_eq!(ready.name, "pod-7");
    assert_eq!(ready.grpc, None);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

#[test]
fn serve_requires_a_listener() {
    let out = std::process::Command::new(BIN)
        .args(["serve", "--name", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--http"), "{stderr}");
}

#[test]
fn load_exits_zero_when_the_target_is_down() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["load", "--grpc", &dead.to_string(), "--max-rate"])
        .args(["--duration", "100ms", "--timeout", "1s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["mode"], "max");
    assert!(json["errors"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(json["ok"], 0);
}

#[test]
fn load_rejects_bad_arguments() {
    for args in [
        &["load", "--http", "http://127.0.0.1:1/"][..], // neither --rate nor --max-rate
        &["load", "--max-rate"],                        // no target
        &[
            "load",
            "--http",
            "http://127.0.0.1:1/",
            "--max-rate",
            "--duration",
            "5",
        ],
        &["load", "--http", "ftp://127.0.0.1:1/", "--max-rate"],
        &["load", "--http", "http://127.0.0.1:1/", "--rate", "0"],
        &["load", "--grpc", "127.0.0.1:1", "--http2", "--max-rate"],
    ] {
        let out = std::process::Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
}

#[tokio::test]
async fn get_prints_the_body_and_fails_on_errors() {
    let backend =
        switchyard_echo::spawn_echo("getme", Some(switchyard_echo::LOCALHOST_ANY_PORT), None).await;
    let base = format!("http://{}", backend.http_addr().unwrap());
    let out = tokio::process::Command::new(BIN)
        .args([
            "get",
            &format!("{base}/x"),
            "--http2",
            "--host",
            "echo.test",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let echo: switchyard_echo::HttpEcho = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (echo.backend.as_str(), echo.protocol.as_str()),
        ("getme", "HTTP/2")
    );
    assert_eq!(echo.host, "echo.test");
    let out = tokio::process::Command::new(BIN)
        .args(["get", &format!("{base}/status/503")])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
}
