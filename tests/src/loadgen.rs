//! Reading the reports of the C load generators the `sidecar_vs_envoy` bench drives at max
//! rate: `wrk` (HTTP/1.1) and `h2load` (nghttp2, gRPC). Each becomes a JSON report in the
//! shape of `switchyard-echo load`'s (`requests`, `ok`, `errors`, `error_kinds`,
//! `rate_achieved`, `latency_ms.{p50,p90,p99,p999,mean,max}`), with `ok + errors = requests`.

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// wrk's `done` hook (`wrk --script`): one JSON line with the counts and the latency
/// percentiles, in microseconds.
pub const WRK_REPORT_SCRIPT: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%f,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
"#;

/// The report from wrk's output with [`WRK_REPORT_SCRIPT`]. wrk's `requests` are the
/// responses read (any status); connect, read and write errors and timeouts are outside
/// them, so `requests` here adds them in, and `errors` counts them with the responses that
/// were not 2xx/3xx. wrk's percentiles cover every response read.
pub fn wrk_report(stdout: &str, target: &str, connections: usize) -> anyhow::Result<Value> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("{\"requests\""))
        .with_context(|| format!("no report line in wrk's output: {stdout}"))?;
    let w: Value = serde_json::from_str(line).context("parsing wrk's report line")?;
    let n = |k: &str| {
        w[k].as_u64()
            .with_context(|| format!("wrk's report has no {k}"))
    };
    let ms = |k: &str| w[k].as_f64().map_or(f64::NAN, |us| us / 1000.0);
    let responses = n("requests")?;
    let status = n("status")?;
    let mut kinds = serde_json::Map::new();
    let mut socket_errors = 0;
    for k in ["connect", "read", "write", "timeout"] {
        let v = n(k)?;
        socket_errors += v;
        if v > 0 {
            kinds.insert(k.to_owned(), json!(v));
        }
    }
    if status > 0 {
        kinds.insert("status".to_owned(), json!(status));
    }
    let seconds = n("duration_us")? as f64 / 1e6;
    if seconds <= 0.0 {
        bail!("wrk reports a run of {seconds} s");
    }
    let ok = responses.saturating_sub(status);
    Ok(json!({
        "generator": "wrk",
        "mode": "max",
        "target": target,
        "connections": connections,
        "duration_s": seconds,
        "requests": responses + socket_errors,
        "ok": ok,
        "errors": responses + socket_errors - ok,
        "error_kinds": kinds,
        "rate_achieved": responses as f64 / seconds,
        "latency_ms": {
            "p50": ms("p50_us"), "p90": ms("p90_us"), "p99": ms("p99_us"),
            "p999": ms("p999_us"), "mean": ms("mean_us"), "max": ms("max_us"),
        },
    }))
}

/// `switchyard.test.v1.EchoRequest`, field for field (the echo crate's generated type is not
/// a dependency of this crate).
#[derive(Clone, PartialEq, prost::Message)]
struct EchoRequest {
    #[prost(string, tag = "1")]
    message: String,
}

/// A gRPC message frame (uncompressed, 5-byte length prefix) holding an `EchoRequest` whose
/// `message` is `len` times `x`: the body h2load sends.
pub fn grpc_echo_request(len: usize) -> Vec<u8> {
    let pb = prost::Message::encode_to_vec(&EchoRequest {
        message: "x".repeat(len),
    });
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(pb.len() as u32).to_be_bytes());
    frame.extend_from_slice(&pb);
    frame
}

/// The figures read from h2load's summary.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct H2loadSummary {
    /// `finished in …`: the measured duration.
    pub seconds: f64,
    /// Requests that ended, any way.
    pub done: u64,
    /// Of them, answered 2xx or 3xx.
    pub succeeded: u64,
    /// Of them, not succeeded (`errored` included).
    pub failed: u64,
    /// Of the failed, failed by a stream or connection error (`timeout` included).
    pub errored: u64,
    /// Of the errored, timed out.
    pub timeout: u64,
    /// Bytes of response DATA received (every response, any status).
    pub data_bytes: u64,
}

