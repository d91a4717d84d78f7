//! An in-process 3-node cluster on loopback (real QUIC, real redb): bootstrap,
//! writes and linearizable reads across groups, and a group leader stopped
//! mid-way — a new leader takes over and no acknowledged write is lost.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use shardflow_node::certs::{write_cluster_certs, PeerIdentity};
use shardflow_node::rpc::{
    AdminRequest, AdminResponse, ClientRequest, ClientResponse, NodeRequest, NodeRequestV1,
    NodeResponse, NodeResponseV1, NodeStatus,
};
use shardflow_node::server::{Node, NodeConfig, RaftTimings};
use shardflow_node::transport::{ClusterTls, Transport, TransportConfig};
use tokio::time::Instant;

struct Cluster {
    nodes: Vec<Node>,
    admin: Transport,
    _dir: tempfile::TempDir,
}

async fn start_node(dir: &Path, id: u64, listen: SocketAddr, timings: &RaftTimings) -> Node {
    let mut config = NodeConfig::new(
        id,
        listen,
        dir.join(format!("data-{id}")),
        dir.join("certs"),
    );
    config.raft = timings.clone();
    Node::start(config).await.expect("node starts")
}

async fn call(admin: &Transport, addr: SocketAddr, request: NodeRequestV1) -> NodeResponseV1 {
    let response: NodeResponse = admin
        .call_typed(addr, &NodeRequest::V1(request))
        .await
        .expect("call");
    let NodeResponse::V1(response) = response;
    response
}

async fn statuses(cluster: &Cluster) -> Vec<NodeStatus> {
    let mut all = Vec::new();
    for node in &cluster.nodes {
        if let NodeResponseV1::Admin(AdminResponse::Status(status)) = call(
            &cluster.admin,
            node.local_addr(),
            NodeRequestV1::Admin(AdminRequest::Status),
        )
        .await
        {
            all.push(status);
        }
    }
    all
}

/// Waits until every data group has a leader that owns its vShards.
async fn wait_ready(cluster: &Cluster, groups: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = statuses(cluster).await;
        let mut owned: BTreeMap<u64, u32> = BTreeMap::new();
        for status in &all {
            for group in &status.groups {
                if group.group != 0 && group.leader == Some(status.node) {
                    owned.insert(group.group, group.owned_vshards);
                }
            }
        }
        if owned.len() as u64 == groups && owned.values().sum::<u32>() == 1024 {
            return;
        }
        assert!(Instant::now() < deadline, "cluster not ready: {owned:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cluster(groups: u64) -> Cluster {
    cluster_with(groups, RaftTimings::default()).await
}

async fn cluster_with(groups: u64, timings: RaftTimings) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    write_cluster_certs(&dir.path().join("certs"), &[1, 2, 3]).expect("certs");
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let any_port = "127.0.0.1:0".parse().expect("addr");
        nodes.push(start_node(dir.path(), id, any_port, &timings).await);
    }
    let tls =
        ClusterTls::load(&dir.path().join("certs"), PeerIdentity::admin()).expect("admin tls");
    let admin = Transport::client(
        "127.0.0.1:0".parse().expect("addr"),
        &tls,
        TransportConfig::default(),
    )
    .expect("admin transport");
    let cluster = Cluster {
        nodes,
        admin,
        _dir: dir,
    };
    let members = cluster
        .nodes
        .iter()
        .map(|n| (n.id(), n.local_addr().to_string()))
        .collect();
    let bootstrap = AdminRequest::Bootstrap {
        nodes: members,
        groups,
        replicas: 3,
    };
    let answer = call(
        &cluster.admin,
        cluster.nodes[0].local_addr(),
        NodeRequestV1::Admin(bootstrap.clone()),
    )
    .await;
    assert!(
        matches!(answer, NodeResponseV1::Admin(AdminResponse::Done)),
        "{answer:?}"
    );
    wait_ready(&cluster, groups).await;
    let again = call(
        &cluster.admin,
        cluster.nodes[1].local_addr(),
        NodeRequestV1::Admin(bootstrap),
    )
    .await;
    assert!(
        matches!(again, NodeResponseV1::Admin(AdminResponse::Rejected { ref reason }) if reason.contains("already")),
        "{again:?}"
    );
    cluster
}

