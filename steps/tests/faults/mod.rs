//! Network fault injection for the in-process cluster: a [`Relay`] in
//! front of every node, the metadata naming each node by its relay's
//! address, so every node-to-node packet (Raft, migration calls, client
//! redirects) crosses a relay a test can cut and heal.
//!
//! The nodes' own sockets stay reachable directly (`Node::local_addr`):
//! the harness's admin transport and the oracle's client seeds use them,
//! which models a client on the node's side of a partition.
//!
//! A test file declares it beside `support` and `oracle` (`mod faults;`);
//! a test that only needs the relay includes `faults/relay.rs` alone
//! (`#[path = "faults/relay.rs"] mod relay;`, as `move_replica.rs` does).

#![allow(dead_code)] // each test file uses its own part of the helper

pub mod relay;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use shardflow_node::certs::{write_cluster_certs, PeerIdentity};
use shardflow_node::rpc::{AdminRequest, AdminResponse, NodeRequestV1, NodeResponseV1};
use shardflow_node::server::{MigrationTimings, Node};
use shardflow_node::transport::{ClusterTls, Transport, TransportConfig};
use tokio::time::Instant;

use crate::oracle::{Oracle, Scenario};
use crate::support::{call, config, keys_of, Cluster};
pub use relay::Relay;

/// The relays of a cluster, by node id.
pub struct Net {
    relays: BTreeMap<u64, Relay>,
}

impl Net {
    /// The relay in front of node `id`.
    pub fn relay(&self, id: u64) -> &Relay {
        self.relays.get(&id).expect("a relay for every node")
    }

    /// Node `id`'s own socket (behind its relay).
    pub fn direct(&self, id: u64) -> SocketAddr {
        self.relay(id).target()
    }

    /// Cuts what node `from` sends to node `to`: the connections `from`
    /// dials to `to` (they cross `to`'s relay) go silent both ways; the
    /// connections `to` dials to `from` are untouched.
    pub fn cut_dial(&self, from: u64, to: u64) {
        self.relay(to).cut(self.direct(from));
    }

    /// Heals [`Net::cut_dial`].
    pub fn heal_dial(&self, from: u64, to: u64) {
        self.relay(to).heal(self.direct(from));
    }

    /// Isolates node `id`: nothing reaches it through its relay and
    /// nothing it sends passes any other node's relay.
    pub fn isolate(&self, id: u64) {
        let own = self.direct(id);
        for (other, relay) in &self.relays {
            if *other == id {
                relay.cut_all();
            } else {
                relay.cut(own);
            }
        }
    }

    /// Lifts every cut.
    pub fn heal_all(&self) {
        for relay in self.relays.values() {
            relay.heal_all();
        }
    }
}

/// Like `support::cluster`, with a relay in front of every node: starts
/// nodes 1..=3 (certificates for 1..=3), bootstraps `groups` data groups
/// of `replicas` members with the relays' addresses as the nodes', and
/// waits until every group's leader owns its vShards.
pub async fn relayed_cluster(
    groups: u64,
    replicas: u64,
    migration: MigrationTimings,
) -> (Cluster, Net) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_cluster_certs(&dir.path().join("certs"), &[1, 2, 3]).expect("certs");
    let mut nodes = Vec::new();
    let mut relays = BTreeMap::new();
    for id in 1..=3 {
        let node = Node::start(config(dir.path(), id, &migration))
            .await
            .expect("node starts");
        let relay = Relay::start(node.local_addr()).await.expect("relay");
        relays.insert(id, relay);
        nodes.push(node);
    }
    let tls =
        ClusterTls::load(&dir.path().join("certs"), PeerIdentity::admin()).expect("admin tls");
    let admin = Transport::client(
        "127.0.0.1:0".parse().expect("addr"),
        &tls,
        TransportConfig::default(),
    )
    .expect("admin transport");
    let members = (relays.iter())
        .map(|(id, relay)| (*id, relay.addr().to_string()))
        .collect();
    let bootstrap = AdminRequest::Bootstrap {
        nodes: members,
        groups,
        replicas,
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
            return (cluster, Net { relays });
        }
        assert!(Instant::now() < deadline, "cluster not ready: {owned:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Like `Scenario::start`, on a [`relayed_cluster`]: the moving vShard is
/// the `pick`-th of group 1 with `keys` keys, the other one the next, with
/// `other_keys`; both preloaded through the oracle.
pub async fn relayed_scenario(
    replicas: u64,
    pick: usize,
    keys: usize,
    other_keys: usize,
) -> (Scenario, Net) {
    let (cluster, net) = relayed_cluster(2, replicas, crate::oracle::fast()).await;
    let api = cluster.nodes[0].migration_api();
    let soon = Instant::now() + Duration::from_secs(10);
    let metadata = api.metadata(soon).await.expect("metadata");
    let of_group_1 = metadata.vshards_of_group(1);
    let vshard = of_group_1[pick];
    let other = of_group_1[pick + 1];
    let route_before = metadata.route(vshard).expect("route");
    let oracle = Oracle::new(&cluster);
    let keys = keys_of(vshard, keys);
    let other_keys = keys_of(other, other_keys);
    oracle.preload(&keys).await;
    oracle.preload(&other_keys).await;
    let scenario = Scenario {
        cluster,
        oracle,
        vshard,
        other,
        keys,
        other_keys,
        route_before,
    };
    (scenario, net)
}

/// How long [`finish`] waits for the nodes' shutdown. A node's transport
/// drains its connections for up to its shutdown timeout (5 s) after a
/// partition (half-open handshakes); these tests do not test shutdown, and
/// whatever still runs when the test returns ends with its runtime.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// Every check of the oracle with node `driver` as the engine that ran
/// `run`, then the nodes' shutdown (at once, waited for at most
/// [`SHUTDOWN_WAIT`]), then the relays'.
pub async fn finish(
    mut scenario: Scenario,
    net: Net,
    driver: u64,
    run: &crate::oracle::Run,
) -> crate::oracle::Report {
    let engine = scenario.cluster.node(driver).clone();
    let report = scenario
        .oracle
        .check_all(&scenario.cluster, &engine, run)
        .await;
    scenario.oracle.shutdown().await;
    drop(engine);
    let mut shutdowns = tokio::task::JoinSet::new();
    for node in scenario.cluster.nodes.drain(..) {
        shutdowns.spawn(async move { node.shutdown().await });
    }
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, async {
        while let Some(done) = shutdowns.join_next().await {
            done.expect("node shutdown");
        }
    })
    .await;
    // Still draining: detach, the runtime ends them with the test.
    shutdowns.detach_all();
    drop(net);
    report
}
