//! **MoveReplica** (DESIGN §4): moves one replica of a data group from one
//! node to another, under live writes, by Raft membership changes.
//!
//! Steps, one file each with its compensation beside it:
//! [`add_learner`] → [`catch_up`] → [`promote`] (the membership change
//! inside it is the point of no return) → [`record`].
//!
//! - Before `Promote`, every compensation removes the learner, so a moved
//!   replica that never became a voter does not leak. A compensation acts
//!   only if `AddLearner` got past its checks (its checkpoint says so): a
//!   refused move never removes a learner some other move added.
//! - From `Promote` on the workflow only rolls forward.
//!
//! **Departure from DESIGN §4 ("leadership moves first if the old node
//! leads").** openraft 0.9 has no API to hand leadership to a chosen node.
//! When `from_node` leads the group, `Promote` still sends the membership
//! change to it: the old leader commits the joint configuration, then the
//! uniform one without itself, and steps down; the remaining voters elect a
//! new leader. Writes pause for about one election timeout. `Promote` waits
//! until a leader among the new voters serves the uniform configuration.
//!
//! **After `Record`** the metadata no longer names `from_node`, and that
//! node's reconcile loop stops its replica once the group's own membership
//! does not name it either (`node/src/server/reconcile.rs`). That holds for
//! a removed *leader* (it committed the uniform configuration itself). A
//! removed *follower*, and a learner removed by a compensation, are known
//! not to be stopped: the leader stops replicating to a removed node as
//! soon as it appends the configuration without it, so the node's replica
//! keeps a configuration that still names it, and reconcile leaves it
//! running: it keeps its copy of the data, and a removed follower
//! campaigns with its stale configuration (seen as a Candidate in the
//! tests). Stopping it is the node's job, not a step's: `MigrationApi` has
//! no call for it.
//!
//! Every metadata command carries an idempotency key derived from the
//! step's [`IdempotencyKey`](shardflow_workflow::IdempotencyKey). The Raft
//! membership calls (`add_learner`, `change_membership`, `remove_learner`)
//! are not commands with keys: each step checks the group's membership
//! first and acts only if it is not yet what the step wants, and openraft's
//! calls are idempotent once done.
//!
//! Drive MoveReplica from a node of the metadata group: its view of the
//! metadata is the freshest. The driver may be `from_node` itself: its
//! engine does not depend on its replica of the moved group.

pub mod add_learner;
pub mod catch_up;
pub mod promote;
pub mod record;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shardflow_node::command::{Command, Rejection, Response, ResponseV1};
use shardflow_node::metadata::MetadataState;
use shardflow_node::migration::{MigrationApi, MigrationError};
use shardflow_node::rpc::ReplicationStatus;
use shardflow_workflow::{Engine, Step, StepContext, StepError, Workflow};
use tokio::time::Instant;

use crate::failpoint::failpoint;

/// The input of a MoveReplica instance: move `group`'s replica on
/// `from_node` to `to_node`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveReplicaInput {
    pub group: u64,
    pub from_node: u64,
    pub to_node: u64,
}

/// Tunables of the workflow (not journaled: they may change between runs).
#[derive(Clone, Debug)]
pub struct MoveReplicaConfig {
    /// How long one remote call may take.
    pub call_timeout: Duration,
    /// How long one CatchUp attempt waits for the learner to reach its
    /// target index before it fails (retryably).
    pub catch_up_wait: Duration,
    /// The pause between two looks at the group's replication.
    pub poll_interval: Duration,
    /// CatchUp re-sends `EnsureGroup` to the learner's node after this
    /// long without progress (the node may have restarted: it runs a
    /// learner's group again only when asked).
    pub resend_after: Duration,
    /// How long Promote waits for the group to settle under its new
    /// voters (a leader among them, no joint configuration).
    pub settle_wait: Duration,
}

impl Default for MoveReplicaConfig {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(10),
            catch_up_wait: Duration::from_secs(600),
            poll_interval: Duration::from_millis(100),
            resend_after: Duration::from_secs(5),
            settle_wait: Duration::from_secs(60),
        }
    }
}

/// What every step shares: the node's migration service and the tunables.
#[derive(Clone)]
pub struct Shared {
    pub api: MigrationApi,
    pub config: MoveReplicaConfig,
}

/// The MoveReplica workflow definition.
pub struct MoveReplica {
    shared: Arc<Shared>,
}

impl MoveReplica {
    pub fn new(api: MigrationApi, config: MoveReplicaConfig) -> Self {
        Self {
            shared: Arc::new(Shared { api, config }),
        }
    }
}

impl Workflow for MoveReplica {
    type Input = MoveReplicaInput;
    const KIND: &'static str = "MoveReplica";

    fn steps(&self) -> Vec<Arc<dyn Step<MoveReplicaInput>>> {
        let shared = &self.shared;
        vec![
            Arc::new(add_learner::AddLearner(Arc::clone(shared))),
            Arc::new(catch_up::CatchUp(Arc::clone(shared))),
            Arc::new(promote::Promote(Arc::clone(shared))),
            Arc::new(record::Record(Arc::clone(shared))),
        ]
    }
}

