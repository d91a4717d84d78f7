//! The [`Transport`] handle: one quinn endpoint that serves and dials.
//!
//! Owns the endpoint, the connection pool and the server task. Guarantees:
//! every call and every stream operation is bounded by a timeout (typed
//! [`TransportError::Timeout`] naming the peer and the elapsed time); a
//! request is retried on a fresh connection only when the pooled one had
//! died before any byte of it was sent, so a request is never sent twice;
//! [`Transport::shutdown`] closes the endpoint, aborts the server's tasks and
//! waits for the connections to drain, all within `shutdown_timeout`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt, WriteError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::warn;

use super::error::{connection_error, frame_error, TransportError};
use super::frame::{
    encode_header as encode_length, read_frame, write_frame, FrameError, DEFAULT_MAX_FRAME_BYTES,
};
use super::handler::Handler;
use super::pool::{Origin, Pool};
use super::server::{self, ServerLimits};
use super::stream::{bounded, decode_response, ClientStream};
use super::tls::{quinn_transport_config, ClusterTls};
use super::wire::{encode_header, RequestHeader, RequestHeaderV1};
use crate::certs::{PeerIdentity, Role};

/// Application close code sent to every peer on shutdown.
const CLOSE_SHUTDOWN: u32 = 0;

/// Transport settings. `Default` gives the production values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    /// Bound on a whole call (dial included), on opening a stream, and on
    /// each frame sent or received on a stream, on both ends.
    pub call_timeout: Duration,
    /// Bound on one frame's body, both directions.
    pub max_frame_bytes: u32,
    /// A connection with no traffic for this long is dead.
    pub max_idle_timeout: Duration,
    /// Streams a peer may have open at once on one connection (one per
    /// request in flight).
    pub max_concurrent_bidi_streams: u32,
    /// How often an idle connection is pinged (well under the idle timeout).
    pub keep_alive_interval: Duration,
    /// Connections served at once; more are refused.
    pub max_connections: u32,
    /// Pool size above which slots without a live connection are pruned.
    pub prune_above_peers: u32,
    /// Bound on [`Transport::shutdown`].
    pub shutdown_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            call_timeout: Duration::from_secs(5),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_idle_timeout: Duration::from_secs(10),
            max_concurrent_bidi_streams: 1024,
            keep_alive_interval: Duration::from_secs(2),
            max_connections: 1024,
            prune_above_peers: 256,
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

impl TransportConfig {
    fn validate(&self) -> Result<(), TransportError> {
        let problem = if self.call_timeout.is_zero() {
            Some("call_timeout must be positive")
        } else if self.max_frame_bytes == 0 {
            Some("max_frame_bytes must be positive")
        } else if self.keep_alive_interval >= self.max_idle_timeout {
            Some("keep_alive_interval must be shorter than max_idle_timeout")
        } else if self.max_connections == 0 || self.max_concurrent_bidi_streams == 0 {
            Some("max_connections and max_concurrent_bidi_streams must be positive")
        } else {
            None
        };
        match problem {
            Some(problem) => Err(TransportError::Config(problem.to_string())),
            None => Ok(()),
        }
    }
}

/// A cheap, cloneable handle on a node's (or a client's) QUIC endpoint.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    bind_address: SocketAddr,
    pool: Pool,
    config: TransportConfig,
    identity: PeerIdentity,
    server: Mutex<ServerState>,
}

enum ServerState {
    DialOnly,
    Ready,
    Serving(JoinHandle<()>),
    ShutDown,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The server task holds its own endpoint handle: closing ends it.
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"transport dropped");
    }
}

impl Transport {
    /// A node endpoint on `listen` that dials and, once [`Transport::serve`]
    /// is called, serves. Requires a node certificate. Must run inside a
    /// tokio runtime. Connections arriving before `serve` wait.
    pub fn bind(
        listen: SocketAddr,
        tls: &ClusterTls,
        config: TransportConfig,
    ) -> Result<Transport, TransportError> {
        if tls.identity().role() != Role::Node {
            return Err(TransportError::NotANodeCertificate {
                identity: tls.identity(),
            });
        }
        Self::build(listen, tls, config, true)
    }

    /// A dial-only endpoint (admin and client tools) bound to `bind`
    /// (`0.0.0.0:0` or `[::]:0` usually).
    pub fn client(
        bind: SocketAddr,
        tls: &ClusterTls,
        config: TransportConfig,
    ) -> Result<Transport, TransportError> {
        Self::build(bind, tls, config, false)
    }

