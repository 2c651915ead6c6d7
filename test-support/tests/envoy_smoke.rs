//! Real-Envoy harness smoke test: Envoy starts, with no reachable xDS server, and its admin
//! API answers. Needs `.venv/bin/envoy` (scripts/setup.sh); fails — never skips — without it.

use std::time::Duration;

use switchyard_test_support::{Envoy, EnvoyOptions, envoy_binary};

/// A loopback port with nothing listening: bind, read the port, close.
fn dead_xds_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    listener.local_addr().expect("local addr")
}

#[tokio::test]
async fn envoy_starts_without_xds_and_serves_admin() {
    if let Err(e) = envoy_binary() {
        panic!("{e:#}");
    }
    let options = EnvoyOptions::new(
        "envoy~127.0.0.1~smoke.default~default.svc.cluster.local",
        dead_xds_addr(),
    )
    .delta(true)
    .metadata("DATAPLANE_KIND", "envoy")
    .metadata("NAMESPACE", "default");
    let mut envoy = Envoy::start(options).await.expect("starting envoy");
    envoy
        .wait_admin_ready(Duration::from_secs(20))
        .await
        .expect("admin ready");

    // Without its initial CDS/LDS Envoy is not live yet.
    let state = envoy.server_state().await.unwrap();
    assert!(
        state.ends_with("INITIALIZING"),
        "state {state}\n{}",
        envoy.log_tail()
    );
    let ready = envoy.admin_get("/ready").await.unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);

    let dump = envoy.config_dump().await.unwrap();
    let configs = dump["configs"].as_array().expect("configs array");
    let bootstrap = configs
        .iter()
        .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump")
        .expect("bootstrap dump");
    let node = &bootstrap["bootstrap"]["node"];
    assert_eq!(
        node["id"],
        "envoy~127.0.0.1~smoke.default~default.svc.cluster.local"
    );
    assert_eq!(node["metadata"]["DATAPLANE_KIND"], "envoy");
    assert_eq!(
        bootstrap["bootstrap"]["dynamic_resources"]["ads_config"]["api_type"],
        "DELTA_GRPC"
    );

    assert!(envoy.clusters().await.unwrap().contains("xds::"));
    assert!(
        envoy.stat("server.live").await.is_some(),
        "{}",
        envoy.log_tail()
    );
    assert!(envoy.log_tail().contains("[main]"), "{}", envoy.log_tail());

    // Restart: same node, new process, admin answers again.
    let (old_pid, old_admin) = (envoy.pid(), envoy.admin_addr());
    envoy.restart().await.expect("restart");
    assert_ne!(envoy.pid(), old_pid);
    envoy
        .wait_admin_ready(Duration::from_secs(20))
        .await
        .unwrap();
    let dump = envoy.config_dump().await.unwrap();
    assert!(dump.to_string().contains("smoke.default"));
    let _ = old_admin;

    let pid = envoy.pid();
    drop(envoy);
    // SIGKILL on drop: the process is gone (or a zombie about to be reaped).
    let alive = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| !s.contains("State:\tZ"))
        .unwrap_or(false);
    // The kill is asynchronous; give the kernel a moment before judging.
    if alive {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let still = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| !s.contains("State:\tZ"))
            .unwrap_or(false);
        assert!(!still, "envoy {pid} survived drop");
    }
}

#[tokio::test]
async fn envoy_dials_the_xds_address_with_http2() {
    let xds = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let options = EnvoyOptions::new(
        "envoy~127.0.0.1~dial.default~default.svc.cluster.local",
        xds.local_addr().unwrap(),
    );
    let envoy = Envoy::start(options).await.expect("starting envoy");

    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(20), xds.accept())
        .await
        .unwrap_or_else(|_| panic!("envoy never dialled xds\n{}", envoy.log_tail()))
        .unwrap();
    let mut preface = [0u8; 24];
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut preface),
    )
    .await
    .unwrap_or_else(|_| panic!("no HTTP/2 preface\n{}", envoy.log_tail()))
    .unwrap();
    assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
}

#[tokio::test]
async fn startup_failure_reports_envoy_output() {
    let mut options = EnvoyOptions::new("envoy~bad", dead_xds_addr());
    options.extra_args.push("--no-such-flag".to_owned());
    let error = Envoy::start(options)
        .await
        .expect_err("envoy accepted a bogus flag");
    let message = format!("{error:#}");
    assert!(message.contains("exited during startup"), "{message}");
    assert!(message.contains("no-such-flag"), "{message}");
}
