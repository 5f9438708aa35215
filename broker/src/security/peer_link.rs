//! How a connection between two brokers becomes trusted, before either reads a frame.
//!
//! The dialer first sends a fixed 24-byte preamble, not a protobuf frame: the magic `CHRP`, the
//! version (1), the mode, two zero bytes, then its own broker id and the id of the broker it means
//! to reach, each a big-endian u64. The listener reads exactly those bytes, and closes the
//! connection, without a word, unless the magic and version are right, the mode is its own and
//! the preamble is addressed to it. Then, by mode:
//!
//! - `Tls` (1): a TLS handshake in which each side presents a certificate of the cluster CA, and
//!   the dialer checks the listener's against the host it dialed.
//! - `Secret` (2): the listener sends a 32-byte nonce; the dialer answers with its own nonce and
//!   its proof, HMAC-SHA256 over the preamble and both nonces with the cluster secret; the
//!   listener checks it and answers with its own proof over the same bytes (see `secret`).
//! - `Open` (0): nothing. Only for brokers on loopback addresses, which refuse to start otherwise.
//!
//! The preamble is in the clear, so a fault-injecting proxy (the tests') can tell who dials whom.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::Stream;
use super::secret::{ClusterSecret, NONCE_BYTES, PROOF_BYTES, Side};
use super::tls::{self, BrokerTls};
use crate::raft::NodeId;

pub const MAGIC: &[u8; 4] = b"CHRP";
pub const VERSION: u8 = 1;
pub const PREAMBLE_BYTES: usize = 24;

/// How peers authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Open = 0,
    Tls = 1,
    Secret = 2,
}

impl Mode {
    fn from_byte(byte: u8) -> Option<Mode> {
        [Mode::Open, Mode::Tls, Mode::Secret].into_iter().find(|mode| *mode as u8 == byte)
    }
}

/// What a dialer says before anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    pub mode: Mode,
    pub from: NodeId,
    pub to: NodeId,
}

impl Preamble {
    pub fn encode(&self) -> [u8; PREAMBLE_BYTES] {
        let mut bytes = [0u8; PREAMBLE_BYTES];
        bytes[..4].copy_from_slice(MAGIC);
        bytes[4] = VERSION;
        bytes[5] = self.mode as u8;
        bytes[8..16].copy_from_slice(&self.from.to_be_bytes());
        bytes[16..24].copy_from_slice(&self.to.to_be_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8; PREAMBLE_BYTES]) -> Result<Preamble, HandshakeError> {
        if &bytes[..4] != MAGIC {
            return Err(HandshakeError::NotAPeer);
        }
        if bytes[4] != VERSION {
            return Err(HandshakeError::Version(bytes[4]));
        }
        let mode = Mode::from_byte(bytes[5]).ok_or(HandshakeError::UnknownMode(bytes[5]))?;
        let id = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Ok(Preamble { mode, from: id(8), to: id(16) })
    }
}

/// Why a peer connection was not trusted.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("connection failed during the handshake: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a Chorus peer (bad preamble)")]
    NotAPeer,
    #[error("peer protocol version {0} is not supported")]
    Version(u8),
    #[error("unknown peer authentication mode {0}")]
    UnknownMode(u8),
    #[error("the peer authenticates by {theirs:?}, this broker by {ours:?}")]
    ModeMismatch { ours: Mode, theirs: Mode },
    #[error("the connection is meant for broker {to}, not {us}")]
    NotForUs { to: NodeId, us: NodeId },
    #[error("the dialer did not prove the cluster secret")]
    DialerUnproven,
    #[error("the listener did not prove the cluster secret")]
    ListenerUnproven,
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("cannot check a certificate for the address {0}")]
    ServerName(String),
}

/// How this broker authenticates its peers.
#[derive(Debug, Clone)]
pub enum PeerAuth {
    /// No authentication: loopback development only.
    Open,
    Tls {
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
    },
    Secret(ClusterSecret),
}

impl PeerAuth {
    pub fn tls(tls: &BrokerTls) -> PeerAuth {
        PeerAuth::Tls { server: Arc::clone(&tls.peer_server), client: Arc::clone(&tls.peer_client) }
    }

    pub fn mode(&self) -> Mode {
        match self {
            PeerAuth::Open => Mode::Open,
            PeerAuth::Tls { .. } => Mode::Tls,
            PeerAuth::Secret(_) => Mode::Secret,
        }
    }

