//! A forwarded body that knows its last chunk is the last.
//!
//! A gRPC client built on hyper (tonic's, among others) ends a unary request with an empty
//! DATA frame carrying `END_STREAM`, after the DATA frame with the message. A proxy that
//! forwards frame by frame asks the body, after each chunk, whether it has ended
//! (`Body::is_end_stream`), and sends that chunk with `END_STREAM` only if it has. Here the
//! answer is no, since the empty frame is still queued, so the empty frame is forwarded on
//! its own, later than the message: one more frame on every hop, and on the last hop often
//! one more write (a syscall, and a second wake-up of the app) after the message.
//!
//! [`EndAhead`] looks one frame ahead after each DATA chunk, without waiting: if the next
//! frame is already there it is kept for the next poll, an empty chunk is dropped, and the
//! end of the body is noted. `is_end_stream` is then true as soon as the chunk just returned
//! is the last one, so the chunk goes out with `END_STREAM` and nothing follows it.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use hyper::body::{Body, Frame, SizeHint};

/// A body that looks one frame ahead after each DATA chunk (see the module documentation).
#[derive(Debug)]
pub struct EndAhead<B: Body> {
    inner: B,
    /// A frame taken from `inner` while looking ahead, returned by the next poll.
    next: Option<Result<Frame<B::Data>, B::Error>>,
    /// `inner` has returned its end.
    ended: bool,
}

impl<B: Body> EndAhead<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        EndAhead {
            inner,
            next: None,
            ended: false,
        }
    }

    /// Bytes of the DATA chunk taken while looking ahead.
    fn kept_len(&self) -> u64 {
        match &self.next {
            Some(Ok(frame)) => frame.data_ref().map_or(0, |d| d.remaining() as u64),
            _ => 0,
        }
    }
}

impl<B: Body + Unpin> EndAhead<B> {
    /// Takes what `inner` has ready now, if anything: a frame to return next, or its end.
    /// An empty DATA chunk carries nothing and is dropped; one more look then finds what
    /// follows it (its end, for a body that only knows it has ended when polled).
    fn look_ahead(&mut self, cx: &mut Context<'_>) {
        for _ in 0..2 {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return,
                Poll::Ready(None) => {
                    self.ended = true;
                    return;
                }
                Poll::Ready(Some(Ok(frame)))
                    if frame.data_ref().is_some_and(|data| !data.has_remaining()) =>
                {
                    if self.inner.is_end_stream() {
                        return;
                    }
                }
                Poll::Ready(Some(frame)) => {
                    self.next = Some(frame);
                    return;
                }
            }
        }
    }
}

impl<B> Body for EndAhead<B>
where
    B: Body + Unpin,
    B::Data: Unpin,
    B::Error: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = match this.next.take() {
            Some(frame) => frame,
            None if this.ended => return Poll::Ready(None),
            None => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(frame) => frame,
                None => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
            },
        };
        if matches!(&frame, Ok(f) if f.is_data()) && !this.inner.is_end_stream() {
            this.look_ahead(cx);
        }
        Poll::Ready(Some(frame))
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            return SizeHint::with_exact(self.kept_len());
        }
        let mut hint = self.inner.size_hint();
        let kept = self.kept_len();
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(kept));
        }
        hint.set_lower(hint.lower().saturating_add(kept));
        hint
    }
}

#[cfg(test)]
mod tests;
