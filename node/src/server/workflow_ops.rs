//! Answers to workflow requests: list, show, cancel, resume.
//!
//! A workflow id (`wf-<node>-<serial>`) names the node that journals and
//! drives the workflow. A request about another node's workflow is
//! forwarded to that node once, as `ForwardAdmin` under this node's
//! certificate (the admin's role was checked here); a forwarded request is
//! answered locally or refused, never forwarded again, so there is no loop.
//! `WorkflowList` is answered by the node asked: the client gathers the
//! lists of every node.
//!
//! Engine errors become `Rejected{reason}` (unknown workflow, already ended,
//! not paused...) or `Retry` (a concurrent journal append, a node still
//! resuming its workflows, an unreachable driving node).

use std::net::SocketAddr;
use std::time::Duration;

use shardflow_workflow::{replay, EngineError, JournalError, WorkflowId};

use super::node::{NodeInner, WorkflowGate};
use crate::rpc::{
    AdminRequest, AdminResponse, NodeRequest, NodeRequestV1, NodeResponse, NodeResponseV1,
    WorkflowEvent, WorkflowPage, WorkflowSummary, MAX_SHOW_EVENTS,
};
use crate::transport::TransportError;

/// The longest requester name (`by`) journaled with a cancel or resume.
const MAX_BY_BYTES: usize = 256;

/// Bound on one forwarded request: shorter than a client's attempt (3 s by
/// default), so an unreachable driving node is reported as such.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// Who sent a workflow request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// An admin (certificate checked): forwarded if another node drives it.
    Admin,
    /// A peer node forwarding an admin's request: answered here only.
    Peer,
}

/// Answers a workflow request, forwarding it once when another node drives
/// the workflow.
pub(crate) async fn handle(
    node: &NodeInner,
    request: AdminRequest,
    origin: Origin,
) -> AdminResponse {
    if !request.is_workflow() {
        return rejected("only workflow requests are forwarded between nodes");
    }
    match (request.workflow(), origin) {
        (Some(id), Origin::Admin) if id.node != node.id => forward(node, id, request).await,
        (Some(id), Origin::Peer) if id.node != node.id => rejected(format!(
            "workflow {id} is driven by node {}, not node {}; a forwarded request is not \
             forwarded again",
            id.node, node.id
        )),
        _ => local(node, request).await,
    }
}

fn rejected(reason: impl Into<String>) -> AdminResponse {
    AdminResponse::Rejected {
        reason: reason.into(),
    }
}

/// Sends `request` to the node driving `id` and returns its answer.
async fn forward(node: &NodeInner, id: WorkflowId, request: AdminRequest) -> AdminResponse {
    let driver = id.node;
    let addr = match node.refresh_metadata().await {
        Ok(metadata) => metadata.nodes.get(&driver).cloned(),
        Err(_) => node.node_addr(driver),
    };
    let Some(addr) = addr else {
        return rejected(format!(
            "workflow {id} names node {driver}, which is not a node of this cluster"
        ));
    };
    let Ok(socket) = addr.parse::<SocketAddr>() else {
        return rejected(format!("node {driver} has an unusable address {addr:?}"));
    };
    match call(node, socket, request).await {
        Ok(NodeResponse::V1(NodeResponseV1::Admin(answer))) => answer,
        Ok(NodeResponse::V1(other)) => {
            let mut shown = format!("{other:?}");
            shown.truncate(120);
            rejected(format!("node {driver} answered {shown}"))
        }
        Err(error) if error.is_permission_denied() => {
            rejected(format!("node {driver} refused this node: {error}"))
        }
        Err(error) => AdminResponse::Retry {
            reason: format!("node {driver} ({addr}), which drives {id}, did not answer: {error}"),
        },
    }
}

/// One `ForwardAdmin` call, within [`FORWARD_TIMEOUT`].
async fn call(
    node: &NodeInner,
    peer: SocketAddr,
    request: AdminRequest,
) -> Result<NodeResponse, TransportError> {
    let message = NodeRequest::V1(NodeRequestV1::ForwardAdmin(request));
    let bytes = postcard::to_allocvec(&message)
        .map_err(|source| TransportError::Encode { peer, source })?;
    let answer = node
        .transport
        .call_with_timeout(peer, &bytes, FORWARD_TIMEOUT)
        .await?;
    postcard::from_bytes(&answer).map_err(|source| TransportError::Decode { peer, source })
}

