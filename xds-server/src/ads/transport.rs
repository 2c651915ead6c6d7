//! The ADS gRPC service, written against tonic's server API instead of the generated one so
//! it can use its own codec: responses are encoded by the stream task into one exact-size
//! buffer and handed to the transport as bytes. With the generated prost codec the transport
//! grows a per-stream buffer while encoding and keeps it for the stream's lifetime (the size of
//! the largest response the stream ever sent); at 10,000 streams that alone cost gigabytes.
//! Requests are decoded with prost as usual, from a small initial buffer.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use prost::Message;
use switchyard_protos::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Bytes, http};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

use super::AdsService;

/// gRPC service name.
pub const SERVICE_NAME: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Initial decode buffer: discovery requests are small; larger ones grow it.
const DECODE_BUFFER: usize = 1024;

/// A codec whose responses are already-encoded messages and whose requests are `Req`.
#[derive(Debug)]
pub struct PreEncodedCodec<Req>(PhantomData<fn() -> Req>);

impl<Req> Default for PreEncodedCodec<Req> {
    fn default() -> Self {
        PreEncodedCodec(PhantomData)
    }
}

/// Writes pre-encoded bytes with one copy.
#[derive(Debug, Default)]
pub struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        use bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        // Start empty: the first response sizes the buffer exactly (one put_slice).
        BufferSettings::new(0, 32 * 1024)
    }
}

/// Decodes `Req` with prost.
#[derive(Debug)]
pub struct RequestDecoder<Req>(PhantomData<fn() -> Req>);

impl<Req> Default for RequestDecoder<Req> {
    fn default() -> Self {
        RequestDecoder(PhantomData)
    }
}

/// Requests are boxed: a discovery request is ~600 bytes inline, and every await point of a
/// stream task that holds one would reserve that much per stream.
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

impl<Req: Message + Default + Send + 'static> Codec for PreEncodedCodec<Req> {
    type Encode = Bytes;
    type Decode = Box<Req>;
    type Encoder = BytesEncoder;
    type Decoder = RequestDecoder<Req>;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> RequestDecoder<Req> {
        RequestDecoder(PhantomData)
    }
}

type BytesStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send + 'static>>;
type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

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

struct Sotw(Arc<AdsService>);
struct Delta(Arc<AdsService>);

fn outbox_stream(rx: tokio::sync::mpsc::Receiver<super::OutItem>) -> BytesStream {
    Box::pin(ReceiverStream::new(rx).map(|item| item.map_err(|s| *s)))
}

impl StreamingService<Box<DiscoveryRequest>> for Sotw {
    type Response = Bytes;
    type ResponseStream = BytesStream;
    type Future = BoxFuture<Result<Response<BytesStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<Box<DiscoveryRequest>>>) -> Self::Future {
        let ads = self.0.clone();
        Box::pin(async move { Ok(Response::new(outbox_stream(ads.start_sotw(request)))) })
    }
}

impl StreamingService<Box<DeltaDiscoveryRequest>> for Delta {
    type Response = Bytes;
    type ResponseStream = BytesStream;
    type Future = BoxFuture<Result<Response<BytesStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<Box<DeltaDiscoveryRequest>>>) -> Self::Future {
        let ads = self.0.clone();
        Box::pin(async move { Ok(Response::new(outbox_stream(ads.start_delta(request)))) })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for AdsServer
where
    B: tonic::codegen::Body + Send + 'static,
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
        match req.uri().path() {
            SOTW_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(PreEncodedCodec::<DiscoveryRequest>::default())
                    .max_decoding_message_size(limit);
                Ok(grpc.streaming(Sotw(ads), req).await)
            }),
            DELTA_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(PreEncodedCodec::<DeltaDiscoveryRequest>::default())
                    .max_decoding_message_size(limit);
                Ok(grpc.streaming(Delta(ads), req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}
