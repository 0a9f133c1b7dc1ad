//! The baseline: a bare tonic server with tonic-health and nothing else (no auth, no
//! logging, no limits), run by the bench as its own process (`trellis-bench
//! baseline-server`) so its CPU time can be read and it can be pinned like the services.
//! Every figure of a run is also reported as a ratio to this server's `health` figures.

use std::future::Future;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

/// Serves `grpc.health.v1.Health` (`""` SERVING) on `listener` until `shutdown` ends,
/// with tonic's defaults (`TCP_NODELAY` on, as `Server::serve` sets it).
///
/// # Errors
/// The transport fails.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
