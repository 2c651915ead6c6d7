//! A `switchyard-sidecar proxy` process as the tests run it: one pod's proxy against a
//! [`ControlPlane`](crate::ControlPlane), plaintext xDS, its pod-facing listeners on the pod
//! IP and its local ones (outbound, admin, metrics) on a loopback address; killed on drop.

// Test harness: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use switchyard_test_support::echo_process::workspace_binary;

use crate::ControlPlane;

/// A running proxy.
#[derive(Debug)]
pub struct SidecarProcess {
    /// The process.
    pub child: tokio::process::Child,
    /// Its log (stderr).
    pub log: PathBuf,
    /// Its admin address (`/ready`, `/stats`).
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl SidecarProcess {
    /// Starts the proxy of pod `name` (namespace `default`, service account `sa`) at `ip`,
    /// with its loopback listeners on `lo_ip`.
    pub fn start(cp: &ControlPlane, name: &str, sa: &str, ip: &str, lo_ip: &str) -> Self {
        Self::start_with(cp, name, sa, ip, lo_ip, &[])
    }

    /// [`SidecarProcess::start`] with more `proxy` arguments.
    pub fn start_with(
        cp: &ControlPlane,
        name: &str,
        sa: &str,
        ip: &str,
        lo_ip: &str,
        extra: &[&str],
    ) -> Self {
        let dir = tempfile::Builder::new().prefix("proxy").tempdir().unwrap();
        let log = dir.path().join("proxy.log");
        let token = switchyard_ca::token::TokenAuthority::load_or_create(cp.ca_dir.path())
            .unwrap()
            .create("default", sa, None, Duration::from_secs(3600));
        let admin: SocketAddr = format!("{lo_ip}:15000").parse().unwrap();
        let child = tokio::process::Command::new(workspace_binary("switchyard-sidecar").unwrap())
            .args(["proxy", "--token", &token, "--namespace", "default"])
            .args(["--service-account", sa, "--pod-name", name, "--pod-ip", ip])
            .args(["--ca-address", &cp.xds().to_string()])
            .args(["--xds-address", &cp.xds().to_string()])
            .args(["--outbound-address", &format!("{lo_ip}:15001")])
            .args(["--inbound-address", &format!("{ip}:15006")])
            .args(["--hbone-address", &format!("{ip}:15008")])
            .args(["--admin-address", &admin.to_string()])
            .args(["--metrics-address", &format!("{lo_ip}:15020")])
            .args(extra)
            .env("RUST_LOG", "info,switchyard_dataplane_sidecar=debug")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("starting switchyard-sidecar proxy");
        SidecarProcess {
            child,
            log,
            admin,
            _dir: dir,
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A pod's stock Envoy proxy (kind `envoy`, delta ADS, listeners on the pod IP) with its SDS
/// agent. `ENVOY_LOG` sets Envoy's log level (default `info`).
#[derive(Debug)]
pub struct EnvoyPod {
    /// The Envoy process.
    pub envoy: switchyard_test_support::Envoy,
    /// Its SDS agent.
    pub agent: crate::SdsAgentProcess,
    /// The pod IP.
    pub ip: String,
}

impl EnvoyPod {
    /// Starts the proxy of pod `name` (namespace `default`, service account `sa`) at `ip`;
    /// `ttl` is the certificate lifetime to ask for, seconds (0: the CA's default).
    pub async fn start(cp: &ControlPlane, name: &str, sa: &str, ip: &str, ttl: u64) -> EnvoyPod {
        let node_id = format!("envoy~{ip}~{name}.default~default.svc.cluster.local");
        let agent = crate::SdsAgentProcess::start(cp, "default", sa, &node_id, ttl)
            .await
            .unwrap();
        let envoy = switchyard_test_support::Envoy::start(
            switchyard_test_support::EnvoyOptions::new(node_id, cp.xds())
                .delta(true)
                .metadata("LISTEN_ADDRESS", ip)
                .sds_socket(&agent.socket)
                .log_level(std::env::var("ENVOY_LOG").unwrap_or_else(|_| "info".into())),
        )
        .await
        .unwrap();
        EnvoyPod {
            envoy,
            agent,
            ip: ip.to_string(),
        }
    }
}
