//! The node side of the migration service: answers
//! [`MigrationRequest`]s (`NodeRequestV1::Migration`, node certificates
//! only, checked by the handler).
//!
//! Source reads and replica moves are served only by the group's leader:
//! a read first waits for a read index (`Raft::ensure_linearizable`), so it
//! reflects every write committed before the request arrived. A node that
//! does not lead the group answers `Redirect` to the leader openraft names,
//! or to a member of the group when it does not run the group; `Retry`
//! while a leader is being elected. `EnsureGroup` is answered by the node
//! asked: it starts the group's Raft **uninitialized** (never `initialize`:
//! the group exists already, its leader replicates to this node once it is
//! a learner), and marks it so that reconcile keeps it while the leader's
//! membership does not name this node yet (`Groups::ensure_for_move`).

use std::collections::BTreeSet;

use openraft::error::{
    ChangeMembershipError, CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError,
};
use openraft::{ChangeMembers, ServerState};

use crate::command::METADATA_GROUP;
use crate::raft::{ChangesError, NodeAddr, RaftStorageError, ReadError};
use crate::rpc::{
    MigrationRequest, MigrationResponse, ReplicationStatus, VShardStatus, WireChangesPage,
    WireDigestAt, WireExportChunk,
};
use crate::server::groups::GroupRuntime;
use crate::server::node::NodeInner;

/// The most pairs one exported chunk carries.
pub const MAX_EXPORT_PAIRS: u32 = 100_000;
/// The most bytes one exported chunk carries (one pair may exceed it).
pub const MAX_EXPORT_BYTES: u32 = 4 * 1024 * 1024;
/// The most changes one page carries.
pub const MAX_CHANGES_PAGE: u32 = 100_000;

