//! A test's look inside the groups, with a node certificate: the migration
//! service requests a driver makes (`NodeRequestV1::Migration`), answered
//! by a group's leader after a read index (linearizable), redirects
//! followed. Used for what the client API cannot see: the vShard's state
//! and keys in a group that does not own it (invariants 2 and 5), the
//! migration registry, a group's replication.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardflow::node::certs::PeerIdentity;
use shardflow::node::metadata::MetadataState;
use shardflow::node::rpc::{
    MigrationRequest, MigrationResponse, NodeRequest, NodeRequestV1, NodeResponse, NodeResponseV1,
    ReplicationStatus, VShardStatus, WireDigestAt,
};
use shardflow::node::transport::{ClusterTls, Transport, TransportConfig};

/// Asks the nodes of a cluster, as node 1 would.
#[derive(Clone)]
pub struct Probe {
    transport: Transport,
    addrs: Arc<Mutex<Vec<String>>>,
}

impl Probe {
    /// A dial-only endpoint with node 1's certificate from `certs`.
    pub fn new(certs: &Path, addrs: Vec<String>) -> Probe {
        let tls = ClusterTls::load(certs, PeerIdentity::node(1)).expect("node 1's certificate");
        let config = TransportConfig {
            call_timeout: Duration::from_millis(700),
            ..TransportConfig::default()
        };
        let bind: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let transport = Transport::client(bind, &tls, config).expect("probe endpoint");
        Probe {
            transport,
            addrs: Arc::new(Mutex::new(addrs)),
        }
    }

    /// Adds a node to ask (a node added to the cluster later).
    pub fn add_addr(&self, addr: String) {
        let mut addrs = self.addrs.lock().unwrap();
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }

    /// The first definite answer to `request` from any node, following
    /// redirects; `None` if no node gave one (elections, nodes down).
    pub async fn ask(&self, request: MigrationRequest) -> Option<MigrationResponse> {
        let addrs = self.addrs.lock().unwrap().clone();
        for first in addrs {
            let mut addr = first;
            for _hop in 0..4 {
                let Ok(peer) = addr.parse::<SocketAddr>() else {
                    break;
                };
                let wire = NodeRequest::V1(NodeRequestV1::Migration(request.clone()));
                let answer = self
                    .transport
                    .call_typed::<_, NodeResponse>(peer, &wire)
                    .await;
                match answer {
                    Ok(NodeResponse::V1(NodeResponseV1::Migration(answer))) => match answer {
                        MigrationResponse::Redirect { addr: next, .. } if next != addr => {
                            addr = next;
                        }
                        MigrationResponse::Redirect { .. } | MigrationResponse::Retry { .. } => {
                            break
                        }
                        definite => return Some(definite),
                    },
                    _ => break,
                }
            }
        }
        None
    }

    /// `vshard`'s digest (keys in any state) in `group`.
    pub async fn digest(&self, group: u64, vshard: u16) -> Option<WireDigestAt> {
        match self.ask(MigrationRequest::Digest { group, vshard }).await? {
            MigrationResponse::Digest(at) => Some(at),
            _ => None,
        }
    }

    /// `vshard`'s state and migration record in `group`.
    pub async fn vshard_status(&self, group: u64, vshard: u16) -> Option<VShardStatus> {
        match self
            .ask(MigrationRequest::VShardStatus { group, vshard })
            .await?
        {
            MigrationResponse::VShardStatus(status) => Some(*status),
            _ => None,
        }
    }

    /// The metadata, read linearizably on group 0's leader.
    pub async fn metadata(&self) -> Option<MetadataState> {
        match self.ask(MigrationRequest::Metadata).await? {
            MigrationResponse::Metadata { metadata, .. } => Some(*metadata),
            _ => None,
        }
    }

    /// `group`'s replication as its leader sees it.
    pub async fn replication(&self, group: u64) -> Option<ReplicationStatus> {
        match self.ask(MigrationRequest::Replication { group }).await? {
            MigrationResponse::Replication(status) => Some(status),
            _ => None,
        }
    }

    pub async fn shutdown(&self) {
        self.transport.shutdown().await;
    }
}
