//! The client listener: an accept loop with a connection cap, one task per connection with
//! separate read and write halves, and graceful shutdown (stop accepting, finish what is in
//! flight, close).

pub mod claims;
pub mod connection;
pub mod handler;
pub mod respond;
pub mod subscription;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::node::Broker;

pub async fn serve(listener: TcpListener, broker: Arc<Broker>) {
    let permits = Arc::new(Semaphore::new(broker.config.limits.connections_max));
    let shutdown = broker.shutdown_token();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        let broker = Arc::clone(&broker);
        match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    connection::run(stream, broker).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(connection::refuse(stream, broker));
            }
        }
    }
}