/// Answers one migration request on this node.
pub(crate) async fn handle(node: &NodeInner, request: MigrationRequest) -> MigrationResponse {
    match request {
        MigrationRequest::Metadata => metadata(node).await,
        MigrationRequest::OfferMetadata {
            applied_index,
            metadata,
        } => {
            // A node with its own group-0 replica reads the metadata there.
            if crate::migration::reactor::outside_group0(node).await {
                node.adopt_metadata(applied_index, *metadata);
            }
            MigrationResponse::Done
        }
        MigrationRequest::ExportChunk {
            group,
            vshard,
            after_key,
            max_pairs,
            max_bytes,
        } => {
            let runtime = match leader_runtime(node, group).await {
                Ok(runtime) => runtime,
                Err(answer) => return answer,
            };
            let pairs = max_pairs.clamp(1, MAX_EXPORT_PAIRS) as usize;
            let bytes = max_bytes.clamp(1, MAX_EXPORT_BYTES) as usize;
            match (runtime.state_machine)
                .export_chunk(vshard, after_key, pairs, bytes)
                .await
            {
                Ok(chunk) => MigrationResponse::Chunk(WireExportChunk {
                    migration: chunk.migration,
                    pairs: chunk.pairs,
                    applied_index: chunk.applied_index,
                    more: chunk.more,
                }),
                Err(ReadError::Rejected(rejection)) => MigrationResponse::Rejected(rejection),
                Err(ReadError::Storage(error)) => storage(error),
            }
        }
        MigrationRequest::ChangesAfter {
            group,
            vshard,
            after_index,
            limit,
        } => {
            let runtime = match leader_runtime(node, group).await {
                Ok(runtime) => runtime,
                Err(answer) => return answer,
            };
            let limit = limit.clamp(1, MAX_CHANGES_PAGE) as usize;
            match (runtime.state_machine)
                .changes_after(vshard, after_index, limit)
                .await
            {
                Ok(page) => MigrationResponse::Changes(WireChangesPage {
                    migration: page.migration,
                    changes: page.changes,
                    applied_index: page.applied_index,
                }),
                Err(error @ ChangesError::Unavailable { .. }) => {
                    MigrationResponse::ChangesUnavailable {
                        reason: error.to_string(),
                    }
                }
                Err(ChangesError::Storage(error)) => storage(error),
            }
        }
        MigrationRequest::Digest { group, vshard } => {
            let runtime = match leader_runtime(node, group).await {
                Ok(runtime) => runtime,
                Err(answer) => return answer,
            };
            match runtime.state_machine.vshard_digest(vshard).await {
                Ok(at) => MigrationResponse::Digest(WireDigestAt {
                    state: at.state,
                    digest: at.digest,
                    applied_index: at.applied_index,
                }),
                Err(error) => storage(error),
            }
        }
        MigrationRequest::FenceIndex { group, vshard } => {
            let runtime = match leader_runtime(node, group).await {
                Ok(runtime) => runtime,
                Err(answer) => return answer,
            };
            match runtime.state_machine.fence_index(vshard).await {
                Ok(index) => MigrationResponse::FenceIndex(index),
                Err(error) => storage(error),
            }
        }
        MigrationRequest::VShardStatus { group, vshard } => {
            let runtime = match leader_runtime(node, group).await {
                Ok(runtime) => runtime,
                Err(answer) => return answer,
            };
            match vshard_status(&runtime, vshard).await {
                Ok(status) => MigrationResponse::VShardStatus(Box::new(status)),
                Err(error) => storage(error),
            }
        }
        MigrationRequest::EnsureGroup { group } => {
            if group == METADATA_GROUP {
                return MigrationResponse::Failed {
                    reason: "the metadata group is not moved by migrations".into(),
                };
            }
            match node.groups.ensure_for_move(group).await {
                Ok(_) => MigrationResponse::Done,
                Err(error) => MigrationResponse::Retry {
                    reason: error.to_string(),
                },
            }
        }
        MigrationRequest::AddLearner {
            group,
            node: learner,
            addr,
        } => {
            let runtime = match leader_runtime_no_read(node, group) {
                Ok(runtime) => runtime,
                Err(answer) => return answer,
            };
            let added = runtime
                .raft
                .add_learner(learner, NodeAddr { addr }, false)
                .await;
            membership_answer(node, group, added.map(|_| ()))
        }
        MigrationRequest::Replication { group } => replication(node, group).await,
        MigrationRequest::ChangeMembership { group, voters } => {
            let runtime = match leader_runtime_no_read(node, group) {
                Ok(runtime) => runtime,
                Err(answer) => return answer,
            };
            if voters.is_empty() {
                return MigrationResponse::Failed {
                    reason: "a group needs at least one voter".into(),
                };
            }
            let changed = runtime
                .raft
                .change_membership(ChangeMembers::ReplaceAllVoters(voters), false)
                .await;
            membership_answer(node, group, changed.map(|_| ()))
        }
        MigrationRequest::RemoveLearner {
            group,
            node: learner,
        } => {
            let runtime = match leader_runtime_no_read(node, group) {
                Ok(runtime) => runtime,
                Err(answer) => return answer,
            };
            let membership = runtime.raft.metrics().borrow().membership_config.clone();
            let config = membership.membership();
            if config.voter_ids().any(|v| v == learner) {
                return MigrationResponse::Failed {
                    reason: format!("node {learner} is a voter of group {group}, not a learner"),
                };
            }
            if !config.learner_ids().any(|l| l == learner) {
                return MigrationResponse::Done;
            }
            let removed = runtime
                .raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([learner])), false)
                .await;
            membership_answer(node, group, removed.map(|_| ()))
        }
    }
}

fn storage(error: RaftStorageError) -> MigrationResponse {
    MigrationResponse::Retry {
        reason: error.to_string(),
    }
}

pub(crate) async fn vshard_status(
    runtime: &GroupRuntime,
    vshard: u16,
) -> Result<VShardStatus, RaftStorageError> {
    // Three reads, but no write can land between them that matters to a
    // caller: it asked after a read index and acts through Raft commands
    // that re-check everything at apply.
    let (applied, _) = runtime.state_machine.applied().await?;
    let state = runtime.state_machine.vshard_state(vshard).await?;
    let migration = runtime.state_machine.vshard_migration(vshard).await?;
    Ok(VShardStatus {
        state,
        migration,
        applied_index: applied.map_or(0, |id| id.index),
    })
}

/// Redirects to a member of `group` (which redirects on to its leader).
fn to_member(node: &NodeInner, group: u64) -> MigrationResponse {
    let metadata = node.metadata();
    let member = metadata.groups.get(&group).and_then(|members| {
        members
            .iter()
            .filter(|m| **m != node.id)
            .find_map(|m| metadata.nodes.get(m).map(|addr| (*m, addr.clone())))
    });
    match member {
        Some((node, addr)) => MigrationResponse::Redirect { node, addr },
        None => MigrationResponse::Retry {
            reason: format!(
                "group {group} does not run on node {} and no member is known",
                node.id
            ),
        },
    }
}

fn forward(forward: ForwardToLeader<u64, NodeAddr>, group: u64) -> MigrationResponse {
    match forward.leader_id.zip(forward.leader_node.map(|n| n.addr)) {
        Some((node, addr)) => MigrationResponse::Redirect { node, addr },
        None => MigrationResponse::Retry {
            reason: format!("group {group} is electing a leader"),
        },
    }
}

