//! The metadata state machine's logic, pure (no redb, no async): the
//! cluster's nodes, its groups and their members, the routing table
//! (vShard -> group, with a per-vShard epoch) and the migration registry.
//!
//! [`apply`] changes a [`MetadataState`] in place or refuses with a
//! [`Rejection`]; the Raft layer persists the state as one
//! [`MetadataRecord`] in the same transaction as the entry.
//!
//! **Invariants** ([`MetadataState::validate`], checked by the tests after
//! every command):
//! - Before bootstrap everything is empty; after it, the routing table has
//!   exactly [`VSHARDS`] entries, so every vShard has exactly one group,
//!   always a known data group (never the metadata group).
//! - Every group's members are known nodes, at least one per group; no two
//!   nodes share an address.
//! - A vShard's epoch only grows, and a change of owner raises it
//!   ([`MetadataState::check_successor`]).
//! - At most one live (unfinished) migration per vShard; a live undecided
//!   migration moves the vShard away from its current owner, a live
//!   transferred one routes it to its target at the epoch it recorded.
//! - A migration's decision, once taken, never changes; its driver epoch
//!   never goes back; a finished migration stays finished.
//! - A refused command leaves the state untouched.
//!
//! # The migration registry
//!
//! A migration (keyed by its workflow id, `"wf-1-7"`) is **live** from
//! `LockMigration` until `FinishMigration`, and holds its vShard's lock all
//! that time, decided or not: after the decision one side still has to be
//! cleaned up (the target's incoming copy after an abort, the source's
//! ghost after a transfer), and a second migration of the vShard must not
//! start on top of it.
//!
//! - **Decision.** `Transfer` (the point of no return) and `AbortMigration`
//!   are ordered by the log: the first to commit wins and the other is
//!   refused, so a slow driver and an impatient source never both win.
//! - **Driver epoch.** Every driver command carries it; an older one is
//!   refused (`StaleDriverEpoch`), a newer one is recorded, so a zombie
//!   driver cannot act after a resume.
//! - **Lease.** The lock is a lease the driver renews (`RenewLease`, or a
//!   resumed `LockMigration`). While the migration is undecided and
//!   `now_ms` is at or past the expiry, `AbortMigration{LeaseExpired}` is
//!   accepted: the metadata leader's reaper ([`MetadataState::expired_leases`])
//!   proposes it with its own clock, and the check runs at apply against
//!   the command's `now_ms`, never the local clock, so replicas agree. A
//!   driver command that commits first (a renewal, a `Transfer`) wins as
//!   usual; a lease only ever gives the reaper the right to abort.
//! - **Concurrency.** `max_concurrent` (the proposer's configuration)
//!   bounds the live migrations, decided ones still cleaning up included.
//! - **Finished records** are kept for audit and to refuse a late
//!   `LockMigration` of a finished id, bounded: past
//!   [`MAX_FINISHED_MIGRATIONS`] the oldest-finished are dropped (an id that
//!   old is then unknown).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{AbortBy, MetadataOp, Rejection, ResponseV1, METADATA_GROUP};
use crate::vshard::{is_valid, VSHARDS};

/// How many finished migrations the registry keeps (oldest dropped first).
pub const MAX_FINISHED_MIGRATIONS: usize = 256;

/// The epoch every vShard starts at, at bootstrap.
pub const FIRST_EPOCH: u64 = 1;

/// Where one vShard lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub group: u64,
    /// Raised on every change of owner; clients refresh on a newer one.
    pub epoch: u64,
}

/// Where a migration stands, in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationPhase {
    /// The vShard is locked for this migration.
    Locked,
    /// `Transfer` committed: the target owns the vShard at `epoch`.
    Transferred { epoch: u64 },
    /// The migration was aborted; the source keeps the vShard.
    Aborted,
}

/// Why and by whom a migration was aborted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortRecord {
    pub by: AbortBy,
    pub reason: String,
}

/// One migration in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationRecord {
    pub vshard: u16,
    pub from_group: u64,
    pub to_group: u64,
    /// The epoch of the driver allowed to act; stale ones are refused.
    pub driver_epoch: u64,
    pub phase: MigrationPhase,
    /// The `now_ms` of the `LockMigration` that created it.
    pub locked_at_ms: u64,
    /// While undecided, past this the lease-expired abort is accepted.
    pub lease_expires_ms: u64,
    /// The `now_ms` of the `Transfer` or abort that decided it.
    pub decided_at_ms: Option<u64>,
    /// Set with the abort.
    pub abort: Option<AbortRecord>,
    /// Set by `FinishMigration`: the order in which it finished (finished
    /// records are dropped oldest first). `None` while live.
    pub finished: Option<u64>,
}

impl MigrationRecord {
    /// Whether it still holds its vShard's lock.
    pub fn is_live(&self) -> bool {
        self.finished.is_none()
    }

    /// Whether `Transfer` or an abort committed.
    pub fn is_decided(&self) -> bool {
        self.phase != MigrationPhase::Locked
    }

    /// One line saying what it moves, for messages.
    pub fn describe(&self) -> String {
        format!(
            "vShard {} from group {} to group {}",
            self.vshard, self.from_group, self.to_group
        )
    }
}

/// The metadata group's whole state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataState {
    /// Node id -> address.
    pub nodes: BTreeMap<u64, String>,
    /// Group id -> member node ids (group 0 included).
    pub groups: BTreeMap<u64, BTreeSet<u64>>,
    /// vShard -> route; empty before bootstrap, [`VSHARDS`] entries after.
    pub routing: Vec<Route>,
    /// Migration id -> record.
    pub migrations: BTreeMap<String, MigrationRecord>,
}

/// The persisted encoding of the metadata state, versioned. Append only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataRecord {
    V1(MetadataState),
}

impl From<MetadataRecord> for MetadataState {
    fn from(record: MetadataRecord) -> Self {
        let MetadataRecord::V1(state) = record;
        state
    }
}

/// A broken metadata invariant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidState {
    #[error("the routing table has {len} entries; it needs 0 or {VSHARDS}")]
    RoutingLength { len: usize },
    #[error("vShard {vshard} routes to group {group}, which is not a data group")]
    RouteToUnknownGroup { vshard: u16, group: u64 },
    #[error("vShard {vshard} has epoch 0")]
    EpochZero { vshard: u16 },
    #[error("{what} exist before bootstrap")]
    EmptyBeforeBootstrap { what: &'static str },
    #[error("group {group} has no members")]
    NoMembers { group: u64 },
    #[error("group {group} lists unknown node {node}")]
    UnknownMember { group: u64, node: u64 },
    #[error("the metadata group {METADATA_GROUP} is missing")]
    NoMetadataGroup,
    #[error("no data group exists")]
    NoDataGroup,
    #[error("nodes {first} and {second} share address {addr:?}")]
    SharedAddress {
        first: u64,
        second: u64,
        addr: String,
    },
    #[error("node {node} has an empty address")]
    EmptyAddress { node: u64 },
    #[error("vShard {vshard} is locked by migrations {first} and {second}")]
    TwoLiveMigrations {
        vshard: u16,
        first: String,
        second: String,
    },
    #[error("vShard {vshard}'s epoch went from {from} to {to}")]
    EpochWentBack { vshard: u16, from: u64, to: u64 },
    #[error("vShard {vshard} changed owner without a new epoch")]
    OwnerChangedWithoutEpoch { vshard: u16 },
    #[error("migration {migration}: {reason}")]
    BadMigration { migration: String, reason: String },
    #[error("{count} finished migrations are kept; the bound is {MAX_FINISHED_MIGRATIONS}")]
    TooManyFinished { count: usize },
    #[error("migration {migration} changed illegally: {reason}")]
    MigrationChanged { migration: String, reason: String },
}

