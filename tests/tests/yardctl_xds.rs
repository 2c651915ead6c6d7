#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

//! `yardctl xds get` and `yardctl xds watch`, the real binary, against a real control plane:
//! what a sidecar, a node agent and an SDS client are sent, over delta and SotW, plaintext and
//! TLS; a watch that shows an endpoint change as a diff; a NACK on purpose that the control
//! plane records while it keeps serving; an address with nothing behind it.
//!
//! The binary must be built first (`cargo build -p yardctl`; `cargo test --workspace` does).

use std::collections::BTreeSet;

use serde_json::Value;
use switchyard_protos::TypeUrl;
use switchyard_protos::envoy::envoy::config::cluster::v3::Cluster;
use switchyard_protos::envoy::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use switchyard_protos::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use switchyard_test_support::eventually::eventually;
use switchyard_test_support::manifests::*;
use switchyard_tests::yardctl::{Run, command};
use switchyard_tests::{ControlPlane, STEP};
use tokio::io::{AsyncBufReadExt, BufReader};

const SIDECAR: &str = "sidecar~10.244.0.9~client.default~default.svc.cluster.local";
const ECHO_CLUSTER: &str = "outbound|8080||echo.default.svc.cluster.local";

fn base() -> Vec<(&'static str, Vec<String>)> {
    vec![(
        "mesh.yaml",
        vec![
            namespace("default", Some("sidecar")),
            service(
                "default",
                "echo",
                "10.96.0.10",
                &[http(8080, 18080), grpc(9090, 19090)],
            ),
            pod_on("default", "echo-1", "echo", "10.244.0.11", Some("node-1")),
            pod_on("default", "echo-2", "echo", "10.244.0.12", Some("node-2")),
            pod_on("default", "client", "client", "10.244.0.9", Some("node-1")),
        ],
    )]
}

/// The flags that make yardctl the sidecar of pod `client`.
const AS_SIDECAR: [&str; 8] = [
    "--kind",
    "sidecar",
    "--namespace",
    "default",
    "--pod",
    "client",
    "--ip",
    "10.244.0.9",
];

async fn yardctl(args: &[&str]) -> Run {
    switchyard_tests::yardctl::run(args).await
}

/// `xds get` against `cp` with `args` after the address.
async fn get(cp: &ControlPlane, args: &[&str]) -> Run {
    let xds = cp.xds().to_string();
    let mut all = vec!["xds", "get", "--xds", &xds];
    all.extend_from_slice(args);
    yardctl(&all).await
}

/// Names of the resources of `short_type` in `get -o json` output.
fn names(doc: &Value, short_type: &str) -> Vec<String> {
    doc["resources"][short_type]
        .as_array()
        .unwrap_or_else(|| panic!("no {short_type} in {doc:#}"))
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

fn resource<'a>(doc: &'a Value, short_type: &str, name: &str) -> &'a Value {
    doc["resources"][short_type]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no {short_type} {name} in {doc:#}"))
}

