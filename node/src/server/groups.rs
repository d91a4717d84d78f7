//! The groups running on this node: one openraft `Raft` per group, its
//! state machine handle, and where its data lives on disk.
//!
//! **Invariant:** at most one `Raft` per group per node — starts are
//! serialized and a running group is never started twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use openraft::Raft;
use shardflow_store::RaftStore;
use tokio::sync::Mutex;

use super::config::StoreLayout;
use super::node::NodeError;
use crate::raft::{group_storage, StateMachineStore, TypeConfig};
use crate::raft_network::GroupNetworkFactory;
use crate::transport::Transport;

/// One running group.
#[derive(Clone)]
pub(crate) struct GroupRuntime {
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) state_machine: StateMachineStore,
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

/// The local groups.
pub(crate) struct Groups {
    node: u64,
    transport: Transport,
    config: Arc<openraft::Config>,
    stores: Stores,
    running: RwLock<BTreeMap<u64, GroupRuntime>>,
    starting: Mutex<()>,
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
            running: RwLock::new(BTreeMap::new()),
            starting: Mutex::new(()),
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
        let (log_store, state_machine) = group_storage(&store, group);
        let network = GroupNetworkFactory::new(self.transport.clone(), group);
        let raft = Raft::new(
            self.node,
            Arc::clone(&self.config),
            network,
            log_store,
            state_machine.clone(),
        )
        .await
        .map_err(|error| NodeError::Raft {
            group,
            reason: error.to_string(),
        })?;
        let runtime = GroupRuntime {
            raft,
            state_machine,
        };
        self.write().insert(group, runtime.clone());
        tracing::info!(node = self.node, group, "group started");
        Ok(runtime)
    }

    /// Stops one group's Raft (this node was removed from it). Its data
    /// stays on disk; `ensure` starts it again from there.
    pub(crate) async fn stop(&self, group: u64) {
        let _one_start_at_a_time = self.starting.lock().await;
        let Some(runtime) = self.write().remove(&group) else {
            return;
        };
        if let Err(error) = runtime.raft.shutdown().await {
            tracing::warn!(group, %error, "raft shutdown failed");
        }
        tracing::info!(node = self.node, group, "group stopped");
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

    // The map is only touched in short critical sections that cannot panic
    // half-way, so a poisoned lock still holds consistent data.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, GroupRuntime>> {
        self.running.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, GroupRuntime>> {
        self.running.write().unwrap_or_else(|p| p.into_inner())
    }
}
