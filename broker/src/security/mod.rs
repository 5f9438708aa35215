//! Who may talk to a broker, decided before anything they send is decoded.
//!
//! - `peer_link`: a peer connection is authenticated before its first frame, by mutual TLS under
//!   the cluster CA or by a cluster secret's challenge-response; anything else is closed.
//! - `tls`: PEM files into rustls configurations, for both ports, and the user a client
//!   certificate names.
//! - `password`: users' passwords as argon2id hashes, and their verification.
//! - `pki`: certificates and keys made with rcgen, for `chorus up`, `chorus cert` and tests.

pub mod password;
pub mod peer_link;
pub mod pki;
pub mod secret;
pub mod tls;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream a connection runs over: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Io for T {}

/// A connection's stream once it is trusted as far as its transport goes.
pub type Stream = Box<dyn Io>;
