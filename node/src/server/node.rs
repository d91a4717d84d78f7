//! The [`Node`] handle: starting and stopping a node, and the state its
//! parts share (`NodeInner`): identity, transport, groups, the cached
//! metadata of the local group-0 replica, and the workflow engine over the
//! node's journal (`DATA/journal.redb`).
//!
//! **Workflow lifecycle:** `start` opens the journal and creates the engine;
//! the layer above registers its workflow kinds on [`Node::engine`], then
//! calls [`Node::resume_workflows`] before it reports the node ready.
//! Operator requests that drive or change a workflow (cancel, resume) wait
//! for that resume and are refused once shutdown began; `shutdown` halts
//! every driver (as a crash would, so each resumes from its journal on the
//! next start) before it stops the groups, and releases the journal last.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use shardflow_store::JournalOptions;
use shardflow_workflow::{Engine, EngineConfig, ResumeReport};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::config::{MigrationLimits, MigrationTimings, NodeConfig};
use super::groups::Groups;
use super::handler::NodeHandler;
use super::journal::NodeJournal;
use super::reconcile;
use crate::certs::PeerIdentity;
use crate::command::METADATA_GROUP;
use crate::metadata::MetadataState;
use crate::migration::launcher::MigrationLauncher;
use crate::migration::MigrationApi;
use crate::transport::{ClusterTls, Transport, TransportConfig};

/// Why a node could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("certificates in {dir}: {reason}")]
    Certificates { dir: String, reason: String },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("data directory {path}: {reason}")]
    Storage { path: String, reason: String },
    #[error("raft group {group}: {reason}")]
    Raft { group: u64, reason: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("workflow journal {path}: {reason}")]
    Journal { path: String, reason: String },
    #[error("workflows: {0}")]
    Workflows(String),
}

/// Whether operator requests may drive or change workflows yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WorkflowGate {
    /// Started; `resume_workflows` has not finished.
    Resuming,
    /// Every unfinished workflow was resumed.
    Open,
    /// Shutting down: drivers are halted.
    Closed,
}

/// What the parts of a node share.
pub(crate) struct NodeInner {
    pub(crate) id: u64,
    pub(crate) addr: SocketAddr,
    pub(crate) transport: Transport,
    pub(crate) groups: Groups,
    /// (applied log index of group 0, metadata at that index).
    metadata: RwLock<(u64, Arc<MetadataState>)>,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Drives the workflows of this node's journal.
    pub(crate) engine: Engine,
    journal: Arc<NodeJournal>,
    /// Held (read) by cancel and resume while they act; taken (write) by
    /// `resume_workflows` and `shutdown`.
    pub(crate) workflow_gate: tokio::sync::RwLock<WorkflowGate>,
    /// The migration reactors' settings.
    pub(crate) migration: MigrationTimings,
    /// Limits on the migrations submitted here.
    pub(crate) limits: MigrationLimits,
    /// Starts migration workflows; installed by the layer defining them.
    pub(crate) launcher: RwLock<Option<Arc<dyn MigrationLauncher>>>,
    /// `DATA/peers`: the node addresses of the last metadata adopted from
    /// a peer (see [`NodeInner::adopt_metadata`]).
    peers_file: std::path::PathBuf,
    /// Reconcile passes that went as far as stopping removed groups.
    pub(crate) reconcile_passes: std::sync::atomic::AtomicU64,
}

/// The file, in the data directory, where a node outside group 0 keeps
/// the addresses of the nodes it last heard of.
pub(crate) const PEERS_FILE: &str = "peers";

impl NodeInner {
    /// The metadata as the local group-0 replica applied it (cached).
    pub(crate) fn metadata(&self) -> Arc<MetadataState> {
        Arc::clone(&self.metadata.read().unwrap_or_else(|p| p.into_inner()).1)
    }

    /// Re-reads the local metadata if group 0 applied more since the last read.
    pub(crate) async fn refresh_metadata(&self) -> Result<Arc<MetadataState>, NodeError> {
        let Some(group0) = self.groups.get(METADATA_GROUP) else {
            return Ok(self.metadata());
        };
        let storage = |error: crate::raft::RaftStorageError| NodeError::Raft {
            group: METADATA_GROUP,
            reason: error.to_string(),
        };
        let (applied, _) = group0.state_machine.applied().await.map_err(storage)?;
        let index = applied.map_or(0, |log_id| log_id.index);
        let cached_index = self.metadata.read().unwrap_or_else(|p| p.into_inner()).0;
        if index <= cached_index && cached_index != 0 {
            return Ok(self.metadata());
        }
        let state = Arc::new(group0.state_machine.metadata().await.map_err(storage)?);
        let mut cache = self.metadata.write().unwrap_or_else(|p| p.into_inner());
        if index >= cache.0 {
            *cache = (index, Arc::clone(&state));
        }
        Ok(Arc::clone(&cache.1))
    }

