use super::*;

/// h2load 1.52's summary after 4 s at max rate against the echo app (trimmed).
const H2LOAD_RUN: &str = "\
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 4.00s, 38249.75 req/s, 38.67MB/s
requests: 152999 total, 153063 started, 152999 done, 152999 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 152999 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 154.68MB (162196924) total, 606.21KB (620764) headers (space savings 94.99%), 150.00MB (157282972) data
                     min         max         mean         sd        +/- sd
time for request:      282us      5.89ms      1.57ms       485us    66.62%
";

/// h2load 1.52, three requests: the duration in microseconds.
const H2LOAD_SHORT: &str = "\
finished in 776us, 3865.98 req/s, 4.04MB/s
requests: 3 total, 3 started, 3 done, 3 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 3 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 3.21KB (3291) total, 57B (57) headers (space savings 76.54%), 3.01KB (3084) data
";

/// wrk 4.1 with `WRK_REPORT_SCRIPT`.
const WRK_RUN: &str = "\
Running 1s test @ http://127.0.0.1:18081/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    33.85us   12.49us 523.00us   94.05%
  127461 requests in 1.10s, 40.11MB read
Requests/sec: 115907.35
Transfer/sec:     36.48MB
{\"requests\":127461,\"duration_us\":1099680,\"connect\":0,\"read\":2,\"write\":0,\"status\":5,\"timeout\":1,\"p50_us\":32,\"p90_us\":43,\"p99_us\":57,\"p999_us\":179,\"mean_us\":33.850780,\"max_us\":523}
";

#[test]
fn h2load_summaries_are_read_whole() {
    let h = parse_h2load(H2LOAD_RUN).unwrap();
    assert_eq!(
        h,
        H2loadSummary {
            seconds: 4.0,
            done: 152_999,
            succeeded: 152_999,
            failed: 0,
            errored: 0,
            timeout: 0,
            data_bytes: 157_282_972,
        }
    );
    let short = parse_h2load(H2LOAD_SHORT).unwrap();
    assert!((short.seconds - 776e-6).abs() < 1e-12, "{}", short.seconds);
    assert_eq!(short.data_bytes, 3084);
}

#[test]
fn an_h2load_output_without_its_summary_is_an_error() {
    let cut: String = H2LOAD_RUN
        .lines()
        .filter(|l| !l.starts_with("traffic:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let error = parse_h2load(&cut).unwrap_err().to_string();
    assert!(error.contains("traffic"), "{error}");
    assert!(parse_h2load("finished in soon, 1 req/s\n").is_err());
}

#[test]
fn grpc_answers_without_their_reply_count_as_errors() {
    // 10 succeeded by HTTP status, but DATA for only 8 whole replies of 1028 bytes: two
    // were `grpc-status` failures in trailers
    let h = H2loadSummary {
        seconds: 2.0,
        done: 12,
        succeeded: 10,
        failed: 2,
        errored: 1,
        timeout: 1,
        data_bytes: 8 * 1028,
    };
    let r = h2load_report(&h, vec![3000, 1000, 2000], 1028, "t", 64).unwrap();
    assert_eq!(r["ok"], 8);
    assert_eq!(r["errors"], 4);
    assert_eq!(r["requests"], 12);
    assert_eq!(r["error_kinds"]["without_reply"], 2);
    assert_eq!(r["error_kinds"]["status"], 1);
    assert_eq!(r["error_kinds"]["timeout"], 1);
    assert!(r["error_kinds"].get("stream_or_connection").is_none());
    assert_eq!(r["rate_achieved"], 6.0);
    assert_eq!(r["latency_ms"]["p50"], 2.0);
    assert_eq!(r["latency_ms"]["max"], 3.0);
    assert_eq!(r["latency_ms"]["mean"], 2.0);
    assert!(h2load_report(&h, vec![], 0, "t", 64).is_err());
}

#[test]
fn latencies_come_from_2xx_lines_of_the_log() {
    let log = "1795841171816079\t200\t178\n1795841171816289\t-1\t46\n1795841171816344\t503\t9\n\
               1795841171816345\t204\t38\nnot a line\n";
    assert_eq!(h2load_latencies(log), vec![178, 38]);
}

#[test]
fn wrk_reports_count_socket_errors_as_requests_that_failed() {
    let r = wrk_report(WRK_RUN, "http://x/", 4).unwrap();
    assert_eq!(r["requests"], 127_461 + 2 + 1);
    assert_eq!(r["ok"], 127_461 - 5);
    assert_eq!(r["errors"], 5 + 2 + 1);
    assert_eq!(r["error_kinds"]["read"], 2);
    assert_eq!(r["error_kinds"]["status"], 5);
    assert_eq!(r["latency_ms"]["p99"], 0.057);
    let rate = r["rate_achieved"].as_f64().unwrap();
    assert!((rate - 127_461.0 / 1.09968).abs() < 0.01, "{rate}");
    assert!(wrk_report("Running 1s test\n", "t", 1).is_err());
}

#[test]
fn the_grpc_request_frame_holds_an_echo_request() {
    let frame = grpc_echo_request(1000);
    assert_eq!(frame[0], 0, "uncompressed");
    let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    assert_eq!(len, frame.len() - 5);
    let decoded: EchoRequest = prost::Message::decode(&frame[5..]).unwrap();
    assert_eq!(decoded.message.len(), 1000);
    // field 1, length-delimited, length 1000 as a two-byte varint
    assert_eq!(&frame[5..8], &[0x0a, 0xe8, 0x07]);
}
