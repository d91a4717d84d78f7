//! Submitting migrations: the admin requests `MigrateVShard` and
//! `MigrateReplica` are checked here against the node's metadata, then
//! handed to the [`MigrationLauncher`] the layer above installed
//! ([`Node::install_launcher`](crate::server::Node::install_launcher)).
//!
//! The workflows themselves live in `steps/`, which depends on this crate,
//! so the node cannot name them: the launcher trait is the seam. The node
//! that accepts a submission journals and drives the workflow; its id
//! (`wf-<node>-<serial>`) names that node.
//!
//! **Refused, changing nothing:** a vShard outside `0..1024`, an unknown
//! (or the metadata) group, the group that already owns the vShard, a
//! vShard already migrating, more live migrations than the node's limit, an
//! unknown node, a replica move from a node that is no member or to a node
//! that already is one. The metadata group checks again when the workflow
//! locks (another node may submit at the same time); these checks make the
//! common mistakes a clear error before anything is journaled.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shardflow_workflow::{EngineError, WorkflowId};

use crate::command::METADATA_GROUP;
use crate::metadata::MetadataState;
use crate::vshard::VSHARDS;

/// A request to move one vShard to another group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VShardMove {
    /// Checked against `0..1024` on arrival (wider, so a wrong number is
    /// refused with that reason rather than failing to decode).
    pub vshard: u32,
    pub to_group: u64,
    /// The longest write pause allowed; `None`: the launcher's default.
    pub pause_budget_ms: Option<u64>,
}

/// A request to move one replica of a group from a node to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaMove {
    pub group: u64,
    pub from_node: u64,
    pub to_node: u64,
}

/// Starts migration workflows on this node's engine (installed by the
/// layer that defines them, `steps/`).
#[async_trait]
pub trait MigrationLauncher: Send + Sync + 'static {
    /// Journals and starts a MoveVShard workflow (`vshard` checked to be
    /// in range; `pause_budget_ms` `None`: the launcher's default).
    async fn move_vshard(
        &self,
        vshard: u16,
        to_group: u64,
        pause_budget_ms: Option<u64>,
    ) -> Result<WorkflowId, EngineError>;
    /// Journals and starts a MoveReplica workflow.
    async fn move_replica(&self, request: ReplicaMove) -> Result<WorkflowId, EngineError>;
}

/// The vShard to move, or why the move is refused before anything is
/// journaled.
pub fn check_vshard_move(
    metadata: &MetadataState,
    request: &VShardMove,
    max_concurrent: u32,
) -> Result<u16, String> {
    let VShardMove {
        vshard, to_group, ..
    } = *request;
    let Some(vshard) = u16::try_from(vshard).ok().filter(|v| *v < VSHARDS) else {
        return Err(format!(
            "vShard {vshard} does not exist (vShards are 0 to {})",
            VSHARDS - 1
        ));
    };
    check_data_group(metadata, to_group)?;
    let route = metadata
        .route(vshard)
        .ok_or_else(|| "the cluster is not bootstrapped".to_string())?;
    if route.group == to_group {
        return Err(format!(
            "vShard {vshard} is already owned by group {to_group}"
        ));
    }
    if let Some((id, _)) = metadata.live_migration_of(vshard) {
        return Err(format!("vShard {vshard} is already migrating ({id})"));
    }
    let live = metadata.live_migrations().count();
    if live >= max_concurrent as usize {
        return Err(format!(
            "{live} migrations are already running (the limit is {max_concurrent}); \
             wait for one to end"
        ));
    }
    Ok(vshard)
}

/// Why a replica move is refused before anything is journaled.
pub fn check_replica_move(metadata: &MetadataState, request: &ReplicaMove) -> Result<(), String> {
    let ReplicaMove {
        group,
        from_node,
        to_node,
    } = *request;
    let members = check_data_group(metadata, group)?;
    for node in [from_node, to_node] {
        if !metadata.nodes.contains_key(&node) {
            return Err(format!("node {node} is not a node of this cluster"));
        }
    }
    if from_node == to_node {
        return Err(format!("--from and --to are both node {from_node}"));
    }
    if !members.contains(&from_node) {
        return Err(format!(
            "node {from_node} holds no replica of group {group}"
        ));
    }
    if members.contains(&to_node) {
        return Err(format!(
            "node {to_node} already holds a replica of group {group}"
        ));
    }
    Ok(())
}

