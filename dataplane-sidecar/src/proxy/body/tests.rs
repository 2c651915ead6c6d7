use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use http_body_util::channel::Channel;
use hyper::HeaderMap;
use hyper::body::{Body, Frame};

use super::EndAhead;

type Chan = Channel<Bytes, &'static str>;

/// A body whose first DATA chunks are `chunks`, already sent; the sender stays open.
fn body_of(
    chunks: &[&'static [u8]],
) -> (http_body_util::channel::Sender<Bytes, &'static str>, Chan) {
    let (mut tx, body) = Chan::new(4);
    for chunk in chunks {
        tx.try_send(Frame::data(Bytes::from_static(chunk))).unwrap();
    }
    (tx, body)
}
/// What one poll of a body gives.
type Polled<B> = Poll<Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>>;

fn poll<B: Body + Unpin>(body: &mut B, waker: &Waker) -> Polled<B> {
    Pin::new(body).poll_frame(&mut Context::from_waker(waker))
}

fn data<E: std::fmt::Debug>(polled: Poll<Option<Result<Frame<Bytes>, E>>>) -> Bytes {
    match polled {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().expect("a DATA frame"),
        other => panic!("expected a DATA frame, got {other:?}"),
    }
}

#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn the_message_before_an_empty_end_frame_is_the_last_chunk() {
    let waker = Waker::noop();
    // What a gRPC client sends: the message, then an empty DATA frame that ends the stream.
    let frames = || {
        let (mut tx, body) = body_of(&[b"message"]);
        tx.try_send(Frame::data(Bytes::new())).unwrap();
        drop(tx);
        body
    };

    // Forwarded as is, the message would not carry the end.
    let mut plain = frames();
    assert_eq!(data(poll(&mut plain, waker)), "message");
    assert!(!plain.is_end_stream());

    let mut body = EndAhead::new(frames());
    assert_eq!(data(poll(&mut body, waker)), "message");
    assert!(
        body.is_end_stream(),
        "the empty frame and the end were seen"
    );
    assert_eq!(body.size_hint().exact(), Some(0));
    assert!(matches!(poll(&mut body, waker), Poll::Ready(None)));
}

#[test]
fn frames_that_are_already_there_come_next_in_order() {
    let waker = Waker::noop();
    let (mut tx, inner) = body_of(&[b"one", b"three"]);
    let mut body = EndAhead::new(inner);

    assert_eq!(data(poll(&mut body, waker)), "one");
    assert!(!body.is_end_stream());
    assert!(
        body.size_hint().lower() >= 5,
        "the chunk looked at counts as still to come: {:?}",
        body.size_hint()
    );
    assert_eq!(data(poll(&mut body, waker)), "three");
    assert!(!body.is_end_stream(), "the sender is still open");
    assert!(poll(&mut body, waker).is_pending());

    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    tx.try_send(Frame::trailers(trailers)).unwrap();
    match poll(&mut body, waker) {
        Poll::Ready(Some(Ok(frame))) => {
            assert_eq!(frame.trailers_ref().unwrap()["grpc-status"], "0")
        }
        other => panic!("expected the trailers, got {other:?}"),
    }
    drop(tx);
    assert!(matches!(poll(&mut body, waker), Poll::Ready(None)));
    assert!(body.is_end_stream());
}

#[test]
fn a_body_with_nothing_ready_yet_wakes_the_task_that_looked() {
    let (mut tx, inner) = body_of(&[b"first"]);
    let mut body = EndAhead::new(inner);
    let flag = Arc::new(Flag::default());
    let waker = Waker::from(flag.clone());

    assert_eq!(data(poll(&mut body, &waker)), "first");
    assert!(!body.is_end_stream());
    assert!(!flag.0.load(Ordering::SeqCst));
    // The look ahead found nothing: the next frame still wakes whoever polled.
    tx.try_send(Frame::data(Bytes::from_static(b"second")))
        .unwrap();
    assert!(
        flag.0.load(Ordering::SeqCst),
        "no wake-up for the next frame"
    );
    assert_eq!(data(poll(&mut body, &waker)), "second");
}

#[test]
fn an_error_seen_ahead_is_returned_after_the_chunk() {
    let waker = Waker::noop();
    let (tx, inner) = body_of(&[b"partial"]);
    tx.abort("peer reset");
    let mut body = EndAhead::new(inner);

    assert_eq!(data(poll(&mut body, waker)), "partial");
    assert!(!body.is_end_stream(), "an error is not an end");
    match poll(&mut body, waker) {
        Poll::Ready(Some(Err(e))) => assert_eq!(e, "peer reset"),
        other => panic!("expected the error, got {other:?}"),
    }
}
