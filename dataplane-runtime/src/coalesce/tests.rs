use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Wake;

use super::*;

/// A sink that records each write it is given, to count them.
#[derive(Default)]
struct Writes {
    each: Vec<Vec<u8>>,
    flushes: usize,
    shut: bool,
}

impl AsyncWrite for Writes {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().each.push(buf.to_vec());
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().flushes += 1;
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().shut = true;
        Poll::Ready(Ok(()))
    }
}

#[derive(Default)]
struct CountWakes(AtomicUsize);

impl Wake for CountWakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A waker that counts how often it is woken.
fn counting_waker() -> (Arc<CountWakes>, std::task::Waker) {
    let wakes = Arc::new(CountWakes::default());
    (wakes.clone(), std::task::Waker::from(wakes))
}

fn write(c: &mut Coalesce<Writes>, cx: &mut Context<'_>, bytes: &[u8]) {
    match Pin::new(c).poll_write(cx, bytes) {
        Poll::Ready(Ok(n)) => assert_eq!(n, bytes.len()),
        other => panic!("write: {other:?}"),
    }
}

/// The task's next turn, as [`Turns::drive`] counts it.
fn next_turn(turns: &Turns) {
    turns.0.fetch_add(1, Ordering::Relaxed);
}

fn flush(c: &mut Coalesce<Writes>, cx: &mut Context<'_>) {
    assert!(Pin::new(c).poll_flush(cx).is_ready());
}

#[test]
fn flushes_of_one_turn_are_held_and_the_next_turn_writes_them_at_once() {
    let (wakes, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let turns = Turns::new();
    let mut c = Coalesce::new(Writes::default(), &turns);

    next_turn(&turns);
    // h2 flushes after a large DATA frame before it encodes the next frame, and again when
    // it has nothing left: both flushes of this turn hold the bytes
    write(&mut c, &mut cx, b"HEADERS ");
    write(&mut c, &mut cx, b"DATA ");
    flush(&mut c, &mut cx);
    write(&mut c, &mut cx, b"TRAILERS");
    flush(&mut c, &mut cx);
    assert!(
        c.get_ref().each.is_empty(),
        "nothing written before the turn is over"
    );
    assert!(
        wakes.0.load(Ordering::SeqCst) >= 1,
        "the task must be woken to come back"
    );

    next_turn(&turns);
    flush(&mut c, &mut cx);
    assert_eq!(c.get_ref().each, vec![b"HEADERS DATA TRAILERS".to_vec()]);
    assert_eq!(c.get_ref().flushes, 1);
    assert_eq!(c.pending(), 0);

    // the next batch is held again, for its own turn only
    write(&mut c, &mut cx, b"more");
    flush(&mut c, &mut cx);
    assert_eq!(c.get_ref().each.len(), 1);
    next_turn(&turns);
    flush(&mut c, &mut cx);
    assert_eq!(c.get_ref().each.len(), 2);
}

#[test]
fn a_flush_with_nothing_buffered_is_not_held() {
    let (wakes, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let turns = Turns::new();
    let mut c = Coalesce::new(Writes::default(), &turns);
    flush(&mut c, &mut cx);
    assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    assert_eq!(c.get_ref().flushes, 1);
}

#[test]
fn bytes_are_held_only_so_many_times_if_the_turns_are_not_counted() {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let turns = Turns::new();
    let mut c = Coalesce::new(Writes::default(), &turns);
    write(&mut c, &mut cx, b"stuck?");
    for _ in 0..MAX_HELD_FLUSHES {
        flush(&mut c, &mut cx);
    }
    assert!(c.get_ref().each.is_empty());
    flush(&mut c, &mut cx);
    assert_eq!(c.get_ref().each, vec![b"stuck?".to_vec()]);
}

#[test]
fn a_full_buffer_goes_out_without_waiting_for_a_flush() {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut c = Coalesce::with_capacity(8, Writes::default(), &Turns::new());
    write(&mut c, &mut cx, b"123456");
    write(&mut c, &mut cx, b"789abc");
    assert_eq!(c.get_ref().each, vec![b"123456".to_vec()]);
    assert_eq!(c.pending(), 6);
}

#[test]
fn shutdown_writes_what_is_buffered_first() {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut c = Coalesce::new(Writes::default(), &Turns::new());
    write(&mut c, &mut cx, b"last words");
    assert!(Pin::new(&mut c).poll_shutdown(&mut cx).is_ready());
    assert_eq!(c.get_ref().each, vec![b"last words".to_vec()]);
    assert!(c.get_ref().shut);
}

/// A TCP stream that counts the writes that reach it.
struct CountedTcp {
    tcp: tokio::net::TcpStream,
    writes: Arc<AtomicUsize>,
}

impl AsyncRead for CountedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.tcp).poll_write(cx, buf);
        if written.is_ready() {
            this.writes.fetch_add(1, Ordering::SeqCst);
        }
        written
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// A real HTTP/2 server (hyper) on a counted socket behind [`Coalesce`] answers a real client
/// the way a gRPC server does: HEADERS, a DATA frame of 1 KB, trailers. The whole answer
/// must leave in one write (h2 alone flushes after the DATA frame, before the trailers).
#[tokio::test]
async fn a_grpc_answer_leaves_in_one_write() {
    use http_body_util::{BodyExt as _, Empty, StreamBody};
    use hyper::body::{Bytes, Frame};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let writes = Arc::new(AtomicUsize::new(0));
    let server_writes = writes.clone();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let turns = Turns::new();
        let io = Coalesce::new(
            CountedTcp {
                tcp,
                writes: server_writes,
            },
            &turns,
        );
        let service = hyper::service::service_fn(|_req| async {
            let mut trailers = hyper::HeaderMap::new();
            trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
            let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
                Ok(Frame::data(Bytes::from(vec![b'x'; 1024]))),
                Ok(Frame::trailers(trailers)),
            ];
            let body = StreamBody::new(futures::stream::iter(frames));
            Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
        });
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(io), service);
        let _ = turns.drive(conn).await;
    });

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut per_answer = Vec::new();
    for _ in 0..3 {
        let before = writes.load(Ordering::SeqCst);
        let answer = sender
            .send_request(hyper::Request::new(Empty::<Bytes>::new()))
            .await
            .unwrap();
        let body = answer.into_body().collect().await.unwrap();
        assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(body.to_bytes().len(), 1024);
        per_answer.push(writes.load(Ordering::SeqCst) - before);
    }
    // the first answer may share its turn with the end of the handshake (SETTINGS ack)
    assert_eq!(
        &per_answer[1..],
        &[1, 1],
        "writes per answer: {per_answer:?}"
    );
}