impl MetadataState {
    /// Whether the cluster has been bootstrapped.
    pub fn is_bootstrapped(&self) -> bool {
        !self.routing.is_empty()
    }

    /// Where `vshard` lives, once bootstrapped.
    pub fn route(&self, vshard: u16) -> Option<Route> {
        self.routing.get(usize::from(vshard)).copied()
    }

    /// The groups `node` is a member of.
    pub fn groups_of_node(&self, node: u64) -> Vec<u64> {
        let holds =
            |(group, members): (&u64, &BTreeSet<u64>)| members.contains(&node).then_some(*group);
        self.groups.iter().filter_map(holds).collect()
    }

    /// A migration of the registry.
    pub fn migration(&self, id: &str) -> Option<&MigrationRecord> {
        self.migrations.get(id)
    }

    /// The live (unfinished) migrations, by id.
    pub fn live_migrations(&self) -> impl Iterator<Item = (&str, &MigrationRecord)> {
        (self.migrations.iter())
            .filter(|(_, m)| m.is_live())
            .map(|(id, m)| (id.as_str(), m))
    }

    /// The live migration holding `vshard`'s lock, if any.
    pub fn live_migration_of(&self, vshard: u16) -> Option<(&str, &MigrationRecord)> {
        self.live_migrations().find(|(_, m)| m.vshard == vshard)
    }

    /// The undecided migrations whose lease expired at `now_ms`: what the
    /// metadata leader's reaper proposes `AbortMigration{LeaseExpired}` for.
    pub fn expired_leases(&self, now_ms: u64) -> Vec<String> {
        let expired = |m: &MigrationRecord| !m.is_decided() && now_ms >= m.lease_expires_ms;
        (self.live_migrations())
            .filter(|(_, m)| expired(m))
            .map(|(id, _)| id.to_string())
            .collect()
    }

    /// The vShards `group` owns, in order.
    pub fn vshards_of_group(&self, group: u64) -> Vec<u16> {
        (0..VSHARDS)
            .filter(|&v| self.route(v).is_some_and(|r| r.group == group))
            .collect()
    }

    /// Checks every invariant of the module doc that holds within one state.
    pub fn validate(&self) -> Result<(), InvalidState> {
        if !self.is_bootstrapped() {
            return self.validate_empty();
        }
        self.validate_nodes()?;
        self.validate_groups()?;
        self.validate_routing()?;
        self.validate_migrations()
    }

    fn validate_empty(&self) -> Result<(), InvalidState> {
        let what = if !self.nodes.is_empty() {
            "nodes"
        } else if !self.groups.is_empty() {
            "groups"
        } else if !self.migrations.is_empty() {
            "migrations"
        } else {
            return Ok(());
        };
        Err(InvalidState::EmptyBeforeBootstrap { what })
    }

    fn validate_nodes(&self) -> Result<(), InvalidState> {
        let mut by_addr: BTreeMap<&str, u64> = BTreeMap::new();
        for (&node, addr) in &self.nodes {
            if addr.is_empty() {
                return Err(InvalidState::EmptyAddress { node });
            }
            if let Some(first) = by_addr.insert(addr, node) {
                let addr = addr.clone();
                return Err(InvalidState::SharedAddress {
                    first,
                    second: node,
                    addr,
                });
            }
        }
        Ok(())
    }

    fn validate_groups(&self) -> Result<(), InvalidState> {
        if !self.groups.contains_key(&METADATA_GROUP) {
            return Err(InvalidState::NoMetadataGroup);
        }
        if self.groups.len() < 2 {
            return Err(InvalidState::NoDataGroup);
        }
        for (&group, members) in &self.groups {
            if members.is_empty() {
                return Err(InvalidState::NoMembers { group });
            }
            if let Some(&node) = members.iter().find(|n| !self.nodes.contains_key(n)) {
                return Err(InvalidState::UnknownMember { group, node });
            }
        }
        Ok(())
    }

    fn validate_routing(&self) -> Result<(), InvalidState> {
        if self.routing.len() != usize::from(VSHARDS) {
            let len = self.routing.len();
            return Err(InvalidState::RoutingLength { len });
        }
        for (vshard, route) in (0..VSHARDS).zip(&self.routing) {
            let data_group = route.group != METADATA_GROUP;
            if !data_group || !self.groups.contains_key(&route.group) {
                let group = route.group;
                return Err(InvalidState::RouteToUnknownGroup { vshard, group });
            }
            if route.epoch == 0 {
                return Err(InvalidState::EpochZero { vshard });
            }
        }
        Ok(())
    }

    fn validate_migrations(&self) -> Result<(), InvalidState> {
        let mut locked: BTreeMap<u16, &str> = BTreeMap::new();
        for (id, migration) in self.live_migrations() {
            if let Some(first) = locked.insert(migration.vshard, id) {
                return Err(InvalidState::TwoLiveMigrations {
                    vshard: migration.vshard,
                    first: first.to_string(),
                    second: id.to_string(),
                });
            }
        }
        for (id, migration) in &self.migrations {
            if let Some(reason) = self.migration_flaw(migration) {
                let migration = id.clone();
                return Err(InvalidState::BadMigration { migration, reason });
            }
        }
        let count = self.migrations.values().filter(|m| !m.is_live()).count();
        if count > MAX_FINISHED_MIGRATIONS {
            return Err(InvalidState::TooManyFinished { count });
        }
        Ok(())
    }

    /// What is wrong with one migration record, if anything.
    fn migration_flaw(&self, m: &MigrationRecord) -> Option<String> {
        let data_group = |g: u64| g != METADATA_GROUP && self.groups.contains_key(&g);
        if !is_valid(m.vshard) {
            return Some(format!("vShard {} does not exist", m.vshard));
        }
        let route = self.route(m.vshard)?;
        let aborted = m.phase == MigrationPhase::Aborted;
        if m.from_group == m.to_group || !data_group(m.from_group) || !data_group(m.to_group) {
            Some(format!("it moves {}", m.describe()))
        } else if aborted != m.abort.is_some() || m.is_decided() != m.decided_at_ms.is_some() {
            Some(format!(
                "its phase {:?} disagrees with its decision",
                m.phase
            ))
        } else if !m.is_live() {
            None
        } else if m.phase == MigrationPhase::Locked && route.group != m.from_group {
            Some(format!(
                "it is undecided but group {} owns vShard {}",
                route.group, m.vshard
            ))
        } else if m.phase == MigrationPhase::Aborted && route.group != m.from_group {
            Some(format!(
                "it aborted but group {} owns vShard {}",
                route.group, m.vshard
            ))
        } else if let MigrationPhase::Transferred { epoch } = m.phase {
            let expected = Route {
                group: m.to_group,
                epoch,
            };
            (route != expected).then(|| format!("it transferred, yet the route is {route:?}"))
        } else {
            None
        }
    }

