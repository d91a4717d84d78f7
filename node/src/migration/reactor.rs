//! The reactors: every node, on a timer
//! ([`MigrationTimings::reactor_interval`](crate::server::MigrationTimings)),
//! finishes the decided migrations of the registry without their drivers
//! (DESIGN §4, "Once decided, a migration finishes without its driver").
//!
//! Each reaction runs only where this node leads the group concerned, and
//! proposes the same idempotent commands the driver proposes as its fast
//! path, so driver and reactor may race harmlessly. The registry is read
//! from this node's replica of group 0: what it applied is committed, so a
//! stale view only delays a reaction, never misdirects one.
//!
//! - **Lease reaper** (group 0's leader): `AbortMigration{LeaseExpired}`
//!   for every undecided migration whose lease expired
//!   ([`MetadataState::expired_leases`]); the apply re-checks the expiry
//!   against the command's `now_ms`.
//! - **Transferred** — the target's leader: `Activate` while the vShard is
//!   its `Incoming` copy; the source's leader: `MarkMoved` while it is
//!   fenced by the migration, then, once the ghost's time to live has
//!   passed since the `Transfer` commit (`ghost_ttl`, measured against the
//!   `Transfer`'s `now_ms`), `CleanupBatch` in batches of `cleanup_batch`
//!   until done and `DropGhost`; once the source holds nothing and the
//!   target's leader reports the vShard `Owned`, `FinishMigration`.
//! - **Aborted** — the source's leader: `ReleaseSource` (lifts the fence,
//!   stops tracking, closes the migration there so no late `Fence` or
//!   `TrackChanges` of it applies); the target's leader: `DropIncoming` in
//!   batches until done; once both hold nothing of the migration (the
//!   source leader asks the target's leader), the source's leader proposes
//!   `FinishMigration`.
//! - **Fence deadline** — the source's leader, for a vShard fenced past its
//!   deadline: `AbortMigration{Source{group}}`. Only if that abort was
//!   applied (it answers success, also when an abort committed earlier)
//!   does it propose `ReleaseSource`; a `Transfer` that won instead is
//!   answered `MigrationTransferred` and the fence stays until `MarkMoved`.
//!
//! A pass never waits on one migration for long: every proposal has a
//! short deadline and cleanup proposes at most `batches_per_pass` batches
//! per vShard per pass.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{now_ms, MigrationApi};
use crate::command::{AbortBy, Command, DataOp, MetadataOp, ResponseV1, METADATA_GROUP};
use crate::data::{VShardMigration, VShardState};
use crate::metadata::{MigrationPhase, MigrationRecord};
use crate::rpc::ProposeError;
use crate::server::groups::GroupRuntime;
use crate::server::node::NodeInner;
use crate::server::propose;

/// How long one reactor proposal or cross-group read may take.
const STEP_DEADLINE: Duration = Duration::from_secs(5);

/// Runs the reactors until the node shuts down.
pub(crate) async fn run(api: MigrationApi) {
    let node = Arc::clone(&api.node);
    let mut shutdown = node.shutdown.subscribe();
    let mut tick = tokio::time::interval(node.migration.reactor_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        pass(&api).await;
    }
}

/// One pass of every reactor.
pub(crate) async fn pass(api: &MigrationApi) {
    let node = &api.node;
    if outside_group0(node).await {
        api.adopt_metadata_from_peers(Instant::now() + STEP_DEADLINE)
            .await;
    }
    let metadata = match node.refresh_metadata().await {
        Ok(metadata) => metadata,
        Err(error) => {
            tracing::debug!(node = node.id, %error, "reactor: no metadata");
            return;
        }
    };
    if !metadata.is_bootstrapped() {
        return;
    }
    let now = now_ms();
    if leading(node, METADATA_GROUP).is_some() {
        api.offer_metadata();
        for migration in metadata.expired_leases(now) {
            let abort = MetadataOp::AbortMigration {
                migration: migration.clone(),
                by: AbortBy::LeaseExpired,
                reason: "the driver's lease expired".into(),
                now_ms: now,
            };
            act(node, METADATA_GROUP, &migration, Command::metadata(abort)).await;
        }
    }
    for (id, record) in metadata.live_migrations() {
        match record.phase {
            MigrationPhase::Locked => {}
            MigrationPhase::Transferred { epoch } => transferred(api, id, record, epoch, now).await,
            MigrationPhase::Aborted => aborted(api, id, record).await,
        }
    }
    fence_deadlines(api, now).await;
}

/// Whether this node's group-0 replica was never initialized (the node
/// holds only data-group replicas moved to it).
pub(crate) async fn outside_group0(node: &NodeInner) -> bool {
    match node.groups.get(METADATA_GROUP) {
        None => true,
        Some(group0) => !group0.raft.is_initialized().await.unwrap_or(true),
    }
}

