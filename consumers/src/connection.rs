//! One connection to one broker: TLS when configured, says Hello (with the user's credentials
//! when given), then pipelines requests. Each request gets the next request id; a reader task
//! routes every answer to its waiter by id, and pushed deliveries to their subscription's
//! channel. Dropping the connection closes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chorus_protocol::pb::{self, client_frame::Body as Request, server_frame::Body};
use chorus_protocol::{ClientCodec, EncodedRequest, Exchange, answer_name, encode_request};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;

use crate::error::{ClientError, ServerError, Violation};
use crate::tls::Tls;

/// A user's name and password, presented in Hello.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials { user: user.into(), password: password.into() }
    }
}

/// How to open a connection: the client's name, its credentials and TLS.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub client_name: String,
    pub credentials: Option<Credentials>,
    pub tls: Option<Tls>,
    /// For connecting, TLS and Hello together.
    pub timeout: Duration,
}

impl ConnectOptions {
    pub fn new(client_name: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            client_name: client_name.into(),
            credentials: None,
            tls: None,
            timeout: Duration::from_secs(2),
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Frames queued for the writer task.
const OUTBOX_MAX: usize = 1024;
/// Pushed frames buffered per stream; credit-based flow control keeps this from filling.
const STREAM_BUFFER_MAX: usize = 1024;

#[derive(Default)]
struct Routes {
    waiting: HashMap<u64, oneshot::Sender<Body>>,
    streams: HashMap<u64, mpsc::Sender<Body>>,
    closed: bool,
}

/// A pipelined connection to one broker.
#[derive(Debug, Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    addr: String,
    outbox: mpsc::Sender<EncodedRequest>,
    routes: Arc<Mutex<Routes>>,
    next_request_id: AtomicU64,
    hello: pb::HelloOk,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("addr", &self.addr).field("broker_id", &self.hello.broker_id).finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Connection {
    /// Connects to `addr` without TLS or credentials and says Hello, all within `timeout`.
    pub async fn connect(addr: &str, client_name: &str, timeout: Duration) -> Result<Connection, ClientError> {
        Connection::connect_with(addr, &ConnectOptions { timeout, ..ConnectOptions::new(client_name) }).await
    }

    /// Connects to `addr` as `options` say, all within its timeout.
    pub async fn connect_with(addr: &str, options: &ConnectOptions) -> Result<Connection, ClientError> {
        let timeout = options.timeout;
        tokio::time::timeout(timeout, Connection::open(addr, options))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    async fn open(addr: &str, options: &ConnectOptions) -> Result<Connection, ClientError> {
        let stream =
            TcpStream::connect(addr).await.map_err(|source| ClientError::Connect { addr: addr.to_owned(), source })?;
        stream.set_nodelay(true).map_err(|source| ClientError::Connect { addr: addr.to_owned(), source })?;
        let stream: Box<dyn Io> = match &options.tls {
            Some(tls) => Box::new(tls.connect(stream, addr).await?),
            None => Box::new(stream),
        };
        let mut framed = Framed::new(stream, ClientCodec::new(chorus_protocol::limits::FRAME_BYTES_MAX_DEFAULT));
        let credentials = options
            .credentials
            .as_ref()
            .map(|c| pb::Credentials { user: c.user.clone(), password: c.password.clone() });
        let hello = pb::Hello {
            protocol_version: chorus_protocol::limits::PROTOCOL_VERSION,
            client_name: options.client_name.clone(),
            credentials,
        };
        framed.send(pb::ClientFrame { request_id: 0, body: Some(Request::Hello(hello)) }).await?;
        let hello = match framed.next().await.ok_or(ClientError::Closed)??.body {
            Some(Body::HelloOk(ok)) => ok,
            Some(Body::Error(error)) => return Err(ServerError::from(error).into()),
            Some(other) => return Err(Violation::Mismatch { request: "Hello", got: answer_name(&other) }.into()),
            None => return Err(ClientError::Closed),
        };
        let (sink, mut frames) = framed.split::<EncodedRequest>();
        let (outbox, mut queued) = mpsc::channel::<EncodedRequest>(OUTBOX_MAX);
        let routes = Arc::new(Mutex::new(Routes::default()));
        // `forward` flushes only when no request is ready: pipelined requests share one write.
        tokio::spawn(futures::stream::poll_fn(move |cx| queued.poll_recv(cx)).map(Ok).forward(sink));
        let reader_routes = Arc::clone(&routes);
        let reader = tokio::spawn(async move {
            while let Some(Ok(frame)) = frames.next().await {
                route(&reader_routes, frame).await;
            }
            let mut routes = reader_routes.lock().expect("routes lock");
            routes.closed = true;
            routes.waiting.clear();
            routes.streams.clear();
        });
        let inner = Inner { addr: addr.to_owned(), outbox, routes, next_request_id: AtomicU64::new(1), hello, reader };
        Ok(Connection { inner: Arc::new(inner) })
    }

    /// The broker's answer to Hello.
    pub fn hello(&self) -> &pb::HelloOk {
        &self.inner.hello
    }

    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Sends `request` and waits for its answer, of the kind the request expects. An error answer
    /// is `ClientError::Server`; an answer of another kind is a [`Violation`].
    pub async fn call<R: Exchange>(&self, request: R, timeout: Duration) -> Result<R::Answer, ClientError> {
        let body = self.request_encoded(&encode_request(&request.into_request()), timeout).await?;
        Ok(R::from_answer(body)?)
    }

    /// Sends any request and waits for its answer, whatever its kind; an error answer becomes
    /// `ClientError::Server`. For tools and tests that send what they like; [`Connection::call`]
    /// checks the answer's kind.
    pub async fn request(&self, request: Request, timeout: Duration) -> Result<Body, ClientError> {
        self.request_encoded(&encode_request(&request), timeout).await
    }

    /// Sends a request encoded once ([`encode_request`]), under a new request id, and waits for
    /// its answer: a retry sends the same bytes again.
    pub async fn request_encoded(&self, request: &Bytes, timeout: Duration) -> Result<Body, ClientError> {
        let (request_id, answer) = self.register(None)?;
        let result = self.send_and_wait(request_id, request.clone(), answer, timeout).await;
        self.inner.routes.lock().expect("routes lock").waiting.remove(&request_id);
        match result? {
            Body::Error(error) => Err(ServerError::from(error).into()),
            body => Ok(body),
        }
    }

    /// Takes the next request id and routes its first answer (and, for a stream, the frames
    /// after it) to the returned receiver.
    fn register(&self, pushes: Option<mpsc::Sender<Body>>) -> Result<(u64, oneshot::Receiver<Body>), ClientError> {
        let (sender, answer) = oneshot::channel();
        let request_id = self.inner.next_request_id.fetch_add(1, Ordering::Relaxed);
        let mut routes = self.inner.routes.lock().expect("routes lock");
        if routes.closed {
            return Err(ClientError::Closed);
        }
        routes.waiting.insert(request_id, sender);
        if let Some(pushes) = pushes {
            routes.streams.insert(request_id, pushes);
        }
        Ok((request_id, answer))
    }

    async fn send_and_wait(
        &self,
        request_id: u64,
        body: Bytes,
        answer: oneshot::Receiver<Body>,
        timeout: Duration,
    ) -> Result<Body, ClientError> {
        let frame = EncodedRequest { request_id, body };
        let exchange = async {
            self.inner.outbox.send(frame).await.map_err(|_| ClientError::Closed)?;
            answer.await.map_err(|_| ClientError::Closed)
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| ClientError::Timeout(timeout))?
    }

    /// Opens a stream (a subscription): the first answer is returned, and every later frame with
    /// the same request id arrives on the receiver.
    pub async fn open_stream<R: Exchange>(
        &self,
        request: R,
        timeout: Duration,
    ) -> Result<(u64, R::Answer, mpsc::Receiver<Body>), ClientError> {
        let (pushes, stream) = mpsc::channel(STREAM_BUFFER_MAX);
        let (request_id, answer) = self.register(Some(pushes))?;
        let body = encode_request(&request.into_request());
        let first = self.send_and_wait(request_id, body, answer, timeout).await;
        match first.map(|first| R::from_answer(first).map_err(ClientError::from)) {
            Ok(Ok(first)) => Ok((request_id, first, stream)),
            Ok(Err(error)) | Err(error) => {
                self.close_stream(request_id);
                Err(error)
            }
        }
    }

    /// Stops routing pushes for a stream.
    pub fn close_stream(&self, request_id: u64) {
        let mut routes = self.inner.routes.lock().expect("routes lock");
        routes.waiting.remove(&request_id);
        routes.streams.remove(&request_id);
    }

    /// Sends a frame that expects no answer routed to the caller (for example Credit).
    pub async fn send(&self, request: Request) -> Result<(), ClientError> {
        let request_id = self.inner.next_request_id.fetch_add(1, Ordering::Relaxed);
        let frame = EncodedRequest { request_id, body: encode_request(&request) };
        self.inner.outbox.send(frame).await.map_err(|_| ClientError::Closed)
    }

    pub fn is_closed(&self) -> bool {
        self.inner.routes.lock().expect("routes lock").closed
    }
}

/// The first frame for a request id answers its waiter; later ones go to its stream.
async fn route(routes: &Mutex<Routes>, frame: pb::ServerFrame) {
    let Some(body) = frame.body else { return };
    let stream = {
        let mut routes = routes.lock().expect("routes lock");
        if let Some(waiter) = routes.waiting.remove(&frame.request_id) {
            let _ = waiter.send(body);
            return;
        }
        routes.streams.get(&frame.request_id).cloned()
    };
    if let Some(stream) = stream {
        let _ = stream.send(body).await;
    }
}