    /// Makes `stream`, just connected from broker `from` to broker `to` at `addr`, trusted.
    pub async fn dial(
        &self,
        mut stream: TcpStream,
        from: NodeId,
        to: NodeId,
        addr: &str,
    ) -> Result<Stream, HandshakeError> {
        let preamble = Preamble { mode: self.mode(), from, to };
        stream.write_all(&preamble.encode()).await?;
        match self {
            PeerAuth::Open => Ok(Box::new(stream)),
            PeerAuth::Tls { client, .. } => {
                let name = tls::server_name(addr).map_err(HandshakeError::ServerName)?;
                let tls = TlsConnector::from(Arc::clone(client)).connect(name, stream).await;
                Ok(Box::new(tls.map_err(HandshakeError::Tls)?))
            }
            PeerAuth::Secret(secret) => {
                let mut theirs = [0u8; NONCE_BYTES];
                stream.read_exact(&mut theirs).await?;
                let ours: [u8; NONCE_BYTES] = rand::random();
                let transcript = transcript(&preamble, &theirs, &ours);
                let proof = secret.prove(Side::Dialer, &transcript);
                stream.write_all(&[ours.as_slice(), &proof].concat()).await?;
                let mut answer = [0u8; PROOF_BYTES];
                stream.read_exact(&mut answer).await.map_err(|_| HandshakeError::ListenerUnproven)?;
                secret.verify(Side::Listener, &transcript, &answer).ok_or(HandshakeError::ListenerUnproven)?;
                Ok(Box::new(stream))
            }
        }
    }

    /// Makes `stream`, just accepted by broker `us`, trusted; returns it and the dialer's id.
    pub async fn accept(&self, mut stream: TcpStream, us: NodeId) -> Result<(Stream, NodeId), HandshakeError> {
        let mut bytes = [0u8; PREAMBLE_BYTES];
        stream.read_exact(&mut bytes).await?;
        let preamble = Preamble::decode(&bytes)?;
        if preamble.mode != self.mode() {
            return Err(HandshakeError::ModeMismatch { ours: self.mode(), theirs: preamble.mode });
        }
        if preamble.to != us {
            return Err(HandshakeError::NotForUs { to: preamble.to, us });
        }
        let stream: Stream = match self {
            PeerAuth::Open => Box::new(stream),
            PeerAuth::Tls { server, .. } => {
                let tls = TlsAcceptor::from(Arc::clone(server)).accept(stream).await;
                Box::new(tls.map_err(HandshakeError::Tls)?)
            }
            PeerAuth::Secret(secret) => {
                let ours: [u8; NONCE_BYTES] = rand::random();
                stream.write_all(&ours).await?;
                let mut reply = [0u8; NONCE_BYTES + PROOF_BYTES];
                stream.read_exact(&mut reply).await?;
                let (theirs, proof) = reply.split_at(NONCE_BYTES);
                let transcript = transcript(&preamble, &ours, theirs);
                let matched = secret.verify(Side::Dialer, &transcript, proof).ok_or(HandshakeError::DialerUnproven)?;
                stream.write_all(&matched.prove(Side::Listener, &transcript)).await?;
                Box::new(stream)
            }
        };
        Ok((stream, preamble.from))
    }
}

