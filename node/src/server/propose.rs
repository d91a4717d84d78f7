//! Proposing a command to a group through its leader, wherever it runs:
//! locally when this node leads, else forwarded to the leader openraft
//! names (or to a member, when no leader is known yet), with bounded hops,
//! backoff and a deadline.

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::time::Instant;

use super::node::NodeInner;
use crate::command::{Command, Response};
use crate::rpc::{NodeRequest, NodeRequestV1, NodeResponse, NodeResponseV1, ProposeError};

/// The most forwards one proposal makes.
const MAX_HOPS: u32 = 32;

/// Proposes on the local replica of `group`.
pub(crate) async fn local(
    node: &NodeInner,
    group: u64,
    command: Command,
) -> Result<Response, ProposeError> {
    let Some(runtime) = node.groups.get(group) else {
        return Err(ProposeError::UnknownGroup { group });
    };
    match runtime.raft.client_write(command).await {
        Ok(written) => Ok(written.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            let leader = forward.leader_id.zip(forward.leader_node.map(|n| n.addr));
            Err(ProposeError::NotLeader { leader })
        }
        Err(error) => Err(ProposeError::Failed(error.to_string())),
    }
}

async fn remote(
    node: &NodeInner,
    addr: &str,
    group: u64,
    command: &Command,
) -> Result<Response, ProposeError> {
    let unreachable = |reason: String| ProposeError::NotLeader { leader: None }.with_reason(reason);
    let addr = addr
        .parse()
        .map_err(|e: std::net::AddrParseError| unreachable(e.to_string()))?;
    let request = NodeRequest::V1(NodeRequestV1::Propose {
        group,
        command: command.clone(),
    });
    match node
        .transport
        .call_typed::<_, NodeResponse>(addr, &request)
        .await
    {
        Ok(NodeResponse::V1(NodeResponseV1::Proposed(outcome))) => outcome,
        Ok(other) => Err(ProposeError::Failed(format!("unexpected answer {other:?}"))),
        Err(error) => Err(unreachable(error.to_string())),
    }
}

trait WithReason {
    fn with_reason(self, reason: String) -> Self;
}

impl WithReason for ProposeError {
    /// Logs why a hop failed; the caller retries another way.
    fn with_reason(self, reason: String) -> Self {
        tracing::debug!(%reason, "proposal hop failed");
        self
    }
}

/// One hop, given up at `deadline` as an unreachable leader: a peer that
/// does not answer would otherwise hold the caller for the transport's own
/// call timeout, and a local leader that lost its quorum for as long as it
/// believes it leads (its `client_write` waits for a commit).
async fn bounded(
    deadline: Instant,
    hop: impl std::future::Future<Output = Result<Response, ProposeError>>,
) -> Result<Response, ProposeError> {
    match tokio::time::timeout_at(deadline, hop).await {
        Ok(outcome) => outcome,
        Err(_) => Err(ProposeError::NotLeader { leader: None }
            .with_reason("no answer before the deadline".to_string())),
    }
}

/// Proposes `command` to `group` wherever its leader is, until `deadline`.
pub(crate) async fn anywhere(
    node: &NodeInner,
    group: u64,
    command: Command,
    deadline: Instant,
) -> Result<Response, ProposeError> {
    let mut target: Option<String> = None;
    let mut member_turn = 0usize;
    let mut last = ProposeError::NotLeader { leader: None };
    for hop in 0..MAX_HOPS {
        if Instant::now() >= deadline {
            break;
        }
        let outcome = match (&target, node.groups.get(group).is_some()) {
            (None, true) => bounded(deadline, local(node, group, command.clone())).await,
            (None, false) => {
                let members: Vec<u64> = node
                    .metadata()
                    .groups
                    .get(&group)
                    .into_iter()
                    .flatten()
                    .copied()
                    .collect();
                let Some(member) = members.get(member_turn % members.len().max(1)).copied() else {
                    return Err(ProposeError::UnknownGroup { group });
                };
                member_turn += 1;
                match node.node_addr(member) {
                    Some(addr) => bounded(deadline, remote(node, &addr, group, &command)).await,
                    None => Err(ProposeError::UnknownGroup { group }),
                }
            }
            (Some(addr), _) => bounded(deadline, remote(node, addr, group, &command)).await,
        };
        match outcome {
            Ok(response) => return Ok(response),
            Err(ProposeError::NotLeader {
                leader: Some((_, addr)),
            }) if target.as_ref() != Some(&addr) => {
                target = Some(addr);
                continue;
            }
            Err(error @ (ProposeError::NotLeader { .. } | ProposeError::UnknownGroup { .. })) => {
                last = error;
                target = None;
            }
            Err(error) => return Err(error),
        }
        let backoff = Duration::from_millis(25u64 << hop.min(4));
        tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    Err(last)
}