/// Registers MoveReplica (default tunables) on a node's engine.
pub fn register(engine: &Engine, api: MigrationApi) {
    register_with(engine, api, MoveReplicaConfig::default());
}

/// Registers MoveReplica with the given tunables.
pub fn register_with(engine: &Engine, api: MigrationApi, config: MoveReplicaConfig) {
    engine.register(MoveReplica::new(api, config));
}

// ---------------------------------------------------------------------------
// Helpers the steps share.

type Ctx = StepContext<MoveReplicaInput>;

/// A command key: the step's idempotency key plus `suffix`.
pub(crate) fn key(ctx: &Ctx, suffix: &str) -> String {
    if suffix.is_empty() {
        ctx.idempotency_key().to_string()
    } else {
        format!("{}/{suffix}", ctx.idempotency_key())
    }
}

/// The voters of a replication status, as a set.
pub(crate) fn voters(status: &ReplicationStatus) -> BTreeSet<u64> {
    status.voters.iter().copied().collect()
}

impl Shared {
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.config.call_timeout
    }

    /// An attempt timeout covering `calls` remote calls plus `wait`.
    pub(crate) fn attempt_timeout(&self, calls: u32, wait: Duration) -> Duration {
        self.config.call_timeout * calls + wait
    }

    /// Proposes `command` with idempotency key `key`; a rejection comes back
    /// as `Err(Ok(rejection))` so callers can match on it.
    pub(crate) async fn propose(
        &self,
        group: u64,
        command: Command,
        key: String,
    ) -> Result<Result<ResponseV1, Rejection>, StepError> {
        failpoint!("replica.propose.before", key = key);
        #[cfg(feature = "failpoints")]
        let failpoint_key = key.clone();
        let command = command.with_idempotency_key(key);
        let Response::V1(answer) = self
            .api
            .propose(group, command, self.deadline())
            .await
            .map_err(migration_error)?;
        failpoint!("replica.propose.after", key = failpoint_key);
        Ok(match answer {
            ResponseV1::Rejected(rejection) => Err(rejection),
            answer => Ok(answer),
        })
    }

    pub(crate) async fn metadata(&self) -> Result<MetadataState, StepError> {
        self.api
            .metadata(self.deadline())
            .await
            .map_err(migration_error)
    }

    /// The group's replication and membership, as its leader sees it.
    pub(crate) async fn replication(&self, group: u64) -> Result<ReplicationStatus, StepError> {
        self.api
            .replication(group, self.deadline())
            .await
            .map_err(migration_error)
    }

    /// The address the metadata records for `node`.
    pub(crate) fn addr_of(metadata: &MetadataState, node: u64) -> Result<String, StepError> {
        metadata.nodes.get(&node).cloned().ok_or_else(|| {
            StepError::terminal(format!(
                "node {node} is not a node of the cluster (add it first)"
            ))
        })
    }

    /// Starts the group's Raft on `to_node` (idempotent; the node runs a
    /// learner's group only when asked, so this is re-sent on retries).
    pub(crate) async fn ensure_group(&self, ctx: &Ctx, addr: &str) -> Result<(), StepError> {
        let input = ctx.input();
        self.api
            .ensure_group(input.group, input.to_node, addr, self.deadline())
            .await
            .map_err(migration_error)
    }

    /// The compensation of AddLearner and CatchUp: removes `to_node` from
    /// the group if it is a learner there, and checks it is gone.
    /// Idempotent. Acts only if AddLearner passed its checks (its
    /// checkpoint), so a refused move never removes another move's learner;
    /// a `to_node` that is a voter is left alone (before the point of no
    /// return this workflow never made it one).
    pub(crate) async fn remove_learner(&self, ctx: &Ctx) -> Result<(), StepError> {
        let input = ctx.input();
        if !add_learner::passed_checks(ctx) {
            return Ok(());
        }
        for _ in 0..3 {
            let status = self.replication(input.group).await?;
            if status.voters.contains(&input.to_node) {
                tracing::warn!(
                    group = input.group,
                    node = input.to_node,
                    "not removing node: it is a voter, and this move never promoted it"
                );
                return Ok(());
            }
            if !status.learners.contains(&input.to_node) {
                return Ok(());
            }
            failpoint!("replica.membership.before", call = "remove_learner");
            self.api
                .remove_learner(input.group, input.to_node, self.deadline())
                .await
                .map_err(migration_error)?;
            failpoint!("replica.membership.after", call = "remove_learner");
            tracing::info!(group = input.group, node = input.to_node, "learner removed");
        }
        // Still a learner after removing it: an add of an earlier attempt
        // landed late. The compensation is retried.
        Err(StepError::retryable(format!(
            "node {} is still a learner of group {}",
            input.to_node, input.group
        )))
    }
}

/// Maps a service error onto a step error of the same retryability.
pub(crate) fn migration_error(error: MigrationError) -> StepError {
    if error.is_retryable() {
        StepError::retryable(error)
    } else {
        StepError::terminal(error)
    }
}