fn endpoint_ips(cla: &Value) -> Vec<String> {
    let mut ips: Vec<String> = cla["resource"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["lbEndpoints"].as_array().unwrap())
        .map(|e| {
            e["endpoint"]["address"]["socketAddress"]["address"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ips.sort();
    ips
}

/// A sidecar's complete set, over delta and SotW: the echo cluster with the endpoints of both
/// echo pods (EDS asked for because CDS named it), both capture listeners, and the route LDS
/// names; the same set either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_all_as_a_sidecar_over_delta_and_sotw() {
    let cp = ControlPlane::start(&base()).await.unwrap();
    let mut docs = Vec::new();
    for variant in ["--delta", "--sotw"] {
        let mut args = AS_SIDECAR.to_vec();
        args.extend([variant, "--type", "all", "-o", "json"]);
        let run = get(&cp, &args).await.ok();
        assert!(
            !run.stderr.contains("protocol violation"),
            "{variant}: {}",
            run.stderr
        );
        let doc = run.json();
        assert_eq!(doc["node"]["id"], SIDECAR, "{doc:#}");
        assert_eq!(doc["node"]["metadata"]["POD_NAME"], "client", "{doc:#}");

        let cluster = resource(&doc, "cds", ECHO_CLUSTER);
        assert_eq!(cluster["resource"]["type"], "EDS", "{cluster:#}");
        assert!(!cluster["version"].as_str().unwrap().is_empty());
        let cla = resource(&doc, "eds", ECHO_CLUSTER);
        assert_eq!(
            endpoint_ips(cla),
            ["10.244.0.11", "10.244.0.12"],
            "{variant}: {cla:#}"
        );
        // every EDS cluster got its endpoints
        let eds_clusters: Vec<String> = doc["resources"]["cds"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["resource"]["type"] == "EDS")
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
        let mut eds = names(&doc, "eds");
        eds.sort();
        let mut expected = eds_clusters.clone();
        expected.sort();
        assert_eq!(eds, expected, "{variant}");

        let listeners = names(&doc, "lds");
        assert!(listeners.contains(&"outbound".to_string()), "{listeners:?}");
        assert!(listeners.contains(&"inbound".to_string()), "{listeners:?}");
        let routes = names(&doc, "rds");
        assert!(
            routes.contains(&"8080".to_string()),
            "{variant}: {routes:?}"
        );
        docs.push(doc);
    }
    // Same content over both variants (SotW has only the response's version, delta one per
    // resource).
    let content = |doc: &Value, t: &str| -> Vec<(Value, Value)> {
        doc["resources"][t]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["name"].clone(), r["resource"].clone()))
            .collect()
    };
    for t in ["cds", "eds", "lds", "rds"] {
        assert_eq!(
            content(&docs[0], t),
            content(&docs[1], t),
            "{t} differs between delta and SotW"
        );
    }
}

/// The table has a header and one row per resource; YAML is the JSON document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_table_and_yaml() {
    let cp = ControlPlane::start(&base()).await.unwrap();
    let mut json_args = AS_SIDECAR.to_vec();
    json_args.extend(["-o", "json"]);
    let doc = get(&cp, &json_args).await.ok().json();
    let count: usize = doc["resources"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_array().unwrap().len())
        .sum();

    let table = get(&cp, &AS_SIDECAR).await.ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["TYPE", "NAME", "VERSION", "SUMMARY"], "{table}");
    assert_eq!(lines.len(), count + 1, "{table}");
    let row = lines
        .iter()
        .find(|l| l.starts_with("cds") && l.contains(ECHO_CLUSTER))
        .unwrap_or_else(|| panic!("no echo cluster row: {table}"));
    assert!(row.contains("EDS, 2 endpoints"), "{row}");
    let row = lines
        .iter()
        .find(|l| l.starts_with("eds") && l.contains(ECHO_CLUSTER))
        .unwrap();
    assert!(
        row.contains("10.244.0.11:18080") && row.contains("10.244.0.12:18080"),
        "{row}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("lds") && l.contains("outbound") && l.contains(":15001")),
        "{table}"
    );

    let mut yaml_args = AS_SIDECAR.to_vec();
    yaml_args.extend(["--type", "cds", "-o", "yaml"]);
    let yaml = get(&cp, &yaml_args).await.ok().stdout;
    assert!(yaml.starts_with("node:"), "{yaml}");
    assert!(yaml.contains(ECHO_CLUSTER), "{yaml}");
}