    /// The cached metadata and the group-0 applied index it is at.
    pub(crate) fn metadata_at(&self) -> (u64, Arc<MetadataState>) {
        let cache = self.metadata.read().unwrap_or_else(|p| p.into_inner());
        (cache.0, Arc::clone(&cache.1))
    }

    /// Adopts metadata a peer read on group 0's leader at `index`, if newer
    /// than the cache: how a node that holds no replica of group 0 (a
    /// replica moved to it) learns the routing table. Its own group-0
    /// replica, never initialized, stays at index 0 and never overrides it.
    ///
    /// The node addresses it names are kept in `DATA/peers`: a node outside
    /// group 0 that holds no replica at all any more (its replicas moved
    /// away) and restarts has no group membership to find a peer in, and
    /// would otherwise never learn the routing table again.
    pub(crate) fn adopt_metadata(&self, index: u64, state: MetadataState) {
        let mut cache = self.metadata.write().unwrap_or_else(|p| p.into_inner());
        if index > cache.0 {
            let peers_changed = cache.1.nodes != state.nodes;
            *cache = (index, Arc::new(state));
            if peers_changed {
                let text: String = (cache.1.nodes.iter())
                    .map(|(id, addr)| format!("{id} {addr}\n"))
                    .collect();
                drop(cache);
                if let Err(error) = write_durably(&self.peers_file, text.as_bytes()) {
                    tracing::warn!(node = self.id, %error, "cannot keep the peers' addresses");
                }
            }
        }
    }

