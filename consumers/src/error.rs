//! The client library's errors.

use chorus_protocol::pb::{self, ErrorCode};
use chorus_protocol::{AnswerError, ProtocolError};

/// An error answer from a broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ServerError {
    pub code: ErrorCode,
    pub message: String,
    /// For `NotLeader`: who the leader is, when known.
    pub leader_id: Option<u64>,
    pub leader_addr: Option<String>,
}

impl From<pb::Error> for ServerError {
    fn from(error: pb::Error) -> ServerError {
        ServerError {
            code: error.code(),
            message: error.message,
            leader_id: error.leader_id,
            leader_addr: (!error.leader_addr.is_empty()).then_some(error.leader_addr),
        }
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the connection closed")]
    Closed,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// Not `#[from]`: the server's error is this one's text, not a cause to print again.
    #[error("broker refused: {0}")]
    Server(ServerError),
    #[error(transparent)]
    Violation(#[from] Violation),
    #[error("no broker could serve the request: {0}")]
    Exhausted(String),
    #[error("an ephemeral subscription has nothing to commit")]
    NotDurable,
    /// A producer's batch was not sent again after an earlier batch of the same producer and
    /// topic failed: storing it would break the producer's order.
    #[error("not stored, to keep the producer's order: {0}")]
    Unordered(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// An answer that breaks the protocol: a broker's bug, never the caller's. The client reports it
/// and never panics on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("the broker answered {got} to {request}")]
    Mismatch { request: &'static str, got: &'static str },
    #[error("the broker granted {granted} leases where {asked} were asked for")]
    TooManyGrants { asked: usize, granted: usize },
    #[error("the broker's settle answer does not hold one result per token, in order")]
    NotOneResultPerToken,
}

impl From<ServerError> for ClientError {
    fn from(error: ServerError) -> ClientError {
        ClientError::Server(error)
    }
}

impl From<AnswerError> for ClientError {
    fn from(error: AnswerError) -> ClientError {
        match error {
            AnswerError::Refused(refusal) => ClientError::Server(refusal.into()),
            AnswerError::Mismatch { request, got } => Violation::Mismatch { request, got }.into(),
        }
    }
}

impl ClientError {
    /// Whether trying again, maybe elsewhere, may succeed: lost connections, timeouts, elections
    /// and overload. A retried write may have been applied already, so writes that must not
    /// repeat use an idempotent producer.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Timeout(_) | ClientError::Closed | ClientError::Protocol(_) => {
                true
            }
            ClientError::Server(error) => {
                matches!(error.code, ErrorCode::NotLeader | ErrorCode::Unavailable | ErrorCode::Overloaded)
            }
            // A handshake that failed may be a broker restarting; a wrong CA or file never heals.
            ClientError::Tls(crate::tls::TlsError::Handshake { source, .. }) => {
                !matches!(source.kind(), std::io::ErrorKind::InvalidData)
            }
            ClientError::Violation(_)
            | ClientError::Exhausted(_)
            | ClientError::NotDurable
            | ClientError::Unordered(_)
            | ClientError::Tls(_) => false,
        }
    }

    /// The broker's error code, if the broker answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(error) => Some(error.code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: ErrorCode) -> ClientError {
        ClientError::Server(ServerError { code, message: String::new(), leader_id: None, leader_addr: None })
    }

    #[test]
    fn only_what_may_pass_is_retried() {
        for code in [ErrorCode::NotLeader, ErrorCode::Unavailable, ErrorCode::Overloaded] {
            assert!(refused(code).is_retryable(), "{code:?}");
        }
        // OUT_OF_ORDER is the producer's to handle: it sends the earlier batches first.
        for code in [
            ErrorCode::LimitReached,
            ErrorCode::UnknownSubscription,
            ErrorCode::QuotaExceeded,
            ErrorCode::Forbidden,
            ErrorCode::OutOfOrder,
        ] {
            assert!(!refused(code).is_retryable(), "{code:?}");
        }
    }

    #[test]
    fn a_refusal_is_said_once() {
        let error = ClientError::Server(ServerError {
            code: ErrorCode::UnknownTopic,
            message: "unknown topic \"x\"".into(),
            leader_id: None,
            leader_addr: None,
        });
        assert!(std::error::Error::source(&error).is_none());
        assert_eq!(error.to_string(), "broker refused: UnknownTopic: unknown topic \"x\"");
    }
}