/// The local group, if this node leads it.
fn leading(node: &NodeInner, group: u64) -> Option<GroupRuntime> {
    let runtime = node.groups.get(group)?;
    let leads = {
        let metrics = runtime.raft.metrics();
        let metrics = metrics.borrow();
        metrics.state == openraft::ServerState::Leader && metrics.current_leader == Some(node.id)
    };
    leads.then_some(runtime)
}

/// Proposes on the local replica (this node leads the group); the response
/// if it applied, `None` if refused or failed (logged).
async fn act(
    node: &NodeInner,
    group: u64,
    migration: &str,
    command: Command,
) -> Option<ResponseV1> {
    let what = format!("{:?}", command.op());
    let what = what
        .split([' ', '{', '('])
        .nth(1)
        .unwrap_or("command")
        .to_string();
    match propose::local(node, group, command).await {
        Ok(crate::command::Response::V1(ResponseV1::Rejected(rejection))) => {
            tracing::debug!(node = node.id, group, migration, %what, %rejection, "reactor: refused");
            None
        }
        Ok(crate::command::Response::V1(response)) => {
            tracing::info!(node = node.id, group, migration, %what, "reactor: applied");
            Some(response)
        }
        Err(ProposeError::NotLeader { .. }) => None,
        Err(error) => {
            tracing::debug!(node = node.id, group, migration, %what, ?error, "reactor: failed");
            None
        }
    }
}

/// Local state and migration record of a vShard (this node's replica).
async fn local_vshard(
    runtime: &GroupRuntime,
    vshard: u16,
) -> Option<(Option<VShardState>, Option<VShardMigration>)> {
    let state = runtime.state_machine.vshard_state(vshard).await.ok()?;
    let record = runtime.state_machine.vshard_migration(vshard).await.ok()?;
    Some((state, record))
}

fn fenced_by(state: Option<&VShardState>, migration: &str) -> bool {
    matches!(state, Some(VShardState::Fenced { migration: m }) if m == migration)
}

fn incoming_for(state: Option<&VShardState>, migration: &str) -> bool {
    matches!(state, Some(VShardState::Incoming { migration: m }) if m == migration)
}

/// Deletes in batches with `op` until done or the pass's budget is spent;
/// whether done.
async fn delete_in_batches(
    node: &NodeInner,
    group: u64,
    migration: &str,
    op: impl Fn(u64) -> DataOp,
) -> bool {
    for _ in 0..node.migration.batches_per_pass.max(1) {
        let batch = Command::data(op(node.migration.cleanup_batch.max(1)));
        match act(node, group, migration, batch).await {
            Some(ResponseV1::Deleted { done: true, .. }) => return true,
            Some(ResponseV1::Deleted { done: false, .. }) => continue,
            _ => return false,
        }
    }
    false
}

async fn transferred(api: &MigrationApi, id: &str, record: &MigrationRecord, epoch: u64, now: u64) {
    let node = &api.node;
    let vshard = record.vshard;
    if let Some(target) = leading(node, record.to_group) {
        if let Some((state, _)) = local_vshard(&target, vshard).await {
            if incoming_for(state.as_ref(), id) {
                let activate = DataOp::Activate {
                    vshard,
                    migration: id.to_string(),
                    epoch,
                };
                act(node, record.to_group, id, Command::data(activate)).await;
            }
        }
    }
    let from = record.from_group;
    let Some(source) = leading(node, from) else {
        return;
    };
    let Some((mut state, source_record)) = local_vshard(&source, vshard).await else {
        return;
    };
    if fenced_by(state.as_ref(), id) {
        let moved = DataOp::MarkMoved {
            vshard,
            migration: id.to_string(),
            to_group: record.to_group,
            epoch,
        };
        if act(node, from, id, Command::data(moved)).await.is_none() {
            return;
        }
        state = Some(VShardState::Moved {
            to_group: record.to_group,
            epoch,
        });
    }
    let ours = matches!(&source_record, Some(r) if r.migration() == id);
    if matches!(state, Some(VShardState::Moved { .. })) && (ours || source_record.is_none()) {
        let ttl = node.migration.ghost_ttl.as_millis() as u64;
        let since = record.decided_at_ms.unwrap_or(record.locked_at_ms);
        if now < since.saturating_add(ttl) {
            return;
        }
        let cleanup = |limit| DataOp::CleanupBatch {
            vshard,
            migration: id.to_string(),
            limit,
        };
        if !delete_in_batches(node, from, id, cleanup).await {
            return;
        }
        let drop = DataOp::DropGhost {
            vshard,
            migration: id.to_string(),
        };
        if act(node, from, id, Command::data(drop)).await.is_none() {
            return;
        }
        state = None;
    }
    if state.is_some() {
        return;
    }
    // The source holds nothing: finish once the target serves the vShard.
    let deadline = Instant::now() + STEP_DEADLINE;
    match api.vshard_status(record.to_group, vshard, deadline).await {
        Ok(status) if status.state == Some(VShardState::Owned) => {
            finish(api, id, deadline).await;
        }
        Ok(_) => {}
        Err(error) => {
            tracing::debug!(node = node.id, migration = id, %error, "reactor: target status")
        }
    }
}