    fn build(
        bind_address: SocketAddr,
        tls: &ClusterTls,
        config: TransportConfig,
        serves: bool,
    ) -> Result<Transport, TransportError> {
        config.validate()?;
        let quinn_config = quinn_transport_config(&config).map_err(TransportError::Config)?;
        let runtime = quinn::default_runtime().ok_or(TransportError::NoRuntime)?;
        let socket =
            std::net::UdpSocket::bind(bind_address).map_err(|source| TransportError::Bind {
                address: bind_address,
                source,
            })?;
        let (endpoint_config, server_config) = if serves {
            let server_config = tls.server_config(quinn_config.clone())?;
            (tls.stable_endpoint_config(), Some(server_config))
        } else {
            (quinn::EndpointConfig::default(), None)
        };
        let mut endpoint =
            Endpoint::new(endpoint_config, server_config, socket, runtime).map_err(|source| {
                TransportError::Bind {
                    address: bind_address,
                    source,
                }
            })?;
        endpoint.set_default_client_config(tls.client_config(quinn_config)?);
        let server = if serves {
            ServerState::Ready
        } else {
            ServerState::DialOnly
        };
        Ok(Transport {
            inner: Arc::new(Inner {
                endpoint,
                bind_address,
                pool: Pool::new(config.prune_above_peers as usize),
                config,
                identity: tls.identity(),
                server: Mutex::new(server),
            }),
        })
    }

    /// Starts serving: every accepted stream goes to `handler`, each in its
    /// own task. Once per transport.
    pub fn serve(&self, handler: Arc<dyn Handler>) -> Result<(), TransportError> {
        let mut state = self.server_state();
        match *state {
            ServerState::Ready => {}
            ServerState::DialOnly => return Err(TransportError::NotAServer),
            ServerState::Serving(_) | ServerState::ShutDown => {
                return Err(TransportError::AlreadyServing)
            }
        }
        let config = &self.inner.config;
        let limits = ServerLimits {
            max_frame_bytes: config.max_frame_bytes,
            frame_timeout: config.call_timeout,
            max_connections: config.max_connections as usize,
        };
        let task = server::run(self.inner.endpoint.clone(), handler, limits);
        *state = ServerState::Serving(tokio::spawn(task));
        Ok(())
    }

