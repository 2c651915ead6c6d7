//! The gRPC side: `switchyard.test.v1.Echo` over h2c — unary `Echo`, server-streaming
//! `EchoStream` and bidirectional `EchoChat`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::codegen::Service as _;
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpConnectInfo;
use tonic::{Request, Response, Status, Streaming};

use super::{BACKEND_HEADER, PEER_IDENTITY_HEADER, XFCC_HEADER, accept_loop};
use crate::pb::echo_server::{Echo, EchoServer};
use crate::pb::{EchoReply, EchoRequest, EchoStreamRequest};

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send + 'static>>;

pub(super) async fn serve(listener: TcpListener, name: Arc<str>) {
    let service = EchoServer::new(EchoService { name });
    accept_loop(listener, move |stream, conn| {
        let service = service.clone();
        // What tonic's own server puts in every request, so `Request::remote_addr` works.
        let info = TcpConnectInfo {
            local_addr: Some(conn.local),
            remote_addr: Some(conn.peer),
        };
        async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(info.clone());
                // EchoServer is always ready (poll_ready is a no-op), so call directly.
                service.clone().call(req)
            });
            let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "echo gRPC connection ended with an error");
            }
        }
    })
    .await;
}

#[derive(Debug, Clone)]
struct EchoService {
    name: Arc<str>,
}

/// Who called, as the backend saw it; filled into every reply of one call.
#[derive(Debug, Clone)]
struct Caller {
    addr: String,
    identity: Option<String>,
}

impl Caller {
    fn of<T>(request: &Request<T>) -> Self {
        Caller {
            addr: request
                .remote_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            identity: identity_from_metadata(request.metadata()),
        }
    }
}

fn identity_from_metadata(metadata: &MetadataMap) -> Option<String> {
    // The same precedence as the HTTP side.
    metadata
        .get(XFCC_HEADER)
        .or_else(|| metadata.get(PEER_IDENTITY_HEADER))
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

impl EchoService {
    fn reply(&self, caller: &Caller, message: String, sequence: u32) -> EchoReply {
        EchoReply {
            message,
            backend: self.name.to_string(),
            caller: caller.addr.clone(),
            identity: caller.identity.clone(),
            sequence,
        }
    }

    fn respond<T>(&self, body: T) -> Response<T> {
        let mut response = Response::new(body);
        if let Ok(value) = self.name.parse() {
            response.metadata_mut().insert(BACKEND_HEADER, value);
        }
        response
    }
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let caller = Caller::of(&request);
        let reply = self.reply(&caller, request.into_inner().message, 0);
        Ok(self.respond(reply))
    }

    type EchoStreamStream = ReplyStream;

    async fn echo_stream(
        &self,
        request: Request<EchoStreamRequest>,
    ) -> Result<Response<Self::EchoStreamStream>, Status> {
        let caller = Caller::of(&request);
        let EchoStreamRequest {
            message,
            count,
            interval_ms,
        } = request.into_inner();
        let interval = Duration::from_millis(u64::from(interval_ms));
        let this = self.clone();
        // Lazily produced, so a client that goes away stops the stream (it is dropped).
        let replies = futures::stream::iter(0..count).then(move |sequence| {
            let reply = this.reply(&caller, message.clone(), sequence);
            async move {
                if sequence > 0 && !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                Ok(reply)
            }
        });
        Ok(self.respond(Box::pin(replies) as ReplyStream))
    }

    type EchoChatStream = ReplyStream;

    async fn echo_chat(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::EchoChatStream>, Status> {
        let caller = Caller::of(&request);
        let this = self.clone();
        let replies = request
            .into_inner()
            .enumerate()
            .map(move |(sequence, received)| {
                let sequence = u32::try_from(sequence).unwrap_or(u32::MAX);
                received.map(|r| this.reply(&caller, r.message, sequence))
            });
        Ok(self.respond(Box::pin(replies) as ReplyStream))
    }
}