/// The members of a data group, or why `group` is none.
fn check_data_group(
    metadata: &MetadataState,
    group: u64,
) -> Result<&std::collections::BTreeSet<u64>, String> {
    if group == METADATA_GROUP {
        return Err("group 0 is the metadata group; it holds no vShards".into());
    }
    metadata.groups.get(&group).ok_or_else(|| {
        let known: Vec<String> = (metadata.groups.keys())
            .filter(|g| **g != METADATA_GROUP)
            .map(u64::to_string)
            .collect();
        format!(
            "group {group} does not exist (data groups: {})",
            known.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::apply;
    use crate::server::admin_ops::plan;

    /// Nodes 1..=4 (4 registered after the bootstrap), groups 1 and 2 on
    /// nodes 1..=3, vShards 0..512 on group 1 and 512..1024 on group 2.
    fn metadata() -> MetadataState {
        let nodes: Vec<(u64, String)> = (1..=3)
            .map(|id| (id, format!("127.0.0.1:{}", 7000 + id)))
            .collect();
        let mut state = MetadataState::default();
        let bootstrap = plan(&nodes, 2, 3).expect("plan");
        apply(&mut state, &bootstrap).expect("bootstrap");
        let add = crate::command::MetadataOp::AddNode {
            id: 4,
            addr: "127.0.0.1:7004".into(),
        };
        apply(&mut state, &add).expect("add node 4");
        state
    }

    fn vshard_move(vshard: u32, to_group: u64) -> VShardMove {
        VShardMove {
            vshard,
            to_group,
            pause_budget_ms: None,
        }
    }

    #[test]
    fn a_valid_vshard_move_passes() {
        assert_eq!(
            check_vshard_move(&metadata(), &vshard_move(17, 2), 4),
            Ok(17)
        );
    }

    #[test]
    fn bad_vshard_moves_are_refused_with_their_reason() {
        let state = metadata();
        let refused = |request: VShardMove| check_vshard_move(&state, &request, 4).unwrap_err();
        assert_eq!(
            refused(vshard_move(1024, 2)),
            "vShard 1024 does not exist (vShards are 0 to 1023)"
        );
        assert_eq!(
            refused(vshard_move(u32::MAX, 2)),
            format!("vShard {} does not exist (vShards are 0 to 1023)", u32::MAX)
        );
        assert_eq!(
            refused(vshard_move(17, 9)),
            "group 9 does not exist (data groups: 1, 2)"
        );
        assert_eq!(
            refused(vshard_move(17, 0)),
            "group 0 is the metadata group; it holds no vShards"
        );
        assert_eq!(
            refused(vshard_move(17, 1)),
            "vShard 17 is already owned by group 1"
        );
    }

    #[test]
    fn a_migrating_vshard_and_the_concurrency_limit_are_refused() {
        let mut state = metadata();
        let lock = crate::command::MetadataOp::LockMigration {
            migration: "wf-1-1".into(),
            vshard: 17,
            from_group: 1,
            to_group: 2,
            driver_epoch: 1,
            now_ms: 1_000,
            lease_ms: 10_000,
            max_concurrent: 4,
        };
        apply(&mut state, &lock).expect("lock");
        assert_eq!(
            check_vshard_move(&state, &vshard_move(17, 2), 4),
            Err("vShard 17 is already migrating (wf-1-1)".to_string())
        );
        assert_eq!(
            check_vshard_move(&state, &vshard_move(18, 2), 1),
            Err("1 migrations are already running (the limit is 1); wait for one to end".into())
        );
        assert_eq!(check_vshard_move(&state, &vshard_move(18, 2), 2), Ok(18));
    }

    #[test]
    fn bad_replica_moves_are_refused_with_their_reason() {
        let state = metadata();
        let check = |group, from_node, to_node| {
            check_replica_move(
                &state,
                &ReplicaMove {
                    group,
                    from_node,
                    to_node,
                },
            )
        };
        assert_eq!(check(1, 3, 4), Ok(()));
        assert_eq!(
            check(7, 3, 4),
            Err("group 7 does not exist (data groups: 1, 2)".into())
        );
        assert_eq!(
            check(1, 3, 9),
            Err("node 9 is not a node of this cluster".into())
        );
        assert_eq!(
            check(1, 4, 3),
            Err("node 4 holds no replica of group 1".into())
        );
        assert_eq!(
            check(1, 3, 2),
            Err("node 2 already holds a replica of group 1".into())
        );
        assert_eq!(
            check(1, 3, 3),
            Err("--from and --to are both node 3".into())
        );
    }
}