    /// Checks that `next` may follow `self`: no vShard's epoch goes back,
    /// and a vShard that changed group got a higher epoch.
    pub fn check_successor(&self, next: &MetadataState) -> Result<(), InvalidState> {
        for (vshard, (old, new)) in (0..VSHARDS).zip(self.routing.iter().zip(&next.routing)) {
            if new.epoch < old.epoch {
                let (from, to) = (old.epoch, new.epoch);
                return Err(InvalidState::EpochWentBack { vshard, from, to });
            }
            if new.group != old.group && new.epoch == old.epoch {
                return Err(InvalidState::OwnerChangedWithoutEpoch { vshard });
            }
        }
        if self.is_bootstrapped() && !next.is_bootstrapped() {
            let len = next.routing.len();
            return Err(InvalidState::RoutingLength { len });
        }
        for (id, old) in &self.migrations {
            if let Some(reason) = migration_successor_flaw(old, next.migrations.get(id)) {
                let migration = id.clone();
                return Err(InvalidState::MigrationChanged { migration, reason });
            }
        }
        Ok(())
    }
}

/// What is wrong with `new` following `old` for one migration, if anything.
fn migration_successor_flaw(
    old: &MigrationRecord,
    new: Option<&MigrationRecord>,
) -> Option<String> {
    let Some(new) = new else {
        return old
            .is_live()
            .then(|| "a live migration vanished".to_string());
    };
    let same_move =
        (old.vshard, old.from_group, old.to_group) == (new.vshard, new.from_group, new.to_group);
    if !same_move {
        Some(format!(
            "it moved {}, now {}",
            old.describe(),
            new.describe()
        ))
    } else if new.driver_epoch < old.driver_epoch {
        Some(format!(
            "its driver epoch went from {} to {}",
            old.driver_epoch, new.driver_epoch
        ))
    } else if old.is_decided() && (new.phase != old.phase || new.abort != old.abort) {
        Some(format!(
            "its decision went from {:?} to {:?}",
            old.phase, new.phase
        ))
    } else if !old.is_live() && new != old {
        Some("a finished migration changed".to_string())
    } else {
        None
    }
}

/// Applies `op` to `state` and returns its answer. On a rejection `state`
/// is unchanged.
pub fn apply(state: &mut MetadataState, op: &MetadataOp) -> Result<ResponseV1, Rejection> {
    let done = |result: Result<(), Rejection>| result.map(|()| ResponseV1::Done);
    match op {
        MetadataOp::Bootstrap {
            nodes,
            groups,
            routing,
        } => done(bootstrap(state, nodes, groups, routing)),
        MetadataOp::AddNode { id, addr } => done(add_node(state, *id, addr)),
        MetadataOp::RemoveNode { id } => done(remove_node(state, *id)),
        MetadataOp::SetGroupMembers { group, members } => {
            done(set_group_members(state, *group, members))
        }
        MetadataOp::LockMigration {
            migration,
            vshard,
            from_group,
            to_group,
            driver_epoch,
            now_ms,
            lease_ms,
            max_concurrent,
        } => {
            let lock = Lock {
                migration,
                vshard: *vshard,
                from_group: *from_group,
                to_group: *to_group,
                driver_epoch: *driver_epoch,
                now_ms: *now_ms,
                lease_ms: *lease_ms,
                max_concurrent: *max_concurrent,
            };
            lock_migration(state, &lock)
        }
        MetadataOp::RenewLease {
            migration,
            driver_epoch,
            now_ms,
            lease_ms,
        } => renew_lease(state, migration, *driver_epoch, *now_ms, *lease_ms),
        MetadataOp::Transfer {
            migration,
            driver_epoch,
            now_ms,
        } => transfer(state, migration, *driver_epoch, *now_ms),
        MetadataOp::AbortMigration {
            migration,
            by,
            reason,
            now_ms,
        } => done(abort_migration(state, migration, by, reason, *now_ms)),
        MetadataOp::FinishMigration { migration } => done(finish_migration(state, migration)),
    }
}

fn invalid(reason: impl ToString) -> Rejection {
    Rejection::Invalid {
        reason: reason.to_string(),
    }
}

fn bootstrap(
    state: &mut MetadataState,
    nodes: &[(u64, String)],
    groups: &[(u64, Vec<u64>)],
    routing: &[u64],
) -> Result<(), Rejection> {
    if state.is_bootstrapped() {
        return Err(Rejection::AlreadyBootstrapped);
    }
    let node_map: BTreeMap<u64, String> = nodes.iter().cloned().collect();
    if node_map.len() != nodes.len() {
        return Err(invalid("a node id is listed twice"));
    }
    let mut group_map = BTreeMap::new();
    for (group, members) in groups {
        let member_set = unique_members(members)?;
        if group_map.insert(*group, member_set).is_some() {
            return Err(invalid(format!("group {group} is listed twice")));
        }
    }
    let candidate = MetadataState {
        nodes: node_map,
        groups: group_map,
        routing: routing
            .iter()
            .map(|&group| Route {
                group,
                epoch: FIRST_EPOCH,
            })
            .collect(),
        migrations: BTreeMap::new(),
    };
    if !candidate.is_bootstrapped() {
        return Err(invalid(InvalidState::RoutingLength { len: 0 }));
    }
    candidate.validate().map_err(invalid)?;
    *state = candidate;
    Ok(())
}

fn unique_members(members: &[u64]) -> Result<BTreeSet<u64>, Rejection> {
    let set: BTreeSet<u64> = members.iter().copied().collect();
    if set.len() != members.len() {
        return Err(invalid("a member is listed twice"));
    }
    Ok(set)
}

fn add_node(state: &mut MetadataState, id: u64, addr: &str) -> Result<(), Rejection> {
    if !state.is_bootstrapped() {
        return Err(Rejection::NotBootstrapped);
    }
    if addr.is_empty() {
        return Err(invalid("the address is empty"));
    }
    match state.nodes.get(&id) {
        Some(existing) if existing == addr => return Ok(()),
        Some(existing) => {
            let addr = existing.clone();
            return Err(Rejection::NodeExists { id, addr });
        }
        None => {}
    }
    if let Some((&node, _)) = state.nodes.iter().find(|(_, a)| a.as_str() == addr) {
        let addr = addr.to_string();
        return Err(Rejection::AddressInUse { addr, node });
    }
    state.nodes.insert(id, addr.to_string());
    Ok(())
}

fn remove_node(state: &mut MetadataState, id: u64) -> Result<(), Rejection> {
    if !state.is_bootstrapped() {
        return Err(Rejection::NotBootstrapped);
    }
    if !state.nodes.contains_key(&id) {
        return Err(Rejection::UnknownNode { id });
    }
    let groups = state.groups_of_node(id);
    if !groups.is_empty() {
        return Err(Rejection::NodeHoldsReplicas { id, groups });
    }
    state.nodes.remove(&id);
    Ok(())
}

fn set_group_members(
    state: &mut MetadataState,
    group: u64,
    members: &[u64],
) -> Result<(), Rejection> {
    if !state.is_bootstrapped() {
        return Err(Rejection::NotBootstrapped);
    }
    if !state.groups.contains_key(&group) {
        return Err(Rejection::UnknownGroup { group });
    }
    let members = unique_members(members)?;
    if members.is_empty() {
        return Err(invalid(format!("group {group} needs at least one member")));
    }
    if let Some(&id) = members.iter().find(|n| !state.nodes.contains_key(n)) {
        return Err(Rejection::UnknownNode { id });
    }
    state.groups.insert(group, members);
    Ok(())
}

