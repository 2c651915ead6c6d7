//! The local cluster (`yardctl dev`), end to end, as root: real network namespaces, veths,
//! bridges, cgroups and processes, the real control plane and `switchyard-echo` in pods.
//!
//! Each test runs in a private network namespace that plays the host (the cluster's host
//! link lands there), under a unique cluster name and a temporary state folder, so it
//! neither sees nor touches a cluster someone runs on this machine. The tests take a lock:
//! the leftover checks compare machine-wide lists (namespaces, cgroups, processes).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_local_cluster::state::{ClusterState, Phase};
use switchyard_local_cluster::{addressing, cgroup, ip};
use switchyard_test_support::{eventually, netns};
use switchyard_tests::local::{Cluster, admin, as_root, in_model};
use switchyard_tests::yardctl;

const ECHO_POD: &str = "
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {app: client}}
spec:
  initContainers:
  # Runs to success first, in the pod's network namespace (its address is already there).
  - name: check-net
    command: [sh, -c, 'ip -4 addr show eth0 | grep -q \"inet $POD_IP/24\"']
  containers:
  - name: main
    command: [switchyard-echo, serve, --http, '0.0.0.0:8080', --grpc, '0.0.0.0:9090']
";

const NEVER_POD: &str = "
apiVersion: v1
kind: Pod
metadata: {name: never, namespace: demo}
spec:
  initContainers: [{name: fail, command: ['false']}]
  containers: [{name: main, command: [switchyard-echo, serve, --http, '0.0.0.0:8080']}]
";

fn deployment(replicas: u32) -> String {
    format!(
        "
apiVersion: v1
kind: Namespace
metadata: {{name: demo}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo, namespace: demo}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {{app: echo}}}}
    spec:
      containers:
      - name: echo
        command: [switchyard-echo, serve]
        args: [--http, '0.0.0.0:8080', --grpc, '0.0.0.0:9090']
        ports: [{{name: http, containerPort: 8080}}, {{name: grpc, containerPort: 9090}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: demo}}
spec:
  selector: {{app: echo}}
  ports:
  - {{name: http, port: 80, targetPort: http, appProtocol: http}}
  - {{name: grpc, port: 9090, targetPort: grpc, appProtocol: grpc}}
"
    )
}

