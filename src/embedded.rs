//! A whole cluster inside one process: real nodes (QUIC on loopback, redb
//! files in a directory) with the migration workflows installed exactly as
//! `shardflow node` installs them, bootstrapped, and a client. For the demo,
//! the benchmark, examples and applications that embed shardflow.
//!
//! A node can be stopped and started again on the same address and data
//! directory (a restart: its unfinished workflows resume before it serves
//! again), and more nodes can be added and registered for replica moves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shardflow_node::certs::{write_cluster_certs, CertError};
use shardflow_node::client::{Client, ClientConfig, ClientError};
use shardflow_node::server::{
    MigrationLimits, MigrationTimings, Node, NodeConfig, NodeError, RaftTimings,
};

/// How long [`EmbeddedCluster::shutdown`] lets the client's connections
/// drain before it stops the nodes.
pub const CLIENT_CLOSE_TIMEOUT: Duration = Duration::from_millis(300);

/// How to build the cluster.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Nodes started and bootstrapped (ids 1..=nodes).
    pub nodes: u64,
    /// Data groups, and members of each.
    pub groups: u64,
    pub replicas: u64,
    /// Node ids to issue certificates for beyond the first `nodes` (for
    /// nodes added later with [`EmbeddedCluster::add_node`]).
    pub spare_nodes: u64,
    pub raft: RaftTimings,
    pub migration: MigrationTimings,
    pub limits: MigrationLimits,
    /// How long to wait for the cluster to be ready.
    pub ready_timeout: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            groups: 4,
            replicas: 3,
            spare_nodes: 1,
            raft: RaftTimings::default(),
            migration: MigrationTimings::default(),
            limits: MigrationLimits::default(),
            ready_timeout: Duration::from_secs(60),
        }
    }
}

/// Why the embedded cluster could not start or change.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("node {0} is not part of this embedded cluster")]
    UnknownNode(u64),
    #[error("node {0} is already running")]
    Running(u64),
}

/// One node slot: its settings and, while it runs, the node.
struct Slot {
    config: NodeConfig,
    node: Option<Node>,
}

/// A running in-process cluster.
pub struct EmbeddedCluster {
    dir: PathBuf,
    certs: PathBuf,
    options: EmbeddedOptions,
    slots: Vec<Slot>,
    client: Client,
}

impl EmbeddedCluster {
    /// Writes certificates under `dir`, starts the nodes (data in
    /// `dir/node-N`), bootstraps and waits until every vShard is owned.
    pub async fn start(dir: &Path, options: EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let certs = dir.join("certs");
        let ids: Vec<u64> = (1..=options.nodes + options.spare_nodes).collect();
        write_cluster_certs(&certs, &ids)?;
        let mut slots = Vec::new();
        for id in 1..=options.nodes {
            let config = node_config(dir, &certs, id, &options);
            let node = start_node(config.clone()).await?;
            slots.push(Slot {
                config: NodeConfig {
                    listen: node.local_addr(),
                    ..config
                },
                node: Some(node),
            });
        }
        let members: Vec<(u64, String)> = (slots.iter())
            .map(|slot| (slot.config.id, slot.config.listen.to_string()))
            .collect();
        let seeds = members.iter().map(|(_, addr)| addr.clone()).collect();
        let client = Client::from_certs_dir(&certs, ClientConfig::new(seeds))?;
        client
            .bootstrap(members, options.groups, options.replicas)
            .await?;
        client.wait_ready(options.ready_timeout).await?;
        Ok(Self {
            dir: dir.to_path_buf(),
            certs,
            options,
            slots,
            client,
        })
    }

    /// A client of the cluster (admin certificate).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The certificate directory.
    pub fn certs_dir(&self) -> &Path {
        &self.certs
    }

    /// Node `id`, if it runs.
    pub fn node(&self, id: u64) -> Option<&Node> {
        self.slot(id).ok().and_then(|slot| slot.node.as_ref())
    }

