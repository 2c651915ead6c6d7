//! Whole-system ADS load benchmark: a real `switchyard` process serving a synthetic mesh from
//! a manifest directory, and N simulated delta clients (a mix of `sidecar` and `ztunnel`) in
//! this process. Measures time until every client is synced, convergence after an endpoint
//! change (from the manifest write until each client has the change; p50/p99/max), server RSS,
//! and bytes each client receives per endpoint change. Writes JSON and an SVG plot to
//! `bench-results/`.
//!
//! ```text
//! cargo bench -p switchyard-xds-server --bench ads_load -- --clients 10000
//! cargo bench -p switchyard-xds-server --bench ads_load -- --clients 1000 --services 50,500
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use prost::Message;
use switchyard_protos::TypeUrl;
use switchyard_test_support::ads::{DeltaClient, node};
use switchyard_test_support::synthetic::Shape;
use tokio::sync::{Semaphore, mpsc};

#[derive(Debug, Clone)]
struct Args {
    clients: usize,
    ztunnel_share: f64,
    services: Vec<usize>,
    endpoints: usize,
    namespaces: usize,
    changes: usize,
    out: PathBuf,
}

fn parse_args() -> Args {
    let mut a = Args {
        clients: 1000,
        ztunnel_share: 0.5,
        services: vec![50],
        endpoints: 10,
        namespaces: 5,
        changes: 5,
        out: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../bench-results")),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_default();
        match arg.as_str() {
            "--clients" => a.clients = val().parse().expect("--clients N"),
            "--ztunnel-share" => a.ztunnel_share = val().parse().expect("--ztunnel-share 0..1"),
            "--services" => {
                a.services = val()
                    .split(',')
                    .map(|s| s.parse().expect("--services N[,M]"))
                    .collect()
            }
            "--endpoints" => a.endpoints = val().parse().expect("--endpoints N"),
            "--namespaces" => a.namespaces = val().parse().expect("--namespaces N"),
            "--changes" => a.changes = val().parse().expect("--changes N"),
            "--out" => a.out = PathBuf::from(val()),
            "--bench" => {}
            "--help" | "-h" => {
                println!(
                    "ads_load [--clients N] [--ztunnel-share F] [--services N[,M..]] [--endpoints N] [--namespaces N] [--changes N] [--out DIR]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// What a client reports.
#[derive(Debug)]
enum Event {
    Synced {
        at: Instant,
    },
    Update {
        at: Instant,
        bytes: usize,
        resources: usize,
    },
    Failed(String),
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

struct ServerProcess {
    child: std::process::Child,
    xds: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SIGTERM first: the server shuts down cleanly (and profilers write their output)
        let _ = std::process::Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_server(dir: &Path) -> anyhow::Result<ServerProcess> {
    let xds: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    // SWITCHYARD_LOADTEST_WRAPPER="valgrind --tool=massif" runs the server under a profiler.
    let wrapper = std::env::var("SWITCHYARD_LOADTEST_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut cmd = match words.next() {
        Some(prog) => {
            let mut c = std::process::Command::new(prog);
            c.args(words).arg(env!("CARGO_BIN_EXE_switchyard"));
            c
        }
        None => std::process::Command::new(env!("CARGO_BIN_EXE_switchyard")),
    };
    let child = cmd
        .args(["serve", "--config-dir"])
        .arg(dir)
        .args([
            "--xds-address",
            &xds.to_string(),
            "--admin-address",
            &admin.to_string(),
        ])
        .arg("--set")
        .arg(format!("ca_dir={}", dir.with_extension("ca").display()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting switchyard")?;
    let server = ServerProcess { child, xds, admin };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok((200, _)) = switchyard_tests_http(admin, "/readyz").await {
            return Ok(server);
        }
        anyhow::ensure!(Instant::now() < deadline, "switchyard not ready in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Tiny HTTP GET over a fresh connection.
async fn switchyard_tests_http(
    addr: std::net::SocketAddr,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

async fn run_client(
    xds: std::net::SocketAddr,
    id: String,
    ztunnel: bool,
    events: mpsc::Sender<Event>,
    connect_slots: Arc<Semaphore>,
) {
    let types: &[TypeUrl] = if ztunnel {
        &[TypeUrl::Service, TypeUrl::Workload, TypeUrl::Authorization]
    } else {
        &[
            TypeUrl::Cluster,
            TypeUrl::ClusterLoadAssignment,
            TypeUrl::Listener,
            TypeUrl::RouteConfiguration,
        ]
    };
    let permit = connect_slots.acquire().await.unwrap();
    let mut c = match DeltaClient::connect(xds, node(&id, &[])).await {
        Ok(c) => c,
        Err(e) => {
            let _ = events.send(Event::Failed(format!("{id}: {e:#}"))).await;
            return;
        }
    };
    let none = BTreeMap::new();
    for t in types {
        if let Err(e) = c.subscribe(*t, &["*"], &none).await {
            let _ = events.send(Event::Failed(format!("{id}: {e:#}"))).await;
            return;
        }
    }
    let mut pending: Vec<TypeUrl> = types.to_vec();
    while !pending.is_empty() {
        match c.recv(Duration::from_secs(120)).await {
            Ok(r) => {
                let t = TypeUrl::parse(&r.type_url).unwrap();
                c.ack(t).await.ok();
                pending.retain(|p| *p != t);
            }
            Err(e) => {
                let _ = events.send(Event::Failed(format!("{id}: {e:#}"))).await;
                return;
            }
        }
    }
    drop(permit);
    // Large initial states come in several responses: the client is synced when the stream
    // has been quiet for a while; it was synced when the last of them arrived.
    let mut last = Instant::now();
    loop {
        match c.recv(Duration::from_millis(500)).await {
            Ok(r) => {
                last = Instant::now();
                let t = TypeUrl::parse(&r.type_url).unwrap();
                c.ack(t).await.ok();
            }
            Err(e) if e.to_string().starts_with("no response within") => break,
            Err(e) => {
                let _ = events.send(Event::Failed(format!("{id}: {e:#}"))).await;
                return;
            }
        }
    }
    c.held.clear();
    let _ = events.send(Event::Synced { at: last }).await;
    loop {
        match c.recv(Duration::from_secs(3600)).await {
            Ok(r) => {
                let at = Instant::now();
                let t = TypeUrl::parse(&r.type_url).unwrap();
                c.ack(t).await.ok();
                // held resources are not needed here; keep the client's memory flat
                c.held.clear();
                let _ = events
                    .send(Event::Update {
                        at,
                        bytes: r.encoded_len(),
                        resources: r.resources.len() + r.removed_resources.len(),
                    })
                    .await;
            }
            Err(_) => return,
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct RunResult {
    clients: usize,
    sidecars: usize,
    ztunnels: usize,
    services: usize,
    endpoints_per_service: usize,
    workloads: usize,
    connect_and_sync_seconds: f64,
    convergence_ms: Vec<Vec<f64>>,
    convergence_p50_ms: f64,
    convergence_p99_ms: f64,
    convergence_max_ms: f64,
    bytes_per_change_per_client: f64,
    bytes_per_change_all_clients: f64,
    resources_per_change_per_client: f64,
    server_rss_mib_idle: f64,
    server_rss_mib_synced: f64,
    server_rss_mib_peak: f64,
    server_push_mean_ms: f64,
    server_change_to_ack_mean_ms: f64,
    failures: usize,
}

async fn run(args: &Args, services: usize) -> anyhow::Result<RunResult> {
    let shape = Shape {
        services,
        endpoints: args.endpoints,
        namespaces: args.namespaces,
        nodes: ((args.clients as f64 * args.ztunnel_share) as usize).max(1),
    };
    let dir = tempfile::tempdir()?;
    for (name, text) in shape.manifests() {
        std::fs::write(dir.path().join(name), text)?;
    }
    let server = start_server(dir.path()).await?;
    let pid = server.child.id();
    let rss_idle = rss_kib(pid, "VmRSS:");
    println!(
        "\n== {} services x {} endpoints, {} clients ({} ztunnel share): server pid {pid}, RSS idle {:.1} MiB",
        services,
        args.endpoints,
        args.clients,
        args.ztunnel_share,
        rss_idle as f64 / 1024.0
    );

    let (tx, mut rx) = mpsc::channel::<Event>(args.clients * 2 + 16);
    let slots = Arc::new(Semaphore::new(256));
    let ztunnels = (args.clients as f64 * args.ztunnel_share).round() as usize;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.clients {
        let zt = i < ztunnels;
        let id = if zt {
            format!(
                "ztunnel~10.255.{}.{}~node-{i}~switchyard-system",
                i >> 8,
                i & 255
            )
        } else {
            let ns = format!("ns-{}", i % args.namespaces.max(1));
            format!(
                "sidecar~10.32.{}.{}~client-{i}.{ns}~{ns}.svc.cluster.local",
                i >> 8,
                i & 255
            )
        };
        tasks.push(tokio::spawn(run_client(
            server.xds,
            id,
            zt,
            tx.clone(),
            slots.clone(),
        )));
    }
    let bar = indicatif::ProgressBar::new(args.clients as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("connect+sync {bar:40} {pos}/{len} {elapsed}")
            .unwrap(),
    );
    let mut synced = 0;
    let mut failures = Vec::new();
    let mut last_sync = start;
    while synced + failures.len() < args.clients {
        match tokio::time::timeout(Duration::from_secs(300), rx.recv()).await {
            Ok(Some(Event::Synced { at })) => {
                synced += 1;
                last_sync = last_sync.max(at);
                bar.inc(1);
            }
            Ok(Some(Event::Failed(e))) => {
                failures.push(e);
                bar.inc(1);
            }
            Ok(Some(Event::Update { .. })) => {}
            Ok(None) | Err(_) => anyhow::bail!("clients stopped reporting ({synced} synced)"),
        }
    }
    bar.finish();
    let sync_secs = (last_sync - start).as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    while rx.try_recv().is_ok() {}
    let rss_synced = rss_kib(pid, "VmRSS:");
    println!(
        "synced {synced}/{} in {sync_secs:.2} s, {} failures; server RSS {:.1} MiB",
        args.clients,
        failures.len(),
        rss_synced as f64 / 1024.0
    );
    if let Some(f) = failures.first() {
        println!("first failure: {f}");
    }

    // endpoint changes: one more pod in service (k % services), each time
    let mut all_latencies = Vec::new();
    let mut bytes_total = 0usize;
    let mut resources_total = 0usize;
    let updates_seen = AtomicUsize::new(0);
    for k in 0..args.changes {
        let svc = k % services;
        let text = shape.service_manifest(svc, args.endpoints + 1 + k);
        let tmp = dir.path().join(format!(".svc-{svc}.tmp"));
        std::fs::write(&tmp, text)?;
        let t0 = Instant::now();
        std::fs::rename(&tmp, dir.path().join(format!("svc-{svc}.yaml")))?;
        let mut lat = Vec::with_capacity(synced);
        let deadline = Instant::now() + Duration::from_secs(60);
        while lat.len() < synced {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some(Event::Update {
                    at,
                    bytes,
                    resources,
                })) => {
                    lat.push((at - t0).as_secs_f64() * 1000.0);
                    bytes_total += bytes;
                    resources_total += resources;
                    updates_seen.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        // stragglers beyond one update per client would skew bytes; drain quietly
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Ok(ev) = rx.try_recv() {
            if let Event::Update {
                bytes, resources, ..
            } = ev
            {
                bytes_total += bytes;
                resources_total += resources;
            }
        }
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "change {k}: {}/{} clients updated; p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            lat.len(),
            synced,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN)
        );
        all_latencies.push(lat);
    }
    let rss_peak = rss_kib(pid, "VmHWM:");
    let metrics = switchyard_tests_http(server.admin, "/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default();
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let push_ms = 1000.0 * metric("switchyard_xds_push_duration_seconds_sum")
        / metric("switchyard_xds_push_duration_seconds_count");
    let server_convergence_ms = 1000.0 * metric("switchyard_xds_convergence_seconds_sum")
        / metric("switchyard_xds_convergence_seconds_count");
    println!(
        "server: mean push (compute all snapshots) {push_ms:.0} ms; mean model-change-to-ACK {server_convergence_ms:.0} ms"
    );
    let mut flat: Vec<f64> = all_latencies.iter().flatten().copied().collect();
    flat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let changes = args.changes.max(1) as f64;
    for t in tasks {
        t.abort();
    }
    drop(server);
    let _ = std::fs::remove_dir_all(dir.path().with_extension("ca"));
    Ok(RunResult {
        clients: args.clients,
        sidecars: args.clients - ztunnels,
        ztunnels,
        services,
        endpoints_per_service: args.endpoints,
        workloads: services * args.endpoints,
        connect_and_sync_seconds: sync_secs,
        convergence_p50_ms: percentile(&flat, 0.5),
        convergence_p99_ms: percentile(&flat, 0.99),
        convergence_max_ms: flat.last().copied().unwrap_or(f64::NAN),
        convergence_ms: all_latencies,
        bytes_per_change_per_client: bytes_total as f64 / changes / synced.max(1) as f64,
        bytes_per_change_all_clients: bytes_total as f64 / changes,
        resources_per_change_per_client: resources_total as f64 / changes / synced.max(1) as f64,
        server_rss_mib_idle: rss_idle as f64 / 1024.0,
        server_rss_mib_synced: rss_synced as f64 / 1024.0,
        server_rss_mib_peak: rss_peak as f64 / 1024.0,
        server_push_mean_ms: push_ms,
        server_change_to_ack_mean_ms: server_convergence_ms,
        failures: failures.len(),
    })
}

fn plot(path: &Path, results: &[RunResult]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_ms = results
        .iter()
        .map(|r| r.convergence_max_ms)
        .fold(100.0_f64, f64::max)
        * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Convergence after one endpoint change (CDF over clients and changes)",
            ("sans-serif", 20),
        )
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_ms, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("ms from manifest write until the client has the change")
        .y_desc("share of clients")
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN];
    for (i, r) in results.iter().enumerate() {
        let mut flat: Vec<f64> = r.convergence_ms.iter().flatten().copied().collect();
        flat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let n = flat.len().max(1) as f64;
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(
                flat.iter()
                    .enumerate()
                    .map(|(k, v)| (*v, (k + 1) as f64 / n)),
                color.stroke_width(2),
            ))?
            .label(format!(
                "{} clients, {} services: p99 {:.0} ms, {:.0} B/client/change, RSS {:.0} MiB",
                r.clients,
                r.services,
                r.convergence_p99_ms,
                r.bytes_per_change_per_client,
                r.server_rss_mib_peak
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    for &s in &args.services {
        results.push(rt.block_on(run(&args, s))?);
    }
    std::fs::create_dir_all(&args.out)?;
    let tag = format!(
        "ads_load-{}clients-{}svc",
        args.clients,
        args.services
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("_")
    );
    let json = args.out.join(format!("{tag}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(&results)?)?;
    let svg = args.out.join(format!("{tag}.svg"));
    plot(&svg, &results)?;
    println!(
        "\n{:<8} {:<9} {:>10} {:>8} {:>8} {:>8} {:>12} {:>10} {:>9}",
        "clients",
        "services",
        "sync s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "B/cl/change",
        "RSS MiB",
        "failures"
    );
    for r in &results {
        println!(
            "{:<8} {:<9} {:>10.2} {:>8.0} {:>8.0} {:>8.0} {:>12.0} {:>10.1} {:>9}",
            r.clients,
            r.services,
            r.connect_and_sync_seconds,
            r.convergence_p50_ms,
            r.convergence_p99_ms,
            r.convergence_max_ms,
            r.bytes_per_change_per_client,
            r.server_rss_mib_peak,
            r.failures
        );
    }
    println!("\nwrote {} and {}", json.display(), svg.display());
    Ok(())
}
