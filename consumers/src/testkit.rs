//! A fake broker for the library's own tests: it answers each request through a function, on
//! every connection, so a test can make it misbehave in ways a real broker must not.

use std::sync::Arc;

use chorus_protocol::pb::{self, client_frame::Body as Request, server_frame::Body as Answer};
use futures::{SinkExt, StreamExt};

/// Listens on a loopback port and answers requests through `answer`; `None` answers nothing.
/// Returns the address.
pub async fn fake_broker(answer: impl Fn(Request) -> Option<Answer> + Send + Sync + 'static) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let addr = listener.local_addr().expect("a bound address").to_string();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                let mut framed = tokio_util::codec::Framed::new(stream, chorus_protocol::ServerCodec::default());
                while let Some(Ok(frame)) = framed.next().await {
                    let Some(body) = frame.body.and_then(|body| answer(body)) else { continue };
                    let reply = pb::ServerFrame { request_id: frame.request_id, body: Some(body) };
                    if framed.send(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The Hello answer of a broker that speaks this protocol.
pub fn hello_ok() -> Answer {
    Answer::HelloOk(pb::HelloOk { protocol_version: chorus_protocol::limits::PROTOCOL_VERSION, ..Default::default() })
}
