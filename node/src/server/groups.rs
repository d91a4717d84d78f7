//! The groups running on this node: one openraft `Raft` per group, its
//! state machine handle, and where its data lives on disk.
//!
//! **Invariants:**
//! - At most one `Raft` per group per node — starts are serialized and a
//!   running group is never started twice.
//! - Every data group started here is listed, durably, in `DATA/groups`
//!   before its `Raft` runs, and taken off the list when it is stopped
//!   (this node was removed from it). A restarted node starts every listed
//!   group before it serves ([`Groups::start_listed`]): a node that holds
//!   no replica of group 0 (replicas were moved to it) has no local
//!   metadata naming its groups, and a group-0 node's metadata may lag
//!   behind its data groups after a crash (state machines apply with
//!   `Durability::None`), so local storage is what says what ran here.
//! - A replica started (or asked to keep running) by `EnsureGroup`, for a
//!   move to this node, is marked [`Ensured`] until reconcile sees the
//!   group's leader name this node; reconcile stops a marked replica only
//!   once its grace has passed ([`Groups::stop_unless_ensured`] checks the
//!   mark and removes the group in one critical section, so an
//!   `EnsureGroup` racing a stop either keeps the replica or starts it
//!   again — never answers `Done` for a replica about to be stopped).
//! - A linearizable read on a leader restarted within its term (openraft
//!   0.9 starts up as leader of its old term, whose read index is the
//!   committed id it restored — possibly older than writes it
//!   acknowledged before the crash) waits until the group applied every
//!   entry of the log it restarted with ([`GroupRuntime::ensure_linearizable`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::Raft;
use shardflow_store::RaftStore;
use tokio::sync::Mutex;

use super::config::StoreLayout;
use super::node::NodeError;
use crate::command::METADATA_GROUP;
use crate::raft::types::LogId;
use crate::raft::{group_storage, NodeAddr, StateMachineStore, TypeConfig};
use crate::raft_network::GroupNetworkFactory;
use crate::transport::Transport;

/// One running group.
#[derive(Clone)]
pub(crate) struct GroupRuntime {
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) state_machine: StateMachineStore,
    /// The term of the vote and the last log index this replica started
    /// with (see the module doc: the restart read floor).
    started: (u64, Option<u64>),
}

/// What a failed read index says: ask the leader, or retry later.
pub(crate) type LinearizableError = RaftError<u64, CheckIsLeaderError<u64, NodeAddr>>;

/// How long a read waits for a restarted leader to apply its old log
/// before it is told to retry.
const RESTART_FLOOR_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl GroupRuntime {
    /// `Raft::ensure_linearizable`, and on a leader still in the term it
    /// restarted with, until every entry of the log it restarted with is
    /// applied (an acknowledged write may be among them while the
    /// committed id it restored is older). The read log id.
    pub(crate) async fn ensure_linearizable(&self) -> Result<Option<LogId>, LinearizableError> {
        let read_log_id = self.raft.ensure_linearizable().await?;
        let (term, Some(floor)) = self.started else {
            return Ok(read_log_id);
        };
        if read_log_id.is_some_and(|id| id.index >= floor) {
            return Ok(read_log_id);
        }
        let (current_term, applied) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.current_term, metrics.last_applied)
        };
        // A new term: its leader's first (blank) entry follows every entry
        // an older leader acknowledged, and the read index covers it.
        if current_term != term || applied.is_some_and(|id| id.index >= floor) {
            return Ok(read_log_id);
        }
        match self
            .raft
            .wait(Some(RESTART_FLOOR_WAIT))
            .applied_index_at_least(Some(floor), "restart read floor")
            .await
        {
            Ok(metrics) => Ok(metrics.last_applied.max(read_log_id)),
            Err(error) => Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(
                openraft::error::QuorumNotEnough {
                    cluster: format!("restarted leader applying its log up to {floor}: {error}"),
                    got: Default::default(),
                },
            ))),
        }
    }
}

/// Where groups keep their Raft data.
enum Stores {
    One(RaftStore),
    PerGroup {
        dir: PathBuf,
        open: std::sync::Mutex<BTreeMap<u64, RaftStore>>,
    },
}

