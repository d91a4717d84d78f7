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
//! - At most one live (locked) migration per vShard.
//! - A refused command leaves the state untouched.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{MetadataOp, Rejection, METADATA_GROUP};
use crate::vshard::VSHARDS;

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

/// One migration in the registry (filled by the next issue's commands).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationRecord {
    pub vshard: u16,
    pub from_group: u64,
    pub to_group: u64,
    /// The epoch of the driver allowed to act; stale ones are refused.
    pub driver_epoch: u64,
    pub phase: MigrationPhase,
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
        let live = self
            .migrations
            .iter()
            .filter(|(_, m)| m.phase == MigrationPhase::Locked);
        for (id, migration) in live {
            if let Some(first) = locked.insert(migration.vshard, id) {
                return Err(InvalidState::TwoLiveMigrations {
                    vshard: migration.vshard,
                    first: first.to_string(),
                    second: id.clone(),
                });
            }
        }
        Ok(())
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
        Ok(())
    }
}

/// Applies `op` to `state`. On a rejection `state` is unchanged.
pub fn apply(state: &mut MetadataState, op: &MetadataOp) -> Result<(), Rejection> {
    match op {
        MetadataOp::Bootstrap {
            nodes,
            groups,
            routing,
        } => bootstrap(state, nodes, groups, routing),
        MetadataOp::AddNode { id, addr } => add_node(state, *id, addr),
        MetadataOp::RemoveNode { id } => remove_node(state, *id),
        MetadataOp::SetGroupMembers { group, members } => set_group_members(state, *group, members),
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
        assert_eq!(apply(&mut state, &bootstrap_op()), Ok(()));
        assert_eq!(state.validate(), Ok(()));
        state
    }

    /// Applies `op`, checks the invariants, and on a rejection that the
    /// state did not change.
    fn step(state: &mut MetadataState, op: MetadataOp) -> Result<(), Rejection> {
        let before = state.clone();
        let result = apply(state, &op);
        assert_eq!(state.validate(), Ok(()), "after {op:?}");
        assert_eq!(before.check_successor(state), Ok(()));
        if result.is_err() {
            assert_eq!(*state, before, "a refused {op:?} changed the state");
        }
        result
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
        let locked = |id: &str| {
            let record = MigrationRecord {
                vshard: 8,
                from_group: 1,
                to_group: 2,
                driver_epoch: 1,
                phase: MigrationPhase::Locked,
            };
            (id.to_string(), record)
        };
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
        };
        state.migrations.insert("m".into(), migration);
        let record = MetadataRecord::V1(state);
        let bytes = postcard::to_allocvec(&record).expect("encoding to a Vec cannot fail");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "00010101610100010101010201016d030102040105");
        let decoded: MetadataRecord = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(decoded, record);
    }
}
