//! `yardctl proxy-status`, `proxy-config`, `diff` and `mode` against a running control plane
//! with a YAML directory and a stock Envoy; the output's content is checked.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::time::Duration;

use serde_json::Value;
use switchyard_test_support::manifests::*;
use switchyard_test_support::{Envoy, EnvoyOptions, eventually};
use switchyard_tests::ControlPlane;
use switchyard_tests::yardctl::Run;

const WAIT: Duration = Duration::from_secs(15);
const CLIENT: &str = "envoy~127.0.20.1~client-0.default~default.svc.cluster.local";

fn route(timeout: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: echo\n  namespace: default\nspec:\n  parentRefs:\n  - group: \"\"\n    kind: Service\n    name: echo\n    port: 8080\n  rules:\n  - backendRefs:\n    - name: echo\n      port: 8080\n    timeouts:\n      request: {timeout}\n"
    )
}

fn plain(pod: String) -> String {
    pod.replacen(
        "  labels:\n",
        "  labels:\n    switchyard.io/dataplane-mode: none\n",
        1,
    )
}

fn mesh() -> Vec<(&'static str, Vec<String>)> {
    let mut override_pod = pod("side", "web-0", "web", "10.244.1.5");
    override_pod = override_pod.replace(
        "    app: web\n",
        "    app: web\n    switchyard.io/dataplane-mode: ebpf\n",
    );
    vec![
        (
            "mesh.yaml",
            vec![
                namespace("default", Some("sidecar")),
                namespace("side", Some("ztunnel")),
                service("default", "echo", "10.96.0.10", &[http(8080, 18080)]),
                // plain backends: an Envoy without an SDS agent cannot warm mTLS clusters
                plain(pod("default", "echo-1", "echo", "10.244.0.11")),
                plain(pod("default", "echo-2", "echo", "10.244.0.12")),
                pod("default", "client-0", "client", "127.0.20.1"),
                pod("side", "api-0", "api", "10.244.1.4"),
                override_pod,
            ],
        ),
        ("route.yaml", vec![route("5s")]),
    ]
}

async fn yardctl(args: &[&str]) -> Run {
    switchyard_tests::yardctl::run(args).await
}