/// The control plane's EDS for `echo` as a pod of `demo` would get it: endpoint IPs.
async fn echo_endpoints() -> BTreeSet<Ipv4Addr> {
    let path =
        "/debug/config_dump?proxy=sidecar~10.244.1.250~probe.demo~demo.svc.cluster.local&type=eds";
    let Ok((200, body)) = admin(path).await else {
        return BTreeSet::new();
    };
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut ips = BTreeSet::new();
    for r in v["resources"]["eds"].as_array().into_iter().flatten() {
        if r["name"] != "outbound|80||echo.demo.svc.cluster.local" {
            continue;
        }
        for group in r["resource"]["endpoints"].as_array().into_iter().flatten() {
            for ep in group["lbEndpoints"].as_array().into_iter().flatten() {
                if let Some(ip) = ep["endpoint"]["address"]["socketAddress"]["address"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                {
                    ips.insert(ip);
                }
            }
        }
    }
    ips
}

/// A connect from namespace `ns`; how it failed and how long that took.
fn connect_from(ns: &str, to: SocketAddr) -> (std::io::Result<()>, Duration) {
    ip::in_netns(ns, move || {
        let started = Instant::now();
        let r = TcpStream::connect_timeout(&to, Duration::from_secs(3)).map(drop);
        (r, started.elapsed())
    })
    .unwrap()
}

#[test]
fn two_nodes_three_pods_each_talk_across_nodes_and_nothing_routes_outside() {
    as_root(async {
        let c = Cluster::new(
            'a',
            &[("app.yaml", &deployment(5)), ("client.yaml", ECHO_POD)],
        );
        let took = c.up(2).await;
        // Printed, not asserted: speed is for people to compare (goal: under 5 s).
        eprintln!(
            "local cluster: 2 nodes x 3 pods up in {:.2} s",
            took.as_secs_f64()
        );

        let state = c.state();
        assert_eq!(state.phase, Phase::Ready);
        assert_eq!(state.nodes.len(), 2);
        assert_eq!(state.pods.len(), 6);
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for p in state.pods.values() {
            *per_node.entry(p.node.as_str()).or_default() += 1;
            let node = state.node(&p.node).unwrap();
            assert!(
                node.pod_cidr.contains(&p.ip),
                "{} outside {}",
                p.ip,
                node.pod_cidr
            );
        }
        assert_eq!(per_node.values().copied().collect::<Vec<_>>(), [3, 3]);
        let ips: BTreeSet<_> = state.pods.values().map(|p| p.ip).collect();
        assert_eq!(ips.len(), 6, "every pod has its own address");
        // Every container runs in its pod's cgroup leaf.
        let mount = cgroup::cgroup2_mount().unwrap();
        for p in state.pods.values() {
            let leaf = p.cgroup.strip_prefix(&mount).unwrap().display().to_string();
            for c in p.containers.values() {
                let pid = c.pid.unwrap();
                let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
                assert!(cg.contains(&format!("0::/{leaf}\n")), "{}: {cg}", p.key());
            }
        }

        // Pod to pod by IP, across nodes, both ways: HTTP/1.1, HTTP/2 and gRPC.
        let client = state.pods["demo/client"].clone();
        let far = state
            .pods
            .values()
            .find(|p| p.node != client.node)
            .unwrap()
            .clone();
        for (from, to) in [(&client, &far), (&far, &client)] {
            let url = format!("http://{}:8080/hello", to.ip);
            // Ready means the processes run; the server may need a moment to listen.
            let run = eventually(Duration::from_secs(5), "an answer", || async {
                let run = c.exec(&from.name, &["switchyard-echo", "get", &url]).await;
                (run.code == Some(0)).then_some(run)
            })
            .await;
            let body = run.json();
            assert_eq!(body["backend"], to.name.as_str(), "{body}");
            let caller = body["caller"].as_str().unwrap();
            assert!(
                caller.starts_with(&format!("{}:", from.ip)),
                "the server sees the caller's pod IP: {caller}"
            );
            assert_eq!(body["protocol"], "HTTP/1.1");
            let h2 = c
                .exec(
                    &from.name,
                    &[
                        "switchyard-echo",
                        "load",
                        "--http",
                        &url,
                        "--http2",
                        "--max-rate",
                        "--duration",
                        "300ms",
                    ],
                )
                .await
                .ok()
                .json();
            assert!(h2["ok"].as_u64().unwrap() > 0 && h2["errors"] == 0, "{h2}");
            let grpc_target = format!("{}:9090", to.ip);
            let grpc = c
                .exec(
                    &from.name,
                    &[
                        "switchyard-echo",
                        "load",
                        "--grpc",
                        &grpc_target,
                        "--max-rate",
                        "--duration",
                        "300ms",
                    ],
                )
                .await
                .ok()
                .json();
            assert!(
                grpc["ok"].as_u64().unwrap() > 0 && grpc["errors"] == 0,
                "{grpc}"
            );
            assert!(
                grpc["backends"][to.name.as_str()].as_u64().unwrap() > 0,
                "{grpc}"
            );
        }

        // Nothing routes outside, from any namespace of the cluster: refused at once.
        for ns in &state.netns {
            for to in ["203.0.113.7:80", "10.1.2.3:80", "192.168.1.1:443"] {
                let (r, took) = connect_from(ns, to.parse().unwrap());
                let e = r.expect_err("no route outside");
                assert_eq!(
                    e.kind(),
                    std::io::ErrorKind::NetworkUnreachable,
                    "{ns} -> {to}: {e}"
                );
                assert!(
                    took < Duration::from_millis(500),
                    "{ns} -> {to} took {took:?}"
                );
            }
        }
        // The host reaches the control plane and nothing else of the cluster: its only route
        // into the cluster is a /32 to the control plane over its own link.
        assert!(matches!(admin("/readyz").await, Ok((200, _))));
        let routes: Value =
            serde_json::from_str(&ip::ip_output(&["-j", "-4", "route", "show"]).unwrap()).unwrap();
        let routes: Vec<(String, String)> = routes
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["dst"].as_str().unwrap().to_string(),
                    r["dev"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        assert_eq!(
            routes,
            [("10.255.0.2".to_string(), addressing::host_link(&c.name))],
            "the host's routes"
        );
        // ... and no pod or node can reach the host.
        for ns in [&client.netns, &state.nodes[0].netns] {
            let (r, _) = connect_from(ns, SocketAddr::from((addressing::HOST_IP, 9)));
            assert!(r.is_err(), "{ns} reached the host");
        }

        // Status names every pod with its node, IP and the control plane's mode for it.
        let status = c.yardctl("status", &["-o", "json"]).await.ok().json();
        assert_eq!(status["supervisor_running"], true);
        assert_eq!(status["pods"]["demo/client"]["ip"], client.ip.to_string());
        assert_eq!(status["pods"]["demo/client"]["mode"], "ztunnel", "{status}");
        let table = c.yardctl("status", &[]).await.ok().stdout;
        assert!(
            table.contains("demo/client") && table.contains(&client.ip.to_string()),
            "{table}"
        );
        let logs = c.yardctl("logs", &["client"]).await.ok().stdout;
        assert!(logs.contains("echo"), "logs of the client pod: {logs}");
    });
}

#[test]
fn the_model_follows_deletes_restarts_scaling_and_keeps_the_last_good_manifests() {
    as_root(async {
        let c = Cluster::new(
            'b',
            &[
                ("app.yaml", &deployment(2)),
                ("client.yaml", ECHO_POD),
                ("never.yaml", NEVER_POD),
            ],
        );
        c.up(2).await;
        // A pod whose init step fails does not start, says why, and holds nothing up.
        let state = c.state();
        assert!(!state.pods.contains_key("demo/never"));
        let why = &state.pod_problems["demo/never"];
        assert!(
            why.contains("init step fail of pod demo/never failed"),
            "{why}"
        );
        let first: BTreeSet<Ipv4Addr> = c.pods_of("echo").iter().map(|p| p.ip).collect();
        assert_eq!(first.len(), 2);
        let eps = eventually(Duration::from_secs(5), "two echo endpoints", || async {
            let eps = echo_endpoints().await;
            (eps == first).then_some(eps)
        })
        .await;
        assert_eq!(eps, first);

        // Delete a pod: out of the model and the endpoints within 1 s; a replacement comes.
        let victim = c.pods_of("echo")[0].clone();
        let started = Instant::now();
        c.yardctl("delete-pod", &[&victim.name]).await.ok();
        eventually(
            Duration::from_secs(1),
            "the deleted pod out of model and endpoints",
            || async {
                let gone = !in_model("demo", &victim.name).await
                    && !echo_endpoints().await.contains(&victim.ip);
                gone.then_some(())
            },
        )
        .await;
        eprintln!(
            "local cluster: deleted pod out of the model and endpoints {} ms after delete-pod",
            started.elapsed().as_millis()
        );
        eventually(
            Duration::from_secs(5),
            "its namespace and cgroup gone",
            || async {
                (!ip::netns_path(&victim.netns).exists() && !victim.cgroup.exists()).then_some(())
            },
        )
        .await;
        let after_delete = eventually(Duration::from_secs(5), "a replacement endpoint", || async {
            let eps = echo_endpoints().await;
            (eps.len() == 2 && !eps.contains(&victim.ip)).then_some(eps)
        })
        .await;

        // A container that dies is restarted, and the pod serves again.
        let pod = c.pods_of("echo")[0].clone();
        let pid = pod.containers["echo"].pid.unwrap();
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        let restarted = eventually(
            Duration::from_secs(5),
            "the container restarted",
            || async {
                let p = c.state().pods.get(&pod.key()).cloned()?;
                let e = &p.containers["echo"];
                (e.restarts >= 1 && e.pid.is_some_and(|p| p != pid)).then_some(p)
            },
        )
        .await;
        assert!(
            restarted.containers["echo"]
                .last_exit
                .as_deref()
                .unwrap()
                .contains("signal: 9")
        );
        let metrics = c
            .state()
            .metrics_address
            .expect("the supervisor serves metrics");
        let (code, text) = switchyard_tests::http(metrics, "GET", "/metrics")
            .await
            .unwrap();
        assert_eq!(code, 200);
        let restarts = text
            .lines()
            .find_map(|l| l.strip_prefix("switchyard_localcluster_process_restarts_total "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        assert!(restarts.is_some_and(|r| r >= 1), "{text}");
        let url = format!("http://{}:8080/", pod.ip);
        eventually(
            Duration::from_secs(5),
            "the restarted pod answers",
            || async {
                let run = c.exec("client", &["switchyard-echo", "get", &url]).await;
                (run.code == Some(0)).then_some(())
            },
        )
        .await;

        // Scale 2 -> 4: two new pods, two new addresses, four endpoints.
        c.write("app.yaml", &deployment(4));
        let scaled = eventually(Duration::from_secs(5), "four echo endpoints", || async {
            let eps = echo_endpoints().await;
            (eps.len() == 4).then_some(eps)
        })
        .await;
        assert!(
            after_delete.is_subset(&scaled),
            "the old pods stay: {after_delete:?} {scaled:?}"
        );
        let pods: BTreeSet<Ipv4Addr> = c.pods_of("echo").iter().map(|p| p.ip).collect();
        assert_eq!(pods, scaled, "endpoints are exactly the pods");

        // A broken manifest: said clearly, and nothing that runs is lost.
        c.write(
            "broken.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n",
        );
        let problems = eventually(Duration::from_secs(5), "the problem reported", || async {
            let s = c.state();
            (!s.manifest_problems.is_empty()).then_some(s.manifest_problems)
        })
        .await;
        assert!(
            problems[0].contains("broken.yaml") && problems[0].contains("not valid YAML"),
            "{problems:?}"
        );
        let table = c.yardctl("status", &[]).await.ok().stdout;
        assert!(table.contains("broken.yaml"), "{table}");
        assert_eq!(c.pods_of("echo").len(), 4);
        assert_eq!(echo_endpoints().await, scaled);
        std::fs::remove_file(c.manifests.path().join("broken.yaml")).unwrap();
        eventually(Duration::from_secs(5), "the problem cleared", || async {
            c.state().manifest_problems.is_empty().then_some(())
        })
        .await;
        assert_eq!(c.pods_of("echo").len(), 4);

        // Scale 4 -> 1: the three newest go, endpoints follow.
        c.write("app.yaml", &deployment(1));
        let one = eventually(Duration::from_secs(5), "one echo endpoint", || async {
            let eps = echo_endpoints().await;
            (eps.len() == 1).then_some(eps)
        })
        .await;
        let left: BTreeSet<Ipv4Addr> = c.pods_of("echo").iter().map(|p| p.ip).collect();
        assert_eq!(left, one);
        assert!(
            one.is_subset(&after_delete),
            "the oldest pod stays: {one:?}"
        );
    });
}

/// What cluster `name` could leave behind: its namespaces, its host link, its cgroup tree
/// and its processes. Only this cluster's: tests in other processes on the same host run
/// clusters of their own.
#[derive(Debug, PartialEq, Eq)]
struct Leftovers {
    namespaces: Vec<String>,
    links: Vec<String>,
    cgroups: Vec<PathBuf>,
    processes: Vec<(u32, String)>,
}

fn leftovers(name: &str, state_dir: &Path) -> Leftovers {
    let host_link = addressing::host_link(name);
    let links: Vec<String> = ip::list_links()
        .unwrap()
        .into_iter()
        .filter(|l| *l == host_link)
        .collect();
    let mut cgroups = Vec::new();
    let mut stack = vec![cgroup::cluster_dir(&cgroup::cgroup2_mount().unwrap(), name)];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.filter_map(Result::ok) {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
            cgroups.push(d);
        }
    }
    cgroups.sort();
    let marker = state_dir.display().to_string();
    let own_cgroup = format!("{}/{name}", cgroup::ROOT_NAME);
    let mut processes = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cg = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
        let cmd = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        // A zombie is dead already; it only waits for its parent (init, for the orphans a
        // killed supervisor leaves) to collect its exit status.
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        let in_cluster = cg.lines().any(|l| {
            l.split_once("::/").is_some_and(|(_, path)| {
                path == own_cgroup || path.starts_with(&format!("{own_cgroup}/"))
            })
        });
        if !zombie && (in_cluster || cmd.contains(&marker)) {
            processes.push((pid, cmd));
        }
    }
    let prefix = addressing::netns::prefix(name);
    Leftovers {
        namespaces: ip::list_netns()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect(),
        links,
        cgroups,
        processes,
    }
}

#[test]
fn down_leaves_nothing_behind_also_after_sigkill_mid_up() {
    as_root(async {
        let c = Cluster::new(
            'c',
            &[("app.yaml", &deployment(3)), ("client.yaml", ECHO_POD)],
        );
        let before = leftovers(&c.name, &c.state_path());

        // A host route into a cluster range: refused before anything is made.
        netns::run("ip", &["route", "add", "10.96.7.0/24", "dev", "lo"]).unwrap();
        let run = yardctl::finish(c.up_command(2).spawn().unwrap())
            .await
            .failed();
        assert!(
            run.stderr
                .contains("service range 10.96.0.0/16 overlaps the host's route 10.96.7.0/24"),
            "{run:#?}"
        );
        assert_eq!(leftovers(&c.name, &c.state_path()), before);
        netns::run("ip", &["route", "del", "10.96.7.0/24", "dev", "lo"]).unwrap();

        // Bad manifests: `up` says what is wrong and creates nothing.
        c.write("bad.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: c, image: nginx}]}\n");
        let run = yardctl::finish(c.up_command(2).spawn().unwrap())
            .await
            .failed();
        assert!(
            run.stderr.contains("bad.yaml")
                && run.stderr.contains("spec.containers[0].command: missing"),
            "{run:#?}"
        );
        assert_eq!(leftovers(&c.name, &c.state_path()), before);
        std::fs::remove_file(c.manifests.path().join("bad.yaml")).unwrap();

        // Up, a second up refused, down, down again.
        c.up(2).await;
        assert_ne!(leftovers(&c.name, &c.state_path()), before);
        let again = yardctl::finish(c.up_command(2).spawn().unwrap())
            .await
            .failed();
        assert!(again.stderr.contains("already up"), "{again:#?}");
        let down = c.yardctl("down", &[]).await.ok();
        assert!(down.stdout.contains("processes killed"), "{down:#?}");
        assert_eq!(leftovers(&c.name, &c.state_path()), before);
        let twice = c.yardctl("down", &[]).await.ok();
        assert!(twice.stdout.contains("nothing to remove"), "{twice:#?}");

        // SIGKILL to `up` and to the supervisor half-way, at two points: while nodes are
        // being made, and once the first pods exist. `down` still removes everything.
        for (point, ready) in [
            (
                "namespaces being made",
                Box::new(|s: &ClusterState| {
                    ip::netns_path(&addressing::netns::underlay(&s.name)).exists()
                }) as Box<dyn Fn(&ClusterState) -> bool>,
            ),
            (
                "first pods made",
                Box::new(|s: &ClusterState| s.pods.len() >= 2),
            ),
        ] {
            let mut up = c.up_command(2).spawn().unwrap();
            let state = eventually(Duration::from_secs(10), point, || async {
                ClusterState::load(&c.state_path())
                    .ok()
                    .flatten()
                    .filter(|s| ready(s))
            })
            .await;
            assert_eq!(state.phase, Phase::Creating, "killed before it was ready");
            if let Some(pid) = state.supervisor_pid {
                std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status()
                    .unwrap();
            }
            up.kill().await.unwrap();
            assert_ne!(
                leftovers(&c.name, &c.state_path()),
                before,
                "{point}: something to clean"
            );
            c.yardctl("down", &[]).await.ok();
            assert_eq!(
                leftovers(&c.name, &c.state_path()),
                before,
                "after SIGKILL at: {point}"
            );
        }
    });
}