/// Reads `finished in 10.00s, …`, `requests: N total, N started, N done, N succeeded, N
/// failed, N errored, N timeout` and `traffic: …, X (N) data` from h2load's output.
pub fn parse_h2load(out: &str) -> anyhow::Result<H2loadSummary> {
    let mut h = H2loadSummary::default();
    let (mut finished, mut requests, mut traffic) = (false, false, false);
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            let text = rest.split(',').next().unwrap_or_default().trim();
            h.seconds =
                parse_seconds(text).with_context(|| format!("h2load's duration {text:?}"))?;
            finished = true;
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                let (Some(n), Some(what)) = (words.next(), words.next()) else {
                    bail!("h2load's requests line {line:?}");
                };
                let n: u64 = n
                    .parse()
                    .with_context(|| format!("h2load's requests line {line:?}"))?;
                match what {
                    "done" => h.done = n,
                    "succeeded" => h.succeeded = n,
                    "failed" => h.failed = n,
                    "errored" => h.errored = n,
                    "timeout" => h.timeout = n,
                    _ => {}
                }
            }
            requests = true;
        } else if let Some(rest) = line.strip_prefix("traffic: ") {
            // "150.00MB (157282972) data": the exact count is in parentheses
            let exact = rest
                .split(',')
                .find(|p| p.trim_end().ends_with(" data"))
                .and_then(|d| d.split('(').nth(1))
                .and_then(|d| d.split(')').next())
                .with_context(|| format!("h2load's traffic line {line:?}"))?;
            h.data_bytes = exact
                .parse()
                .with_context(|| format!("h2load's traffic line {line:?}"))?;
            traffic = true;
        }
    }
    if !(finished && requests && traffic) {
        bail!("h2load's summary lacks a finished, requests or traffic line: {out}");
    }
    Ok(h)
}

/// `10.00s`, `452.31ms`, `873us`: h2load's durations.
fn parse_seconds(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else {
        (text.strip_suffix('s')?, 1.0)
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// The microseconds to the end of each 2xx response in an h2load `--log-file` (columns:
/// start time in µs since the epoch, status or -1, µs until the end of the response).
pub fn h2load_latencies(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| {
            let mut cols = l.split('\t');
            let _start = cols.next()?;
            let status: i32 = cols.next()?.trim().parse().ok()?;
            let micros: u64 = cols.next()?.trim().parse().ok()?;
            (200..300).contains(&status).then_some(micros)
        })
        .collect()
}

/// The report of one h2load gRPC run. h2load knows HTTP status only: a gRPC failure can be
/// a 200 with `grpc-status` in trailers and no DATA. So an answer counts as ok when it
/// succeeded and the DATA received covers a whole `reply_bytes` answer for it (measured
/// beforehand with one request); succeeded answers beyond what the DATA covers are errors
/// (`without_reply`). Percentiles are over the 2xx answers in the log.
pub fn h2load_report(
    h: &H2loadSummary,
    mut latencies: Vec<u64>,
    reply_bytes: u64,
    target: &str,
    connections: usize,
) -> anyhow::Result<Value> {
    if reply_bytes == 0 {
        bail!("a gRPC answer with no DATA cannot be told from a failure");
    }
    if h.seconds <= 0.0 {
        bail!("h2load reports a run of {} s", h.seconds);
    }
    latencies.sort_unstable();
    let pct = |q: f64| match latencies.len() {
        0 => f64::NAN,
        n => latencies[((q * n as f64).ceil() as usize).clamp(1, n) - 1] as f64 / 1000.0,
    };
    let mean = if latencies.is_empty() {
        f64::NAN
    } else {
        latencies.iter().sum::<u64>() as f64 / latencies.len() as f64 / 1000.0
    };
    let covered = h.data_bytes / reply_bytes;
    let without_reply = h.succeeded.saturating_sub(covered);
    let ok = h.succeeded - without_reply;
    let mut kinds = serde_json::Map::new();
    for (k, v) in [
        ("status", h.failed.saturating_sub(h.errored)),
        ("stream_or_connection", h.errored.saturating_sub(h.timeout)),
        ("timeout", h.timeout),
        ("without_reply", without_reply),
    ] {
        if v > 0 {
            kinds.insert(k.to_owned(), json!(v));
        }
    }
    Ok(json!({
        "generator": "h2load",
        "mode": "max",
        "target": target,
        "connections": connections,
        "duration_s": h.seconds,
        "requests": h.done,
        "ok": ok,
        "errors": h.done.saturating_sub(ok),
        "error_kinds": kinds,
        "rate_achieved": h.done as f64 / h.seconds,
        "data_bytes": h.data_bytes,
        "reply_bytes": reply_bytes,
        "latency_ms": {
            "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "p999": pct(0.999),
            "mean": mean, "max": pct(1.0),
        },
    }))
}

#[cfg(test)]
mod tests;