/// Sends a client request, following redirects and retries, to a live node.
async fn client(cluster: &Cluster, request: ClientRequest) -> ClientResponse {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut target: SocketAddr = cluster.nodes[0].local_addr();
    let mut turn = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "request {request:?} did not finish"
        );
        let sent = cluster
            .admin
            .call_typed::<_, NodeResponse>(
                target,
                &NodeRequest::V1(NodeRequestV1::Client(request.clone())),
            )
            .await;
        match sent {
            Ok(NodeResponse::V1(NodeResponseV1::Client(ClientResponse::Redirect {
                addr, ..
            }))) => {
                target = addr.parse().expect("redirect address");
                continue;
            }
            Ok(NodeResponse::V1(NodeResponseV1::Client(ClientResponse::Retry { .. }))) | Err(_) => {
                turn += 1;
                target = cluster.nodes[turn % cluster.nodes.len()].local_addr();
            }
            Ok(NodeResponse::V1(NodeResponseV1::Client(answer))) => return answer,
            Ok(other) => panic!("unexpected answer {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:05}").into_bytes()
}

// Proves writes land in every group and linearizable reads return them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_linearizable_reads_across_groups() {
    let cluster = cluster(2).await;
    for i in 0..60 {
        let put = ClientRequest::Put {
            key: key(i),
            value: format!("v{i}").into_bytes(),
            epoch: 0,
        };
        assert_eq!(client(&cluster, put).await, ClientResponse::Done);
    }
    for i in 0..60 {
        let got = client(
            &cluster,
            ClientRequest::Get {
                key: key(i),
                epoch: 0,
            },
        )
        .await;
        assert_eq!(
            got,
            ClientResponse::Value(Some(format!("v{i}").into_bytes()))
        );
    }
    let missing = client(
        &cluster,
        ClientRequest::Get {
            key: b"absent".to_vec(),
            epoch: 0,
        },
    )
    .await;
    assert_eq!(missing, ClientResponse::Value(None));
    let delete = client(
        &cluster,
        ClientRequest::Delete {
            key: key(0),
            epoch: 0,
        },
    )
    .await;
    assert_eq!(delete, ClientResponse::Done);
    let gone = client(
        &cluster,
        ClientRequest::Get {
            key: key(0),
            epoch: 0,
        },
    )
    .await;
    assert_eq!(gone, ClientResponse::Value(None));
    permission_denied_for_client_certificates(&cluster).await;
    for node in &cluster.nodes {
        node.shutdown().await;
    }
}

// Proves a group's leader can stop: a new leader is elected and every
// acknowledged write (before and after) is still readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_stopped_new_leader_no_acknowledged_write_lost() {
    let mut cluster = cluster(1).await;
    let mut acknowledged = Vec::new();
    for i in 0..30 {
        let put = ClientRequest::Put {
            key: key(i),
            value: vec![1; 16],
            epoch: 0,
        };
        assert_eq!(client(&cluster, put).await, ClientResponse::Done);
        acknowledged.push(key(i));
    }
    let leader = statuses(&cluster)
        .await
        .iter()
        .flat_map(|s| s.groups.iter().filter(|g| g.group == 1).map(|g| g.leader))
        .flatten()
        .next()
        .expect("group 1 has a leader");
    let index = cluster
        .nodes
        .iter()
        .position(|n| n.id() == leader)
        .expect("leader is a node");
    let stopped = cluster.nodes.remove(index);
    stopped.shutdown().await;
    for i in 30..60 {
        let put = ClientRequest::Put {
            key: key(i),
            value: vec![2; 16],
            epoch: 0,
        };
        assert_eq!(client(&cluster, put).await, ClientResponse::Done);
        acknowledged.push(key(i));
    }
    let new_leader = statuses(&cluster)
        .await
        .iter()
        .flat_map(|s| s.groups.iter().filter(|g| g.group == 1).map(|g| g.leader))
        .flatten()
        .next();
    assert!(
        new_leader.is_some_and(|l| l != leader),
        "a new leader: {new_leader:?}"
    );
    for key in acknowledged {
        let got = client(
            &cluster,
            ClientRequest::Get {
                key: key.clone(),
                epoch: 0,
            },
        )
        .await;
        assert!(
            matches!(got, ClientResponse::Value(Some(_))),
            "{} lost",
            String::from_utf8_lossy(&key)
        );
    }
    for node in &cluster.nodes {
        node.shutdown().await;
    }
}

