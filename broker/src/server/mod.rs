//! The client listener: an accept loop with a connection cap, one task per connection with
//! separate read and write halves, and graceful shutdown (stop accepting, finish what is in
//! flight, close). `login` says who a connection acts as, `access` what it may read, `sessions`
//! what each user holds on this broker.

pub mod access;
pub mod claims;
pub mod connection;
pub mod handler;
pub mod login;
pub mod respond;
pub mod sessions;
pub mod subscription;
pub mod users;

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
