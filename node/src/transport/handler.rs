//! The serving seam: what the layers above implement to answer requests.
//!
//! Owns the [`Handler`] trait and the role check. Guarantees: every request
//! reaches the handler with the caller's [`PeerIdentity`] as its verified
//! certificate says (never as the request claims), each in its own task;
//! [`require_role`] refuses with a typed [`PermissionDenied`] that reaches
//! the caller as `permission denied`.

use std::fmt;

use async_trait::async_trait;

use super::stream::ServerStream;
use super::wire::{RemoteError, RemoteErrorKind};
use crate::certs::{PeerIdentity, Role};

/// Answers requests. The transport calls it concurrently, one task per
/// stream: a slow request never stalls the others.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Answers one request with one response. An `Err` reaches the caller as
    /// `TransportError::Remote`.
    async fn handle(&self, peer: PeerIdentity, request: Vec<u8>) -> Result<Vec<u8>, RemoteError>;

    /// Serves a stream opened with `Transport::open_stream`: `request` is the
    /// opening payload; read the caller's further frames and send any number
    /// of frames on `stream`. `Ok` finishes the stream; `Err` is sent to the
    /// caller as a final error frame. Default: unsupported.
    async fn handle_stream(
        &self,
        peer: PeerIdentity,
        request: Vec<u8>,
        stream: &mut ServerStream,
    ) -> Result<(), RemoteError> {
        let _ = (request, stream);
        Err(RemoteError::new(
            RemoteErrorKind::Unsupported,
            format!("this server opens no streams (asked by {peer})"),
        ))
    }
}

/// The caller's role may not make this request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PermissionDenied {
    /// Who asked.
    pub peer: PeerIdentity,
    /// The roles that may.
    pub allowed: Vec<Role>,
}

impl PermissionDenied {
    fn detail(&self) -> String {
        let allowed: Vec<&str> = self.allowed.iter().map(|role| role.as_str()).collect();
        format!(
            "a {} certificate may not make this request (allowed: {})",
            self.peer.role(),
            allowed.join(", ")
        )
    }
}

impl fmt::Display for PermissionDenied {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "permission denied: {}", self.detail())
    }
}

impl From<PermissionDenied> for RemoteError {
    fn from(denied: PermissionDenied) -> Self {
        RemoteError::new(RemoteErrorKind::PermissionDenied, denied.detail())
    }
}

/// `Ok` if `peer`'s role is one of `allowed`; use with `?` in a handler.
pub fn require_role(peer: &PeerIdentity, allowed: &[Role]) -> Result<(), PermissionDenied> {
    if allowed.contains(&peer.role()) {
        Ok(())
    } else {
        Err(PermissionDenied {
            peer: *peer,
            allowed: allowed.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_role_allows_listed_roles_only() {
        assert!(require_role(&PeerIdentity::node(1), &[Role::Node]).is_ok());
        assert!(require_role(&PeerIdentity::admin(), &[Role::Node, Role::Admin]).is_ok());
        let denied = require_role(&PeerIdentity::client(), &[Role::Node])
            .expect_err("a client is not a node");
        assert!(denied
            .to_string()
            .starts_with("permission denied: a client"));
        let error = RemoteError::from(denied);
        assert_eq!(error.kind, RemoteErrorKind::PermissionDenied);
        assert!(
            error.to_string().starts_with("permission denied: a client"),
            "{error}"
        );
    }
}
