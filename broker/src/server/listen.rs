//! The client listener: accepts connections, at most `connections_max` at once (one over the cap
//! is told so), and serves each until the broker stops.

use std::sync::Arc;

use tokio::net::TcpListener;

use super::connection;
use super::state::Server;
use crate::listener;

/// Serves clients on `listener` until the broker stops.
pub async fn serve(listener: TcpListener, server: Arc<Server>) {
    let connections_max = server.broker.config.limits.connections_max;
    let shutdown = server.broker.shutdown_token();
    listener::accept(
        listener,
        connections_max,
        shutdown,
        |stream, _| connection::run(stream, Arc::clone(&server)),
        |stream, _| connection::refuse(stream, Arc::clone(&server)),
    )
    .await;
}
