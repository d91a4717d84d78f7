//! The in-process cluster the migration tests share: three (or four) real
//! nodes on loopback with real QUIC and redb, an admin transport, and
//! helpers that write, read and wait with deadlines.

#![allow(dead_code)] // each test file uses its own part of the harness

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use shardflow_node::certs::{write_cluster_certs, PeerIdentity};
use shardflow_node::command::{Command, Response, ResponseV1};
use shardflow_node::migration::MigrationApi;
use shardflow_node::rpc::{
    AdminRequest, AdminResponse, ClientRequest, ClientResponse, NodeRequest, NodeRequestV1,
    NodeResponse, NodeResponseV1,
};
use shardflow_node::server::{MigrationTimings, Node, NodeConfig, RaftTimings};
use shardflow_node::transport::{ClusterTls, Transport, TransportConfig};
use shardflow_node::vshard::vshard_of;
use tokio::time::Instant;

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub admin: Transport,
    #[allow(dead_code)] // used by one of the two test files
    pub dir: tempfile::TempDir,
}

pub fn config(dir: &Path, id: u64, migration: &MigrationTimings) -> NodeConfig {
    let mut config = NodeConfig::new(
        id,
        "127.0.0.1:0".parse().expect("addr"),
        dir.join(format!("data-{id}")),
        dir.join("certs"),
    );
    config.raft = RaftTimings::default();
    config.migration = migration.clone();
    config
}

pub async fn call(admin: &Transport, addr: SocketAddr, request: NodeRequestV1) -> NodeResponseV1 {
    let response: NodeResponse = admin
        .call_typed(addr, &NodeRequest::V1(request))
        .await
        .expect("call");
    let NodeResponse::V1(response) = response;
    response
}

/// Starts nodes 1..=3 (certificates for `cert_ids`), bootstraps `groups`
/// data groups of 3 replicas, and waits until every group's leader owns its
/// vShards.
pub async fn cluster(groups: u64, cert_ids: &[u64], migration: MigrationTimings) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    write_cluster_certs(&dir.path().join("certs"), cert_ids).expect("certs");
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let node = Node::start(config(dir.path(), id, &migration)).await;
        nodes.push(node.expect("node starts"));
    }
    let tls =
        ClusterTls::load(&dir.path().join("certs"), PeerIdentity::admin()).expect("admin tls");
    let admin = Transport::client(
        "127.0.0.1:0".parse().expect("addr"),
        &tls,
        TransportConfig::default(),
    )
    .expect("admin transport");
    let members = nodes
        .iter()
        .map(|n| (n.id(), n.local_addr().to_string()))
        .collect();
    let bootstrap = AdminRequest::Bootstrap {
        nodes: members,
        groups,
        replicas: 3,
    };
    let answer = call(
        &admin,
        nodes[0].local_addr(),
        NodeRequestV1::Admin(bootstrap),
    )
    .await;
    assert!(
        matches!(answer, NodeResponseV1::Admin(AdminResponse::Done)),
        "{answer:?}"
    );
    let cluster = Cluster { nodes, admin, dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut owned: BTreeMap<u64, u32> = BTreeMap::new();
        for node in &cluster.nodes {
            let status = call(
                &cluster.admin,
                node.local_addr(),
                NodeRequestV1::Admin(AdminRequest::Status),
            )
            .await;
            if let NodeResponseV1::Admin(AdminResponse::Status(status)) = status {
                for group in &status.groups {
                    if group.group != 0 && group.leader == Some(status.node) {
                        owned.insert(group.group, group.owned_vshards);
                    }
                }
            }
        }
        if owned.len() as u64 == groups && owned.values().sum::<u32>() == 1024 {
            return cluster;
        }
        assert!(Instant::now() < deadline, "cluster not ready: {owned:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Cluster {
    pub async fn shutdown(self) {
        for node in &self.nodes {
            node.shutdown().await;
        }
    }

    /// The node leading `group` (by the local Raft metrics), waiting for one.
    #[allow(dead_code)] // used by one of the two test files
    pub async fn leader_of(&self, group: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for node in &self.nodes {
                let leads = node
                    .raft(group)
                    .is_some_and(|r| r.metrics().borrow().current_leader == Some(node.id()));
                if leads {
                    return node.id();
                }
            }
            assert!(Instant::now() < deadline, "group {group} has no leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[allow(dead_code)] // used by one of the two test files
    pub fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|n| n.id() == id).expect("node")
    }

    /// Sends a client request, following redirects and retries.
    pub async fn client(&self, request: ClientRequest) -> ClientResponse {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut target: SocketAddr = self.nodes[0].local_addr();
        let mut turn = 0;
        let mut last = String::new();
        loop {
            assert!(
                Instant::now() < deadline,
                "request {request:?} did not finish: {last}"
            );
            let sent = self
                .admin
                .call_typed::<_, NodeResponse>(
                    target,
                    &NodeRequest::V1(NodeRequestV1::Client(request.clone())),
                )
                .await;
            last = format!("{target}: {sent:?}");
            match sent {
                Ok(NodeResponse::V1(NodeResponseV1::Client(ClientResponse::Redirect {
                    addr,
                    ..
                }))) if addr != target.to_string() => {
                    target = addr.parse().expect("redirect address");
                    continue;
                }
                Ok(NodeResponse::V1(NodeResponseV1::Client(
                    ClientResponse::Retry { .. }
                    | ClientResponse::Fenced { .. }
                    | ClientResponse::Redirect { .. },
                )))
                | Err(_) => {
                    turn += 1;
                    target = self.nodes[turn % self.nodes.len()].local_addr();
                }
                Ok(NodeResponse::V1(NodeResponseV1::Client(answer))) => return answer,
                Ok(other) => panic!("unexpected answer {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) {
        let put = ClientRequest::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            epoch: 0,
        };
        assert_eq!(self.client(put).await, ClientResponse::Done);
    }

    #[allow(dead_code)] // used by one of the two test files
    pub async fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let get = ClientRequest::Get {
            key: key.to_vec(),
            epoch: 0,
        };
        match self.client(get).await {
            ClientResponse::Value(value) => value,
            other => panic!("get: {other:?}"),
        }
    }
}

/// `count` keys that hash to `vshard`.
pub fn keys_of(vshard: u16, count: usize) -> Vec<Vec<u8>> {
    (0u64..)
        .map(|i| format!("key-{i:06}").into_bytes())
        .filter(|k| vshard_of(k) == vshard)
        .take(count)
        .collect()
}

pub fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// Proposes `op` through `api` and returns the applied answer (panics on a
/// rejection or an error).
pub async fn propose(api: &MigrationApi, group: u64, command: Command) -> ResponseV1 {
    let response = api.propose(group, command, soon()).await.expect("proposed");
    let Response::V1(answer) = response;
    assert!(
        !matches!(answer, ResponseV1::Rejected(_)),
        "refused: {answer:?}"
    );
    answer
}
