//! The reconcile loop: makes this node's groups follow the metadata, as
//! DESIGN §4 asks ("the data groups react to the metadata on their own").
//!
//! On every change of group 0's metrics (and on a slow tick, as a safety
//! net) it refreshes the cached metadata, then for each data group whose
//! members include this node: starts its `Raft`; if this node is the
//! group's lowest member and the group was never initialized, initializes it
//! with the members the metadata names; and, on the group's leader, marks
//! the vShards routed to it at the bootstrap epoch `Owned` — once per
//! group: the group's state machine refuses a second assignment, since a
//! leader with stale metadata would take back a vShard that moved away. A data group
//! this node was removed from (its replica moved away: the metadata no
//! longer names it, and neither does the group's membership as the leader
//! holds it) is stopped — except a replica `EnsureGroup` started for a move
//! to this node, which is kept until the move adds it as a learner, or its
//! grace passes (an abandoned move; see `stop_removed_groups`).
//!
//! **Why initializing is safe:** the metadata names a node as a member only
//! at bootstrap or after the node holds the group's data (a moved replica is
//! recorded after it caught up and was promoted), so an uninitialized
//! lowest member is always a bootstrap member of a brand-new group.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::groups::GroupRuntime;
use super::node::{NodeError, NodeInner};
use crate::command::{Command, DataOp, METADATA_GROUP};
use crate::metadata::{MetadataState, FIRST_EPOCH};
use crate::raft::NodeAddr;

/// The safety-net period of the loop.
const TICK: Duration = Duration::from_millis(500);
/// How long a pass waits for a group's leader to say whether this node
/// is still a member.
const LEADER_ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs until the node shuts down.
pub(crate) async fn run(node: Arc<NodeInner>) {
    let mut shutdown = node.shutdown.subscribe();
    let Some(group0) = node.groups.get(METADATA_GROUP) else {
        return;
    };
    let mut metrics = group0.raft.metrics();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        if let Err(error) = once(&node).await {
            tracing::debug!(node = node.id, %error, "reconcile pass failed; will retry");
        }
    }
}

/// One reconcile pass.
pub(crate) async fn once(node: &Arc<NodeInner>) -> Result<(), NodeError> {
    let metadata = node.refresh_metadata().await?;
    if !metadata.is_bootstrapped() {
        return Ok(());
    }
    for (group, members) in &metadata.groups {
        if *group == METADATA_GROUP || !members.contains(&node.id) {
            continue;
        }
        let runtime = node.groups.ensure(*group).await?;
        initialize_if_first(node, *group, &metadata, &runtime).await;
        assign_bootstrap_vshards(node, *group, &metadata, &runtime).await;
    }
    stop_removed_groups(node, &metadata).await;
    node.reconcile_passes.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Stops the local replica of every data group this node was removed from
/// (a replica moved away, a learner removed again, a move abandoned). A
/// group the metadata still names is kept.
///
/// A removed replica often never learns it was removed: the leader stops
/// replicating to it once the configuration without it is appended, so its
/// own membership still names it (and, a voter, it campaigns in vain); and a
/// learner catching up replays old configurations that do not name it yet.
/// So when the metadata does not name this node, the group's leader
/// decides: the replica is stopped only if the leader's membership excludes
/// this node and is newer than the local one (at least as new, when the
/// local one does not name the node either; any, when the replica holds no
/// membership at all — it holds no data). A replica just promoted by a
/// MoveReplica whose Record has not committed yet is in the leader's
/// membership, so it is kept.
///
/// **A replica moving here.** `EnsureGroup` starts the replica *before*
/// the move's `add_learner` commits, so for a while the leader's membership
/// excludes it — and is newer than the local one when this node held the
/// group before (a replica moved back, a learner added again). Such a
/// replica is marked ([`Ensured`](super::groups::Ensured)) and kept for
/// [`ensure_group_grace`](crate::server::MigrationTimings::ensure_group_grace)
/// after the last `EnsureGroup`; once the leader names this node the mark
/// goes and the rules above apply; past the grace, a replica the leader
/// still excludes is stopped (the move was abandoned or compensated). The
/// mark is read before the leader is asked and the stop is refused if it
/// changed meanwhile, so an `EnsureGroup` (and the `add_learner` after it)
/// racing a pass never loses its replica. Marks live in memory: after a
/// restart, a move's CatchUp re-sends `EnsureGroup`, which marks the
/// replica again (and starts it again if it was stopped).
async fn stop_removed_groups(node: &Arc<NodeInner>, metadata: &MetadataState) {
    for (group, runtime) in node.groups.all() {
        let named_in_metadata = metadata
            .groups
            .get(&group)
            .is_some_and(|members| members.contains(&node.id));
        if group == METADATA_GROUP || named_in_metadata {
            continue;
        }
        // Before the leader is asked: see the doc.
        let ensured = node.groups.ensured(group);
        let (local_index, named) = {
            let metrics = runtime.raft.metrics();
            let metrics = metrics.borrow();
            let stored = &metrics.membership_config;
            let membership = stored.membership();
            let named = membership.voter_ids().any(|v| v == node.id)
                || membership.learner_ids().any(|l| l == node.id);
            (stored.log_id().map(|id| id.index), named)
        };
        let Some(leader) = leader_view(node, group).await else {
            continue;
        };
        if leader.names_node {
            if let Some(mark) = ensured {
                node.groups.clear_ensured(group, mark);
            }
            continue;
        }
        let grace = node.migration.ensure_group_grace;
        if ensured.is_some_and(|mark| mark.at.elapsed() < grace) {
            continue;
        }
        // A learner catching up replays old configurations that do not name
        // it yet: the leader decides in both cases.
        let newer = match (leader.membership_index, local_index) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(theirs), Some(ours)) if named => theirs > ours,
            (Some(theirs), Some(ours)) => theirs >= ours,
        };
        if leader.is_this_node || !newer {
            continue;
        }
        if node.groups.stop_unless_ensured(group, ensured).await {
            tracing::info!(
                node = node.id,
                group,
                "replica removed from the group; stopping it"
            );
        }
    }
}