/// A node agent gets the workload API: every workload, its services; SDS gives the bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_workloads_as_ztunnel_and_the_trust_bundle() {
    let cp = ControlPlane::start(&base()).await.unwrap();
    let doc = get(
        &cp,
        &[
            "--kind",
            "ztunnel",
            "--node",
            "node-1",
            "--ip",
            "172.18.0.2",
            "--type",
            "workload",
            "-o",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(
        doc["node"]["id"], "ztunnel~172.18.0.2~node-1~switchyard-system",
        "{doc:#}"
    );
    let workloads = names(&doc, "workload");
    for w in ["default/echo-1", "default/echo-2", "default/client"] {
        assert!(workloads.contains(&w.to_string()), "{w}: {workloads:?}");
    }
    let echo = resource(&doc, "workload", "default/echo-1");
    assert_eq!(echo["resource"]["node"], "node-1", "{echo:#}");
    assert!(
        doc["resources"].get("cds").is_none(),
        "only the asked type: {doc:#}"
    );

    // all, for a node agent: the three workload API types, over SotW too
    let table = get(
        &cp,
        &[
            "--kind",
            "ztunnel",
            "--node",
            "node-1",
            "--ip",
            "172.18.0.2",
            "--sotw",
        ],
    )
    .await
    .ok()
    .stdout;
    assert!(
        table.lines().any(|l| l.starts_with("service")
            && l.contains("default/echo.default.svc.cluster.local")
            && l.contains("10.96.0.10")),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("workload")
            && l.contains("10.244.0.11")
            && l.contains("node=node-1")),
        "{table}"
    );

    let mut args = AS_SIDECAR.to_vec();
    args.extend(["--type", "sds", "-o", "json"]);
    let doc = get(&cp, &args).await.ok().json();
    assert_eq!(names(&doc, "sds"), ["ROOTCA"], "{doc:#}");
    let root = std::fs::read_to_string(cp.ca_dir.path().join("root-cert.pem")).unwrap();
    let served = resource(&doc, "sds", "ROOTCA")["resource"]["validationContext"]["trustedCa"]
        ["inlineString"]
        .as_str()
        .unwrap_or_else(|| panic!("{doc:#}"))
        .to_string();
    assert!(served.contains(root.trim()), "{served}");
}

/// Over TLS with the control plane's root; without the root, the TLS port gives a message
/// naming the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_over_tls() {
    let cp = ControlPlane::start(&base()).await.unwrap();
    let tls = cp.server.xds_tls_address().to_string();
    let root = cp.ca_dir.path().join("root-cert.pem");
    let mut args = vec![
        "xds",
        "get",
        "--xds",
        &tls,
        "--ca-root-file",
        root.to_str().unwrap(),
        "--type",
        "cds",
        "-o",
        "json",
    ];
    args.extend(AS_SIDECAR);
    let doc = yardctl(&args).await.ok().json();
    assert!(
        names(&doc, "cds").contains(&ECHO_CLUSTER.to_string()),
        "{doc:#}"
    );

    let mut plain = vec!["xds", "get", "--xds", &tls, "--timeout", "5s"];
    plain.extend(AS_SIDECAR);
    let run = yardctl(&plain).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stderr.contains(&tls), "{run:#?}");
}

/// Nothing listening: exit 1, and the message names the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_from_a_wrong_port_fails_naming_the_address() {
    // a port that was free a moment ago
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut args = vec!["xds", "get", "--xds", &addr, "--timeout", "5s"];
    args.extend(AS_SIDECAR);
    let run = yardctl(&args).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stderr.contains(&addr), "{run:#?}");
    assert!(run.stderr.contains("15010"), "a hint: {run:#?}");
    assert!(run.stdout.is_empty(), "{run:#?}");
}

/// A server that accepts connections and never answers: `--timeout` ends the wait, naming
/// every type that never arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_times_out_naming_the_missing_types() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let mut args = vec!["xds", "get", "--xds", &addr, "--timeout", "1s"];
    args.extend(AS_SIDECAR);
    let run = yardctl(&args).await;
    hold.abort();
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(
        run.stderr
            .contains(&format!("no complete set from {addr} within 1s")),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("cds (no response)")
            && run.stderr.contains("lds (no response)")
            && run.stderr.contains("eds (asked for once cds arrives)")
            && run.stderr.contains("rds (asked for once lds arrives)"),
        "{run:#?}"
    );
}

/// A SotW server that breaks the protocol: it repeats a nonce, sends new content under the
/// same version, and sends a type nobody asked for.
#[derive(Debug)]
struct BrokenAds;

type ResponseStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for BrokenAds {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        let mut requests = request.into_inner();
        tokio::spawn(async move { while let Ok(Some(_)) = requests.message().await {} });
        let cluster = |timeout_s: i64| {
            switchyard_protos::pack(&Cluster {
                name: "a".into(),
                connect_timeout: Some(switchyard_protos::wkt::Duration {
                    seconds: timeout_s,
                    nanos: 0,
                }),
                ..Default::default()
            })
        };
        let response = |type_url: TypeUrl, nonce: &str, resources| DiscoveryResponse {
            version_info: "v1".into(),
            type_url: type_url.as_str().into(),
            nonce: nonce.into(),
            resources,
            ..Default::default()
        };
        let responses = vec![
            Ok(response(TypeUrl::Cluster, "n1", vec![cluster(1)])),
            Ok(response(TypeUrl::Cluster, "n1", vec![cluster(2)])),
            Ok(response(TypeUrl::Listener, "n3", vec![])),
        ];
        let stream =
            tokio_stream::StreamExt::chain(tokio_stream::iter(responses), tokio_stream::pending());
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("SotW only"))
    }
}

/// `watch` reports each broken rule as a `protocol violation:` line and, with --strict, exits
/// 1; the diff shows what changed under the unchanged version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_protocol_violations() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(BrokenAds))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut args = vec![
        "xds", "watch", "--xds", &addr, "--sotw", "--type", "cds", "--count", "3", "--strict",
    ];
    args.extend(AS_SIDECAR);
    let run = yardctl(&args).await;
    server.abort();
    assert_eq!(run.code, Some(1), "{run:#?}");
    let violations: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("protocol violation: "))
        .collect();
    assert_eq!(
        violations,
        [
            "protocol violation: cds response repeats nonce n1",
            "protocol violation: cds version_info v1 again with different content for a",
            "protocol violation: type.googleapis.com/envoy.config.listener.v3.Listener response, but it was never subscribed",
        ],
        "{run:#?}"
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.trim() == "connectTimeout: \"1s\" -> \"2s\""),
        "{run:#?}"
    );
    assert!(run.stdout.contains("3 protocol violations"), "{run:#?}");
}

/// A running `yardctl xds watch` whose output is read line by line.
struct Watch {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: Vec<String>,
}

impl Watch {
    fn start(cp: &ControlPlane, args: &[&str]) -> Watch {
        let xds = cp.xds().to_string();
        let mut all = vec!["xds", "watch", "--xds", &xds];
        all.extend_from_slice(args);
        let mut child = command(&all).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        Watch {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        }
    }

    /// Reads until a line matches; returns it.
    async fn until(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {what} within {STEP:?}: {:#?}", self.seen))
                .unwrap()
                .unwrap_or_else(|| panic!("watch ended before {what}: {:#?}", self.seen));
            self.seen.push(line.clone());
            if pred(&line) {
                return line;
            }
        }
    }

    /// Waits for the process to end; its exit code and the rest of its output.
    async fn finish(mut self) -> (Option<i32>, Vec<String>) {
        let rest = tokio::time::timeout(STEP, async {
            while let Some(l) = self.lines.next_line().await.unwrap() {
                self.seen.push(l);
            }
        })
        .await;
        assert!(rest.is_ok(), "watch did not end: {:#?}", self.seen);
        let status = tokio::time::timeout(STEP, self.child.wait())
            .await
            .unwrap()
            .unwrap();
        (status.code(), self.seen)
    }
}