/// What both proofs cover: the preamble, then the listener's nonce, then the dialer's.
fn transcript(preamble: &Preamble, listener_nonce: &[u8], dialer_nonce: &[u8]) -> Vec<u8> {
    [preamble.encode().as_slice(), listener_nonce, dialer_nonce].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::pki::{self, Authority, Validity};
    use crate::security::secret;
    use tokio::net::TcpListener;

    /// Runs a handshake between `dialer` (as broker 1) and `listener` (as broker 2): what each
    /// side got. Whatever one side refuses, the other sees fail too.
    async fn handshake(
        dialer: &PeerAuth,
        listener: &PeerAuth,
        to: NodeId,
    ) -> (Result<(), HandshakeError>, Result<NodeId, HandshakeError>) {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap().to_string();
        let listener = listener.clone();
        let accepting = tokio::spawn(async move {
            let (stream, _) = socket.accept().await.unwrap();
            match listener.accept(stream, 2).await {
                Ok((mut stream, from)) => {
                    // Prove the stream works: echo one byte.
                    let mut byte = [0u8; 1];
                    stream.read_exact(&mut byte).await?;
                    stream.write_all(&byte).await?;
                    stream.flush().await?;
                    Ok(from)
                }
                Err(error) => Err(error),
            }
        });
        let dialed = async {
            let stream = TcpStream::connect(&addr).await?;
            let mut stream = dialer.dial(stream, 1, to, &addr).await?;
            stream.write_all(b"x").await?;
            stream.flush().await?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await?;
            assert_eq!(&byte, b"x");
            Ok::<(), HandshakeError>(())
        }
        .await;
        (dialed, accepting.await.unwrap())
    }

    fn secret_auth(text: &str) -> PeerAuth {
        PeerAuth::Secret(ClusterSecret::parse(text, std::path::Path::new("t")).unwrap())
    }

    struct Cluster {
        dir: tempfile::TempDir,
        ca: Authority,
    }

    impl Cluster {
        fn new() -> Cluster {
            Cluster { dir: tempfile::tempdir().unwrap(), ca: Authority::generate("cluster CA").unwrap() }
        }

        /// A broker's peer auth with a certificate for `hosts`, valid for `validity`, from `ca`.
        fn broker(&self, name: &str, ca: &Authority, hosts: &[&str], validity: Validity) -> PeerAuth {
            let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
            let issued = ca.issue_server(name, &hosts, validity).unwrap();
            let dir = self.dir.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let mut files = pki::write_broker_files(&dir, ca, &issued).unwrap();
            // Every broker trusts the cluster's CA, whoever signed its own certificate.
            files.ca = dir.join("cluster-ca.pem");
            pki::write_file(&files.ca, &self.ca.cert_pem, false).unwrap();
            PeerAuth::tls(&BrokerTls::load(&files).unwrap())
        }

        fn good(&self, name: &str) -> PeerAuth {
            self.broker(name, &self.ca, &["127.0.0.1"], Validity::days(1))
        }
    }

    #[tokio::test]
    async fn brokers_sharing_a_secret_trust_each_other() {
        let shared = secret::generate();
        let (dialed, accepted) = handshake(&secret_auth(&shared), &secret_auth(&shared), 2).await;
        dialed.unwrap();
        assert_eq!(accepted.unwrap(), 1, "the listener learns the dialer's id");
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_and_proves_nothing() {
        let (dialed, accepted) =
            handshake(&secret_auth(&secret::generate()), &secret_auth(&secret::generate()), 2).await;
        assert!(matches!(accepted, Err(HandshakeError::DialerUnproven)), "{accepted:?}");
        assert!(dialed.is_err());
    }

    #[tokio::test]
    async fn preambles_must_match_mode_and_address() {
        let shared = secret::generate();
        let (_, accepted) = handshake(&secret_auth(&shared), &secret_auth(&shared), 3).await;
        assert!(matches!(accepted, Err(HandshakeError::NotForUs { to: 3, us: 2 })), "{accepted:?}");
        let (_, accepted) = handshake(&PeerAuth::Open, &secret_auth(&shared), 2).await;
        assert!(matches!(accepted, Err(HandshakeError::ModeMismatch { .. })), "{accepted:?}");
        let mut bytes = Preamble { mode: Mode::Tls, from: 1, to: 2 }.encode();
        assert_eq!(Preamble::decode(&bytes).unwrap(), Preamble { mode: Mode::Tls, from: 1, to: 2 });
        bytes[5] = 9;
        assert!(matches!(Preamble::decode(&bytes), Err(HandshakeError::UnknownMode(9))));
        bytes[0] = 0;
        assert!(matches!(Preamble::decode(&bytes), Err(HandshakeError::NotAPeer)));
    }

    #[tokio::test]
    async fn brokers_of_one_ca_trust_each_other_over_tls() {
        let cluster = Cluster::new();
        let (dialed, accepted) = handshake(&cluster.good("b1"), &cluster.good("b2"), 2).await;
        dialed.unwrap();
        assert_eq!(accepted.unwrap(), 1);
    }

    #[tokio::test]
    async fn tls_refuses_another_ca_an_expired_certificate_and_a_wrong_host() {
        let cluster = Cluster::new();
        let stranger = Authority::generate("another CA").unwrap();
        let foreign = cluster.broker("foreign", &stranger, &["127.0.0.1"], Validity::days(1));
        let (dialed, accepted) = handshake(&foreign, &cluster.good("b2"), 2).await;
        assert!(matches!(accepted, Err(HandshakeError::Tls(_))), "a dialer from another CA: {accepted:?}");
        assert!(dialed.is_err());
        let (dialed, _) = handshake(&cluster.good("b1"), &foreign, 2).await;
        assert!(matches!(dialed, Err(HandshakeError::Tls(_))), "a listener from another CA: {dialed:?}");

        let expired = cluster.broker("expired", &cluster.ca, &["127.0.0.1"], Validity::expired());
        let (_, accepted) = handshake(&expired, &cluster.good("b2"), 2).await;
        assert!(matches!(accepted, Err(HandshakeError::Tls(_))), "an expired dialer: {accepted:?}");
        let (dialed, _) = handshake(&cluster.good("b1"), &expired, 2).await;
        assert!(matches!(dialed, Err(HandshakeError::Tls(_))), "an expired listener: {dialed:?}");

        let elsewhere = cluster.broker("elsewhere", &cluster.ca, &["broker-9.example"], Validity::days(1));
        let (dialed, _) = handshake(&cluster.good("b1"), &elsewhere, 2).await;
        assert!(matches!(dialed, Err(HandshakeError::Tls(_))), "a listener certified for another host: {dialed:?}");
    }
}