impl Stores {
    fn store_for(&self, group: u64) -> Result<RaftStore, NodeError> {
        match self {
            Stores::One(store) => Ok(store.clone()),
            Stores::PerGroup { dir, open } => {
                let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(store) = open.get(&group) {
                    return Ok(store.clone());
                }
                let path = dir.join(format!("group-{group}.redb"));
                let store = RaftStore::open(&path).map_err(|source| NodeError::Storage {
                    path: path.display().to_string(),
                    reason: source.to_string(),
                })?;
                open.insert(group, store.clone());
                Ok(store)
            }
        }
    }
}

/// The mark of a replica started, or asked to keep running, by
/// `EnsureGroup` (a move to this node) whose group's leader reconcile has
/// not yet seen naming this node. Each `EnsureGroup` makes a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ensured {
    /// When the `EnsureGroup` was served.
    pub(crate) at: Instant,
    /// Tells two marks apart (a newer `EnsureGroup`).
    serial: u64,
}

/// The file, in the data directory, listing the data groups started here.
pub(crate) const GROUP_LIST: &str = "groups";

/// The local groups.
pub(crate) struct Groups {
    node: u64,
    transport: Transport,
    config: Arc<openraft::Config>,
    stores: Stores,
    /// `DATA/groups`: the data groups started here (module doc).
    list: PathBuf,
    running: RwLock<BTreeMap<u64, GroupRuntime>>,
    starting: Mutex<()>,
    /// The [`Ensured`] marks (in memory: after a restart, a move's
    /// `EnsureGroup` re-sends mark its replica again). Locked before
    /// `running` when both are held.
    ensured: std::sync::Mutex<BTreeMap<u64, Ensured>>,
    serials: AtomicU64,
}

impl Groups {
    pub(crate) fn open(
        node: u64,
        transport: Transport,
        config: Arc<openraft::Config>,
        data_dir: &std::path::Path,
        layout: StoreLayout,
    ) -> Result<Self, NodeError> {
        let stores = match layout {
            StoreLayout::OneFile => {
                let path = data_dir.join("raft.redb");
                let store = RaftStore::open(&path).map_err(|source| NodeError::Storage {
                    path: path.display().to_string(),
                    reason: source.to_string(),
                })?;
                Stores::One(store)
            }
            StoreLayout::FilePerGroup => Stores::PerGroup {
                dir: data_dir.to_path_buf(),
                open: std::sync::Mutex::new(BTreeMap::new()),
            },
        };
        Ok(Self {
            node,
            transport,
            config,
            stores,
            list: data_dir.join(GROUP_LIST),
            running: RwLock::new(BTreeMap::new()),
            starting: Mutex::new(()),
            ensured: std::sync::Mutex::new(BTreeMap::new()),
            serials: AtomicU64::new(0),
        })
    }

    /// The group, if it runs here.
    pub(crate) fn get(&self, group: u64) -> Option<GroupRuntime> {
        self.read().get(&group).cloned()
    }

    /// Every running group.
    pub(crate) fn all(&self) -> Vec<(u64, GroupRuntime)> {
        self.read().iter().map(|(g, r)| (*g, r.clone())).collect()
    }

    /// The group, started if it does not run yet.
    pub(crate) async fn ensure(&self, group: u64) -> Result<GroupRuntime, NodeError> {
        if let Some(running) = self.get(group) {
            return Ok(running);
        }
        let _one_start_at_a_time = self.starting.lock().await;
        if let Some(running) = self.get(group) {
            return Ok(running);
        }
        let store = self.stores.store_for(group)?;
        if group != METADATA_GROUP {
            self.set_listed(group, true)?;
        }
        let (mut log_store, state_machine) = group_storage(&store, group);
        let raft_error = |reason: String| NodeError::Raft { group, reason };
        let last_log = (log_store.get_log_state().await)
            .map_err(|e| raft_error(e.to_string()))?
            .last_log_id
            .map(|id| id.index);
        let term = (log_store.read_vote().await)
            .map_err(|e| raft_error(e.to_string()))?
            .map_or(0, |vote| vote.leader_id().term);
        let network = GroupNetworkFactory::new(self.transport.clone(), group);
        let raft = Raft::new(
            self.node,
            Arc::clone(&self.config),
            network,
            log_store,
            state_machine.clone(),
        )
        .await
        .map_err(|error| raft_error(error.to_string()))?;
        let runtime = GroupRuntime {
            raft,
            state_machine,
            started: (term, last_log),
        };
        self.write().insert(group, runtime.clone());
        tracing::info!(node = self.node, group, "group started");
        Ok(runtime)
    }

