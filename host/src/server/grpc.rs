//! The gRPC authorizer's listener, bounded like the decision plane: at
//! most `server.max_connections` connections (the next waits in the
//! kernel's backlog until one closes), writes that stall fail after
//! `server.write_timeout_ms`, and a shutdown that waits for open
//! connections only for `server.shutdown_grace_ms`: an Envoy (or anyone)
//! keeping a connection open cannot hold the process up.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::io::WriteTimeout;
use super::{AppState, stopped};

/// A connection holding its place under `max_connections` until it closes.
struct Held {
    io: WriteTimeout<TcpStream>,
    info: TcpConnectInfo,
    _place: OwnedSemaphorePermit,
}

impl Connected for Held {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Held {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves Envoy's gRPC authorizer until `stop`, then drains it for the
/// grace period at most. Messages are bounded by `server.max_body_bytes`,
/// each call by the header and body timeouts, streams per connection by
/// 256.
pub(super) async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    stop: watch::Receiver<bool>,
) {
    let server = state.service.load().config.server.clone();
    let service =
        crate::front_door::ext_authz_grpc::service(Arc::clone(&state), server.max_body_bytes);
    let places = Arc::new(Semaphore::new(server.max_connections));
    let write_timeout = Duration::from_millis(server.write_timeout_ms);
    let incoming = futures_util::stream::unfold(listener, move |listener| {
        let places = Arc::clone(&places);
        async move {
            // Not accepted until a place is free: the backlog holds the rest.
            let place = places.acquire_owned().await.ok()?;
            loop {
                match listener.accept().await {
                    Ok((stream, remote)) => {
                        let _ = stream.set_nodelay(true);
                        let info = TcpConnectInfo {
                            local_addr: stream.local_addr().ok(),
                            remote_addr: Some(remote),
                        };
                        let held = Held {
                            io: WriteTimeout::new(stream, write_timeout),
                            info,
                            _place: place,
                        };
                        return Some((Ok::<_, io::Error>(held), listener));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off, go on.
                        tracing::warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    });
    let mut on_stop = stop.clone();
    let serving = tonic::transport::Server::builder()
        .timeout(server.header_timeout() + Duration::from_millis(server.body_timeout_ms))
        .concurrency_limit_per_connection(256)
        .max_concurrent_streams(256)
        .http2_max_header_list_size(64 * 1024)
        // One service: any other path is the generated server's
        // `UNIMPLEMENTED`, with no router in between.
        .serve_with_incoming_shutdown(service, incoming, async move {
            stopped(&mut on_stop).await;
        });
    let mut grace_stop = stop;
    let deadline = async move {
        stopped(&mut grace_stop).await;
        tokio::time::sleep(server.shutdown_grace()).await;
    };
    tokio::select! {
        result = serving => if let Err(e) = result {
            tracing::error!(error = %e, "the gRPC authorizer stopped");
        },
        () = deadline => {
            tracing::warn!("gRPC connections still open after the grace period are closed");
        }
    }
}
