//! The connection pool: at most one live connection per peer address.
//!
//! Owns dialing. Guarantees: concurrent callers to a peer share one dial
//! (single flight per address); a pooled connection whose `close_reason()`
//! is set (closed by either side, reset, idle timeout) is never handed out
//! again but replaced by a fresh dial; a dialed peer is always a node (its
//! certificate is CA-signed, names `shardflow-node`, and carries a node
//! role). Dials are not bounded here: every caller wraps them in its call
//! timeout.
//!
//! Shared state is a short-held `std` mutex over the address map plus one
//! async mutex per address held across the dial: an owned event loop would
//! add a hop to every call for no gain in clarity.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use quinn::{Connection, Endpoint, VarInt};

use super::error::{connection_error, TransportError};
use super::server::{identity_of, CLOSE_NOT_A_NODE};
use super::tls::NODE_SERVER_NAME;
use crate::certs::Role;

type Slot = Arc<tokio::sync::Mutex<Option<Connection>>>;

/// Whether [`Pool::connection`] reused a pooled connection or dialed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    Pooled,
    Dialed,
}

pub(crate) struct Pool {
    slots: Mutex<HashMap<SocketAddr, Slot>>,
    /// Above this many addresses, slots without a live connection are pruned.
    prune_above_peers: usize,
}

impl Pool {
    pub(crate) fn new(prune_above_peers: usize) -> Self {
        Pool {
            slots: Mutex::new(HashMap::new()),
            prune_above_peers,
        }
    }

    /// A live connection to `peer`, pooled or freshly dialed.
    pub(crate) async fn connection(
        &self,
        endpoint: &Endpoint,
        peer: SocketAddr,
    ) -> Result<(Connection, Origin), TransportError> {
        let slot = self.slot(peer);
        let mut pooled = slot.lock().await;
        if let Some(connection) = pooled.as_ref() {
            if connection.close_reason().is_none() {
                return Ok((connection.clone(), Origin::Pooled));
            }
        }
        *pooled = None;
        let connection = dial(endpoint, peer).await?;
        *pooled = Some(connection.clone());
        Ok((connection, Origin::Dialed))
    }

    /// Drops every pooled connection handle.
    pub(crate) fn clear(&self) {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn slot(&self, peer: SocketAddr) -> Slot {
        // No code panics while holding this lock; if one ever did, the map
        // is still consistent (single inserts and removes), so recover it.
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if !slots.contains_key(&peer) && slots.len() >= self.prune_above_peers {
            slots.retain(|_, slot| match slot.try_lock() {
                Ok(pooled) => pooled
                    .as_ref()
                    .is_some_and(|connection| connection.close_reason().is_none()),
                Err(_) => true, // a dial is in flight
            });
        }
        slots.entry(peer).or_default().clone()
    }
}

async fn dial(endpoint: &Endpoint, peer: SocketAddr) -> Result<Connection, TransportError> {
    let connecting = endpoint
        .connect(peer, NODE_SERVER_NAME)
        .map_err(|source| TransportError::Connect { peer, source })?;
    let connection = connecting
        .await
        .map_err(|error| connection_error(peer, error))?;
    let identity = identity_of(&connection)
        .map_err(|source| TransportError::PeerCertificate { peer, source })?;
    if identity.role() != Role::Node {
        connection.close(VarInt::from_u32(CLOSE_NOT_A_NODE), b"only nodes serve");
        return Err(TransportError::NotANode { peer, identity });
    }
    Ok(connection)
}
