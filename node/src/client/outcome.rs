//! What one attempt's result means for the request loop. Pure: a node's
//! answer or a transport error in, an [`Outcome`] out.
//!
//! | result | outcome |
//! | --- | --- |
//! | the expected answer | `Answer` |
//! | `Redirect{node, addr}` | `Redirect` (follow it) |
//! | `StaleRouting{vshard, epoch}` | `Stale` (refresh the table, retry) |
//! | `Moved{vshard, group, epoch}` | `Moved` (update that route, retry; else as `Stale`) |
//! | `Fenced{vshard, migration}` | `Fenced` (ask the same node again shortly, no backoff) |
//! | any other `Retry{reason}` | `Retry` (back off, same node) |
//! | `Rejected{reason}` | `Fail(Rejected)` |
//! | timeout, lost connection, reset stream, server unavailable | `Elsewhere` (back off, next node) |
//! | permission denied | `Fail(PermissionDenied)` |
//! | refused TLS handshake, undecodable answer, unexpected answer | `Fail` |

use crate::rpc::{AdminResponse, ClientResponse, NodeResponseV1};
use crate::transport::{RemoteErrorKind, TransportError};

use super::error::ClientError;
use super::routing::Peer;

/// What the request loop does next.
#[derive(Debug)]
pub(crate) enum Outcome<T> {
    /// Done: the answer.
    Answer(T),
    /// Ask this node instead.
    Redirect(Peer),
    /// Our route for `vshard` is stale; the node knows `epoch`.
    Stale { vshard: u16, epoch: u64 },
    /// `vshard` moved to `group` at `epoch` (a ghost's answer).
    Moved { vshard: u16, group: u64, epoch: u64 },
    /// Back off and ask the same node again.
    Retry(String),
    /// The vShard is fenced by a migration's cut-over: ask the same node
    /// again after a short fixed poll (the fence ends with the cut-over,
    /// then the node answers `StaleRouting` or serves again).
    Fenced(String),
    /// The node is unreachable or could not serve: back off, ask the next.
    /// The request may have been applied (an ambiguous outcome).
    Elsewhere(String),
    /// Stop with this error.
    Fail(ClientError),
}

/// Classifies a transport failure.
pub(crate) fn classify_transport<T>(error: TransportError) -> Outcome<T> {
    if error.is_permission_denied() {
        return Outcome::Fail(ClientError::PermissionDenied(error.to_string()));
    }
    match error {
        TransportError::Timeout { .. }
        | TransportError::ConnectionLost { .. }
        | TransportError::Stream { .. }
        | TransportError::MalformedResponse { .. } => Outcome::Elsewhere(error.to_string()),
        TransportError::Remote { ref error, .. } if error.kind == RemoteErrorKind::Unavailable => {
            Outcome::Elsewhere(error.to_string())
        }
        other => Outcome::Fail(ClientError::Transport(other)),
    }
}

/// Classifies a node's answer to a client request; `expect` takes the
/// answer variant the request wants and gives anything else back.
pub(crate) fn classify_client<T>(
    peer: &Peer,
    response: NodeResponseV1,
    expect: impl FnOnce(ClientResponse) -> Result<T, ClientResponse>,
) -> Outcome<T> {
    let response = match response {
        NodeResponseV1::Client(response) => response,
        other => return unexpected(peer, &other),
    };
    match response {
        ClientResponse::Redirect { node, addr } => Outcome::Redirect(Peer::new(Some(node), addr)),
        ClientResponse::StaleRouting { vshard, epoch } => Outcome::Stale { vshard, epoch },
        ClientResponse::Moved {
            vshard,
            group,
            epoch,
        } => Outcome::Moved {
            vshard,
            group,
            epoch,
        },
        ClientResponse::Fenced { vshard, migration } => Outcome::Fenced(format!(
            "{}: vShard {vshard} is fenced by migration {migration}",
            peer.addr
        )),
        ClientResponse::Retry { reason } => Outcome::Retry(format!("{} busy: {reason}", peer.addr)),
        ClientResponse::Rejected { reason } => Outcome::Fail(ClientError::Rejected { reason }),
        other => match expect(other) {
            Ok(answer) => Outcome::Answer(answer),
            Err(other) => unexpected(peer, &other),
        },
    }
}

/// Classifies a node's answer to an admin request.
pub(crate) fn classify_admin<T>(
    peer: &Peer,
    response: NodeResponseV1,
    expect: impl FnOnce(AdminResponse) -> Result<T, Box<AdminResponse>>,
) -> Outcome<T> {
    let response = match response {
        NodeResponseV1::Admin(response) => response,
        other => return unexpected(peer, &other),
    };
    match response {
        AdminResponse::Retry { reason } => Outcome::Retry(format!("{} busy: {reason}", peer.addr)),
        AdminResponse::Rejected { reason } => Outcome::Fail(ClientError::Rejected { reason }),
        other => match expect(other) {
            Ok(answer) => Outcome::Answer(answer),
            Err(other) => unexpected(peer, &other),
        },
    }
}

