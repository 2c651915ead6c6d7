use super::*;
use crate::server::{LOCALHOST_ANY_PORT, spawn_echo};

fn http_target(addr: SocketAddr, path: &str, protocol: HttpProtocol) -> LoadTarget {
    LoadTarget::Http {
        addr,
        authority: format!("{addr}"),
        path: path.to_owned(),
        protocol,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_rate_is_roughly_kept() {
    let backend = spawn_echo("fixed", Some(LOCALHOST_ANY_PORT), None).await;
    let target = http_target(backend.http_addr().unwrap(), "/", HttpProtocol::Http1);
    let mut options = LoadOptions::new(target, Duration::from_secs(1));
    options.rate = RateMode::Fixed { per_second: 200.0 };
    options.connections = 2;
    let report = run(options).await;
    assert!(report.requests > 0, "{report:?}");
    assert_eq!(report.mode, LoadMode::Fixed);
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(
        (140.0..=260.0).contains(&report.rate_achieved),
        "asked 200/s: {report:?}"
    );
    assert!(
        (140..=260).contains(&report.requests),
        "asked 200 in 1 s: {report:?}"
    );
    assert_eq!(report.backends.get("fixed"), Some(&report.requests));
    assert!(report.latency_ms.p50 > 0.0 && report.latency_ms.p50 <= report.latency_ms.max);
}

#[tokio::test]
async fn max_rate_over_h2c_has_no_errors() {
    let backend = spawn_echo("max", Some(LOCALHOST_ANY_PORT), None).await;
    let target = http_target(backend.http_addr().unwrap(), "/", HttpProtocol::Http2);
    let mut options = LoadOptions::new(target, Duration::from_millis(300));
    options.connections = 2;
    let report = run(options).await;
    assert!(report.requests > 10, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.ok, report.requests);
    assert_eq!(report.mode, LoadMode::Max);
    assert_eq!(report.rate_requested, None);
    assert_eq!(report.backends.get("max"), Some(&report.requests));
}

#[tokio::test]
async fn error_statuses_are_counted_by_kind() {
    let backend = spawn_echo("sick", Some(LOCALHOST_ANY_PORT), None).await;
    let target = http_target(
        backend.http_addr().unwrap(),
        "/status/503",
        HttpProtocol::Http1,
    );
    let report = run(LoadOptions::new(target, Duration::from_millis(200))).await;
    assert!(report.requests > 0, "{report:?}");
    assert_eq!(report.ok, 0);
    assert_eq!(report.errors, report.requests);
    assert_eq!(report.error_kinds.get("http_503"), Some(&report.requests));
    // the backend still answered
    assert_eq!(report.backends.get("sick"), Some(&report.requests));
}

#[tokio::test]
async fn refused_connections_are_errors_not_failures() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let target = http_target(dead, "/", HttpProtocol::Http1);
    let mut options = LoadOptions::new(target, Duration::from_millis(100));
    options.rate = RateMode::Fixed { per_second: 50.0 };
    let report = run(options).await;
    assert!(report.requests > 0, "{report:?}");
    assert_eq!(report.error_kinds.get("connect"), Some(&report.requests));
}

#[tokio::test]
async fn timeouts_are_counted() {
    let backend = spawn_echo("slow", Some(LOCALHOST_ANY_PORT), None).await;
    let target = http_target(
        backend.http_addr().unwrap(),
        "/?delay_ms=1000",
        HttpProtocol::Http1,
    );
    let mut options = LoadOptions::new(target, Duration::from_millis(50));
    options.timeout = Duration::from_millis(100);
    let report = run(options).await;
    assert_eq!(report.requests, 1, "{report:?}");
    assert_eq!(report.error_kinds.get("timeout"), Some(&1));
    assert!(report.latency_ms.max >= 100.0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_stream_load() {
    let backend = spawn_echo("g", None, Some(LOCALHOST_ANY_PORT)).await;
    let addr = backend.grpc_addr().unwrap();
    for stream in [false, true] {
        let target = LoadTarget::from_grpc_addr(&addr.to_string(), stream)
            .await
            .unwrap();
        let mut options = LoadOptions::new(target, Duration::from_millis(300));
        options.connections = 2;
        let report = run(options).await;
        assert!(report.requests > 10, "stream={stream}: {report:?}");
        assert_eq!(report.errors, 0, "stream={stream}: {report:?}");
        assert_eq!(report.backends.get("g"), Some(&report.requests));
        let method = if stream { "EchoChat" } else { "Echo" };
        assert!(report.target.ends_with(method), "{}", report.target);
    }
}

#[tokio::test]
async fn report_json_has_the_promised_shape() {
    let backend = spawn_echo("shape", Some(LOCALHOST_ANY_PORT), None).await;
    let url = format!("http://{}/a?b=c", backend.http_addr().unwrap());
    let target = LoadTarget::from_http_url(&url, HttpProtocol::Http1)
        .await
        .unwrap();
    let mut options = LoadOptions::new(target, Duration::from_millis(100));
    options.rate = RateMode::Fixed { per_second: 100.0 };
    options.host = Some("echo.test".into());
    let report = run(options).await;
    let json = serde_json::to_value(&report).unwrap();
    for field in [
        "target",
        "mode",
        "duration_s",
        "requests",
        "ok",
        "errors",
        "error_kinds",
        "rate_achieved",
        "latency_ms",
        "backends",
    ] {
        assert!(json.get(field).is_some(), "{field} missing in {json}");
    }
    for p in ["p50", "p90", "p99", "p999", "max", "mean"] {
        assert!(json["latency_ms"][p].is_number(), "{p} in {json}");
    }
    assert_eq!(json["mode"], "fixed");
    assert_eq!(json["target"], url);
    let back: LoadReport = serde_json::from_value(json).unwrap();
    assert_eq!(back, report);
}

#[tokio::test]
async fn targets_parse() {
    let t = LoadTarget::from_http_url("http://127.0.0.1:8080", HttpProtocol::Http2)
        .await
        .unwrap();
    assert_eq!(
        t,
        LoadTarget::Http {
            addr: "127.0.0.1:8080".parse().unwrap(),
            authority: "127.0.0.1:8080".into(),
            path: "/".into(),
            protocol: HttpProtocol::Http2,
        }
    );
    let t = LoadTarget::from_http_url("http://[::1]/x", HttpProtocol::Http1)
        .await
        .unwrap();
    assert!(matches!(t, LoadTarget::Http { addr, .. } if addr == "[::1]:80".parse().unwrap()));
    assert!(
        LoadTarget::from_http_url("https://127.0.0.1/", HttpProtocol::Http1)
            .await
            .is_err()
    );
    assert!(
        LoadTarget::from_http_url("not a url", HttpProtocol::Http1)
            .await
            .is_err()
    );
    assert!(
        LoadTarget::from_grpc_addr("127.0.0.1", false)
            .await
            .is_err()
    );
    let t = LoadTarget::from_grpc_addr("localhost:9090", true)
        .await
        .unwrap();
    assert!(matches!(t, LoadTarget::Grpc { addr, stream: true, .. } if addr.port() == 9090));
}

#[test]
fn options_are_validated_all_at_once() {
    let target = http_target(LOCALHOST_ANY_PORT, "/", HttpProtocol::Http1);
    let mut options = LoadOptions::new(target, Duration::ZERO);
    options.connections = 0;
    options.rate = RateMode::Fixed { per_second: -1.0 };
    options.grpc_message = "x".repeat(MAX_GRPC_MESSAGE + 1);
    let error = options.validate().unwrap_err().to_string();
    for part in ["connections", "rate", "duration", "gRPC message"] {
        assert!(error.contains(part), "{part} in {error}");
    }
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
    for bad in ["5", "s", "5 parsecs", "-1s", ""] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn grpc_kinds_are_snake_case() {
    assert_eq!(
        grpc_error_kind(tonic::Code::Unavailable),
        "grpc_unavailable"
    );
    assert_eq!(
        grpc_error_kind(tonic::Code::DeadlineExceeded),
        "grpc_deadline_exceeded"
    );
}
