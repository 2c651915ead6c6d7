//! Pool limits against real HTTP/1.1 servers on loopback.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper::service::service_fn;
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::proxy::circuit::{CircuitLimits, Resource};

/// An HTTP/1.1 server answering every request after `delay`; counts connections accepted
/// and connections closed.
struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

async fn server(delay: Duration) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (a, c) = (accepted.clone(), closed.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            a.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                        Bytes::from_static(b"ok"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Server {
        addr,
        accepted,
        closed,
    }
}

fn request() -> Request<Body> {
    Request::builder()
        .uri("/")
        .header("host", "test")
        .body(
            Empty::new()
                .map_err(|never: std::convert::Infallible| -> BoxError { match never {} })
                .boxed(),
        )
        .unwrap()
}

async fn get(
    pool: &Arc<Pool>,
    breaker: &CircuitBreaker,
    addr: SocketAddr,
) -> Result<u16, SendError> {
    let target = Target {
        cluster: "c",
        addr,
        breaker,
    };
    let response = pool
        .send(target, Proto::Http1, request(), || async move {
            Ok(Box::new(TcpStream::connect(addr).await?) as UpstreamIo)
        })
        .await?;
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .map_err(SendError::Reset)?;
    Ok(status)
}

fn limits(max_connections: u32, max_pending_requests: u32) -> CircuitBreaker {
    CircuitBreaker::new(CircuitLimits {
        max_connections,
        max_pending_requests,
        ..CircuitLimits::default()
    })
}

#[tokio::test]
async fn at_the_connection_limit_requests_wait_for_the_pooled_connection_and_overflow_pending() {
    let s = server(Duration::from_millis(300)).await;
    let pool = Arc::new(Pool::default());
    let breaker = limits(1, 1);
    let first = tokio::spawn({
        let (pool, breaker) = (pool.clone(), breaker.clone());
        async move { get(&pool, &breaker, s.addr).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // waits for the first one's connection (one pending slot)
    let second = tokio::spawn({
        let (pool, breaker) = (pool.clone(), breaker.clone());
        async move { get(&pool, &breaker, s.addr).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(breaker.snapshot().pending_requests.active, 1);
    // no pending slot left: refused at once
    match get(&pool, &breaker, s.addr).await {
        Err(SendError::Overloaded(o)) => assert_eq!(o.resource, Resource::PendingRequests),
        other => panic!("expected a pending-request overflow, got {other:?}"),
    }
    assert_eq!(first.await.unwrap().unwrap(), 200);
    assert_eq!(second.await.unwrap().unwrap(), 200);
    assert_eq!(
        s.accepted.load(Ordering::SeqCst),
        1,
        "one connection, reused"
    );
    let snap = breaker.snapshot();
    assert_eq!(snap.pending_requests.refused, 1);
    assert_eq!(snap.pending_requests.active, 0);
    assert_eq!(snap.connections.active, 1, "the pooled connection");
}

async fn wait_pooled(pool: &Arc<Pool>, n: usize) {
    for _ in 0..100 {
        if pool.pooled() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pool.pooled(), n);
}

#[tokio::test]
async fn an_endpoint_without_connections_gets_one_at_the_limit_as_an_overflow() {
    let (x, y) = (server(Duration::ZERO).await, server(Duration::ZERO).await);
    let pool = Arc::new(Pool::default());
    let breaker = limits(1, 1);
    assert_eq!(get(&pool, &breaker, x.addr).await.unwrap(), 200);
    wait_pooled(&pool, 1).await;
    // y has no connection: it is not starved behind x's
    let answer = tokio::time::timeout(Duration::from_secs(5), get(&pool, &breaker, y.addr))
        .await
        .expect("the request to y waited");
    assert_eq!(answer.unwrap(), 200);
    assert_eq!(y.accepted.load(Ordering::SeqCst), 1);
    let snap = breaker.snapshot();
    assert_eq!(snap.connections.refused, 1, "counted as an overflow");
    assert_eq!(snap.connections.active, 2);
}

/// x's one idle connection is pooled in `idle`; y's only connection, from `asking`, is busy,
/// and a second request to y from `asking` needs a second connection under `breaker`'s limit
/// of 2. Returns x and y once both y requests are answered and x's connection (if closed)
/// is seen closed.
async fn make_room_for_y(
    idle: &Arc<Pool>,
    asking: &Arc<Pool>,
    breaker: &CircuitBreaker,
) -> (Server, Server) {
    let x = server(Duration::ZERO).await;
    let y = server(Duration::from_millis(500)).await;
    assert_eq!(get(idle, breaker, x.addr).await.unwrap(), 200);
    wait_pooled(idle, 1).await;
    let busy = tokio::spawn({
        let (asking, breaker) = (asking.clone(), breaker.clone());
        async move { get(&asking, &breaker, y.addr).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = tokio::time::timeout(Duration::from_secs(5), get(asking, breaker, y.addr))
        .await
        .expect("the second request to y waited forever");
    assert_eq!(answer.unwrap(), 200);
    assert_eq!(busy.await.unwrap().unwrap(), 200);
    for _ in 0..100 {
        if x.closed.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (x, y)
}

#[tokio::test]
async fn an_idle_connection_to_another_endpoint_is_closed_to_make_room() {
    let pool = Arc::new(Pool::default());
    let breaker = limits(2, 1);
    let (x, y) = make_room_for_y(&pool, &pool, &breaker).await;
    assert_eq!(
        x.closed.load(Ordering::SeqCst),
        1,
        "x's idle connection closed"
    );
    assert_eq!(y.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(breaker.snapshot().connections.refused, 1, "it waited once");
}

/// Two workers' pools under one connection limit: worker A's idle connection to x is
/// closed to make room for worker B's second connection to y (without the group B would
/// wait for its busy connection and reuse it: y would see one connection).
#[tokio::test]
async fn an_idle_connection_of_another_workers_pool_is_closed_to_make_room() {
    let group = Arc::new(PoolGroup::default());
    let (a, b) = (group.join(), group.join());
    let breaker = limits(2, 1);
    let (x, y) = make_room_for_y(&a, &b, &breaker).await;
    assert_eq!(
        x.closed.load(Ordering::SeqCst),
        1,
        "worker A's idle connection to x closed"
    );
    assert_eq!(
        y.accepted.load(Ordering::SeqCst),
        2,
        "B dialed a second connection"
    );
    assert_eq!(a.pooled(), 0);
}

#[tokio::test]
async fn no_pending_slots_refuses_requests_that_need_a_new_connection() {
    let s = server(Duration::ZERO).await;
    let pool = Arc::new(Pool::default());
    let breaker = limits(10, 0);
    match get(&pool, &breaker, s.addr).await {
        Err(SendError::Overloaded(o)) => {
            assert_eq!(o.resource, Resource::PendingRequests);
            assert_eq!(o.limit, 0);
        }
        other => panic!("expected a pending-request overflow, got {other:?}"),
    }
    assert_eq!(s.accepted.load(Ordering::SeqCst), 0, "nothing was dialed");
}
