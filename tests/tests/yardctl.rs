#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

//! `yardctl`, the real binary, against a real control plane: tokens, certificates over
//! plaintext and TLS, refusals, inspection and chain checks, and root rotation.
//!
//! The binary must be built first (`cargo build -p yardctl`; `cargo test --workspace` does).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use switchyard_ca::token::TokenAuthority;
use switchyard_protos::TypeUrl;
use switchyard_test_support::ads::{SotwClient, node};
use switchyard_test_support::manifests::{self, namespace, pod};
use switchyard_tests::yardctl::{Run, command, finish};
use switchyard_tests::{ControlPlane, STEP};

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
const PROXY: &str = "sidecar~10.244.0.9~web-1.default~default.svc.cluster.local";

fn mesh() -> Vec<(&'static str, Vec<String>)> {
    vec![(
        "mesh.yaml",
        vec![
            namespace("default", None),
            pod("default", "web-1", "web", "10.244.0.9"),
        ],
    )]
}

async fn yardctl(args: &[&str]) -> Run {
    switchyard_tests::yardctl::run(args).await
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn der(pem_text: &str) -> Vec<Vec<u8>> {
    ::pem::parse_many(pem_text)
        .unwrap()
        .into_iter()
        .map(|p| p.into_contents())
        .collect()
}

fn serial_line(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with("serial:"))
        .unwrap_or_else(|| panic!("no serial line: {stdout}"))
        .to_string()
}

