//! Chorus's wire format: the protobuf schema (`proto/chorus/v1`), length-prefixed framing and
//! its tokio-util codec, and the pairing of each request with its answer (`exchange`). Pure: no
//! sockets, no runtime. Brokers and clients convert these messages to their own types at their
//! boundary.

pub mod codec;
pub mod error;
pub mod exchange;
pub mod limits;

/// Messages generated from `proto/chorus/v1/*.proto`.
#[allow(missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/chorus.v1.rs"));
}

pub use codec::{ClientCodec, EncodedRequest, FrameCodec, PeerCodec, ServerCodec, encode_request};
pub use error::ProtocolError;
pub use exchange::{AnswerError, Exchange, PeerAnswerError, PeerExchange};

impl pb::Error {
    /// An error frame body with `code` and a human-readable `message`.
    pub fn new(code: pb::ErrorCode, message: impl Into<String>) -> pb::Error {
        pb::Error { code: code as i32, message: message.into(), leader_id: None, leader_addr: String::new() }
    }
}

impl pb::ServerFrame {
    /// An error answer to `request_id`.
    pub fn error(request_id: u64, error: pb::Error) -> pb::ServerFrame {
        pb::ServerFrame { request_id, body: Some(pb::server_frame::Body::Error(error)) }
    }
}

#[cfg(test)]
mod roundtrip;