    /// The ids of every node of the cluster, running or not.
    pub fn node_ids(&self) -> Vec<u64> {
        self.slots.iter().map(|slot| slot.config.id).collect()
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> Result<&Path, EmbeddedError> {
        Ok(&self.slot(id)?.config.data_dir)
    }

    /// Stops node `id` cleanly (its workflows halt as in a crash and resume
    /// when it starts again); its address and data are kept.
    pub async fn stop_node(&mut self, id: u64) -> Result<(), EmbeddedError> {
        let slot = self.slot_mut(id)?;
        if let Some(node) = slot.node.take() {
            node.shutdown().await;
        }
        Ok(())
    }

    /// Starts node `id` again on its address and data directory; returns
    /// once it resumed its unfinished workflows.
    pub async fn restart_node(&mut self, id: u64) -> Result<&Node, EmbeddedError> {
        let slot = self.slot_mut(id)?;
        if slot.node.is_some() {
            return Err(EmbeddedError::Running(id));
        }
        let node = start_node(slot.config.clone()).await?;
        Ok(slot.node.insert(node))
    }

    /// Starts node `id` (one of the spare certificates) and registers it
    /// with the cluster, so replicas can move to it.
    pub async fn add_node(&mut self, id: u64) -> Result<&Node, EmbeddedError> {
        if self.slot(id).is_ok() {
            return Err(EmbeddedError::Running(id));
        }
        let config = node_config(&self.dir, &self.certs, id, &self.options);
        let node = start_node(config.clone()).await?;
        let addr = node.local_addr();
        self.client.add_node(id, &addr.to_string()).await?;
        self.slots.push(Slot {
            config: NodeConfig {
                listen: addr,
                ..config
            },
            node: Some(node),
        });
        let slot = self
            .slots
            .last_mut()
            .ok_or(EmbeddedError::UnknownNode(id))?;
        slot.node.as_ref().ok_or(EmbeddedError::UnknownNode(id))
    }

    /// Closes the client (waiting at most [`CLIENT_CLOSE_TIMEOUT`] for its
    /// connections to drain), then stops every node, all at once.
    pub async fn shutdown(mut self) {
        // The nodes see the close at once; draining is only politeness.
        let _ = tokio::time::timeout(CLIENT_CLOSE_TIMEOUT, self.client.shutdown()).await;
        let mut stopping = tokio::task::JoinSet::new();
        for node in self.slots.iter_mut().filter_map(|slot| slot.node.take()) {
            stopping.spawn(async move { node.shutdown().await });
        }
        // A JoinError is a panic in a node's shutdown, already reported by
        // the runtime; the other nodes still stop.
        while stopping.join_next().await.is_some() {}
    }

    fn slot(&self, id: u64) -> Result<&Slot, EmbeddedError> {
        (self.slots.iter())
            .find(|slot| slot.config.id == id)
            .ok_or(EmbeddedError::UnknownNode(id))
    }

    fn slot_mut(&mut self, id: u64) -> Result<&mut Slot, EmbeddedError> {
        (self.slots.iter_mut())
            .find(|slot| slot.config.id == id)
            .ok_or(EmbeddedError::UnknownNode(id))
    }
}

fn node_config(dir: &Path, certs: &Path, id: u64, options: &EmbeddedOptions) -> NodeConfig {
    let mut config = NodeConfig::new(
        id,
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        dir.join(format!("node-{id}")),
        certs.to_path_buf(),
    );
    config.raft = options.raft.clone();
    config.migration = options.migration.clone();
    config.limits = options.limits.clone();
    config
}

/// Starts a node as `shardflow node` does: the migration workflows
/// installed before its journal's unfinished ones resume.
async fn start_node(config: NodeConfig) -> Result<Node, EmbeddedError> {
    let node = Node::start(config).await?;
    crate::steps::launcher::install(&node);
    if let Err(error) = node.resume_workflows().await {
        node.shutdown().await;
        return Err(error.into());
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_restarts_on_its_address_and_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = EmbeddedOptions {
            groups: 2,
            ..EmbeddedOptions::default()
        };
        let mut cluster = EmbeddedCluster::start(dir.path(), options)
            .await
            .expect("cluster starts");
        cluster.client().put(b"k", b"v1").await.expect("write");
        let addr = cluster.node(2).expect("node 2").local_addr();
        cluster.stop_node(2).await.expect("stop");
        assert!(cluster.node(2).is_none());
        cluster
            .client()
            .put(b"k", b"v2")
            .await
            .expect("write without node 2");
        let node = cluster.restart_node(2).await.expect("restart");
        assert_eq!(node.local_addr(), addr);
        assert_eq!(
            cluster.client().get(b"k").await.expect("read"),
            Some(b"v2".to_vec())
        );
        assert!(matches!(
            cluster.restart_node(2).await,
            Err(EmbeddedError::Running(2))
        ));
        assert!(matches!(
            cluster.stop_node(9).await,
            Err(EmbeddedError::UnknownNode(9))
        ));
        cluster.shutdown().await;
    }
}