    /// The address the endpoint is bound to (read back after binding port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.inner
            .endpoint
            .local_addr()
            .map_err(|source| TransportError::Bind {
                address: self.inner.bind_address,
                source,
            })
    }

    /// Who our certificate says we are.
    pub fn identity(&self) -> PeerIdentity {
        self.inner.identity
    }

    /// The settings in force.
    pub fn config(&self) -> &TransportConfig {
        &self.inner.config
    }

    /// Sends `request` to the node at `peer` and returns its response,
    /// within `call_timeout`.
    pub async fn call(&self, peer: SocketAddr, request: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.call_with_timeout(peer, request, self.inner.config.call_timeout)
            .await
    }

    /// [`Transport::call`] with its own timeout.
    pub async fn call_with_timeout(
        &self,
        peer: SocketAddr,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        bounded(peer, timeout, self.call_unbounded(peer, request)).await
    }

    /// [`Transport::call`] with postcard-encoded request and response.
    pub async fn call_typed<Request, Response>(
        &self,
        peer: SocketAddr,
        request: &Request,
    ) -> Result<Response, TransportError>
    where
        Request: Serialize,
        Response: DeserializeOwned,
    {
        let request = postcard::to_allocvec(request)
            .map_err(|source| TransportError::Encode { peer, source })?;
        let response = self.call(peer, &request).await?;
        postcard::from_bytes(&response).map_err(|source| TransportError::Decode { peer, source })
    }

    /// Opens a stream of frames to the node at `peer`, sending `request` as
    /// its opening frame. Opening, and each later frame, are bounded by
    /// `call_timeout`.
    pub async fn open_stream(
        &self,
        peer: SocketAddr,
        request: &[u8],
    ) -> Result<ClientStream, TransportError> {
        let config = &self.inner.config;
        let header = encode_header(&RequestHeader::V1(RequestHeaderV1::OpenStream));
        let opened = async {
            self.check_frame(peer, &header, request)?;
            let (mut send, recv) = self.open_bi(peer).await?;
            write_frame(&mut send, &[&header, request], config.max_frame_bytes)
                .await
                .map_err(|error| frame_error(peer, error))?;
            Ok(ClientStream::new(
                peer,
                send,
                recv,
                config.max_frame_bytes,
                config.call_timeout,
            ))
        };
        bounded(peer, config.call_timeout, opened).await
    }

    /// The pooled connection to `peer` (dialed if needed, within
    /// `call_timeout`), for diagnostics and tests that need raw streams.
    pub async fn connection(&self, peer: SocketAddr) -> Result<Connection, TransportError> {
        let pooled = self.inner.pool.connection(&self.inner.endpoint, peer);
        let (connection, _) = bounded(peer, self.inner.config.call_timeout, pooled).await?;
        Ok(connection)
    }

    /// Closes the endpoint (peers see the close at once), aborts the
    /// server's tasks and waits for connections to drain, bounded by
    /// `shutdown_timeout`. Later calls fail; idempotent.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner
            .endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        inner.pool.clear();
        let server = match std::mem::replace(&mut *self.server_state(), ServerState::ShutDown) {
            ServerState::Serving(task) => Some(task),
            _ => None,
        };
        let abort = server.as_ref().map(JoinHandle::abort_handle);
        let drained = tokio::time::timeout(inner.config.shutdown_timeout, async {
            if let Some(task) = server {
                // The accept loop ends when the endpoint closes; a JoinError
                // here is a panic already logged by the runtime.
                let _ = task.await;
            }
            inner.endpoint.wait_idle().await;
        })
        .await;
        if drained.is_err() {
            warn!(timeout = ?inner.config.shutdown_timeout, "transport shutdown timed out");
            if let Some(abort) = abort {
                abort.abort();
            }
        }
    }

    async fn call_unbounded(
        &self,
        peer: SocketAddr,
        request: &[u8],
    ) -> Result<Vec<u8>, TransportError> {
        let max = self.inner.config.max_frame_bytes;
        let header = encode_header(&RequestHeader::V1(RequestHeaderV1::Call));
        self.check_frame(peer, &header, request)?;
        let (mut send, mut recv) = self.open_bi(peer).await?;
        match write_frame(&mut send, &[&header, request], max).await {
            Ok(()) => {}
            // The server stopped reading (it refused the frame): its answer
            // says why, so read it rather than report a bare "stopped".
            Err(FrameError::Write(WriteError::Stopped(_))) => {}
            Err(error) => return Err(frame_error(peer, error)),
        }
        // Already finished or stopped: the response (or its absence) tells.
        let _ = send.finish();
        let frame = read_frame(&mut recv, max)
            .await
            .map_err(|error| frame_error(peer, error))?
            .ok_or_else(|| TransportError::MalformedResponse {
                peer,
                reason: "the stream ended without a response".to_string(),
            })?;
        decode_response(peer, frame)
    }

    /// Refuses locally a frame the peer would refuse, before opening a stream.
    fn check_frame(
        &self,
        peer: SocketAddr,
        header: &[u8],
        payload: &[u8],
    ) -> Result<(), TransportError> {
        encode_length(
            header.len() + payload.len(),
            self.inner.config.max_frame_bytes,
        )
        .map(|_| ())
        .map_err(|error| frame_error(peer, error))
    }

    /// Opens a stream; if the pooled connection turns out dead before
    /// anything was sent on it, redials once.
    async fn open_bi(&self, peer: SocketAddr) -> Result<(SendStream, RecvStream), TransportError> {
        let pool = &self.inner.pool;
        let endpoint = &self.inner.endpoint;
        let (connection, origin) = pool.connection(endpoint, peer).await?;
        match connection.open_bi().await {
            Ok(streams) => Ok(streams),
            Err(_) if origin == Origin::Pooled => {
                // That connection now has a close reason: the pool redials.
                let (connection, _) = pool.connection(endpoint, peer).await?;
                connection
                    .open_bi()
                    .await
                    .map_err(|error| connection_error(peer, error))
            }
            Err(error) => Err(connection_error(peer, error)),
        }
    }

    fn server_state(&self) -> std::sync::MutexGuard<'_, ServerState> {
        // Held only for a state swap, no panics inside: recover if poisoned.
        self.inner
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
