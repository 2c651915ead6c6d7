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

#[test]
fn a_flush_waits_one_turn_then_writes_the_batch_at_once() {
    let (wakes, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut c = Coalesce::new(Writes::default());

    write(&mut c, &mut cx, b"HEADERS ");
    write(&mut c, &mut cx, b"DATA ");
    assert!(Pin::new(&mut c).poll_flush(&mut cx).is_pending());
    assert_eq!(
        wakes.0.load(Ordering::SeqCst),
        1,
        "the task must be woken to come back"
    );
    assert!(
        c.get_ref().each.is_empty(),
        "nothing written before the turn is over"
    );

    // another stream's frames, queued during the same turn
    write(&mut c, &mut cx, b"TRAILERS");
    assert!(Pin::new(&mut c).poll_flush(&mut cx).is_ready());
    assert_eq!(c.get_ref().each, vec![b"HEADERS DATA TRAILERS".to_vec()]);
    assert_eq!(c.get_ref().flushes, 1);
    assert_eq!(c.pending(), 0);

    // the next batch is put off again
    write(&mut c, &mut cx, b"more");
    assert!(Pin::new(&mut c).poll_flush(&mut cx).is_pending());
    assert!(Pin::new(&mut c).poll_flush(&mut cx).is_ready());
    assert_eq!(c.get_ref().each.len(), 2);
}

#[test]
fn a_flush_with_nothing_buffered_is_not_put_off() {
    let (wakes, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut c = Coalesce::new(Writes::default());
    assert!(Pin::new(&mut c).poll_flush(&mut cx).is_ready());
    assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    assert_eq!(c.get_ref().flushes, 1);
}

#[test]
fn a_full_buffer_goes_out_without_waiting_for_a_flush() {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut c = Coalesce::with_capacity(8, Writes::default());
    write(&mut c, &mut cx, b"123456");
    write(&mut c, &mut cx, b"789abc");
    assert_eq!(c.get_ref().each, vec![b"123456".to_vec()]);
    assert_eq!(c.pending(), 6);
}

#[test]
fn shutdown_writes_what_is_buffered_first() {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut c = Coalesce::new(Writes::default());
    write(&mut c, &mut cx, b"last words");
    assert!(Pin::new(&mut c).poll_shutdown(&mut cx).is_ready());
    assert_eq!(c.get_ref().each, vec![b"last words".to_vec()]);
    assert!(c.get_ref().shut);
}

#[tokio::test]
async fn bytes_cross_a_real_connection_in_order() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    let mut client = Coalesce::new(client.unwrap());
    let (mut server, _) = server.unwrap();
    for part in [&b"one "[..], b"two ", b"three"] {
        client.write_all(part).await.unwrap();
    }
    client.flush().await.unwrap();
    let mut got = vec![0u8; 13];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(got, b"one two three");
    // reads pass through
    server.write_all(b"back").await.unwrap();
    let mut back = [0u8; 4];
    client.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"back");
}
