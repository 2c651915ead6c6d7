use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

use super::*;

/// (client app, proxy's client side, proxy's server side, server app)
fn pipes() -> (DuplexStream, DuplexStream, DuplexStream, DuplexStream) {
    let (client_app, proxy_client) = duplex(64 * 1024);
    let (proxy_server, server_app) = duplex(64 * 1024);
    (client_app, proxy_client, proxy_server, server_app)
}

fn config(idle_ms: Option<u64>) -> CopyConfig {
    CopyConfig {
        idle_timeout: idle_ms.map(Duration::from_millis),
        buffer_size: 1024,
    }
}

#[tokio::test(start_paused = true)]
async fn half_closes_pass_through_and_bytes_are_counted() {
    let (mut client_app, mut proxy_client, mut proxy_server, mut server_app) = pipes();
    let stats = Arc::new(CopyStats::default());
    let copy = tokio::spawn({
        let stats = Arc::clone(&stats);
        async move {
            copy_bidirectional(
                &mut proxy_client,
                &mut proxy_server,
                &config(Some(1_000)),
                &stats,
            )
            .await
        }
    });
    // the client sends a request and closes its sending half ...
    client_app.write_all(b"request body").await.expect("write");
    client_app.shutdown().await.expect("shutdown");
    // ... the server reads to EOF and only then answers
    let mut request = Vec::new();
    server_app.read_to_end(&mut request).await.expect("read");
    assert_eq!(request, b"request body");
    let response = vec![7u8; 5000];
    server_app.write_all(&response).await.expect("write");
    server_app.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    client_app.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, response);

    let summary = copy.await.expect("task").expect("copy");
    assert_eq!(
        summary,
        CopySummary {
            client_to_server: 12,
            server_to_client: 5000,
            end: CopyEnd::Closed
        }
    );
    assert_eq!(
        (stats.client_to_server(), stats.server_to_client()),
        (12, 5000)
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_after_the_timeout() {
    let (mut client_app, mut proxy_client, mut proxy_server, mut server_app) = pipes();
    let stats = CopyStats::default();
    let started = Instant::now();
    let config = config(Some(400));
    let copy = copy_bidirectional(&mut proxy_client, &mut proxy_server, &config, &stats);
    let traffic = async {
        client_app.write_all(b"hi").await.expect("write");
        let mut buf = [0u8; 2];
        server_app.read_exact(&mut buf).await.expect("read");
        (client_app, server_app)
    };
    let (summary, _keep_open) = tokio::join!(copy, traffic);
    let summary = summary.expect("copy");
    assert_eq!(summary.end, CopyEnd::IdleTimeout);
    assert_eq!(summary.client_to_server, 2);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited <= Duration::from_millis(500),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn traffic_keeps_a_connection_open_past_the_timeout() {
    let (mut client_app, mut proxy_client, mut proxy_server, mut server_app) = pipes();
    let stats = CopyStats::default();
    let config = config(Some(400));
    let copy = copy_bidirectional(&mut proxy_client, &mut proxy_server, &config, &stats);
    let traffic = async {
        // a byte every 300 ms for 3 s, then close both sides
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            client_app.write_all(b"x").await.expect("write");
            let mut buf = [0u8; 1];
            server_app.read_exact(&mut buf).await.expect("read");
        }
        client_app.shutdown().await.expect("shutdown");
        server_app.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        client_app.read_to_end(&mut rest).await.expect("read");
    };
    let (summary, ()) = tokio::join!(copy, traffic);
    let summary = summary.expect("copy");
    assert_eq!(summary.end, CopyEnd::Closed);
    assert_eq!(summary.client_to_server, 10);
}

#[tokio::test(start_paused = true)]
async fn without_an_idle_timeout_the_copy_waits_for_both_sides() {
    let (client_app, mut proxy_client, mut proxy_server, server_app) = pipes();
    let stats = CopyStats::default();
    let config = config(None);
    let copy = copy_bidirectional(&mut proxy_client, &mut proxy_server, &config, &stats);
    let closer = async {
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        drop(client_app);
        drop(server_app);
    };
    let (summary, ()) = tokio::join!(copy, closer);
    assert_eq!(summary.expect("copy").end, CopyEnd::Closed);
}

/// A server whose writes fail.
#[derive(Debug)]
struct Resetting;

impl AsyncRead for Resetting {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

impl AsyncWrite for Resetting {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test(start_paused = true)]
async fn a_reset_is_an_error_with_the_counts_so_far() {
    let (mut client_app, mut proxy_client) = duplex(1024);
    let stats = CopyStats::default();
    client_app.write_all(b"doomed").await.expect("write");
    let err = copy_bidirectional(
        &mut proxy_client,
        &mut Resetting,
        &config(Some(1_000)),
        &stats,
    )
    .await
    .expect_err("reset");
    assert_eq!(err.source.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!((err.client_to_server, err.server_to_client), (0, 0));
}