/// The fields of a `LockMigration`.
struct Lock<'a> {
    migration: &'a str,
    vshard: u16,
    from_group: u64,
    to_group: u64,
    driver_epoch: u64,
    now_ms: u64,
    lease_ms: u64,
    max_concurrent: u32,
}

/// Refuses anything but an existing data group.
fn check_data_group(state: &MetadataState, group: u64) -> Result<(), Rejection> {
    if group == METADATA_GROUP {
        return Err(invalid(format!(
            "group {METADATA_GROUP} is the metadata group; it holds no vShards"
        )));
    }
    if !state.groups.contains_key(&group) {
        return Err(Rejection::UnknownGroup { group });
    }
    Ok(())
}

fn check_lease(lease_ms: u64) -> Result<(), Rejection> {
    if lease_ms == 0 {
        return Err(invalid("a migration lease must last at least 1 ms"));
    }
    Ok(())
}

/// Refuses a driver older than the recorded one.
fn check_epoch(id: &str, record: &MigrationRecord, driver_epoch: u64) -> Result<(), Rejection> {
    if driver_epoch < record.driver_epoch {
        return Err(Rejection::StaleDriverEpoch {
            migration: id.to_string(),
            epoch: driver_epoch,
            current: record.driver_epoch,
        });
    }
    Ok(())
}

fn aborted(id: &str, record: &MigrationRecord) -> Rejection {
    let reason = record.abort.as_ref().map_or("", |a| a.reason.as_str());
    Rejection::MigrationAborted {
        migration: id.to_string(),
        reason: reason.to_string(),
    }
}

fn unknown(id: &str) -> Rejection {
    Rejection::UnknownMigration {
        migration: id.to_string(),
    }
}

/// A live migration's record, for a driver command carrying `driver_epoch`
/// (checked, not yet recorded).
fn driven<'s>(
    state: &'s mut MetadataState,
    id: &str,
    driver_epoch: u64,
) -> Result<&'s mut MigrationRecord, Rejection> {
    let record = state.migrations.get_mut(id).ok_or_else(|| unknown(id))?;
    check_epoch(id, record, driver_epoch)?;
    Ok(record)
}

/// What a live driver learns of its migration after renewing its lease:
/// the lease while undecided, the epoch once transferred; refused once
/// aborted. Records the (checked) epoch and the lease.
fn renew(
    id: &str,
    record: &mut MigrationRecord,
    driver_epoch: u64,
    now_ms: u64,
    lease_ms: u64,
) -> Result<ResponseV1, Rejection> {
    match record.phase {
        MigrationPhase::Aborted => Err(aborted(id, record)),
        MigrationPhase::Transferred { epoch } => {
            record.driver_epoch = driver_epoch;
            Ok(ResponseV1::Transferred { epoch })
        }
        MigrationPhase::Locked => {
            record.driver_epoch = driver_epoch;
            let renewed = now_ms.saturating_add(lease_ms);
            record.lease_expires_ms = record.lease_expires_ms.max(renewed);
            Ok(ResponseV1::Locked {
                driver_epoch,
                lease_expires_ms: record.lease_expires_ms,
            })
        }
    }
}

fn lock_migration(state: &mut MetadataState, lock: &Lock<'_>) -> Result<ResponseV1, Rejection> {
    if !state.is_bootstrapped() {
        return Err(Rejection::NotBootstrapped);
    }
    let vshard = lock.vshard;
    if !is_valid(vshard) {
        return Err(Rejection::InvalidVShard { vshard });
    }
    check_data_group(state, lock.from_group)?;
    check_data_group(state, lock.to_group)?;
    check_lease(lock.lease_ms)?;
    if let Some(record) = state.migrations.get_mut(lock.migration) {
        return relock(lock, record);
    }
    if let Some((other, _)) = state.live_migration_of(vshard) {
        let migration = other.to_string();
        return Err(Rejection::VShardMigrating { vshard, migration });
    }
    let route = state.route(vshard).ok_or(Rejection::NotBootstrapped)?;
    if lock.to_group == route.group {
        let group = lock.to_group;
        return Err(Rejection::AlreadyOwner { vshard, group });
    }
    if lock.from_group != route.group {
        let (group, owner) = (lock.from_group, route.group);
        return Err(Rejection::NotSourceOwner {
            vshard,
            group,
            owner,
        });
    }
    let live = state.live_migrations().count();
    let live = u32::try_from(live).unwrap_or(u32::MAX);
    if live >= lock.max_concurrent {
        let max = lock.max_concurrent;
        return Err(Rejection::TooManyMigrations { live, max });
    }
    let lease_expires_ms = lock.now_ms.saturating_add(lock.lease_ms);
    let record = MigrationRecord {
        vshard,
        from_group: lock.from_group,
        to_group: lock.to_group,
        driver_epoch: lock.driver_epoch,
        phase: MigrationPhase::Locked,
        locked_at_ms: lock.now_ms,
        lease_expires_ms,
        decided_at_ms: None,
        abort: None,
        finished: None,
    };
    state.migrations.insert(lock.migration.to_string(), record);
    Ok(ResponseV1::Locked {
        driver_epoch: lock.driver_epoch,
        lease_expires_ms,
    })
}

/// `LockMigration` of an existing id: the same lock again, or a resume.
fn relock(lock: &Lock<'_>, record: &mut MigrationRecord) -> Result<ResponseV1, Rejection> {
    let id = lock.migration;
    let same = (record.vshard, record.from_group, record.to_group)
        == (lock.vshard, lock.from_group, lock.to_group);
    if !same {
        return Err(Rejection::MigrationConflict {
            migration: id.to_string(),
            existing: record.describe(),
        });
    }
    if !record.is_live() {
        let migration = id.to_string();
        return Err(Rejection::MigrationFinished { migration });
    }
    check_epoch(id, record, lock.driver_epoch)?;
    renew(id, record, lock.driver_epoch, lock.now_ms, lock.lease_ms)
}

fn renew_lease(
    state: &mut MetadataState,
    id: &str,
    driver_epoch: u64,
    now_ms: u64,
    lease_ms: u64,
) -> Result<ResponseV1, Rejection> {
    check_lease(lease_ms)?;
    let record = driven(state, id, driver_epoch)?;
    if !record.is_live() {
        let migration = id.to_string();
        return Err(Rejection::MigrationFinished { migration });
    }
    renew(id, record, driver_epoch, now_ms, lease_ms)
}

fn transfer(
    state: &mut MetadataState,
    id: &str,
    driver_epoch: u64,
    now_ms: u64,
) -> Result<ResponseV1, Rejection> {
    let record = driven(state, id, driver_epoch)?;
    match record.phase {
        MigrationPhase::Aborted => return Err(aborted(id, record)),
        MigrationPhase::Transferred { epoch } => {
            if record.is_live() {
                record.driver_epoch = driver_epoch;
            }
            return Ok(ResponseV1::Transferred { epoch });
        }
        MigrationPhase::Locked => {}
    }
    let (vshard, to_group) = (record.vshard, record.to_group);
    let route = state.route(vshard).ok_or(Rejection::NotBootstrapped)?;
    let epoch = route.epoch + 1;
    let record = driven(state, id, driver_epoch)?;
    record.driver_epoch = driver_epoch;
    record.phase = MigrationPhase::Transferred { epoch };
    record.decided_at_ms = Some(now_ms);
    state.routing[usize::from(vshard)] = Route {
        group: to_group,
        epoch,
    };
    Ok(ResponseV1::Transferred { epoch })
}

