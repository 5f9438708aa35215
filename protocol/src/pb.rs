//! Messages generated from `proto/chorus/v1/*.proto`, and constructors for the common answers.

#[allow(missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/chorus.v1.rs"));
}

pub use generated::*;

impl Error {
    /// An error frame body with `code` and a human-readable `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error { code: code as i32, message: message.into(), leader_id: None, leader_addr: String::new() }
    }
}

impl ServerFrame {
    /// An error answer to `request_id`.
    pub fn error(request_id: u64, error: Error) -> ServerFrame {
        ServerFrame { request_id, body: Some(server_frame::Body::Error(error)) }
    }
}
