//! The ADS gRPC endpoint, written against `http`/`http-body` rather than tonic's generated
//! server: the stream task encodes each response into one exact-size, already framed buffer
//! and the response body hands those buffers to HTTP/2 as they are.
//!
//! Why: tonic's response encoder keeps one growable buffer per stream for the stream's whole
//! life, sized by the largest response the stream ever sent (a sidecar's route table). At
//! 10,000 streams that buffer alone was most of the server's memory. Here a response's bytes
//! are freed as soon as HTTP/2 has written them. Requests are still decoded by tonic's
//! `Streaming` (prost), from a small initial buffer, into boxed messages.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::Frame;
use prost::Message;
use switchyard_protos::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest,
};
use tonic::codec::{BufferSettings, DecodeBuf, Decoder};
use tonic::codegen::{Bytes, http};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Request, Status, Streaming};

use super::{AdsService, OutItem};

/// gRPC service name.
pub const SERVICE_NAME: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Initial request decode buffer: discovery requests are small; larger ones grow it.
const DECODE_BUFFER: usize = 1024;

/// Frames an encoded message for gRPC: flag byte 0 (uncompressed), 4-byte length, message.
pub fn frame<M: Message>(m: &M) -> Bytes {
    let len = m.encoded_len();
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    // Writing into a Vec with enough capacity cannot fail.
    let _ = m.encode(&mut buf);
    Bytes::from(buf)
}

/// Decodes requests into boxed messages: a discovery request is ~600 bytes inline, and every
/// await point of a stream task holding one would reserve that much per stream.
#[derive(Debug)]
pub struct RequestDecoder<Req>(PhantomData<fn() -> Req>);

impl<Req> Default for RequestDecoder<Req> {
    fn default() -> Self {
        RequestDecoder(PhantomData)
    }
}

impl<Req: Message + Default> Decoder for RequestDecoder<Req> {
    type Item = Box<Req>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Box<Req>>, Status> {
        Req::decode(buf)
            .map(|r| Some(Box::new(r)))
            .map_err(|e| Status::invalid_argument(format!("cannot decode request: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(DECODE_BUFFER, 32 * 1024)
    }
}

/// The response body: framed messages from the stream task, then gRPC trailers.
struct ResponseBody {
    rx: tokio::sync::mpsc::Receiver<OutItem>,
    done: bool,
}

fn trailers(status: &Status) -> Frame<Bytes> {
    let mut headers = http::HeaderMap::new();
    if status.add_header(&mut headers).is_err() {
        headers.insert("grpc-status", http::HeaderValue::from_static("13"));
    }
    Frame::trailers(headers)
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(bytes))) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                Poll::Ready(Some(Ok(trailers(&status))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Ok(trailers(&Status::ok("")))))
            }
        }
    }
}

/// The tower service tonic's router serves.
#[derive(Debug, Clone)]
pub struct AdsServer {
    ads: Arc<AdsService>,
    max_request_bytes: usize,
}

impl AdsServer {
    /// Serves `ads`, refusing requests larger than `max_request_bytes`.
    pub fn new(ads: AdsService, max_request_bytes: usize) -> Self {
        AdsServer {
            ads: Arc::new(ads),
            max_request_bytes,
        }
    }
}

impl NamedService for AdsServer {
    const NAME: &'static str = SERVICE_NAME;
}

fn grpc_response(rx: tokio::sync::mpsc::Receiver<OutItem>) -> http::Response<tonic::body::Body> {
    let mut response =
        http::Response::new(tonic::body::Body::new(ResponseBody { rx, done: false }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

fn request<B, Req>(req: http::Request<B>, limit: usize) -> Request<Streaming<Box<Req>>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    Req: Message + Default + Send + 'static,
{
    let (parts, body) = req.into_parts();
    let streaming =
        Streaming::new_request(RequestDecoder::<Req>::default(), body, None, Some(limit));
    Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        streaming,
    )
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<B> tonic::codegen::Service<http::Request<B>> for AdsServer
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let ads = self.ads.clone();
        let limit = self.max_request_bytes;
        let response = match req.uri().path() {
            SOTW_PATH => grpc_response(ads.start_sotw(request::<B, DiscoveryRequest>(req, limit))),
            DELTA_PATH => {
                grpc_response(ads.start_delta(request::<B, DeltaDiscoveryRequest>(req, limit)))
            }
            _ => Status::unimplemented("no such method").into_http(),
        };
        Box::pin(async move { Ok(response) })
    }
}