fn abort_migration(
    state: &mut MetadataState,
    id: &str,
    by: &AbortBy,
    reason: &str,
    now_ms: u64,
) -> Result<(), Rejection> {
    let record = state.migrations.get_mut(id).ok_or_else(|| unknown(id))?;
    match by {
        AbortBy::Driver { driver_epoch } => check_epoch(id, record, *driver_epoch)?,
        AbortBy::Source { group } if *group != record.from_group => {
            return Err(invalid(format!(
                "group {group} is not the source of migration {id} ({})",
                record.describe()
            )));
        }
        AbortBy::Source { .. } | AbortBy::LeaseExpired => {}
    }
    match record.phase {
        MigrationPhase::Transferred { epoch } => {
            let migration = id.to_string();
            return Err(Rejection::MigrationTransferred { migration, epoch });
        }
        MigrationPhase::Aborted => return Ok(()),
        MigrationPhase::Locked => {}
    }
    if *by == AbortBy::LeaseExpired && now_ms < record.lease_expires_ms {
        return Err(Rejection::LeaseNotExpired {
            migration: id.to_string(),
            expires_ms: record.lease_expires_ms,
            now_ms,
        });
    }
    if let AbortBy::Driver { driver_epoch } = by {
        record.driver_epoch = *driver_epoch;
    }
    record.phase = MigrationPhase::Aborted;
    record.decided_at_ms = Some(now_ms);
    record.abort = Some(AbortRecord {
        by: by.clone(),
        reason: reason.to_string(),
    });
    Ok(())
}

