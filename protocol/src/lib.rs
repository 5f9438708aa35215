//! Chorus's wire format: the protobuf schema (`proto/chorus/v1`), length-prefixed framing and
//! its tokio-util codec, and the pairing of each request with its answer (`exchange`). Pure: no
//! sockets, no runtime. Brokers and clients convert these messages to their own types at their
//! boundary.

pub mod codec;
pub mod error;
pub mod exchange;
pub mod limits;
pub mod pb;

pub use codec::{ClientCodec, EncodedRequest, FrameCodec, PartialFrame, PeerCodec, ServerCodec, encode_request};
pub use error::ProtocolError;
pub use exchange::{AnswerError, Exchange, PeerAnswerError, PeerExchange, answer_name, peer_name};

#[cfg(test)]
mod roundtrip;
