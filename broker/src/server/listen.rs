//! The client listener: accepts connections, at most `connections_max` at once (one over the cap
//! is told so), and serves each until the broker stops.

use std::sync::Arc;

use tokio::net::TcpListener;

use super::connection;
use super::state::Server;
use crate::listener;

/// Serves clients on `listener` until the broker stops.
pub async fn serve(listener: TcpListener, server: Arc<Server>) {
    let limits = &server.broker.config.limits;
    let caps = listener::Caps { total: limits.connections_max, per_address: limits.connections_per_address_max };
    let shutdown = server.broker.shutdown_token();
    listener::accept(
        listener,
        caps,
        shutdown,
        |stream, _| connection::run(stream, Arc::clone(&server)),
        |stream, _, why| connection::refuse(stream, Arc::clone(&server), why),
    )
    .await;
}