async fn aborted(api: &MigrationApi, id: &str, record: &MigrationRecord) {
    let node = &api.node;
    let vshard = record.vshard;
    if let Some(target) = leading(node, record.to_group) {
        if let Some((state, _)) = local_vshard(&target, vshard).await {
            if incoming_for(state.as_ref(), id) {
                let drop = |limit| DataOp::DropIncoming {
                    vshard,
                    migration: id.to_string(),
                    limit,
                };
                delete_in_batches(node, record.to_group, id, drop).await;
            }
        }
    }
    let from = record.from_group;
    let Some(source) = leading(node, from) else {
        return;
    };
    let Some((state, source_record)) = local_vshard(&source, vshard).await else {
        return;
    };
    let released = matches!(
        &source_record,
        Some(VShardMigration::Source(s)) if s.migration == id && s.closed
    ) && !fenced_by(state.as_ref(), id);
    if !released {
        let release = DataOp::ReleaseSource {
            vshard,
            migration: id.to_string(),
        };
        if act(node, from, id, Command::data(release)).await.is_none() {
            return;
        }
    }
    // The source is released: finish once the target holds nothing of it.
    let deadline = Instant::now() + STEP_DEADLINE;
    match api.vshard_status(record.to_group, vshard, deadline).await {
        Ok(status) if !incoming_for(status.state.as_ref(), id) => {
            finish(api, id, deadline).await;
        }
        Ok(_) => {}
        Err(error) => {
            tracing::debug!(node = node.id, migration = id, %error, "reactor: target status")
        }
    }
}

async fn finish(api: &MigrationApi, id: &str, deadline: Instant) {
    let op = MetadataOp::FinishMigration {
        migration: id.to_string(),
    };
    match api
        .propose(METADATA_GROUP, Command::metadata(op), deadline)
        .await
    {
        Ok(response) => match response.rejection() {
            None => tracing::info!(
                node = api.node.id,
                migration = id,
                "reactor: migration finished"
            ),
            Some(rejection) => {
                tracing::debug!(node = api.node.id, migration = id, %rejection, "reactor: finish refused")
            }
        },
        Err(error) => {
            tracing::debug!(node = api.node.id, migration = id, %error, "reactor: finish failed")
        }
    }
}

/// Source leaders: a fence past its deadline asks the metadata group to
/// abort; only once that abort applied does the source release.
async fn fence_deadlines(api: &MigrationApi, now: u64) {
    let node = &api.node;
    for (group, runtime) in node.groups.all() {
        if group == METADATA_GROUP || leading(node, group).is_none() {
            continue;
        }
        let Ok(records) = runtime.state_machine.vshard_migrations().await else {
            continue;
        };
        for (vshard, record) in records {
            let VShardMigration::Source(source) = record else {
                continue;
            };
            let Some(fence) = &source.fence else {
                continue;
            };
            if source.closed || now < fence.deadline_ms {
                continue;
            }
            let id = source.migration.clone();
            let abort = MetadataOp::AbortMigration {
                migration: id.clone(),
                by: AbortBy::Source { group },
                reason: format!(
                    "the fence {:?} on vShard {vshard} passed its deadline",
                    fence.id
                ),
                now_ms: now,
            };
            let deadline = Instant::now() + STEP_DEADLINE;
            match api
                .propose(METADATA_GROUP, Command::metadata(abort), deadline)
                .await
            {
                Ok(response) if response.is_ok() => {
                    tracing::info!(node = node.id, group, migration = %id, "reactor: fence deadline abort committed");
                    let release = DataOp::ReleaseSource {
                        vshard,
                        migration: id.clone(),
                    };
                    act(node, group, &id, Command::data(release)).await;
                }
                Ok(response) => {
                    let rejection = response.rejection().map(ToString::to_string);
                    tracing::debug!(node = node.id, group, migration = %id, ?rejection, "reactor: fence deadline abort refused");
                }
                Err(error) => {
                    tracing::debug!(node = node.id, group, migration = %id, %error, "reactor: fence deadline abort failed")
                }
            }
        }
    }
}
