//! The reconcile loop: makes this node's groups follow the metadata, as
//! DESIGN §4 asks ("the data groups react to the metadata on their own").
//!
//! On every change of group 0's metrics (and on a slow tick, as a safety
//! net) it refreshes the cached metadata, then for each data group whose
//! members include this node: starts its `Raft`; if this node is the
//! group's lowest member and the group was never initialized, initializes it
//! with the members the metadata names; and, on the group's leader, marks
//! the vShards routed to it at the bootstrap epoch `Owned`. A data group
//! that neither the metadata nor the group's own membership names this node
//! in any more (its replica moved away) is stopped.
//!
//! **Why initializing is safe:** the metadata names a node as a member only
//! at bootstrap or after the node holds the group's data (a moved replica is
//! recorded after it caught up and was promoted), so an uninitialized
//! lowest member is always a bootstrap member of a brand-new group.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::groups::GroupRuntime;
use super::node::{NodeError, NodeInner};
use crate::command::{Command, DataOp, METADATA_GROUP};
use crate::metadata::{MetadataState, FIRST_EPOCH};
use crate::raft::NodeAddr;

/// The safety-net period of the loop.
const TICK: Duration = Duration::from_millis(500);

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
pub(crate) async fn once(node: &NodeInner) -> Result<(), NodeError> {
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
    Ok(())
}

/// Stops the local replica of every data group that neither the metadata
/// nor the group's own membership names this node in any more (a replica
/// moved away, a learner removed again). A group started for a move
/// (`EnsureGroup`) but not yet a learner has no membership at all and is
/// left alone; so is one the metadata still names.
async fn stop_removed_groups(node: &NodeInner, metadata: &MetadataState) {
    for (group, runtime) in node.groups.all() {
        let named_in_metadata = metadata
            .groups
            .get(&group)
            .is_some_and(|members| members.contains(&node.id));
        if group == METADATA_GROUP || named_in_metadata {
            continue;
        }
        let (initialized, named) = {
            let metrics = runtime.raft.metrics();
            let metrics = metrics.borrow();
            let stored = &metrics.membership_config;
            let membership = stored.membership();
            let named = membership.voter_ids().any(|v| v == node.id)
                || membership.learner_ids().any(|l| l == node.id);
            (stored.log_id().is_some(), named)
        };
        if initialized && !named {
            node.groups.stop(group).await;
        }
    }
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