fn unexpected<T>(peer: &Peer, answer: &impl std::fmt::Debug) -> Outcome<T> {
    let mut shown = format!("{answer:?}");
    shown.truncate(120);
    Outcome::Fail(ClientError::Protocol {
        peer: peer.addr.clone(),
        reason: format!("unexpected answer {shown}"),
    })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::transport::RemoteError;

    fn peer() -> Peer {
        Peer::new(Some(1), "127.0.0.1:7001")
    }

    fn value(response: ClientResponse) -> Result<Option<Vec<u8>>, ClientResponse> {
        match response {
            ClientResponse::Value(value) => Ok(value),
            other => Err(other),
        }
    }

    fn client(response: ClientResponse) -> Outcome<Option<Vec<u8>>> {
        classify_client(&peer(), NodeResponseV1::Client(response), value)
    }

    #[test]
    fn client_answers_map_to_outcomes() {
        assert!(matches!(
            client(ClientResponse::Value(Some(b"v".to_vec()))),
            Outcome::Answer(Some(v)) if v == b"v"
        ));
        assert!(matches!(
            client(ClientResponse::Redirect { node: 2, addr: "h:2".into() }),
            Outcome::Redirect(p) if p == Peer::new(Some(2), "h:2")
        ));
        assert!(matches!(
            client(ClientResponse::StaleRouting {
                vshard: 7,
                epoch: 3
            }),
            Outcome::Stale {
                vshard: 7,
                epoch: 3
            }
        ));
        assert!(matches!(
            client(ClientResponse::Retry { reason: "election".into() }),
            Outcome::Retry(r) if r == "127.0.0.1:7001 busy: election"
        ));
        assert!(matches!(
            client(ClientResponse::Rejected { reason: "no".into() }),
            Outcome::Fail(ClientError::Rejected { reason }) if reason == "no"
        ));
        assert!(matches!(
            client(ClientResponse::Done),
            Outcome::Fail(ClientError::Protocol { .. })
        ));
        let admin = classify_client(&peer(), NodeResponseV1::Admin(AdminResponse::Done), value);
        assert!(matches!(admin, Outcome::Fail(ClientError::Protocol { .. })));
    }

    #[test]
    fn a_fenced_vshard_is_polled_not_backed_off() {
        let fenced = ClientResponse::Fenced {
            vshard: 7,
            migration: "1-4".into(),
        };
        assert!(matches!(
            client(fenced),
            Outcome::Fenced(r) if r.ends_with("vShard 7 is fenced by migration 1-4")
        ));
        assert!(matches!(
            client(ClientResponse::Retry {
                reason: "group 1 is electing a leader".into()
            }),
            Outcome::Retry(_)
        ));
    }

    #[test]
    fn admin_answers_map_to_outcomes() {
        let done = |r: AdminResponse| match r {
            AdminResponse::Done => Ok(()),
            other => Err(Box::new(other)),
        };
        let admin = |r| classify_admin(&peer(), NodeResponseV1::Admin(r), done);
        assert!(matches!(admin(AdminResponse::Done), Outcome::Answer(())));
        assert!(matches!(
            admin(AdminResponse::Retry { reason: "x".into() }),
            Outcome::Retry(_)
        ));
        assert!(matches!(
            admin(AdminResponse::Rejected {
                reason: "already bootstrapped".into()
            }),
            Outcome::Fail(ClientError::Rejected { .. })
        ));
    }

    #[test]
    fn transport_errors_split_into_retry_elsewhere_and_fail() {
        let addr: SocketAddr = ([127, 0, 0, 1], 9).into();
        let timeout = TransportError::Timeout {
            peer: addr,
            elapsed: Duration::from_secs(1),
        };
        assert!(matches!(
            classify_transport::<()>(timeout),
            Outcome::Elsewhere(_)
        ));
        let remote = |kind| TransportError::Remote {
            peer: addr,
            error: RemoteError::new(kind, "x"),
        };
        assert!(matches!(
            classify_transport::<()>(remote(RemoteErrorKind::Unavailable)),
            Outcome::Elsewhere(_)
        ));
        assert!(matches!(
            classify_transport::<()>(remote(RemoteErrorKind::PermissionDenied)),
            Outcome::Fail(ClientError::PermissionDenied(_))
        ));
        let handshake = TransportError::Handshake {
            peer: addr,
            reason: "invalid peer certificate: BadSignature".into(),
        };
        assert!(matches!(
            classify_transport::<()>(handshake),
            Outcome::Fail(ClientError::Transport(_))
        ));
    }
}
