use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncWriteExt, DuplexStream, ReadBuf, duplex};

use super::*;

/// The first bytes of a real TLS 1.3 ClientHello record (record header + handshake type).
const CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0xf1, 0x01, 0x00, 0x00, 0xed, 0x03, 0x03,
];

fn detector(timeout_ms: u64) -> Detector {
    Detector::new(DetectConfig {
        timeout: Duration::from_millis(timeout_ms),
        max_prefix: 64,
    })
}

async fn read_all(io: &mut Prefixed<DuplexStream>) -> Vec<u8> {
    let mut out = Vec::new();
    io.read_to_end(&mut out).await.expect("read");
    out
}

#[test]
fn classifies_prefixes() {
    use Protocol::*;
    let cases: &[(&[u8], Verdict)] = &[
        (b"", Verdict::NeedMore),
        (b"G", Verdict::NeedMore),
        (b"GET", Verdict::NeedMore),
        (b"GET /", Verdict::NeedMore),
        (b"GET /a HTTP/1", Verdict::NeedMore),
        (b"GET /a HTTP/1.1\r", Verdict::NeedMore),
        (b"GET /a HTTP/1.1\r\n", Verdict::Known(Http1)),
        (b"OPTIONS * HTTP/1.0\r\nHost: x\r\n", Verdict::Known(Http1)),
        (b"PATCH /x HTTP/1.1\n", Verdict::Known(Http1)),
        (b"PUT /x HTTP/1.1\r\n", Verdict::Known(Http1)),
        (b"P", Verdict::NeedMore),
        (b"PRI * HTTP/2.0\r\n", Verdict::NeedMore),
        (H2_PREFACE, Verdict::Known(Http2)),
        (
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04",
            Verdict::Known(Http2),
        ),
        (&CLIENT_HELLO[..3], Verdict::NeedMore),
        (CLIENT_HELLO, Verdict::Known(Tls)),
        // a TLS alert record, a server-hello-shaped record, a bad version
        (
            &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02],
            Verdict::Known(Opaque),
        ),
        (
            &[0x16, 0x03, 0x03, 0x00, 0x02, 0x02],
            Verdict::Known(Opaque),
        ),
        (&[0x16, 0x02], Verdict::Known(Opaque)),
        // Redis' inline GET is not HTTP
        (b"GET key\r\n", Verdict::Known(Opaque)),
        (b"get / HTTP/1.1\r\n", Verdict::Known(Opaque)),
        (b"GETS / HTTP/1.1\r\n", Verdict::Known(Opaque)),
        (b"GET  / HTTP/1.1\r\n", Verdict::Known(Opaque)),
        (b"GET / HTTP/2.0\r\n", Verdict::Known(Opaque)),
        (b"SSH-2.0-OpenSSH_9.6\r\n", Verdict::Known(Opaque)),
        (b"\x00\x00\x00\x08", Verdict::Known(Opaque)),
    ];
    for (bytes, want) in cases {
        assert_eq!(
            classify(bytes, false),
            *want,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn a_full_buffer_decides() {
    // a request target longer than the buffer still looks like HTTP/1
    assert_eq!(
        classify(b"GET /aaaaaaaa", true),
        Verdict::Known(Protocol::Http1)
    );
    // anything else undecided is opaque
    assert_eq!(
        classify(b"GET /a HTTP/1", true),
        Verdict::Known(Protocol::Opaque)
    );
    assert_eq!(
        classify(b"PRI * HT", true),
        Verdict::Known(Protocol::Opaque)
    );
}

#[tokio::test(start_paused = true)]
async fn http1_arriving_byte_by_byte_is_detected_and_replayed() {
    let (mut client, server) = duplex(1024);
    let request = b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n";
    let writer = tokio::spawn(async move {
        for b in request {
            client.write_all(&[*b]).await.expect("write");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        client
    });
    let d = detector(1_000);
    let mut detected = d.detect(server).await.expect("detect");
    assert_eq!(detected.protocol, Protocol::Http1);
    assert!(!detected.timed_out);
    let client = writer.await.expect("writer");
    drop(client);
    assert_eq!(read_all(&mut detected.io).await, request);
    assert_eq!(d.stats().snapshot().http1, 1);
}

#[tokio::test(start_paused = true)]
async fn grpc_prior_knowledge_is_http2() {
    let (mut client, server) = duplex(1024);
    let mut sent = H2_PREFACE.to_vec();
    sent.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // an empty SETTINGS frame
    client.write_all(&sent).await.expect("write");
    drop(client);
    let d = detector(1_000);
    let mut detected = d.detect(server).await.expect("detect");
    assert_eq!(detected.protocol, Protocol::Http2);
    assert_eq!(read_all(&mut detected.io).await, sent);
}

#[tokio::test(start_paused = true)]
async fn a_client_hello_is_tls() {
    let (mut client, server) = duplex(1024);
    client.write_all(CLIENT_HELLO).await.expect("write");
    let detected = detector(1_000).detect(server).await.expect("detect");
    assert_eq!(detected.protocol, Protocol::Tls);
    assert_eq!(detected.io.prefix(), CLIENT_HELLO);
}

#[tokio::test(start_paused = true)]
async fn a_server_first_protocol_falls_to_opaque_after_the_timeout() {
    let (mut client, server) = duplex(1024);
    let d = detector(300);
    let started = tokio::time::Instant::now();
    let mut detected = d.detect(server).await.expect("detect");
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    assert_eq!(detected.protocol, Protocol::Opaque);
    assert!(detected.timed_out);
    assert!(detected.io.prefix().is_empty());
    // the stream still works both ways: the server speaks first, then the client answers
    detected
        .io
        .write_all(b"220 smtp ready\r\n")
        .await
        .expect("write");
    let mut greeting = [0u8; 16];
    client.read_exact(&mut greeting).await.expect("read");
    assert_eq!(&greeting, b"220 smtp ready\r\n");
    client.write_all(b"EHLO x\r\n").await.expect("write");
    drop(client);
    assert_eq!(read_all(&mut detected.io).await, b"EHLO x\r\n");
    let counts = d.stats().snapshot();
    assert_eq!((counts.opaque, counts.timeouts), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn too_few_bytes_before_the_timeout_are_kept() {
    let (mut client, server) = duplex(1024);
    client.write_all(b"GE").await.expect("write");
    let mut detected = detector(100).detect(server).await.expect("detect");
    assert_eq!(
        (detected.protocol, detected.timed_out),
        (Protocol::Opaque, true)
    );
    client.write_all(b"T / HTTP/1.1\r\n").await.expect("write");
    drop(client);
    assert_eq!(read_all(&mut detected.io).await, b"GET / HTTP/1.1\r\n");
}

#[tokio::test(start_paused = true)]
async fn a_client_closing_first_is_opaque_without_a_timeout() {
    let (mut client, server) = duplex(1024);
    client.write_all(b"PRI").await.expect("write");
    drop(client);
    let d = detector(1_000);
    let mut detected = d.detect(server).await.expect("detect");
    assert_eq!(
        (detected.protocol, detected.timed_out),
        (Protocol::Opaque, false)
    );
    assert_eq!(read_all(&mut detected.io).await, b"PRI");
    assert_eq!(d.stats().snapshot().timeouts, 0);
}

#[tokio::test(start_paused = true)]
async fn detection_reads_at_most_the_prefix_limit() {
    let (mut client, server) = duplex(1024);
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(200));
    client.write_all(long.as_bytes()).await.expect("write");
    drop(client);
    let mut detected = detector(1_000).detect(server).await.expect("detect");
    assert_eq!(detected.protocol, Protocol::Http1);
    assert_eq!(detected.io.prefix().len(), 64);
    assert_eq!(read_all(&mut detected.io).await, long.as_bytes());
}

/// A stream whose reads fail.
#[derive(Debug)]
struct Broken;

impl AsyncRead for Broken {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
    }
}

#[tokio::test]
async fn a_read_error_is_reported() {
    let err = detector(1_000).detect(Broken).await.expect_err("error");
    assert_eq!(err.0.kind(), io::ErrorKind::ConnectionReset);
}

/// The bytes `read_h2_preface` reads, and what it says, for a client that sends `sent` (in
/// pieces of 5 bytes, then closes).
async fn preface_of(sent: &[u8]) -> (bool, Vec<u8>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut client, server) = tokio::io::duplex(64);
    let sent = sent.to_vec();
    let writer = tokio::spawn(async move {
        for piece in sent.chunks(5) {
            client.write_all(piece).await.unwrap();
            tokio::task::yield_now().await;
        }
    });
    let (http2, mut io) = read_h2_preface(server).await.unwrap();
    writer.await.unwrap();
    let mut all = Vec::new();
    io.read_to_end(&mut all).await.unwrap();
    (http2, all)
}

#[tokio::test]
async fn the_inbound_side_tells_http2_from_http1_and_loses_no_byte() {
    let mut h2 = H2_PREFACE.to_vec();
    h2.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
    assert_eq!(preface_of(&h2).await, (true, h2.clone()));

    let h1 = b"POST /echo HTTP/1.1\r\nhost: echo\r\n\r\n".to_vec();
    assert_eq!(preface_of(&h1).await, (false, h1.clone()));

    // "PRI" then something else: HTTP/1 (hyper answers it), every byte kept
    let odd = b"PRI * HTTP/1.1\r\n\r\n".to_vec();
    assert_eq!(preface_of(&odd).await, (false, odd.clone()));

    // a caller that closes within the preface
    assert_eq!(
        preface_of(&H2_PREFACE[..10]).await,
        (false, H2_PREFACE[..10].to_vec())
    );
}

/// Randomised inputs for the properties below (stable Rust has no coverage-guided fuzzer
/// here): real first bytes of each protocol, cut at a random length, with random bytes
/// changed, inserted or appended, plus bytes that are random throughout. Seeded, so a
/// failure names its case and reruns the same.
fn random_first_bytes(rng: &mut rand::rngs::StdRng) -> Vec<u8> {
    use rand::Rng as _;
    const SEEDS: &[&[u8]] = &[
        b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /switchyard.echo.Echo/Echo HTTP/1.0\n",
        b"OPTIONS * HTTP/1.1\r\n",
        H2_PREFACE,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00",
        CLIENT_HELLO,
        b"GET key\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"",
    ];
    let mut bytes = SEEDS[rng.random_range(0..SEEDS.len())].to_vec();
    if rng.random_bool(0.1) {
        bytes = (0..rng.random_range(0..80)).map(|_| rng.random()).collect();
    }
    bytes.truncate(rng.random_range(0..=bytes.len()));
    for _ in 0..rng.random_range(0..3) {
        let at = rng.random_range(0..=bytes.len());
        match rng.random_range(0..3) {
            0 if at < bytes.len() => bytes[at] = rng.random(),
            1 => bytes.insert(at, rng.random()),
            _ => bytes.extend((0..rng.random_range(1..40)).map(|_| rng.random::<u8>())),
        }
    }
    bytes
}

/// A decision, once made on a prefix, is the decision for every longer prefix: how the bytes
/// arrive (and so which prefixes detection sees) cannot change what a connection is.
/// Classifying never panics, and a full buffer always decides.
#[test]
fn a_decision_holds_for_every_longer_prefix_of_random_input() {
    use rand::SeedableRng as _;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5157_1ab5);
    let mut decided = [0usize; 4];
    for case in 0..20_000 {
        let bytes = random_first_bytes(&mut rng);
        let mut first: Option<(usize, Protocol)> = None;
        for end in 0..=bytes.len() {
            let prefix = &bytes[..end];
            assert_ne!(
                classify(prefix, true),
                Verdict::NeedMore,
                "case {case}: a full buffer must decide: {prefix:?}"
            );
            match (classify(prefix, false), first) {
                (Verdict::Known(p), None) => first = Some((end, p)),
                (Verdict::Known(p), Some((at, q))) => assert_eq!(
                    p, q,
                    "case {case}: {q:?} after {at} bytes, then {p:?} after {end}: {bytes:?}"
                ),
                (Verdict::NeedMore, Some((at, q))) => panic!(
                    "case {case}: {q:?} after {at} bytes, then undecided after {end}: {bytes:?}"
                ),
                (Verdict::NeedMore, None) => {}
            }
        }
        if let Some((_, p)) = first {
            decided[p as usize] += 1;
        }
    }
    // the inputs reach every verdict, so the property was checked for each
    assert!(
        decided.iter().all(|&n| n > 100),
        "decisions per protocol: {decided:?}"
    );
}

/// The same bytes, written in random pieces and then closed, are detected as when they come
/// at once, and the stream detection gives back replays every one of them.
#[tokio::test]
async fn random_input_in_random_pieces_gets_one_answer_and_loses_no_byte() {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xde7e_c7ed);
    let d = Detector::new(DetectConfig {
        timeout: Duration::from_secs(30),
        max_prefix: 64,
    });
    for case in 0..400 {
        let bytes = random_first_bytes(&mut rng);
        let mut answers = Vec::new();
        for split in [false, true] {
            let mut pieces = Vec::new();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = if split {
                    rng.random_range(1..=rest.len().min(7))
                } else {
                    rest.len()
                };
                pieces.push(rest[..n].to_vec());
                rest = &rest[n..];
            }
            let (mut client, server) = duplex(256);
            let writer = tokio::spawn(async move {
                for piece in pieces {
                    client.write_all(&piece).await.expect("write");
                    tokio::task::yield_now().await;
                }
            });
            let mut detected = d.detect(server).await.expect("detect");
            writer.await.expect("writer");
            assert!(!detected.timed_out, "case {case}: {bytes:?}");
            assert_eq!(
                read_all(&mut detected.io).await,
                bytes,
                "case {case}: bytes lost or changed"
            );
            answers.push(detected.protocol);
        }
        assert_eq!(answers[0], answers[1], "case {case}: {bytes:?}");
    }
}