/// Answers from this node's engine.
async fn local(node: &NodeInner, request: AdminRequest) -> AdminResponse {
    let engine = &node.engine;
    if let AdminRequest::WorkflowCancel { by, .. } | AdminRequest::WorkflowResume { by, .. } =
        &request
    {
        if by.len() > MAX_BY_BYTES {
            return rejected(format!(
                "the requester name is {} bytes; at most {MAX_BY_BYTES} are journaled",
                by.len()
            ));
        }
    }
    let outcome = match request {
        AdminRequest::WorkflowList { include_ended } => list(node, include_ended).await,
        AdminRequest::WorkflowShow { id, from_seq } => show(node, id, from_seq).await,
        AdminRequest::WorkflowCancel { id, by } => {
            gated(node, async { engine.cancel(id, &by).await.map(done) }).await
        }
        AdminRequest::WorkflowResume { id, by } => {
            gated(node, async { engine.resume(id, &by).await.map(done) }).await
        }
        other => return rejected(format!("{other:?} is not a workflow request")),
    };
    outcome.unwrap_or_else(|error| engine_error(node.id, error))
}

fn done(_: ()) -> AdminResponse {
    AdminResponse::Done
}

/// Runs `change` while the node's workflows are resumed and not halted.
pub(crate) async fn gated(
    node: &NodeInner,
    change: impl std::future::Future<Output = Result<AdminResponse, EngineError>>,
) -> Result<AdminResponse, EngineError> {
    let Ok(gate) = node.workflow_gate.try_read() else {
        return Ok(busy(node.id, "is resuming or halting its workflows"));
    };
    match *gate {
        WorkflowGate::Open => change.await,
        WorkflowGate::Resuming => Ok(busy(node.id, "has not resumed its workflows yet")),
        WorkflowGate::Closed => Ok(busy(node.id, "is shutting down")),
    }
}

fn busy(node: u64, what: &str) -> AdminResponse {
    AdminResponse::Retry {
        reason: format!("node {node} {what}"),
    }
}

/// This node's workflows, with each unfinished one's phase and step.
async fn list(node: &NodeInner, include_ended: bool) -> Result<AdminResponse, EngineError> {
    let mut workflows = Vec::new();
    for instance in node.engine.list(include_ended).await? {
        let (phase, step) = match instance.ended {
            true => (instance.last_event.clone(), None),
            false => match node.engine.status(instance.id).await {
                Ok(status) => (status.phase.label().to_string(), status.step),
                Err(error) => {
                    tracing::warn!(workflow = %instance.id, %error, "cannot read workflow status");
                    ("Unreadable".to_string(), None)
                }
            },
        };
        workflows.push(WorkflowSummary {
            instance,
            phase,
            step,
        });
    }
    Ok(AdminResponse::Workflows {
        node: node.id,
        workflows,
    })
}

/// The state and up to [`MAX_SHOW_EVENTS`] events from `from_seq`, from
/// one read of the journal (so the state is the fold of exactly the events
/// journaled then).
async fn show(
    node: &NodeInner,
    id: WorkflowId,
    from_seq: u64,
) -> Result<AdminResponse, EngineError> {
    let envelopes = node.engine.events(id).await?;
    let state = replay(id, &envelopes).map_err(|source| EngineError::Replay { id, source })?;
    let skip = usize::try_from(from_seq).unwrap_or(usize::MAX);
    let events = envelopes
        .iter()
        .skip(skip)
        .take(MAX_SHOW_EVENTS)
        .map(WorkflowEvent::from)
        .collect();
    Ok(AdminResponse::Workflow(Box::new(WorkflowPage {
        state,
        events,
    })))
}

/// What an engine error means to the admin who asked.
pub(crate) fn engine_error(node: u64, error: EngineError) -> AdminResponse {
    match error {
        EngineError::UnknownWorkflow(id)
        | EngineError::Journal(JournalError::UnknownInstance(id)) => rejected(format!(
            "workflow {id} does not exist (node {node} has no such workflow)"
        )),
        EngineError::Journal(error @ JournalError::SeqConflict { .. }) => AdminResponse::Retry {
            reason: error.to_string(),
        },
        EngineError::Journal(error @ JournalError::Storage { .. }) => AdminResponse::Retry {
            reason: format!("node {node}: {error}"),
        },
        other => rejected(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves engine errors become clear rejections, and transient ones retries.
    #[test]
    fn engine_errors_map_to_rejections_and_retries() {
        let id = WorkflowId::new(2, 9);
        let unknown = engine_error(2, EngineError::Journal(JournalError::UnknownInstance(id)));
        assert_eq!(
            unknown,
            rejected("workflow wf-2-9 does not exist (node 2 has no such workflow)")
        );
        let ended = engine_error(
            2,
            EngineError::AlreadyEnded {
                id,
                phase: "Aborted",
            },
        );
        assert_eq!(ended, rejected("workflow wf-2-9 already ended (Aborted)"));
        let conflict = JournalError::SeqConflict {
            id,
            expected: 3,
            actual: 4,
        };
        assert!(matches!(
            engine_error(2, EngineError::Journal(conflict)),
            AdminResponse::Retry { .. }
        ));
    }
}