/// A new echo pod: the watch shows the echo cluster's endpoints updated, with the new
/// address as a diff line, and ends after the second response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_shows_an_endpoint_change_as_a_diff() {
    let cp = ControlPlane::start(&base()).await.unwrap();
    let resource = format!("eds/{ECHO_CLUSTER}");
    let mut args = AS_SIDECAR.to_vec();
    args.extend(["--type", "eds", "--resource", &resource, "--count", "2"]);
    let mut w = Watch::start(&cp, &args);
    let first = w
        .until("the first EDS response", |l| l.starts_with("eds "))
        .await;
    assert!(
        first.contains("1 added") && first.ends_with("-> ACK"),
        "{first}"
    );
    w.until("the added cluster", |l| {
        l.trim()
            .starts_with(&format!("added {ECHO_CLUSTER} version="))
    })
    .await;

    cp.manifests
        .write(
            "more.yaml",
            &[pod("default", "echo-3", "echo", "10.244.0.13")],
        )
        .unwrap();
    let (code, lines) = w.finish().await;
    assert_eq!(code, Some(0), "{lines:#?}");
    let second = lines
        .iter()
        .filter(|l| l.starts_with("eds "))
        .nth(1)
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(second.contains("1 updated"), "{second}");
    let updated = lines
        .iter()
        .find(|l| {
            l.trim()
                .starts_with(&format!("updated {ECHO_CLUSTER} version="))
        })
        .unwrap_or_else(|| panic!("{lines:#?}"));
    let versions: Vec<&str> = updated
        .rsplit("version=")
        .next()
        .unwrap()
        .split(" -> ")
        .collect();
    assert_eq!(versions.len(), 2, "{updated}");
    assert_ne!(versions[0], versions[1], "{updated}");
    let diff = lines
        .iter()
        .find(|l| l.contains("socketAddress.address: (none) -> \"10.244.0.13\""))
        .unwrap_or_else(|| panic!("no diff line for the new endpoint: {lines:#?}"));
    assert!(diff.contains("lbEndpoints[2]"), "{diff}");
    assert!(
        !lines.iter().any(|l| l.starts_with("protocol violation")),
        "{lines:#?}"
    );
}

/// `--nack cds`: the control plane records the NACK with its message while EDS, LDS and RDS
/// keep coming; `--trace` shows the NACK frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_on_purpose_is_recorded_and_the_server_keeps_serving() {
    let cp = ControlPlane::start(&base()).await.unwrap();
    let mut args = AS_SIDECAR.to_vec();
    args.extend(["--nack", "cds", "--trace", "--for", "30s"]);
    let mut w = Watch::start(&cp, &args);
    let cds = w.until("the CDS response", |l| l.starts_with("cds ")).await;
    assert!(
        cds.contains("-> NACK (nacked on purpose by yardctl"),
        "{cds}"
    );
    let mut served = BTreeSet::new();
    while served.len() < 3 {
        let l = w
            .until("EDS, LDS and RDS", |l| {
                ["eds ", "lds ", "rds "].iter().any(|t| l.starts_with(t))
            })
            .await;
        assert!(l.ends_with("-> ACK"), "{l}");
        served.insert(l[..3].to_string());
    }
    assert!(
        w.seen
            .iter()
            .any(|l| l.contains("the server keeps serving after the NACK of cds")),
        "{:#?}",
        w.seen
    );
    let nack_frame = w
        .seen
        .iter()
        .find(|l| l.starts_with(">> DeltaDiscoveryRequest") && l.contains("errorDetail"))
        .unwrap_or_else(|| panic!("no NACK frame traced: {:#?}", w.seen));
    assert!(
        nack_frame.contains("nacked on purpose by yardctl"),
        "{nack_frame}"
    );
    assert!(
        w.seen
            .iter()
            .any(|l| l.starts_with("<< DeltaDiscoveryResponse")),
        "{:#?}",
        w.seen
    );

    // The last ACK may still be on its way.
    let in_state = |t: &'static str, want: &'static str| {
        let cp = &cp;
        move || async move {
            cp.sync_state(SIDECAR, t)
                .await
                .ok()
                .flatten()
                .filter(|z| z["state"] == want)
        }
    };
    let z = eventually(STEP, "cds NACKED", in_state("cds", "NACKED")).await;
    assert_eq!(z["last_nack"], "nacked on purpose by yardctl", "{z}");
    for t in ["eds", "lds", "rds"] {
        eventually(STEP, &format!("{t} SYNCED"), in_state(t, "SYNCED")).await;
    }
    w.child.kill().await.unwrap();
}