fn stdout(o: &Run) -> String {
    o.stdout.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_config_diff_and_mode() {
    let cp = ControlPlane::start(&mesh()).await.unwrap();
    let admin = cp.server.admin_address().to_string();
    let envoy = Envoy::start(
        EnvoyOptions::new(CLIENT, cp.xds())
            .delta(true)
            .metadata("LISTEN_ADDRESS", "127.0.20.1"),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let z = cp.syncz().await.unwrap();
        let row = z
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node"] == CLIENT)
            .cloned();
        let synced = row.as_ref().is_some_and(|r| {
            ["cds", "eds", "lds", "rds"]
                .iter()
                .all(|t| r["types"][t]["state"] == "SYNCED")
        });
        if synced {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "envoy not synced: {row:?}\n{}",
            envoy.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // proxy-status: the Envoy, every type SYNCED with its version
    let o = yardctl(&["proxy-status", "--admin", &admin]).await;
    assert!(o.code == Some(0), "{o:?}");
    let table = stdout(&o);
    let header = table.lines().next().unwrap();
    for col in [
        "NODE",
        "KIND",
        "ADS",
        "CDS",
        "EDS",
        "LDS",
        "RDS",
        "LAST NACK",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let row = table.lines().find(|l| l.starts_with(CLIENT)).unwrap();
    assert!(row.contains("envoy") && row.contains("delta"), "{row}");
    assert_eq!(row.matches("SYNCED").count(), 4, "{row}");
    let o = yardctl(&[
        "proxy-status",
        "--admin",
        &admin,
        "-o",
        "json",
        "-n",
        "nowhere",
    ])
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&o.stdout).unwrap(),
        Value::Array(vec![])
    );

    // a forced NACK shows up, with Envoy's message
    let (code, body) = cp
        .admin_post(&format!("/debug/test/poison?proxy={CLIENT}&type=cds"))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let row = eventually(WAIT, "the NACK in proxy-status", || async {
        let o = yardctl(&["proxy-status", "--admin", &admin, "--kind", "envoy"]).await;
        stdout(&o)
            .lines()
            .find(|l| l.starts_with(CLIENT) && l.contains("NACKED"))
            .map(String::from)
    })
    .await;
    assert!(
        row.contains("cds: "),
        "the last NACK message is shown: {row}"
    );
    cp.admin_delete(&format!("/debug/test/poison?proxy={CLIENT}&type=cds"))
        .await
        .unwrap();

    // proxy-config: decoded clusters and endpoints, matching the manifests
    let o = yardctl(&[
        "proxy-config",
        "client-0.default",
        "clusters",
        "--admin",
        &admin,
        "-o",
        "json",
    ])
    .await;
    assert!(o.code == Some(0), "{o:?}");
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    let names: Vec<&str> = v["resources"]["cds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"outbound|8080||echo.default.svc.cluster.local"),
        "{names:?}"
    );
    let o = yardctl(&[
        "proxy-config",
        "client-0.default",
        "endpoints",
        "--admin",
        &admin,
    ])
    .await;
    let table = stdout(&o);
    let row = table
        .lines()
        .find(|l| l.contains("outbound|8080||echo.default.svc.cluster.local"))
        .unwrap();
    assert!(
        row.contains("10.244.0.11:18080") && row.contains("10.244.0.12:18080"),
        "{row}"
    );
    let o = yardctl(&["proxy-config", "nobody.default", "--admin", &admin]).await;
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("no connected proxy"));

    // diff over time: only the route whose timeout changed
    let saved = tempfile::NamedTempFile::new().unwrap();
    let path = saved.path().to_str().unwrap();
    let o = yardctl(&[
        "diff",
        "client-0.default",
        "--save",
        path,
        "--admin",
        &admin,
    ])
    .await;
    assert!(o.code == Some(0), "{o:?}");
    let g = cp.generation();
    cp.manifests.write("route.yaml", &[route("7s")]).unwrap();
    cp.wait_generation(g + 1).await.unwrap();
    let o = yardctl(&[
        "diff",
        "client-0.default",
        "--against",
        path,
        "--admin",
        &admin,
    ])
    .await;
    assert!(o.code == Some(0), "{o:?}");
    let flagged = yardctl(&[
        "diff",
        "client-0.default",
        "--against",
        path,
        "--admin",
        &admin,
        "--exit-code",
    ])
    .await;
    assert_eq!(flagged.code, Some(1), "--exit-code: 1 when they differ");
    let out = stdout(&o);
    let changes: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(['~', '+', '-']))
        .collect();
    let changes: Vec<&str> = changes
        .into_iter()
        .filter(|l| !l.starts_with("---") && !l.starts_with("+++"))
        .collect();
    assert!(!changes.is_empty(), "{out}");
    for c in &changes {
        assert!(
            c.starts_with("~ rds/") && c.contains("timeout") && c.contains("\"5s\" -> \"7s\""),
            "only the route timeout changed: {out}"
        );
    }
    assert!(
        changes.iter().any(|c| c.starts_with("~ rds/8080 ")),
        "{out}"
    );

    // diff between two proxies: a node id that is not connected is rendered on demand
    let other = "envoy~127.0.20.9~client-9.default~default.svc.cluster.local";
    let o = yardctl(&[
        "diff",
        "client-0.default",
        other,
        "--section",
        "listeners",
        "--admin",
        &admin,
    ])
    .await;
    let out = stdout(&o);
    // (the one not connected has no LISTEN_ADDRESS metadata, so it binds 0.0.0.0)
    let changes: Vec<&str> = out.lines().filter(|l| l.starts_with("~ ")).collect();
    assert_eq!(
        changes,
        [
            "~ lds/inbound address.socketAddress.address: \"0.0.0.0\" -> \"127.0.20.1\"",
            "~ lds/outbound address.socketAddress.address: \"0.0.0.0\" -> \"127.0.20.1\""
        ],
        "{out}"
    );

    // mode: where it comes from
    let o = yardctl(&["mode", "side/web-0", "--admin", &admin]).await;
    let out = stdout(&o);
    assert!(out.starts_with("side/web-0: ebpf (pod label)"), "{out}");
    assert!(
        out.contains("overrides its namespace") && out.contains("ztunnel"),
        "{out}"
    );
    let o = yardctl(&["mode", "side/api-0", "--admin", &admin, "-o", "json"]).await;
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        (v["mode"].as_str(), v["source"].as_str()),
        (Some("ztunnel"), Some("namespace_label"))
    );
    let o = yardctl(&["mode", "unlabelled", "--admin", &admin]).await;
    assert!(stdout(&o).contains("(default)"), "{}", stdout(&o));
    let o = yardctl(&["mode", "side/missing", "--admin", &admin]).await;
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("no pod side/missing"));
    drop(envoy);
}
