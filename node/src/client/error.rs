//! [`ClientError`]: every way a client call can fail, each displayed as one
//! line that says what to do next where there is something to do.

use std::path::PathBuf;
use std::time::Duration;

use crate::transport::{TlsError, TransportError};

/// A failed client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cluster refused the request; retrying will not help.
    #[error("refused: {reason}")]
    Rejected {
        /// The cluster's reason.
        reason: String,
    },
    /// No node answered within the deadline (unreachable, timing out,
    /// electing, or the vShard stayed fenced). `last` is the last cause seen.
    #[error("cluster unavailable after {:.1}s: {last}", after.as_secs_f64())]
    Unavailable {
        /// How long the call tried.
        after: Duration,
        /// The last failure seen.
        last: String,
    },
    /// The certificate's role may not make this request (e.g. a client
    /// certificate asking for an admin operation).
    #[error("{0}")]
    PermissionDenied(String),
    /// A transport failure that retrying will not cure (a refused TLS
    /// handshake, an undecodable answer...).
    #[error(transparent)]
    Transport(TransportError),
    /// The vShard number is out of range.
    #[error("vShard {vshard} does not exist (vShards are 0..{limit})", limit = crate::vshard::VSHARDS)]
    InvalidVShard {
        /// The number asked for.
        vshard: u64,
    },
    /// A key or value is larger than the cluster accepts.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// `"key"` or `"value"`.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An address that is not `HOST:PORT` or does not resolve.
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why it is unusable.
        reason: String,
    },
    /// The client was given no node address to start from.
    #[error("no cluster address given (pass --cluster HOST:PORT or set SHARDFLOW_CLUSTER)")]
    NoSeeds,
    /// The certificate directory is missing or unusable.
    #[error("certificates in {}: {reason}", dir.display())]
    Certificates {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The local endpoint could not be created.
    #[error("client endpoint: {0}")]
    Endpoint(TransportError),
    /// The cluster has no routing table yet.
    #[error("the cluster is not bootstrapped yet (run `shardflow cluster bootstrap`)")]
    NotBootstrapped,
    /// A node answered something the protocol does not allow here.
    #[error("protocol error from {peer}: {reason}")]
    Protocol {
        /// Who answered.
        peer: String,
        /// What was wrong.
        reason: String,
    },
    /// [`crate::client::Client::wait_ready`] ran out of time.
    #[error("cluster not ready after {:.1}s: {waiting}", after.as_secs_f64())]
    NotReady {
        /// How long it waited.
        after: Duration,
        /// What it was still waiting for.
        waiting: String,
    },
    /// The call was cancelled (its runtime is shutting down).
    #[error("the call was cancelled (the runtime is shutting down)")]
    Cancelled,
    /// [`crate::client::Client::workflow_watch`] stopped watching before
    /// the workflow settled.
    #[error("workflow {id} still {phase} after {:.1}s; stopped watching", after.as_secs_f64())]
    WatchTimeout {
        /// The workflow.
        id: String,
        /// Its phase when last seen.
        phase: String,
        /// How long it was watched.
        after: Duration,
    },
    /// The arguments of a call are inconsistent (e.g. a bootstrap with more
    /// replicas than nodes).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl ClientError {
    /// Builds the error for a TLS configuration problem in `dir`.
    pub(crate) fn certificates(dir: &std::path::Path, error: &TlsError) -> Self {
        ClientError::Certificates {
            dir: dir.to_path_buf(),
            reason: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_display_as_one_line() {
        let errors = [
            ClientError::Unavailable {
                after: Duration::from_millis(2_340),
                last: "call to 127.0.0.1:9 timed out after 2s".into(),
            },
            ClientError::InvalidVShard { vshard: 5000 },
            ClientError::NotBootstrapped,
            ClientError::NoSeeds,
            ClientError::Rejected {
                reason: "already bootstrapped".into(),
            },
        ];
        for error in errors {
            let text = error.to_string();
            assert!(!text.contains('\n'), "{text}");
        }
        assert_eq!(
            ClientError::InvalidVShard { vshard: 5000 }.to_string(),
            "vShard 5000 does not exist (vShards are 0..1024)"
        );
        assert!(ClientError::Unavailable {
            after: Duration::from_millis(2_340),
            last: "x".into()
        }
        .to_string()
        .starts_with("cluster unavailable after 2.3s"));
    }
}