    /// [`Groups::ensure`] for `EnsureGroup` (a replica moving here): marks
    /// the group [`Ensured`] first, then starts it if it does not run.
    /// Marked first, so a stop racing it either sees the new mark and
    /// keeps the replica, or removed it before, and this starts it again.
    pub(crate) async fn ensure_for_move(&self, group: u64) -> Result<GroupRuntime, NodeError> {
        let mark = Ensured {
            at: Instant::now(),
            serial: self.serials.fetch_add(1, Ordering::Relaxed),
        };
        self.marks().insert(group, mark);
        self.ensure(group).await
    }

    /// The group's [`Ensured`] mark, if it has one.
    pub(crate) fn ensured(&self, group: u64) -> Option<Ensured> {
        self.marks().get(&group).copied()
    }

    /// Takes the mark `seen` off `group` (its leader names this node: the
    /// move added it, and the usual rules apply from now on). A newer mark
    /// stays.
    pub(crate) fn clear_ensured(&self, group: u64, seen: Ensured) {
        let mut marks = self.marks();
        if marks.get(&group) == Some(&seen) {
            marks.remove(&group);
        }
    }

    /// Stops one group's Raft (this node was removed from it) if its
    /// [`Ensured`] mark is still `seen` (`None`: it had none); `false` if
    /// an `EnsureGroup` came in since, or the group does not run. Its data
    /// stays on disk; `ensure` starts it again from there.
    pub(crate) async fn stop_unless_ensured(&self, group: u64, seen: Option<Ensured>) -> bool {
        let _one_start_at_a_time = self.starting.lock().await;
        let runtime = {
            let mut marks = self.marks();
            if marks.get(&group).copied() != seen {
                return false;
            }
            marks.remove(&group);
            // Removed while the marks are held: an `EnsureGroup` after
            // this point finds the group gone and starts it again.
            let Some(runtime) = self.write().remove(&group) else {
                return false;
            };
            runtime
        };
        if let Err(error) = self.set_listed(group, false) {
            tracing::warn!(group, %error, "cannot take the group off the list");
        }
        if let Err(error) = runtime.raft.shutdown().await {
            tracing::warn!(group, %error, "raft shutdown failed");
        }
        tracing::info!(node = self.node, group, "group stopped");
        true
    }

    /// Starts every data group of `DATA/groups` (a restart: module doc).
    pub(crate) async fn start_listed(&self) -> Result<(), NodeError> {
        for group in self.listed()? {
            self.ensure(group).await?;
        }
        Ok(())
    }

    /// The groups in `DATA/groups`.
    fn listed(&self) -> Result<std::collections::BTreeSet<u64>, NodeError> {
        let text = match std::fs::read_to_string(&self.list) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(self.list_error(error.to_string())),
        };
        (text.split_whitespace())
            .map(|word| {
                word.parse::<u64>()
                    .map_err(|_| self.list_error(format!("{word:?} is not a group id")))
            })
            .collect()
    }

    /// Adds `group` to (or takes it off) `DATA/groups`, durably: written
    /// whole to a temporary file, synced, renamed over, the directory synced.
    fn set_listed(&self, group: u64, listed: bool) -> Result<(), NodeError> {
        let mut groups = self.listed()?;
        let changed = match listed {
            true => groups.insert(group),
            false => groups.remove(&group),
        };
        if !changed {
            return Ok(());
        }
        let text: String = groups.iter().map(|g| format!("{g}\n")).collect();
        super::node::write_durably(&self.list, text.as_bytes())
            .map_err(|error| self.list_error(error.to_string()))
    }

    fn list_error(&self, reason: String) -> NodeError {
        NodeError::Storage {
            path: self.list.display().to_string(),
            reason,
        }
    }

    /// Stops every group's Raft.
    pub(crate) async fn shutdown(&self) {
        let groups = std::mem::take(&mut *self.write());
        for (group, runtime) in groups {
            if let Err(error) = runtime.raft.shutdown().await {
                tracing::warn!(group, %error, "raft shutdown failed");
            }
        }
    }

    // The maps are only touched in short critical sections that cannot
    // panic half-way, so a poisoned lock still holds consistent data.
    fn marks(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Ensured>> {
        self.ensured.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, GroupRuntime>> {
        self.running.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, GroupRuntime>> {
        self.running.write().unwrap_or_else(|p| p.into_inner())
    }
}