/// The local group if this node leads it, after a read index.
async fn leader_runtime(node: &NodeInner, group: u64) -> Result<GroupRuntime, MigrationResponse> {
    let Some(runtime) = node.groups.get(group) else {
        return Err(to_member(node, group));
    };
    match runtime.ensure_linearizable().await {
        Ok(_) => Ok(runtime),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(to))) => {
            Err(forward(to, group))
        }
        Err(error) => Err(MigrationResponse::Retry {
            reason: error.to_string(),
        }),
    }
}

/// The local group if this node believes it leads it (membership changes
/// check leadership themselves and answer `ForwardToLeader`).
fn leader_runtime_no_read(node: &NodeInner, group: u64) -> Result<GroupRuntime, MigrationResponse> {
    let Some(runtime) = node.groups.get(group) else {
        return Err(to_member(node, group));
    };
    let (leader, state) = {
        let metrics = runtime.raft.metrics();
        let metrics = metrics.borrow();
        (metrics.current_leader, metrics.state)
    };
    match leader {
        Some(leader) if leader == node.id && state == ServerState::Leader => Ok(runtime),
        Some(leader) if leader == node.id => Err(MigrationResponse::Retry {
            reason: format!("node {} no longer leads group {group}", node.id),
        }),
        Some(leader) => match node.node_addr(leader) {
            Some(addr) => Err(MigrationResponse::Redirect { node: leader, addr }),
            None => {
                let membership = runtime.raft.metrics().borrow().membership_config.clone();
                match membership.membership().get_node(&leader) {
                    Some(addr) => Err(MigrationResponse::Redirect {
                        node: leader,
                        addr: addr.addr.clone(),
                    }),
                    None => Err(to_member(node, group)),
                }
            }
        },
        None => Err(MigrationResponse::Retry {
            reason: format!("group {group} is electing a leader"),
        }),
    }
}

fn membership_answer(
    node: &NodeInner,
    group: u64,
    outcome: Result<(), RaftError<u64, ClientWriteError<u64, NodeAddr>>>,
) -> MigrationResponse {
    match outcome {
        Ok(()) => MigrationResponse::Done,
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to))) => forward(to, group),
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
            error @ ChangeMembershipError::InProgress(_),
        ))) => MigrationResponse::Retry {
            reason: error.to_string(),
        },
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(error))) => {
            MigrationResponse::Failed {
                reason: error.to_string(),
            }
        }
        Err(RaftError::Fatal(error)) => {
            tracing::debug!(node = node.id, group, %error, "membership change failed");
            MigrationResponse::Retry {
                reason: error.to_string(),
            }
        }
    }
}

async fn replication(node: &NodeInner, group: u64) -> MigrationResponse {
    let Some(runtime) = node.groups.get(group) else {
        return to_member(node, group);
    };
    let committed = match runtime.ensure_linearizable().await {
        Ok(read_log_id) => read_log_id.map(|id| id.index),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(to))) => {
            return forward(to, group)
        }
        Err(error) => {
            return MigrationResponse::Retry {
                reason: error.to_string(),
            }
        }
    };
    let metrics = runtime.raft.metrics().borrow().clone();
    let Some(replication) = metrics.replication else {
        return MigrationResponse::Retry {
            reason: format!("node {} stopped leading group {group}", node.id),
        };
    };
    let mut matched: std::collections::BTreeMap<u64, Option<u64>> = replication
        .iter()
        .map(|(id, log_id)| (*id, log_id.map(|l| l.index)))
        .collect();
    matched.entry(node.id).or_insert(metrics.last_log_index);
    let membership = metrics.membership_config.membership();
    MigrationResponse::Replication(ReplicationStatus {
        leader: node.id,
        committed,
        matched,
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        joint: membership.get_joint_config().len() > 1,
        membership_index: metrics.membership_config.log_id().map(|id| id.index),
    })
}

/// The metadata read linearizably on group 0's leader.
async fn metadata(node: &NodeInner) -> MigrationResponse {
    let _runtime = match leader_runtime(node, METADATA_GROUP).await {
        Ok(runtime) => runtime,
        Err(answer) => return answer,
    };
    match node.refresh_metadata().await {
        Ok(_) => {
            let (applied_index, metadata) = node.metadata_at();
            MigrationResponse::Metadata {
                applied_index,
                metadata: Box::new((*metadata).clone()),
            }
        }
        Err(error) => MigrationResponse::Retry {
            reason: error.to_string(),
        },
    }
}