/// Token, then a certificate over plaintext (files, modes, replacement), inspection with a
/// chain check, then a certificate over TLS; a root file from another CA gets no TLS session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_then_certificates_over_plaintext_and_tls_then_inspect() {
    let cp = ControlPlane::start(&mesh()).await.unwrap();
    let ca_dir = cp.ca_dir.path();
    let root = ca_dir.join("root-cert.pem");
    let work = tempfile::tempdir().unwrap();

    let run = yardctl(&[
        "token",
        "create",
        "--ca-dir",
        s(ca_dir),
        "--namespace",
        "default",
        "--service-account",
        "web",
        "--ttl",
        "10m",
    ])
    .await
    .ok();
    let token = run.stdout.trim().to_string();
    let claims = TokenAuthority::load_or_create(ca_dir)
        .unwrap()
        .verify(&token)
        .unwrap();
    assert_eq!((claims.ns.as_str(), claims.sa.as_str()), ("default", "web"));
    assert_eq!(claims.node, None);
    assert_eq!(claims.exp - claims.iat, 600);
    let token_file = work.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();

    // plaintext, into a directory that does not exist yet
    let plain = work.path().join("plain");
    let request = |ca: String, dir: &Path, extra: &[&str]| {
        let mut args: Vec<String> = [
            "cert",
            "request",
            "--ca-address",
            &ca,
            "--namespace",
            "default",
            "--service-account",
            "web",
            "--ttl",
            "10m",
            "--out-dir",
            s(dir),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let args = request(
        cp.xds().to_string(),
        &plain,
        &["--token-file", s(&token_file)],
    );
    let run = yardctl(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .ok();
    assert!(
        run.stdout.contains(&format!("identity:   {WEB}")),
        "{run:#?}"
    );
    for field in ["serial:", "not before:", "not after:"] {
        assert!(run.stdout.contains(field), "{field}: {run:#?}");
    }
    let key_path = plain.join("key.pem");
    assert_eq!(mode(&key_path), 0o600);
    let key = std::fs::read_to_string(&key_path).unwrap();
    assert!(key.contains("BEGIN PRIVATE KEY"), "{key}");
    let chain = std::fs::read_to_string(plain.join("cert-chain.pem")).unwrap();
    let chain_der = der(&chain);
    assert_eq!(chain_der.len(), 2, "leaf and root: {chain}");
    let root_der = der(&std::fs::read_to_string(&root).unwrap());
    assert_eq!(
        der(&std::fs::read_to_string(plain.join("root-cert.pem")).unwrap()),
        root_der,
        "root-cert.pem is the control plane's root"
    );
    assert_eq!(chain_der[1], root_der[0], "the chain ends in that root");
    // the key is the leaf's, and the leaf is web's
    let store = switchyard_dataplane_runtime::tls::IdentityStore::new(
        switchyard_dataplane_runtime::tls::TrustBundle::from_pem(
            &std::fs::read_to_string(&root).unwrap(),
        )
        .unwrap(),
    );
    let info = store.set_certificate(&[chain.as_str()], &key).unwrap();
    assert_eq!(info.id.to_string(), WEB);
    assert!(run.stdout.contains(&info.serial), "{run:#?}");

    // inspect: the SPIFFE ID and a chain that verifies against the control plane's root
    let chain_path = plain.join("cert-chain.pem");
    let run = yardctl(&["cert", "inspect", s(&chain_path), "--bundle", s(&root)])
        .await
        .ok();
    assert!(
        run.stdout.contains(&format!("spiffe id:       {WEB}\n")),
        "{run:#?}"
    );
    assert!(run.stdout.contains("\nchain: ok (root "), "{run:#?}");
    for field in [
        "serial:",
        "issuer:",
        "lifetime:",
        "time left:",
        "rotation due at:",
        "key algorithm:   ECDSA P-256",
        "ca:              no",
    ] {
        assert!(run.stdout.contains(field), "{field}: {run:#?}");
    }
    assert!(!run.stdout.contains("EXPIRED"), "{run:#?}");
    let v = yardctl(&[
        "cert",
        "inspect",
        s(&chain_path),
        "--bundle",
        s(&root),
        "--output",
        "json",
    ])
    .await
    .ok()
    .json();
    assert_eq!(v["uri_sans"], serde_json::json!([WEB]), "{v}");
    assert_eq!(v["chain"]["ok"], true, "{v}");
    assert_eq!(v["validity"], "valid", "{v}");
    assert_eq!(v["serial"], info.serial.as_str(), "{v}");
    let life = v["lifetime_seconds"].as_i64().unwrap();
    assert!((600..=660).contains(&life), "asked for 10m: {v}");
    // the root named is the control plane's, by the fingerprint /debug/ca shows
    let st = ca_status(&cp).await;
    assert_eq!(
        v["chain"]["root_sha256"], st["roots"][0]["sha256"],
        "{v} {st}"
    );

    // a second request replaces the files; a key file someone widened is 0600 again
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let first_serial = serial_line(
        &yardctl(&["cert", "inspect", s(&chain_path)])
            .await
            .ok()
            .stdout,
    );
    let args = request(cp.xds().to_string(), &plain, &["--token", &token]);
    let run = yardctl(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .ok();
    assert_eq!(mode(&key_path), 0o600);
    assert_ne!(std::fs::read_to_string(&key_path).unwrap(), key);
    let second = yardctl(&["cert", "inspect", s(&chain_path)]).await.ok();
    assert_ne!(serial_line(&second.stdout), first_serial);
    assert!(
        run.stdout.contains(
            serial_line(&second.stdout)
                .trim_start_matches("serial:")
                .trim()
        )
    );

    // TLS on the xDS TLS port, verifying the control plane with its root
    let tls = work.path().join("tls");
    let args = request(
        cp.server.xds_tls_address().to_string(),
        &tls,
        &["--ca-root-file", s(&root), "--token", &token, "-o", "json"],
    );
    let v = yardctl(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .ok()
        .json();
    assert_eq!(v["identity"], WEB, "{v}");
    assert_eq!(mode(&tls.join("key.pem")), 0o600);
    let run = yardctl(&[
        "cert",
        "inspect",
        s(&tls.join("cert-chain.pem")),
        "--bundle",
        s(&root),
    ])
    .await
    .ok();
    assert!(run.stdout.contains("\nchain: ok (root "), "{run:#?}");

    // a root file from another CA: the control plane is not trusted, nothing is written
    let foreign = tempfile::tempdir().unwrap();
    switchyard_ca::load_or_create_root(foreign.path(), Default::default()).unwrap();
    let refused = work.path().join("refused-tls");
    let args = request(
        cp.server.xds_tls_address().to_string(),
        &refused,
        &[
            "--ca-root-file",
            s(&foreign.path().join("root-cert.pem")),
            "--token",
            &token,
        ],
    );
    let run = yardctl(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .failed();
    assert!(
        run.stderr.starts_with("yardctl: cannot talk to the CA at "),
        "{run:#?}"
    );
    assert!(!refused.join("key.pem").exists());
}

/// A token for `web` gets no certificate for `other`: the CA's reason is shown, nothing is
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_identity_is_refused() {
    let cp = ControlPlane::start(&mesh()).await.unwrap();
    let token = TokenAuthority::load_or_create(cp.ca_dir.path())
        .unwrap()
        .create("default", "web", None, Duration::from_secs(60));
    let out = tempfile::tempdir().unwrap();
    let run = yardctl(&[
        "cert",
        "request",
        "--ca-address",
        &cp.xds().to_string(),
        "--token",
        &token,
        "--namespace",
        "default",
        "--service-account",
        "other",
        "--out-dir",
        s(out.path()),
    ])
    .await
    .failed();
    assert!(
        run.stderr
            .starts_with("yardctl: the CA refused the request (PermissionDenied): "),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains(WEB) && run.stderr.contains("sa/other"),
        "{run:#?}"
    );
    assert!(run.stdout.is_empty(), "{run:#?}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);

    // a token from another control plane is not accepted either
    let forged = TokenAuthority::new(b"another secret").create(
        "default",
        "web",
        None,
        Duration::from_secs(60),
    );
    let run = yardctl(&[
        "cert",
        "request",
        "--ca-address",
        &cp.xds().to_string(),
        "--token",
        &forged,
        "--namespace",
        "default",
        "--service-account",
        "web",
        "--out-dir",
        s(out.path()),
    ])
    .await
    .failed();
    assert!(
        run.stderr
            .starts_with("yardctl: the CA refused the request (Unauthenticated): "),
        "{run:#?}"
    );
}

/// A certificate checked against another CA's bundle fails the chain check, against its own
/// (alone or with others) it passes; an expired certificate is reported and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_checks_the_chain_and_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
    let ca = switchyard_ca::load_or_create_root(&ours, Default::default()).unwrap();
    switchyard_ca::load_or_create_root(&theirs, Default::default()).unwrap();
    let web: switchyard_model::SpiffeId = WEB.parse().unwrap();
    let (csr, _) = switchyard_dataplane_runtime::identity::generate_csr(&web).unwrap();
    let checked = switchyard_ca::check_csr(&csr, "cluster.local").unwrap();
    let issued = ca.issue(&checked, &web, None).unwrap();
    let cert = dir.path().join("cert-chain.pem");
    std::fs::write(&cert, issued.chain.concat()).unwrap();
    let our_root = ours.join("root-cert.pem");
    let their_root = theirs.join("root-cert.pem");

    let run = yardctl(&["cert", "inspect", s(&cert), "--bundle", s(&their_root)]).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stdout.contains("\nchain: FAILED: "), "{run:#?}");
    assert!(
        run.stdout.contains(&format!("spiffe id:       {WEB}\n")),
        "{run:#?}"
    );

    // both bundles: it chains to ours
    let both = dir.path().join("both.pem");
    std::fs::write(
        &both,
        std::fs::read_to_string(&their_root).unwrap()
            + &std::fs::read_to_string(&our_root).unwrap(),
    )
    .unwrap();
    let v = yardctl(&[
        "cert",
        "inspect",
        s(&cert),
        "--bundle",
        s(&both),
        "-o",
        "json",
    ])
    .await
    .ok()
    .json();
    assert_eq!(v["chain"]["ok"], true, "{v}");
    // a root against a bundle holding it: "ok", with its own fingerprint
    let root_sha = |root: &Path| {
        let path = root.to_path_buf();
        let both = both.clone();
        async move {
            let v = yardctl(&[
                "cert",
                "inspect",
                s(&path),
                "--bundle",
                s(&both),
                "-o",
                "json",
            ])
            .await
            .ok()
            .json();
            assert_eq!(v["is_ca"], true, "{v}");
            v["chain"]["root_sha256"].as_str().unwrap().to_string()
        }
    };
    let (ours_sha, theirs_sha) = (root_sha(&our_root).await, root_sha(&their_root).await);
    assert_ne!(ours_sha, theirs_sha);
    assert_eq!(v["chain"]["root_sha256"], ours_sha.as_str(), "{v}");
    // 24 h by default, 50% rotation point
    assert_eq!(v["lifetime_seconds"], 24 * 3600 + 60, "{v}");

    // without a bundle there is no chain line
    let run = yardctl(&["cert", "inspect", s(&cert)]).await.ok();
    assert!(!run.stdout.contains("chain:"), "{run:#?}");

    // expired (self-signed, validity in the past)
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(WEB.try_into().unwrap())];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 2);
    let expired = dir.path().join("expired.pem");
    std::fs::write(&expired, params.self_signed(&key).unwrap().pem()).unwrap();
    let run = yardctl(&["cert", "inspect", s(&expired)]).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stdout.contains("\nEXPIRED\n"), "{run:#?}");
    assert!(run.stdout.contains("time left:       EXPIRED "), "{run:#?}");
    assert!(run.stdout.contains("lifetime:        1d\n"), "{run:#?}");

    // not a certificate at all
    let run = yardctl(&["cert", "inspect", s(&ours.join("root-key.pem"))])
        .await
        .failed();
    assert!(run.stderr.contains("PRIVATE KEY"), "{run:#?}");
}

async fn ca_status(cp: &ControlPlane) -> serde_json::Value {
    let (code, body) = cp.admin("/debug/ca").await.unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// With no proxy holding the bundle back, `--wait` returns once the new root signs: the
/// bundle then holds the new root (signing) and the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_root_wait_returns_once_the_new_root_signs() {
    let cp = ControlPlane::start(&mesh()).await.unwrap();
    let before = ca_status(&cp).await;
    assert_eq!(before["rotation"]["phase"], "stable", "{before}");
    let old = before["roots"][0]["sha256"].as_str().unwrap().to_string();

    let admin = cp.server.admin_address().to_string();
    let run = yardctl(&["ca", "rotate-root", "--admin", &admin, "--wait"])
        .await
        .ok();
    let out = &run.stdout;
    assert!(
        out.starts_with("root rotation started\nphase: introduced"),
        "{run:#?}"
    );
    assert!(
        out.contains("the new root signs now\nphase: retiring"),
        "{run:#?}"
    );
    assert!(out.contains(&format!("sha256 {old}")), "{run:#?}");

    let after = ca_status(&cp).await;
    assert_eq!(after["rotation"]["phase"], "retiring", "{after}");
    let roots = after["roots"].as_array().unwrap();
    assert_eq!(roots.len(), 2, "{after}");
    assert_eq!(roots[0]["signing"], true, "{after}");
    assert_ne!(roots[0]["sha256"], old.as_str(), "{after}");
    assert_eq!(roots[1]["sha256"], old.as_str(), "{after}");
    assert_eq!(roots[1]["signing"], false, "{after}");
    // the new root is the one yardctl printed as signing
    let new = roots[0]["sha256"].as_str().unwrap();
    assert!(out.contains(&format!("sha256 {new}  signing")), "{run:#?}");
}

/// A proxy that has not ACKed the new bundle holds the rotation: `--wait` names it and gives
/// up after `--timeout`; a second rotation meanwhile is refused; once it ACKs, a `--wait`
/// that is running finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_root_waits_for_proxies_and_refuses_a_second_rotation() {
    let cp = ControlPlane::start(&mesh()).await.unwrap();
    let admin = cp.server.admin_address().to_string();
    let mut proxy = SotwClient::connect(cp.xds(), node(PROXY, &[]))
        .await
        .unwrap();
    proxy.request(TypeUrl::Secret, &["ROOTCA"]).await.unwrap();
    proxy.recv(STEP).await.unwrap();
    proxy.ack(TypeUrl::Secret, &["ROOTCA"]).await.unwrap();

    let run = yardctl(&[
        "ca",
        "rotate-root",
        "--admin",
        &admin,
        "--wait",
        "--timeout",
        "1500ms",
    ])
    .await
    .failed();
    assert!(
        run.stdout.contains(&format!(
            "waiting for 1 proxy to ACK the new bundle: {PROXY}\n"
        )),
        "{run:#?}"
    );
    assert!(
        run.stderr
            .starts_with("yardctl: the new root is still not signing after 1s;")
            && run.stderr.contains(PROXY),
        "{run:#?}"
    );
    assert_eq!(ca_status(&cp).await["rotation"]["phase"], "introduced");

    let run = yardctl(&["ca", "rotate-root", "--admin", &admin])
        .await
        .failed();
    assert!(
        run.stderr.starts_with("yardctl: cannot rotate the root: ")
            && run
                .stderr
                .contains("a root rotation is already in progress"),
        "{run:#?}"
    );

    // the proxy takes every bundle from now on: the rotation completes
    let acking = async {
        loop {
            proxy.recv(STEP).await.unwrap();
            proxy.ack(TypeUrl::Secret, &["ROOTCA"]).await.unwrap();
        }
    };
    let promoted = async {
        loop {
            let st = ca_status(&cp).await;
            if st["rotation"]["phase"] == "retiring" && st["waiting_for"] == serde_json::json!([]) {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let st = tokio::select! {
        _ = acking => unreachable!(),
        st = tokio::time::timeout(STEP, promoted) => st.expect("promoted once the proxy ACKs"),
    };
    assert_eq!(st["roots"].as_array().unwrap().len(), 2, "{st}");

    // a new rotation with --wait, the proxy ACKing while yardctl waits
    let child = command(&[
        "ca",
        "rotate-root",
        "--admin",
        &admin,
        "--wait",
        "--timeout",
        "20s",
    ])
    .spawn()
    .unwrap();
    let acking = async {
        loop {
            proxy.recv(STEP).await.unwrap();
            proxy.ack(TypeUrl::Secret, &["ROOTCA"]).await.unwrap();
        }
    };
    let run = tokio::select! {
        _ = acking => unreachable!(),
        run = finish(child) => run.ok(),
    };
    assert!(
        run.stdout.contains(&format!(
            "waiting for 1 proxy to ACK the new bundle: {PROXY}\n"
        )),
        "{run:#?}"
    );
    assert!(
        run.stdout
            .contains("the new root signs now\nphase: retiring"),
        "{run:#?}"
    );
    let st = ca_status(&cp).await;
    assert_eq!(st["roots"].as_array().unwrap().len(), 3, "{st}");
    assert_eq!(st["roots"][0]["signing"], true, "{st}");
}

/// An admin address nobody listens on is reported as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_admin_api_is_reported() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let run = yardctl(&["ca", "rotate-root", "--admin", &addr])
        .await
        .failed();
    assert!(
        run.stderr
            .starts_with(&format!("yardctl: cannot reach the admin API at {addr}")),
        "{run:#?}"
    );
}

/// A node agent's token (made with `--node`) gets a certificate for a pod on its node with
/// `--impersonate`, and none for a pod elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_agent_impersonates_a_pod_on_its_node() {
    let cp = ControlPlane::start(&[(
        "mesh.yaml",
        vec![
            namespace("default", None),
            manifests::node("node-1", "10.255.0.1", "a"),
            manifests::node("node-2", "10.255.0.2", "b"),
            manifests::pod_on("default", "web-1", "web", "10.244.1.2", Some("node-1")),
            manifests::pod_on("default", "api-1", "api", "10.244.2.2", Some("node-2")),
        ],
    )])
    .await
    .unwrap();
    let token = yardctl(&[
        "token",
        "create",
        "--ca-dir",
        s(cp.ca_dir.path()),
        "--namespace",
        "switchyard-system",
        "--service-account",
        "ztunnel",
        "--node",
        "node-1",
    ])
    .await
    .ok()
    .stdout
    .trim()
    .to_string();
    let out = tempfile::tempdir().unwrap();
    let xds = cp.xds().to_string();
    let ask = |sa: &'static str| {
        let (xds, token, dir) = (xds.clone(), token.clone(), out.path().join(sa));
        async move {
            yardctl(&[
                "cert",
                "request",
                "--ca-address",
                &xds,
                "--token",
                &token,
                "--namespace",
                "default",
                "--service-account",
                sa,
                "--impersonate",
                "--out-dir",
                s(&dir),
                "-o",
                "json",
            ])
            .await
        }
    };
    let v = ask("web").await.ok().json();
    assert_eq!(v["identity"], WEB, "{v}");
    let run = ask("api").await.failed();
    assert!(
        run.stderr
            .starts_with("yardctl: the CA refused the request (PermissionDenied): ")
            && run.stderr.contains("node-1"),
        "{run:#?}"
    );
}