/// A group's membership as its leader holds it, seen from this node.
struct LeaderView {
    is_this_node: bool,
    /// A voter or a learner there.
    names_node: bool,
    membership_index: Option<u64>,
}

/// What `group`'s leader says about this node; `None` if it did not answer.
async fn leader_view(node: &Arc<NodeInner>, group: u64) -> Option<LeaderView> {
    let api = crate::migration::MigrationApi::new(Arc::clone(node));
    let deadline = tokio::time::Instant::now() + LEADER_ASK_TIMEOUT;
    let status = api.replication(group, deadline).await.ok()?;
    Some(LeaderView {
        is_this_node: status.leader == node.id,
        names_node: status.voters.contains(&node.id) || status.learners.contains(&node.id),
        membership_index: status.membership_index,
    })
}

async fn initialize_if_first(
    node: &NodeInner,
    group: u64,
    metadata: &MetadataState,
    runtime: &GroupRuntime,
) {
    let Some(members) = metadata.groups.get(&group) else {
        return;
    };
    if members.iter().next() != Some(&node.id) {
        return;
    }
    if runtime.raft.is_initialized().await.unwrap_or(true) {
        return;
    }
    let voters: BTreeMap<u64, NodeAddr> = members
        .iter()
        .filter_map(|m| {
            metadata
                .nodes
                .get(m)
                .map(|addr| (*m, NodeAddr { addr: addr.clone() }))
        })
        .collect();
    match runtime.raft.initialize(voters).await {
        Ok(()) => tracing::info!(node = node.id, group, "group initialized"),
        Err(error) => {
            tracing::debug!(group, %error, "group initialize refused (already initialized?)")
        }
    }
}

async fn assign_bootstrap_vshards(
    node: &NodeInner,
    group: u64,
    metadata: &MetadataState,
    runtime: &GroupRuntime,
) {
    if runtime.raft.metrics().borrow().current_leader != Some(node.id) {
        return;
    }
    // Once per group: after that, only migrations add or remove vShards,
    // and this node's metadata may be too stale to tell which moved away.
    if !matches!(runtime.state_machine.bootstrap_assigned().await, Ok(false)) {
        return;
    }
    let Ok(states) = runtime.state_machine.vshard_states().await else {
        return;
    };
    let held: std::collections::BTreeSet<u16> = states.iter().map(|(v, _)| *v).collect();
    let missing: Vec<u16> = (0u16..)
        .zip(&metadata.routing)
        .filter(|(v, route)| {
            route.group == group && route.epoch == FIRST_EPOCH && !held.contains(v)
        })
        .map(|(v, _)| v)
        .collect();
    if missing.is_empty() {
        return;
    }
    let count = missing.len();
    let command = Command::data(DataOp::AssignVShards { vshards: missing });
    match runtime.raft.client_write(command).await {
        Ok(_) => tracing::info!(node = node.id, group, count, "bootstrap vShards assigned"),
        Err(error) => {
            tracing::debug!(group, %error, "assigning bootstrap vShards failed; will retry")
        }
    }
}
