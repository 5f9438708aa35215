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

impl StoredMessage {
    /// What the message costs against a subscription's byte credit: its payload, key, and
    /// header names and values.
    pub fn credit_bytes(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|h| h.name.len() + h.value.len()).sum();
        (self.payload.len() + self.key.as_ref().map_or(0, |k| k.len()) + headers) as u64
    }
}