fn finish_migration(state: &mut MetadataState, id: &str) -> Result<(), Rejection> {
    let next = state.migrations.values().filter_map(|m| m.finished).max();
    let next = next.map_or(1, |n| n + 1);
    let record = state.migrations.get_mut(id).ok_or_else(|| unknown(id))?;
    if !record.is_live() {
        return Ok(());
    }
    if !record.is_decided() {
        let migration = id.to_string();
        return Err(Rejection::MigrationUndecided { migration });
    }
    record.finished = Some(next);
    let finished = state.migrations.values().filter(|m| !m.is_live()).count();
    if finished > MAX_FINISHED_MIGRATIONS {
        let oldest = (state.migrations.iter())
            .filter_map(|(id, m)| m.finished.map(|n| (n, id.clone())))
            .min();
        if let Some((_, oldest)) = oldest {
            state.migrations.remove(&oldest);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootstrap_op() -> MetadataOp {
        let all = vec![1, 2, 3];
        MetadataOp::Bootstrap {
            nodes: (1..=3).map(|n| (n, format!("n{n}:7000"))).collect(),
            groups: vec![(0, all.clone()), (1, all.clone()), (2, all)],
            routing: (0..VSHARDS).map(|v| u64::from(v % 2) + 1).collect(),
        }
    }

    fn bootstrapped() -> MetadataState {
        let mut state = MetadataState::default();
        assert_eq!(apply(&mut state, &bootstrap_op()), Ok(ResponseV1::Done));
        assert_eq!(state.validate(), Ok(()));
        state
    }

    /// Applies `op`, checks the invariants, and on a rejection that the
    /// state did not change; returns the answer.
    fn answer(state: &mut MetadataState, op: MetadataOp) -> Result<ResponseV1, Rejection> {
        let before = state.clone();
        let result = apply(state, &op);
        assert_eq!(state.validate(), Ok(()), "after {op:?}");
        assert_eq!(before.check_successor(state), Ok(()), "after {op:?}");
        if result.is_err() {
            assert_eq!(*state, before, "a refused {op:?} changed the state");
        }
        result
    }

    /// [`answer`] for commands that answer `Done`.
    fn step(state: &mut MetadataState, op: MetadataOp) -> Result<(), Rejection> {
        answer(state, op).map(|response| assert_eq!(response, ResponseV1::Done))
    }

    /// Bootstrap fills nodes, groups and routing at the first epoch; a second
    /// bootstrap is refused.
    #[test]
    fn bootstrap_once() {
        let mut state = bootstrapped();
        assert_eq!(state.nodes.len(), 3);
        assert_eq!(
            state.route(0),
            Some(Route {
                group: 1,
                epoch: FIRST_EPOCH
            })
        );
        assert_eq!(
            state.route(1),
            Some(Route {
                group: 2,
                epoch: FIRST_EPOCH
            })
        );
        assert_eq!(state.vshards_of_group(1).len(), 512);
        assert_eq!(
            step(&mut state, bootstrap_op()),
            Err(Rejection::AlreadyBootstrapped)
        );
    }

    /// Malformed bootstraps are refused and leave the cluster empty.
    #[test]
    fn bootstrap_refuses_bad_input() {
        let MetadataOp::Bootstrap {
            nodes,
            groups,
            routing,
        } = bootstrap_op()
        else {
            unreachable!("bootstrap_op builds a Bootstrap");
        };
        let short = routing[..10].to_vec();
        let mut to_meta = routing.clone();
        to_meta[3] = METADATA_GROUP;
        let mut unknown_member = groups.clone();
        unknown_member[1].1.push(9);
        let mut twice = nodes.clone();
        twice.push((1, "other:1".into()));
        let cases = [
            (nodes.clone(), groups.clone(), short),
            (nodes.clone(), groups.clone(), to_meta),
            (nodes.clone(), unknown_member, routing.clone()),
            (twice, groups.clone(), routing.clone()),
            (nodes, groups[1..].to_vec(), routing),
        ];
        for (nodes, groups, routing) in cases {
            let mut state = MetadataState::default();
            let op = MetadataOp::Bootstrap {
                nodes,
                groups,
                routing,
            };
            let refused = step(&mut state, op);
            assert!(
                matches!(refused, Err(Rejection::Invalid { .. })),
                "{refused:?}"
            );
            assert!(!state.is_bootstrapped());
        }
    }

    /// Nothing but Bootstrap is accepted before bootstrap.
    #[test]
    fn commands_need_bootstrap() {
        let mut state = MetadataState::default();
        let ops = [
            MetadataOp::AddNode {
                id: 1,
                addr: "a:1".into(),
            },
            MetadataOp::RemoveNode { id: 1 },
            MetadataOp::SetGroupMembers {
                group: 1,
                members: vec![1],
            },
        ];
        for op in ops {
            assert_eq!(step(&mut state, op), Err(Rejection::NotBootstrapped));
        }
    }

    /// AddNode: new id accepted, a repeat is a no-op, a clash is refused.
    #[test]
    fn add_node() {
        let mut state = bootstrapped();
        let add = |id, addr: &str| MetadataOp::AddNode {
            id,
            addr: addr.into(),
        };
        assert_eq!(step(&mut state, add(4, "n4:7000")), Ok(()));
        assert_eq!(step(&mut state, add(4, "n4:7000")), Ok(()));
        assert_eq!(
            step(&mut state, add(4, "elsewhere:1")),
            Err(Rejection::NodeExists {
                id: 4,
                addr: "n4:7000".into()
            })
        );
        assert_eq!(
            step(&mut state, add(5, "n1:7000")),
            Err(Rejection::AddressInUse {
                addr: "n1:7000".into(),
                node: 1
            })
        );
        assert!(matches!(
            step(&mut state, add(5, "")),
            Err(Rejection::Invalid { .. })
        ));
        assert_eq!(state.nodes.len(), 4);
    }

    /// RemoveNode is refused while the node is a member of any group, and
    /// accepted once its replicas have moved.
    #[test]
    fn remove_node_refused_while_it_holds_replicas() {
        let mut state = bootstrapped();
        let remove = MetadataOp::RemoveNode { id: 3 };
        assert_eq!(
            step(&mut state, remove.clone()),
            Err(Rejection::NodeHoldsReplicas {
                id: 3,
                groups: vec![0, 1, 2]
            })
        );
        for group in 0..=2 {
            let members = MetadataOp::SetGroupMembers {
                group,
                members: vec![1, 2],
            };
            assert_eq!(step(&mut state, members), Ok(()));
        }
        assert_eq!(step(&mut state, remove.clone()), Ok(()));
        assert_eq!(
            step(&mut state, remove),
            Err(Rejection::UnknownNode { id: 3 })
        );
    }

    /// SetGroupMembers checks the group and every member.
    #[test]
    fn set_group_members() {
        let mut state = bootstrapped();
        let set = |group, members: Vec<u64>| MetadataOp::SetGroupMembers { group, members };
        assert_eq!(
            step(&mut state, set(7, vec![1])),
            Err(Rejection::UnknownGroup { group: 7 })
        );
        assert_eq!(
            step(&mut state, set(1, vec![1, 9])),
            Err(Rejection::UnknownNode { id: 9 })
        );
        assert!(matches!(
            step(&mut state, set(1, vec![])),
            Err(Rejection::Invalid { .. })
        ));
        assert!(matches!(
            step(&mut state, set(1, vec![1, 1])),
            Err(Rejection::Invalid { .. })
        ));
        assert_eq!(step(&mut state, set(1, vec![2])), Ok(()));
        assert_eq!(state.groups_of_node(1), vec![0, 2]);
    }

    /// validate() catches each broken routing and registry invariant.
    #[test]
    fn validate_catches_broken_states() {
        let good = bootstrapped();
        let mut short = good.clone();
        short.routing.pop();
        assert_eq!(
            short.validate(),
            Err(InvalidState::RoutingLength { len: 1023 })
        );
        let mut meta_owner = good.clone();
        meta_owner.routing[9].group = METADATA_GROUP;
        let err = InvalidState::RouteToUnknownGroup {
            vshard: 9,
            group: 0,
        };
        assert_eq!(meta_owner.validate(), Err(err));
        let mut zero = good.clone();
        zero.routing[4].epoch = 0;
        assert_eq!(zero.validate(), Err(InvalidState::EpochZero { vshard: 4 }));
        let mut two = good.clone();
        let locked = |id: &str| (id.to_string(), record(8, 1, 2, MigrationPhase::Locked));
        two.migrations.extend([locked("a"), locked("b")]);
        assert!(matches!(
            two.validate(),
            Err(InvalidState::TwoLiveMigrations { vshard: 8, .. })
        ));
        let mut shared = good;
        shared.nodes.insert(9, "n1:7000".into());
        assert!(matches!(
            shared.validate(),
            Err(InvalidState::SharedAddress { .. })
        ));
    }

    /// Epochs only grow, and a change of owner needs a new epoch.
    #[test]
    fn routing_epochs_only_grow() {
        let old = bootstrapped();
        let mut moved = old.clone();
        moved.routing[0] = Route { group: 2, epoch: 2 };
        assert_eq!(old.check_successor(&moved), Ok(()));
        let mut silent = old.clone();
        silent.routing[0].group = 2;
        assert_eq!(
            old.check_successor(&silent),
            Err(InvalidState::OwnerChangedWithoutEpoch { vshard: 0 })
        );
        assert_eq!(
            moved.check_successor(&old),
            Err(InvalidState::EpochWentBack {
                vshard: 0,
                from: 2,
                to: 1
            })
        );
    }

    fn record(
        vshard: u16,
        from_group: u64,
        to_group: u64,
        phase: MigrationPhase,
    ) -> MigrationRecord {
        let decided_at_ms = (phase != MigrationPhase::Locked).then_some(0);
        MigrationRecord {
            vshard,
            from_group,
            to_group,
            driver_epoch: 1,
            phase,
            locked_at_ms: 0,
            lease_expires_ms: 1000,
            decided_at_ms,
            abort: None,
            finished: None,
        }
    }

    const LEASE: u64 = 1000;

    /// `LockMigration` of `vshard` from `from` to `to`, lease [`LEASE`], at
    /// most 4 live migrations.
    fn lock(id: &str, vshard: u16, from: u64, to: u64, epoch: u64, now_ms: u64) -> MetadataOp {
        MetadataOp::LockMigration {
            migration: id.into(),
            vshard,
            from_group: from,
            to_group: to,
            driver_epoch: epoch,
            now_ms,
            lease_ms: LEASE,
            max_concurrent: 4,
        }
    }

    fn transfer(id: &str, epoch: u64) -> MetadataOp {
        MetadataOp::Transfer {
            migration: id.into(),
            driver_epoch: epoch,
            now_ms: 50,
        }
    }

    fn abort(id: &str, by: AbortBy, now_ms: u64) -> MetadataOp {
        MetadataOp::AbortMigration {
            migration: id.into(),
            by,
            reason: "cancelled".into(),
            now_ms,
        }
    }

    fn renew(id: &str, epoch: u64, now_ms: u64) -> MetadataOp {
        MetadataOp::RenewLease {
            migration: id.into(),
            driver_epoch: epoch,
            now_ms,
            lease_ms: LEASE,
        }
    }

    fn finish(id: &str) -> MetadataOp {
        MetadataOp::FinishMigration {
            migration: id.into(),
        }
    }

    fn locked(driver_epoch: u64, lease_expires_ms: u64) -> Result<ResponseV1, Rejection> {
        Ok(ResponseV1::Locked {
            driver_epoch,
            lease_expires_ms,
        })
    }

    /// vShard 0 belongs to group 1 and vShard 1 to group 2 (bootstrap_op).
    #[test]
    fn lock_refuses_bad_requests() {
        let mut empty = MetadataState::default();
        assert_eq!(
            answer(&mut empty, lock("m", 0, 1, 2, 1, 0)),
            Err(Rejection::NotBootstrapped)
        );
        let mut state = bootstrapped();
        let cases = [
            (
                lock("m", 1024, 1, 2, 1, 0),
                Rejection::InvalidVShard { vshard: 1024 },
            ),
            (
                lock("m", 0, 1, 9, 1, 0),
                Rejection::UnknownGroup { group: 9 },
            ),
            (
                lock("m", 0, 7, 2, 1, 0),
                Rejection::UnknownGroup { group: 7 },
            ),
            (
                lock("m", 0, 2, 1, 1, 0),
                Rejection::AlreadyOwner {
                    vshard: 0,
                    group: 1,
                },
            ),
            (
                lock("m", 1, 1, 2, 1, 0),
                Rejection::AlreadyOwner {
                    vshard: 1,
                    group: 2,
                },
            ),
        ];
        for (op, refusal) in cases {
            assert_eq!(answer(&mut state, op), Err(refusal));
        }
        let to_meta = answer(&mut state, lock("m", 0, 1, METADATA_GROUP, 1, 0));
        assert!(
            matches!(&to_meta, Err(Rejection::Invalid { reason }) if reason.contains("metadata group")),
            "{to_meta:?}"
        );
        let no_lease = MetadataOp::LockMigration {
            migration: "m".into(),
            vshard: 0,
            from_group: 1,
            to_group: 2,
            driver_epoch: 1,
            now_ms: 0,
            lease_ms: 0,
            max_concurrent: 4,
        };
        assert!(matches!(
            answer(&mut state, no_lease),
            Err(Rejection::Invalid { .. })
        ));
        // A third group, so that a source that does not own the vShard can
        // be named without it being the owner.
        let add = MetadataOp::AddNode {
            id: 4,
            addr: "n4:7000".into(),
        };
        assert_eq!(step(&mut state, add), Ok(()));
        state.groups.insert(3, [4].into());
        assert_eq!(
            answer(&mut state, lock("m", 0, 3, 2, 1, 0)),
            Err(Rejection::NotSourceOwner {
                vshard: 0,
                group: 3,
                owner: 1
            })
        );
        assert!(state.migrations.is_empty());
    }

    /// A vShard has one live migration at a time; the number of live
    /// migrations is bounded; an id names one move only.
    #[test]
    fn lock_conflicts_and_concurrency() {
        let mut state = bootstrapped();
        assert_eq!(
            answer(&mut state, lock("m1", 0, 1, 2, 1, 0)),
            locked(1, LEASE)
        );
        assert_eq!(
            answer(&mut state, lock("m2", 0, 1, 2, 1, 0)),
            Err(Rejection::VShardMigrating {
                vshard: 0,
                migration: "m1".into()
            })
        );
        assert!(matches!(
            answer(&mut state, lock("m1", 2, 1, 2, 1, 0)),
            Err(Rejection::MigrationConflict { .. })
        ));
        assert_eq!(
            answer(&mut state, lock("m2", 2, 1, 2, 1, 0)),
            locked(1, LEASE)
        );
        let bounded = MetadataOp::LockMigration {
            migration: "m3".into(),
            vshard: 4,
            from_group: 1,
            to_group: 2,
            driver_epoch: 1,
            now_ms: 0,
            lease_ms: LEASE,
            max_concurrent: 2,
        };
        assert_eq!(
            answer(&mut state, bounded),
            Err(Rejection::TooManyMigrations { live: 2, max: 2 })
        );
        assert_eq!(state.live_migration_of(2).map(|(id, _)| id), Some("m2"));
        assert_eq!(state.live_migrations().count(), 2);
    }

    /// The same lock again is idempotent; a higher driver epoch resumes
    /// (bumps the epoch, renews the lease); an older one is refused, and
    /// so is its renewal.
    #[test]
    fn lock_resume_and_lease_renewal() {
        let mut state = bootstrapped();
        assert_eq!(
            answer(&mut state, lock("m", 0, 1, 2, 1, 0)),
            locked(1, 1000)
        );
        assert_eq!(
            answer(&mut state, lock("m", 0, 1, 2, 1, 0)),
            locked(1, 1000)
        );
        assert_eq!(
            answer(&mut state, lock("m", 0, 1, 2, 2, 500)),
            locked(2, 1500)
        );
        let stale = Rejection::StaleDriverEpoch {
            migration: "m".into(),
            epoch: 1,
            current: 2,
        };
        assert_eq!(
            answer(&mut state, lock("m", 0, 1, 2, 1, 600)),
            Err(stale.clone())
        );
        assert_eq!(answer(&mut state, renew("m", 1, 600)), Err(stale));
        assert_eq!(answer(&mut state, renew("m", 2, 900)), locked(2, 1900));
        assert_eq!(
            answer(&mut state, renew("m", 2, 100)),
            locked(2, 1900),
            "a renewal never shortens the lease"
        );
        assert_eq!(answer(&mut state, renew("m", 3, 1000)), locked(3, 2000));
        assert_eq!(
            answer(&mut state, renew("x", 1, 0)),
            Err(Rejection::UnknownMigration {
                migration: "x".into()
            })
        );
        assert_eq!(state.expired_leases(1999), Vec::<String>::new());
        assert_eq!(state.expired_leases(2000), vec!["m".to_string()]);
    }

    /// Transfer routes the vShard to the target at the next epoch, once;
    /// a repeat answers the same; a stale driver is refused; an abort after
    /// it is refused; a resumed lock learns it.
    #[test]
    fn transfer_is_the_point_of_no_return() {
        let mut state = bootstrapped();
        assert!(answer(&mut state, lock("m", 0, 1, 2, 2, 0)).is_ok());
        assert_eq!(
            answer(&mut state, transfer("m", 1)),
            Err(Rejection::StaleDriverEpoch {
                migration: "m".into(),
                epoch: 1,
                current: 2
            })
        );
        let moved = Ok(ResponseV1::Transferred { epoch: 2 });
        assert_eq!(answer(&mut state, transfer("m", 2)), moved);
        assert_eq!(state.route(0), Some(Route { group: 2, epoch: 2 }));
        assert_eq!(answer(&mut state, transfer("m", 2)), moved, "idempotent");
        assert_eq!(state.route(0), Some(Route { group: 2, epoch: 2 }));
        let lost = Err(Rejection::MigrationTransferred {
            migration: "m".into(),
            epoch: 2,
        });
        assert_eq!(
            answer(
                &mut state,
                abort("m", AbortBy::Driver { driver_epoch: 2 }, 60)
            ),
            lost
        );
        assert_eq!(
            answer(&mut state, abort("m", AbortBy::Source { group: 1 }, 60)),
            lost
        );
        assert_eq!(
            answer(&mut state, abort("m", AbortBy::LeaseExpired, u64::MAX)),
            lost
        );
        assert_eq!(
            answer(&mut state, lock("m", 0, 1, 2, 3, 70)),
            moved,
            "resume learns it"
        );
        assert_eq!(answer(&mut state, renew("m", 3, 80)), moved);
        assert_eq!(state.expired_leases(u64::MAX), Vec::<String>::new());
        assert_eq!(
            answer(&mut state, lock("n", 0, 2, 1, 1, 0)),
            Err(Rejection::VShardMigrating {
                vshard: 0,
                migration: "m".into()
            }),
            "locked until finished"
        );
        assert_eq!(step(&mut state, finish("m")), Ok(()));
        assert_eq!(
            answer(&mut state, transfer("m", 3)),
            moved,
            "after finish too"
        );
        assert!(
            answer(&mut state, lock("n", 0, 2, 1, 1, 0)).is_ok(),
            "and back"
        );
    }

    /// Aborts: a stale driver, a group that is not the source and an
    /// unexpired lease are refused; the first abort wins over a later
    /// Transfer, resume or renewal; a repeat is a no-op.
    #[test]
    fn abort_rules() {
        let mut state = bootstrapped();
        assert!(answer(&mut state, lock("m", 0, 1, 2, 2, 1000)).is_ok());
        assert!(matches!(
            step(
                &mut state,
                abort("m", AbortBy::Driver { driver_epoch: 1 }, 0)
            ),
            Err(Rejection::StaleDriverEpoch { .. })
        ));
        assert!(matches!(
            step(&mut state, abort("m", AbortBy::Source { group: 2 }, 0)),
            Err(Rejection::Invalid { .. })
        ));
        assert_eq!(
            step(&mut state, abort("m", AbortBy::LeaseExpired, 1999)),
            Err(Rejection::LeaseNotExpired {
                migration: "m".into(),
                expires_ms: 2000,
                now_ms: 1999
            })
        );
        assert_eq!(
            step(&mut state, abort("m", AbortBy::LeaseExpired, 2000)),
            Ok(())
        );
        let record = state.migration("m").expect("kept");
        assert_eq!(record.phase, MigrationPhase::Aborted);
        assert_eq!(record.decided_at_ms, Some(2000));
        assert_eq!(
            record.abort.as_ref().map(|a| a.by.clone()),
            Some(AbortBy::LeaseExpired)
        );
        assert_eq!(state.route(0), Some(Route { group: 1, epoch: 1 }));
        let aborted = Err(Rejection::MigrationAborted {
            migration: "m".into(),
            reason: "cancelled".into(),
        });
        assert_eq!(answer(&mut state, transfer("m", 2)), aborted);
        assert_eq!(answer(&mut state, lock("m", 0, 1, 2, 3, 3000)), aborted);
        assert_eq!(answer(&mut state, renew("m", 2, 3000)), aborted);
        assert_eq!(
            step(&mut state, abort("m", AbortBy::Source { group: 1 }, 3000)),
            Ok(()),
            "a repeat is a no-op"
        );
        assert_eq!(
            state
                .migration("m")
                .and_then(|m| m.abort.clone())
                .map(|a| a.by),
            Some(AbortBy::LeaseExpired),
            "the first abort is kept"
        );
        assert_eq!(
            step(&mut state, abort("x", AbortBy::LeaseExpired, 0)),
            Err(Rejection::UnknownMigration {
                migration: "x".into()
            })
        );
    }

    /// Finish needs a decision, releases the lock, is idempotent, and
    /// keeps a bounded number of finished records.
    #[test]
    fn finish_releases_the_lock_and_is_bounded() {
        let mut state = bootstrapped();
        assert!(answer(&mut state, lock("m", 0, 1, 2, 1, 0)).is_ok());
        assert_eq!(
            step(&mut state, finish("m")),
            Err(Rejection::MigrationUndecided {
                migration: "m".into()
            })
        );
        let by_driver = AbortBy::Driver { driver_epoch: 1 };
        assert_eq!(step(&mut state, abort("m", by_driver.clone(), 5)), Ok(()));
        assert_eq!(step(&mut state, finish("m")), Ok(()));
        assert_eq!(step(&mut state, finish("m")), Ok(()), "idempotent");
        assert_eq!(state.migration("m").and_then(|m| m.finished), Some(1));
        assert_eq!(
            answer(&mut state, lock("m", 0, 1, 2, 9, 0)),
            Err(Rejection::MigrationFinished {
                migration: "m".into()
            })
        );
        assert_eq!(
            answer(&mut state, renew("m", 9, 0)),
            Err(Rejection::MigrationFinished {
                migration: "m".into()
            })
        );
        for i in 0..MAX_FINISHED_MIGRATIONS {
            let id = format!("wf-1-{i}");
            assert!(answer(&mut state, lock(&id, 0, 1, 2, 1, 0)).is_ok());
            assert_eq!(step(&mut state, abort(&id, by_driver.clone(), 5)), Ok(()));
            assert_eq!(step(&mut state, finish(&id)), Ok(()));
        }
        assert_eq!(state.migrations.len(), MAX_FINISHED_MIGRATIONS);
        assert_eq!(
            state.migration("m"),
            None,
            "the oldest finished was dropped"
        );
        assert!(state.migration("wf-1-0").is_some());
        assert!(
            answer(&mut state, lock("m", 0, 1, 2, 1, 0)).is_ok(),
            "a dropped id is unknown again"
        );
    }

    /// validate() and check_successor() catch broken migration records.
    #[test]
    fn migration_invariants_are_checked() {
        let good = bootstrapped();
        let with = |id: &str, m: MigrationRecord| {
            let mut state = good.clone();
            state.migrations.insert(id.into(), m);
            state
        };
        let wrong_source = with("m", record(0, 2, 1, MigrationPhase::Locked));
        assert!(matches!(
            wrong_source.validate(),
            Err(InvalidState::BadMigration { .. })
        ));
        let same = with("m", record(0, 1, 1, MigrationPhase::Locked));
        assert!(matches!(
            same.validate(),
            Err(InvalidState::BadMigration { .. })
        ));
        let not_routed = with(
            "m",
            record(0, 1, 2, MigrationPhase::Transferred { epoch: 2 }),
        );
        assert!(matches!(
            not_routed.validate(),
            Err(InvalidState::BadMigration { .. })
        ));
        let no_reason = with("m", record(0, 1, 2, MigrationPhase::Aborted));
        assert!(matches!(
            no_reason.validate(),
            Err(InvalidState::BadMigration { .. })
        ));

        let mut before = good.clone();
        assert!(answer(&mut before, lock("m", 0, 1, 2, 2, 0)).is_ok());
        assert_eq!(
            step(&mut before, abort("m", AbortBy::LeaseExpired, 5000)),
            Ok(())
        );
        let mut flipped = before.clone();
        let record = flipped.migrations.get_mut("m").expect("there");
        record.phase = MigrationPhase::Locked;
        assert!(matches!(
            before.check_successor(&flipped),
            Err(InvalidState::MigrationChanged { .. })
        ));
        let mut older = before.clone();
        older.migrations.get_mut("m").expect("there").driver_epoch = 1;
        assert!(matches!(
            before.check_successor(&older),
            Err(InvalidState::MigrationChanged { .. })
        ));
        let mut vanished = before.clone();
        vanished.migrations.clear();
        assert!(matches!(
            before.check_successor(&vanished),
            Err(InvalidState::MigrationChanged { .. })
        ));
    }

    /// The persisted metadata state keeps its shipped encoding.
    #[test]
    fn golden_metadata_record() {
        let mut state = MetadataState::default();
        state.nodes.insert(1, "a".into());
        state.groups.insert(0, [1].into());
        state.routing.push(Route { group: 1, epoch: 2 });
        let migration = MigrationRecord {
            vshard: 3,
            from_group: 1,
            to_group: 2,
            driver_epoch: 4,
            phase: MigrationPhase::Transferred { epoch: 5 },
            locked_at_ms: 6,
            lease_expires_ms: 7,
            decided_at_ms: Some(8),
            abort: None,
            finished: Some(9),
        };
        state.migrations.insert("m".into(), migration);
        let aborted = MigrationRecord {
            vshard: 4,
            phase: MigrationPhase::Aborted,
            decided_at_ms: Some(8),
            abort: Some(AbortRecord {
                by: AbortBy::Source { group: 1 },
                reason: "r".into(),
            }),
            finished: None,
            ..record(4, 1, 2, MigrationPhase::Aborted)
        };
        state.migrations.insert("n".into(), aborted);
        let record = MetadataRecord::V1(state);
        let bytes = postcard::to_allocvec(&record).expect("encoding to a Vec cannot fail");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "00010101610100010101010202016d03010204010506070108000109016e040102010200e8070108010101017200"
        );
        let decoded: MetadataRecord = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(decoded, record);
    }
}
