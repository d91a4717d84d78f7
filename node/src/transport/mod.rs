//! The node transport: mutual-TLS QUIC between nodes, admins and clients.
//!
//! Owns everything between "send these bytes to that peer" and the socket:
//! the quinn endpoint, TLS rooted in the cluster CA, framing, the connection
//! pool and the server that dispatches streams to a [`Handler`]. It knows
//! nothing of Raft or keys: payloads are opaque bytes (or any postcard type),
//! and the layers above define their own versioned message enums.
//!
//! Guarantees:
//! - **Authenticated both ways.** A peer whose certificate is not signed by
//!   the cluster CA is refused during the TLS 1.3 handshake; a handler sees
//!   the caller's [`PeerIdentity`] as its certificate says; only node
//!   certificates serve. [`require_role`] turns a wrong role into a typed
//!   `permission denied` on the caller's side.
//! - **One request per bidirectional stream**, each frame a `u32` big-endian
//!   length plus a postcard header plus the payload ([`wire`]), bounded by
//!   `max_frame_bytes`. A bad frame gets an error answer on its own stream;
//!   the connection serves on.
//! - **Bounded in time and space**: a timeout on every call and stream frame,
//!   a cap on connections served and streams per connection, one pooled
//!   connection per peer, replaced when it breaks.
//! - **Streams** ([`Transport::open_stream`]) carry bulk transfers
//!   (snapshots, migration copies) as many frames on one stream.
//!
//! Module map: `endpoint` (the [`Transport`] handle), `pool` (connections),
//! `server` (accept loop and dispatch), `handler` (the serving seam), `stream`
//! (framed streams), `frame` (length prefix), `wire` (headers and remote
//! errors), `tls` (rustls/quinn configuration), `error`.

mod endpoint;
mod error;
pub mod frame;
mod handler;
mod pool;
mod server;
mod stream;
mod tls;
pub mod wire;

pub use endpoint::{Transport, TransportConfig};
pub use error::TransportError;
pub use frame::{FrameError, DEFAULT_MAX_FRAME_BYTES};
pub use handler::{require_role, Handler, PermissionDenied};
pub use stream::{ClientStream, ServerStream, StreamError};
pub use tls::{ClusterTls, TlsError, ALPN, NODE_SERVER_NAME};
pub use wire::{RemoteError, RemoteErrorKind};

pub use crate::certs::{PeerIdentity, Role};