    /// Addresses of other nodes this node knows without group 0: the
    /// cached metadata's, then those kept in `DATA/peers`.
    pub(crate) fn known_peer_addrs(&self) -> Vec<String> {
        let mut addrs: Vec<String> = Vec::new();
        let kept = std::fs::read_to_string(&self.peers_file).unwrap_or_default();
        let kept = kept.lines().filter_map(|line| {
            let (id, addr) = line.split_once(' ')?;
            Some((id.parse::<u64>().ok()?, addr.to_string()))
        });
        let cached: Vec<(u64, String)> = (self.metadata().nodes.iter())
            .map(|(id, addr)| (*id, addr.clone()))
            .collect();
        for (id, addr) in cached.into_iter().chain(kept) {
            if id != self.id && !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        addrs
    }

    /// The address of a node, from the metadata.
    pub(crate) fn node_addr(&self, node: u64) -> Option<String> {
        self.metadata().nodes.get(&node).cloned()
    }
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
    migration: MigrationApi,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Node {
    /// Binds the endpoint, opens the data directory, starts the metadata
    /// group and every group the local metadata assigns here, and serves.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|error| NodeError::Storage {
            path: config.data_dir.display().to_string(),
            reason: error.to_string(),
        })?;
        let (journal, engine) = open_engine(&config).await?;
        let tls = ClusterTls::load(&config.certs_dir, PeerIdentity::node(config.id)).map_err(
            |error| NodeError::Certificates {
                dir: config.certs_dir.display().to_string(),
                reason: error.to_string(),
            },
        )?;
        let listen_error = |reason: String| NodeError::Listen {
            addr: config.listen,
            reason,
        };
        let transport = Transport::bind(config.listen, &tls, TransportConfig::default())
            .map_err(|e| listen_error(e.to_string()))?;
        let addr = transport
            .local_addr()
            .map_err(|e| listen_error(e.to_string()))?;
        let raft_config = config
            .openraft()
            .map_err(|e| NodeError::Config(e.to_string()))?;
        let groups = Groups::open(
            config.id,
            transport.clone(),
            Arc::new(raft_config),
            &config.data_dir,
            config.layout,
        )?;
        let inner = Arc::new(NodeInner {
            id: config.id,
            addr,
            transport: transport.clone(),
            groups,
            metadata: RwLock::new((0, Arc::new(MetadataState::default()))),
            shutdown: watch::channel(false).0,
            engine,
            journal,
            workflow_gate: tokio::sync::RwLock::new(WorkflowGate::Resuming),
            migration: config.migration.clone(),
            limits: config.limits.clone(),
            launcher: RwLock::new(None),
            peers_file: config.data_dir.join(PEERS_FILE),
            reconcile_passes: std::sync::atomic::AtomicU64::new(0),
        });
        inner.groups.ensure(METADATA_GROUP).await?;
        inner.groups.start_listed().await?;
        reconcile::once(&inner).await?;
        let handler = Arc::new(NodeHandler::new(Arc::clone(&inner)));
        transport
            .serve(handler)
            .map_err(|e| listen_error(e.to_string()))?;
        let task = tokio::spawn(reconcile::run(Arc::clone(&inner)));
        let migration = MigrationApi::new(Arc::clone(&inner));
        let reactors = tokio::spawn(crate::migration::reactor::run(migration.clone()));
        tracing::info!(node = config.id, %addr, "node serving");
        Ok(Node {
            inner,
            migration,
            tasks: Arc::new(std::sync::Mutex::new(vec![task, reactors])),
        })
    }

    /// The migration service handle of this node (cheap to clone).
    pub fn migration_api(&self) -> MigrationApi {
        self.migration.clone()
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The workflow engine over this node's journal: register workflow
    /// kinds on it, then call [`Node::resume_workflows`].
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The migration reactors' settings this node was started with.
    pub fn migration_timings(&self) -> &MigrationTimings {
        &self.inner.migration
    }

    /// The limits on migrations this node was started with.
    pub fn limits(&self) -> &MigrationLimits {
        &self.inner.limits
    }

    /// Makes `MigrateVShard` / `MigrateReplica` admin requests start
    /// workflows through `launcher` (the layer that defines the workflows
    /// installs it, with their kinds registered on [`Node::engine`], before
    /// [`Node::resume_workflows`]). Until then they are refused.
    pub fn install_launcher(&self, launcher: Arc<dyn MigrationLauncher>) {
        *self
            .inner
            .launcher
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(launcher);
    }

    /// Resumes every unfinished workflow of the journal (each gets a new
    /// driver epoch; paused ones wait for an operator), then lets operators
    /// cancel and resume workflows here. Call it after registering the
    /// workflow kinds and before reporting the node ready. An instance that
    /// cannot be resumed (an unknown kind, a changed plan) is listed in the
    /// report's `failed`, not an error.
    pub async fn resume_workflows(&self) -> Result<ResumeReport, NodeError> {
        let mut gate = self.inner.workflow_gate.write().await;
        if *gate == WorkflowGate::Closed {
            return Err(NodeError::Workflows("the node is shutting down".into()));
        }
        let report = self
            .inner
            .engine
            .resume_all()
            .await
            .map_err(|error| NodeError::Workflows(format!("resuming failed: {error}")))?;
        *gate = WorkflowGate::Open;
        tracing::info!(
            node = self.id(),
            resumed = report.resumed.len(),
            paused = report.paused.len(),
            failed = report.failed.len(),
            "workflows resumed"
        );
        Ok(report)
    }

    /// Halts every workflow driver (each resumes from its journal on the
    /// next start), then stops the reconcile loop, every group and the
    /// endpoint, and releases the journal.
    pub async fn shutdown(&self) {
        *self.inner.workflow_gate.write().await = WorkflowGate::Closed;
        // The launcher and the engine's definitions hold this node's
        // services: dropping them lets the node be freed.
        *self
            .inner
            .launcher
            .write()
            .unwrap_or_else(|p| p.into_inner()) = None;
        self.inner.engine.halt();
        self.inner.shutdown.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            task.abort();
        }
        self.inner.groups.shutdown().await;
        self.inner.transport.shutdown().await;
        self.inner.journal.close().await;
    }

    /// The local Raft of `group`, if it runs here (for tests and tools).
    pub fn raft(&self, group: u64) -> Option<openraft::Raft<crate::raft::TypeConfig>> {
        self.inner.groups.get(group).map(|g| g.raft)
    }

    /// How many reconcile passes (`server::reconcile`) went as far as
    /// stopping the groups this node was removed from: a test that must
    /// know a pass ran after some point waits for this to grow by two.
    pub fn reconcile_passes(&self) -> u64 {
        (self.inner.reconcile_passes).load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A key as this node's replica of its group applied it: no read index,
    /// possibly stale. For tools and tests that inspect one replica.
    pub async fn read_local(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, NodeError> {
        let metadata = self.inner.refresh_metadata().await?;
        let vshard = crate::vshard::vshard_of(&key);
        let group = metadata
            .route(vshard)
            .map(|route| route.group)
            .ok_or_else(|| {
                NodeError::Config(format!(
                    "node {} knows no route for vShard {vshard}",
                    self.id()
                ))
            })?;
        let runtime = self
            .inner
            .groups
            .get(group)
            .ok_or_else(|| NodeError::Raft {
                group,
                reason: format!("does not run on node {}", self.id()),
            })?;
        runtime
            .state_machine
            .get(key)
            .await
            .map_err(|error| NodeError::Raft {
                group,
                reason: error.to_string(),
            })
    }

    /// The metadata as this node's replica of group 0 applied it.
    pub async fn metadata(&self) -> Result<Arc<MetadataState>, NodeError> {
        self.inner.refresh_metadata().await
    }
}

/// Writes `bytes` to `path` whole and durably: to a temporary file, synced,
/// renamed over `path`, the directory synced.
pub(crate) fn write_durably(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let partial = path.with_extension("partial");
    let mut file = std::fs::File::create(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&partial, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Opens the node's journal and the engine over it.
async fn open_engine(config: &NodeConfig) -> Result<(Arc<NodeJournal>, Engine), NodeError> {
    let options = JournalOptions::default();
    let engine_config = EngineConfig {
        node: config.id,
        max_events_per_instance: options.max_events,
        ..EngineConfig::default()
    };
    let journal = Arc::new(NodeJournal::open(&config.data_dir, options).await?);
    let engine = Engine::new(Arc::clone(&journal) as _, engine_config);
    Ok((journal, engine))
}
