//! The `switchyard` binary: `crd`, `check`, and `serve` with graceful shutdown on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

#[test]
fn crd_prints_both_custom_resource_definitions() {
    let out = Command::new(BIN).arg("crd").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.matches("kind: CustomResourceDefinition").count(),
        2,
        "{text}"
    );
    assert!(text.contains("group: switchyard.io"));
    assert!(text.contains("authorizationpolicies.switchyard.io"));
    assert!(text.contains("peerauthentications.switchyard.io"));
}

#[test]
fn check_reports_every_problem_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports:\n  - name: http\n---\napiVersion: v9\nkind: Gizmo\nmetadata:\n  name: b\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("broken.yaml: document 0"), "{text}");
    assert!(text.contains("spec.ports[0].port"), "{text}");
    assert!(text.contains("broken.yaml: document 1"), "{text}");
    assert!(text.contains("unknown kind"), "{text}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf)
}

#[test]
fn serve_is_ready_then_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n",
    )
    .unwrap();
    let (xds, admin) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .args(["serve", "--config-dir"])
        .arg(&manifests)
        .args(["--xds-address", &format!("127.0.0.1:{xds}")])
        .args(["--admin-address", &format!("127.0.0.1:{admin}")])
        .arg("--set")
        .arg(format!("ca_dir={}", dir.path().join("ca").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if get(admin, "/readyz")
            .is_some_and(|r| r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "not ready in time");
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = get(admin, "/metrics").unwrap();
    assert!(
        metrics.contains("switchyard_xds_connected_proxies"),
        "{metrics}"
    );
    assert!(
        Command::new("kill")
            .arg(child.id().to_string())
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("SIGTERM"), "{stderr}");
}

#[test]
fn token_create_prints_a_token_the_ca_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["token", "create", "--ca-dir"])
        .arg(dir.path())
        .args([
            "--namespace",
            "default",
            "--service-account",
            "echo",
            "--ttl",
            "10m",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let tokens = switchyard_ca::token::TokenAuthority::load_or_create(dir.path()).unwrap();
    let claims = tokens.verify(token.trim()).unwrap();
    assert_eq!(
        (claims.ns.as_str(), claims.sa.as_str()),
        ("default", "echo")
    );
    assert_eq!(claims.exp - claims.iat, 600);
}