/// A client certificate may read and write keys, but neither administer
/// the cluster nor speak Raft: each refusal is a clear `permission denied`.
async fn permission_denied_for_client_certificates(cluster: &Cluster) {
    let certs = cluster._dir.path().join("certs");
    let tls = ClusterTls::load(&certs, PeerIdentity::client()).expect("client tls");
    let reader = Transport::client(
        "127.0.0.1:0".parse().expect("addr"),
        &tls,
        TransportConfig::default(),
    )
    .expect("client transport");
    let target = cluster.nodes[0].local_addr();
    let get = NodeRequest::V1(NodeRequestV1::Client(ClientRequest::Get {
        key: key(5),
        epoch: 0,
    }));
    let allowed = reader.call_typed::<_, NodeResponse>(target, &get).await;
    assert!(allowed.is_ok(), "a client may read: {allowed:?}");
    let forbidden = [
        NodeRequestV1::Admin(AdminRequest::Status),
        NodeRequestV1::Admin(AdminRequest::RemoveNode { id: 3 }),
        NodeRequestV1::Propose {
            group: 1,
            command: shardflow_node::command::Command::put(key(1), vec![9]),
        },
    ];
    for request in forbidden {
        let refused = reader
            .call_typed::<_, NodeResponse>(target, &NodeRequest::V1(request))
            .await;
        let error = refused.expect_err("refused");
        assert!(error.is_permission_denied(), "{error}");
        assert!(error.to_string().contains("permission denied"), "{error}");
    }
    let value = client(
        cluster,
        ClientRequest::Get {
            key: key(1),
            epoch: 0,
        },
    )
    .await;
    assert_eq!(
        value,
        ClientResponse::Value(Some(b"v1".to_vec())),
        "nothing changed"
    );
}

// Proves a replica that fell behind a purged log receives the group's
// snapshot (streamed over one QUIC stream), installs it and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_catches_up_from_a_streamed_snapshot() {
    let timings = RaftTimings {
        snapshot_after_entries: 40,
        logs_kept_after_snapshot: 0,
        ..RaftTimings::default()
    };
    let mut cluster = cluster_with(1, timings.clone()).await;
    let lagging = cluster.nodes.pop().expect("node 3");
    let addr = lagging.local_addr();
    let left_at = lagging
        .raft(1)
        .and_then(|r| r.metrics().borrow().last_applied)
        .map_or(0, |l| l.index);
    lagging.shutdown().await;
    drop(lagging);
    for i in 0..150 {
        let put = ClientRequest::Put {
            key: key(i),
            value: format!("s{i}").into_bytes(),
            epoch: 0,
        };
        assert_eq!(client(&cluster, put).await, ClientResponse::Done);
    }
    let leader = cluster.nodes[0].raft(1).expect("group 1 on node 1");
    leader.trigger().snapshot().await.expect("snapshot");
    let target = leader
        .metrics()
        .borrow()
        .last_applied
        .map_or(0, |l| l.index);
    // The snapshot is built, then the log purged, after `trigger` returns.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let purged = leader.metrics().borrow().purged.map_or(0, |l| l.index);
        if purged > left_at {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leader never purged past node 3's log ({purged} <= {left_at})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let restarted = start_node(cluster._dir.path(), 3, addr, &timings).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let applied = restarted
            .raft(1)
            .and_then(|r| r.metrics().borrow().last_applied)
            .map_or(0, |l| l.index);
        if applied >= target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 stuck at {applied} < {target}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let snapshot = restarted
        .raft(1)
        .and_then(|r| r.metrics().borrow().snapshot);
    assert!(snapshot.is_some(), "node 3 installed a snapshot");
    for i in 0..150 {
        let local = restarted.read_local(key(i)).await.expect("local read");
        assert_eq!(
            local,
            Some(format!("s{i}").into_bytes()),
            "key {i} on the restarted replica"
        );
    }
    cluster.nodes.push(restarted);
    for node in &cluster.nodes {
        node.shutdown().await;
    }
}
