//! Errors of the wire layer. Any of them ends the connection: after a bad frame the byte stream
//! cannot be trusted to resynchronise.

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}
