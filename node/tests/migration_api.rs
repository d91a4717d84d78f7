//! The migration service API ([`MigrationApi`]) on an in-process cluster
//! (real QUIC, real redb): source reads asked of a follower reach the
//! group's leader and return consistent data; a replica added as a learner
//! on a fourth node catches up and is promoted by joint consensus; a
//! replica `EnsureGroup` starts on a node that held the group before
//! survives reconcile until it is added, and an abandoned one stops after
//! its grace.

mod support;

use support::*;

use std::collections::BTreeSet;
use std::time::Duration;

use shardflow_node::command::{Change, Command, DataOp, MetadataOp, ResponseV1};
use shardflow_node::data::{VShardDigester, VShardState};
use shardflow_node::migration::MigrationError;
use shardflow_node::rpc::{
    AdminRequest, AdminResponse, ClientRequest, ClientResponse, MigrationRequest, NodeRequest,
    NodeRequestV1, NodeResponse, NodeResponseV1,
};
use shardflow_node::server::{MigrationTimings, Node};
use tokio::time::Instant;

// Proves export, changes and digest asked through a follower are answered
// by the leader after a read index: every acknowledged write is in them,
// and a copy built from them digests like the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_reads_through_a_follower_reach_the_leader() {
    let cluster = cluster(2, &[1, 2, 3], MigrationTimings::default()).await;
    let leader = cluster.leader_of(1).await;
    let follower = cluster
        .nodes
        .iter()
        .find(|n| n.id() != leader)
        .expect("a follower");
    let api = follower.migration_api();
    assert!(follower.raft(1).is_some(), "the follower runs group 1");

    let metadata = api.metadata(soon()).await.expect("metadata");
    let vshard = metadata.vshards_of_group(1)[0];
    let keys = keys_of(vshard, 20);
    for (i, key) in keys.iter().enumerate() {
        cluster.put(key, format!("v{i}").as_bytes()).await;
    }

    let migration = "m-api".to_string();
    let lock = MetadataOp::LockMigration {
        migration: migration.clone(),
        vshard,
        from_group: 1,
        to_group: 2,
        driver_epoch: 1,
        now_ms: api.now_ms(),
        lease_ms: 60_000,
        max_concurrent: 4,
    };
    let locked = propose(
        &api,
        0,
        Command::metadata(lock).with_idempotency_key("m-api/Lock/1"),
    )
    .await;
    assert!(
        matches!(
            locked,
            ResponseV1::Locked {
                driver_epoch: 1,
                ..
            }
        ),
        "{locked:?}"
    );
    let begin = DataOp::BeginIncoming {
        vshard,
        migration: migration.clone(),
    };
    propose(&api, 2, Command::data(begin)).await;

    // Before tracking, the source refuses to export: a typed, terminal error.
    let refused = api
        .export_chunk(1, vshard, None, 10, 1 << 20, soon())
        .await
        .expect_err("not tracked yet");
    assert!(
        matches!(refused, MigrationError::Rejected { group: 1, .. }),
        "{refused}"
    );
    assert!(!refused.is_retryable());

    let track = DataOp::TrackChanges {
        vshard,
        migration: migration.clone(),
    };
    let ResponseV1::Tracking { since_index } = propose(&api, 1, Command::data(track)).await else {
        panic!("TrackChanges answers Tracking");
    };

    // The base copy, in chunks of 7.
    let mut pairs = Vec::new();
    let mut after = None;
    loop {
        let chunk = api
            .export_chunk(1, vshard, after.clone(), 7, 1 << 20, soon())
            .await
            .expect("chunk");
        assert_eq!(chunk.migration, migration);
        assert!(
            chunk.applied_index >= since_index,
            "read after the tracking entry"
        );
        assert!(chunk.pairs.len() <= 7);
        after = chunk.pairs.last().map(|(k, _)| k.clone());
        pairs.extend(chunk.pairs);
        if !chunk.more {
            break;
        }
    }
    let mut expected: Vec<(Vec<u8>, Vec<u8>)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), format!("v{i}").into_bytes()))
        .collect();
    expected.sort();
    assert_eq!(
        pairs, expected,
        "the export holds every acknowledged write once"
    );

    let source = api.digest(1, vshard, soon()).await.expect("digest");
    let mut digester = VShardDigester::new();
    for (k, v) in &pairs {
        digester.update(k, v);
    }
    assert_eq!(source.digest, digester.finish());
    assert_eq!(source.state, Some(VShardState::Owned));

    // Writes after tracking are in the change table, in order.
    cluster.put(&keys[0], b"changed").await;
    let extra = keys_of(vshard, 21).pop().expect("a 21st key");
    cluster.put(&extra, b"new").await;
    let delete = ClientRequest::Delete {
        key: keys[1].clone(),
        epoch: 0,
    };
    assert_eq!(cluster.client(delete).await, ClientResponse::Done);
    let page = api
        .changes_after(1, vshard, since_index, 100, soon())
        .await
        .expect("changes");
    let changes: Vec<Change> = page.changes.iter().map(|(_, c)| c.clone()).collect();
    assert_eq!(
        changes,
        vec![
            Change::Put {
                key: keys[0].clone(),
                value: b"changed".to_vec()
            },
            Change::Put {
                key: extra.clone(),
                value: b"new".to_vec()
            },
            Change::Delete {
                key: keys[1].clone()
            },
        ]
    );
    let indexes: Vec<u64> = page.changes.iter().map(|(i, _)| *i).collect();
    assert!(indexes.windows(2).all(|w| w[0] < w[1]) && indexes[0] > since_index);
    assert!(page.applied_index >= *indexes.last().expect("three"));

    // A copy built from these reads digests like the source.
    let ingest = DataOp::IngestChunk {
        vshard,
        migration: migration.clone(),
        pairs,
    };
    propose(&api, 2, Command::data(ingest)).await;
    let apply = DataOp::ApplyChanges {
        vshard,
        migration: migration.clone(),
        changes: page.changes.clone(),
    };
    propose(&api, 2, Command::data(apply)).await;
    let target = api.digest(2, vshard, soon()).await.expect("target digest");
    let source = api.digest(1, vshard, soon()).await.expect("source digest");
    assert_eq!(target.digest, source.digest);
    assert_eq!(
        target.state,
        Some(VShardState::Incoming {
            migration: migration.clone()
        })
    );

    // The fence index is read on the leader too.
    assert_eq!(
        api.fence_index(1, vshard, soon()).await.expect("no fence"),
        None
    );
    let fence = DataOp::Fence {
        vshard,
        migration: migration.clone(),
        fence_id: (1, 0),
        deadline_ms: api.now_ms() + 60_000,
    };
    let ResponseV1::Fenced { fence_index } = propose(&api, 1, Command::data(fence)).await else {
        panic!("Fence answers Fenced");
    };
    assert_eq!(
        api.fence_index(1, vshard, soon()).await.expect("fenced"),
        Some(fence_index)
    );
    let status = api.vshard_status(1, vshard, soon()).await.expect("status");
    assert_eq!(
        status.state,
        Some(VShardState::Fenced {
            migration: migration.clone()
        })
    );
    assert!(status.applied_index >= fence_index);

    // A client write to the fenced vShard, sent to the group's leader, is
    // answered `Fenced` from the applied state: nothing enters the log.
    let leader = api
        .replication(1, soon())
        .await
        .expect("replication")
        .leader;
    let log_length = || {
        (cluster.node(leader).raft(1))
            .expect("the leader runs group 1")
            .metrics()
            .borrow()
            .last_log_index
    };
    let before = log_length();
    for attempt in 0..5 {
        let put = ClientRequest::Put {
            key: keys[0].clone(),
            value: format!("fenced {attempt}").into_bytes(),
            epoch: 0,
        };
        let answer = cluster
            .admin
            .call_typed::<_, NodeResponse>(
                cluster.node(leader).local_addr(),
                &NodeRequest::V1(NodeRequestV1::Client(put)),
            )
            .await
            .expect("an answer");
        let NodeResponse::V1(NodeResponseV1::Client(answer)) = answer else {
            panic!("not a client answer: {answer:?}");
        };
        assert_eq!(
            answer,
            ClientResponse::Fenced {
                vshard,
                migration: migration.clone()
            }
        );
    }
    assert_eq!(log_length(), before, "a refused write proposed nothing");

    // Changes ask a cursor the table no longer covers: terminal.
    let gone = api.changes_after(1, vshard, 0, 10, soon()).await;
    assert!(
        matches!(gone, Err(MigrationError::ChangesUnavailable { .. })),
        "{gone:?}"
    );

    // Only node certificates may ask the migration service.
    let denied = cluster
        .admin
        .call_typed::<_, NodeResponse>(
            follower.local_addr(),
            &NodeRequest::V1(NodeRequestV1::Migration(MigrationRequest::Digest {
                group: 1,
                vshard,
            })),
        )
        .await
        .expect_err("an admin certificate is refused");
    assert!(denied.is_permission_denied(), "{denied}");

    cluster.shutdown().await;
}

// Proves a fourth node added as a learner catches up (its matched index
// reaches the commit index seen before) and becomes a voter by joint
// consensus, replacing a follower; and that a learner can be removed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_on_a_fourth_node_catches_up_and_is_promoted() {
    let cluster = cluster(1, &[1, 2, 3, 4], MigrationTimings::default()).await;
    for i in 0..50 {
        cluster.put(format!("k{i}").as_bytes(), b"x").await;
    }
    let fourth = Node::start(config(cluster.dir.path(), 4, &MigrationTimings::default()))
        .await
        .expect("node 4 starts");
    let addr4 = fourth.local_addr().to_string();
    add_node(&cluster, 4, &addr4).await;

    let api = cluster.nodes[0].migration_api();
    api.ensure_group(1, 4, &addr4, soon())
        .await
        .expect("group 1 runs on node 4");
    assert!(fourth.raft(1).is_some());
    let start = api.replication(1, soon()).await.expect("replication");
    let committed = start.committed.expect("a committed index");
    api.add_learner(1, 4, addr4.clone(), soon())
        .await
        .expect("learner");
    api.add_learner(1, 4, addr4.clone(), soon())
        .await
        .expect("idempotent");

    let deadline = Instant::now() + Duration::from_secs(30);
    let caught_up = loop {
        let (matched, _) = api.replication_matched(1, soon()).await.expect("matched");
        if let Some(Some(index)) = matched.get(&4) {
            if *index >= committed {
                break *index;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node 4 did not catch up: {matched:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(caught_up >= committed);
    let status = api.replication(1, soon()).await.expect("replication");
    assert_eq!(status.learners, vec![4]);

    // Promote node 4, replacing a follower.
    let leader = status.leader;
    let removed = [1, 2, 3]
        .into_iter()
        .find(|n| *n != leader)
        .expect("a follower");
    let voters: BTreeSet<u64> = [1, 2, 3, 4].into_iter().filter(|n| *n != removed).collect();
    api.change_membership(1, voters.clone(), soon())
        .await
        .expect("promoted");
    api.change_membership(1, voters.clone(), soon())
        .await
        .expect("idempotent");
    let status = api.replication(1, soon()).await.expect("replication");
    assert_eq!(
        status.voters.iter().copied().collect::<BTreeSet<_>>(),
        voters
    );
    assert!(status.learners.is_empty() && !status.joint, "{status:?}");
    let members: Vec<u64> = voters.iter().copied().collect();
    let record = MetadataOp::SetGroupMembers { group: 1, members };
    propose(&api, 0, Command::metadata(record)).await;

    // Node 4 now takes part in commits.
    for i in 50..60 {
        cluster.put(format!("k{i}").as_bytes(), b"y").await;
    }
    let target = api
        .replication(1, soon())
        .await
        .expect("replication")
        .committed;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let applied = fourth
            .raft(1)
            .and_then(|r| r.metrics().borrow().last_applied)
            .map(|l| l.index);
        if applied >= target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 4 applied {applied:?} < {target:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Compensation of an AddLearner: the learner goes away again; a voter
    // is refused, terminally.
    // The removed node stopped its replica (reconcile: the leader's newer
    // membership excludes it), so it is started again first, as a
    // MoveReplica's AddLearner does.
    let addr = cluster.node(removed).local_addr().to_string();
    api.ensure_group(1, removed, &addr, soon())
        .await
        .expect("group started again");
    api.add_learner(1, removed, addr, soon())
        .await
        .expect("learner again");
    api.remove_learner(1, removed, soon())
        .await
        .expect("removed");
    api.remove_learner(1, removed, soon())
        .await
        .expect("idempotent");
    let status = api.replication(1, soon()).await.expect("replication");
    assert!(status.learners.is_empty(), "{status:?}");
    let refused = api.remove_learner(1, 4, soon()).await.expect_err("a voter");
    assert!(matches!(refused, MigrationError::Failed { .. }) && !refused.is_retryable());

    // Now replace the group's leader: it commits the new configuration,
    // steps down, and the remaining voters elect a new leader.
    let old_leader = api
        .replication(1, soon())
        .await
        .expect("replication")
        .leader;
    let voters: BTreeSet<u64> = voters.into_iter().filter(|n| *n != old_leader).collect();
    let addr = cluster.node(removed).local_addr().to_string();
    api.ensure_group(1, removed, &addr, soon())
        .await
        .expect("group started again");
    api.add_learner(1, removed, addr, soon())
        .await
        .expect("learner");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = api.replication(1, soon()).await.expect("replication");
        let caught_up = status.matched.get(&removed).copied().flatten() >= status.committed;
        if caught_up {
            break;
        }
        assert!(Instant::now() < deadline, "node {removed} did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let promote = voters
        .iter()
        .copied()
        .chain([removed])
        .collect::<BTreeSet<u64>>();
    api.change_membership(1, promote.clone(), soon())
        .await
        .expect("leader replaced");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match api.replication(1, soon()).await {
            Ok(status) if status.leader != old_leader && !status.joint => break status,
            other => {
                if Instant::now() >= deadline {
                    for n in cluster.nodes.iter().chain([&fourth]) {
                        let m = n.raft(1).map(|r| r.metrics().borrow().clone());
                        eprintln!(
                            "node {} {:?}",
                            n.id(),
                            m.map(|m| (
                                m.state,
                                m.current_leader,
                                m.current_term,
                                m.last_applied,
                                m.membership_config.clone()
                            ))
                        );
                    }
                    panic!("no new leader: {other:?}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        status.voters.iter().copied().collect::<BTreeSet<_>>(),
        promote
    );
    let members: Vec<u64> = promote.iter().copied().collect();
    let record = MetadataOp::SetGroupMembers { group: 1, members };
    propose(&api, 0, Command::metadata(record)).await;
    // The old leader stops its replica once the metadata no longer names it.
    let old = cluster.node(old_leader);
    let deadline = Instant::now() + Duration::from_secs(20);
    while old.raft(1).is_some() {
        assert!(
            Instant::now() < deadline,
            "node {old_leader} still runs group 1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Node 4 holds no replica of group 0, yet learns the routing table
    // from its group's peers, so it can serve clients as the new leader.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fourth.metadata().await.expect("metadata").is_bootstrapped() {
        assert!(
            Instant::now() < deadline,
            "node 4 never learned the metadata"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.put(b"after-leader-move", b"z").await;
    assert_eq!(cluster.get(b"after-leader-move").await, Some(b"z".to_vec()));

    fourth.shutdown().await;
    cluster.shutdown().await;
}

/// Adds node `id` at `addr` to the cluster's metadata (through node 1).
async fn add_node(cluster: &Cluster, id: u64, addr: &str) {
    let add_node = AdminRequest::AddNode {
        id,
        addr: addr.to_string(),
    };
    let added = call(
        &cluster.admin,
        cluster.nodes[0].local_addr(),
        NodeRequestV1::Admin(add_node),
    )
    .await;
    assert!(
        matches!(added, NodeResponseV1::Admin(AdminResponse::Done)),
        "{added:?}"
    );
}

/// The routing table as node `addr` reports it in its status.
async fn routing_of(
    admin: &shardflow_node::transport::Transport,
    addr: std::net::SocketAddr,
) -> shardflow_node::rpc::RoutingTable {
    match call(admin, addr, NodeRequestV1::Admin(AdminRequest::Status)).await {
        NodeResponseV1::Admin(AdminResponse::Status(status)) => status.routing,
        other => panic!("status of {addr}: {other:?}"),
    }
}

// Proves a node that joins and holds no replica (so no group through which
// to find a peer) still learns the routing table: group 0's leader offers
// it the metadata. Found by the seeded soak: a fourth node that no move
// had reached reported an empty routing table forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_node_without_replicas_learns_the_routing_table() {
    let cluster = cluster(1, &[1, 2, 3, 4], MigrationTimings::default()).await;
    let fourth = Node::start(config(cluster.dir.path(), 4, &MigrationTimings::default()))
        .await
        .expect("node 4 starts");
    assert!(
        routing_of(&cluster.admin, fourth.local_addr())
            .await
            .routes
            .is_empty(),
        "a new node knows no routing before it joins"
    );
    add_node(&cluster, 4, &fourth.local_addr().to_string()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let expected = routing_of(&cluster.admin, cluster.nodes[0].local_addr()).await;
        let seen = routing_of(&cluster.admin, fourth.local_addr()).await;
        if seen.routes.len() == 1024 && seen == expected && seen.nodes.contains_key(&4) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 4 did not learn the routing table: {} routes, nodes {:?}",
            seen.routes.len(),
            seen.nodes
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fourth.shutdown().await;
    cluster.shutdown().await;
}

/// Waits until `node` ran two more reconcile passes: the second began
/// after this call did.
async fn two_reconcile_passes(node: &Node) {
    let from = node.reconcile_passes();
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.reconcile_passes() < from + 2 {
        assert!(
            Instant::now() < deadline,
            "node {} ran no reconcile pass",
            node.id()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `group`'s leader has replicated to `node` everything it had
/// committed when the wait began.
async fn wait_caught_up(api: &shardflow_node::migration::MigrationApi, group: u64, node: u64) {
    let target = api
        .replication(group, soon())
        .await
        .expect("replication")
        .committed;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = api.replication(group, soon()).await.expect("replication");
        if status.matched.get(&node).copied().flatten() >= target {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {node} did not catch up with group {group}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Proves a replica that `EnsureGroup` starts again on a node that held the
// group before (a learner added again, a replica moved back) is not
// stopped by reconcile before the move's `add_learner` commits, and that a
// replica a move started and abandoned is stopped once its grace passed.
// Found in CI: reconcile saw the leader's membership, newer than the
// restarted replica's old one, exclude the node, stopped the replica, and
// the learner added next never caught up. The passes are waited for, so
// without the grace this fails every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_ensured_again_is_kept_until_added_and_an_abandoned_one_stops() {
    let grace = Duration::from_secs(8);
    let timings = MigrationTimings {
        ensure_group_grace: grace,
        ..MigrationTimings::default()
    };
    let cluster = cluster(2, &[1, 2, 3, 4], timings.clone()).await;
    let fourth = Node::start(config(cluster.dir.path(), 4, &timings))
        .await
        .expect("node 4 starts");
    let addr4 = fourth.local_addr().to_string();
    add_node(&cluster, 4, &addr4).await;
    let api = cluster.nodes[0].migration_api();
    // Reconcile acts only once the node knows the metadata.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fourth.metadata().await.expect("metadata").is_bootstrapped() {
        assert!(
            Instant::now() < deadline,
            "node 4 never learned the metadata"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Node 4 holds group 1 as a learner, then is removed: reconcile stops
    // the replica, which keeps its old membership on disk.
    api.ensure_group(1, 4, &addr4, soon())
        .await
        .expect("group 1 runs on node 4");
    api.add_learner(1, 4, addr4.clone(), soon())
        .await
        .expect("learner");
    wait_caught_up(&api, 1, 4).await;
    // A pass saw the leader name node 4: the usual rules apply again.
    two_reconcile_passes(&fourth).await;
    api.remove_learner(1, 4, soon()).await.expect("removed");
    let deadline = Instant::now() + Duration::from_secs(20);
    while fourth.raft(1).is_some() {
        assert!(
            Instant::now() < deadline,
            "node 4 still runs group 1 after its learner was removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Added again: started by EnsureGroup, the replica outlives full
    // reconcile passes (a slow add_learner), then catches up.
    let asked = Instant::now();
    api.ensure_group(1, 4, &addr4, soon())
        .await
        .expect("group 1 runs on node 4 again");
    two_reconcile_passes(&fourth).await;
    if asked.elapsed() < grace {
        assert!(
            fourth.raft(1).is_some(),
            "reconcile stopped the replica EnsureGroup started, before add_learner"
        );
    }
    api.add_learner(1, 4, addr4.clone(), soon())
        .await
        .expect("learner again");
    wait_caught_up(&api, 1, 4).await;
    two_reconcile_passes(&fourth).await;
    assert!(fourth.raft(1).is_some(), "the learner's replica runs");
    assert_eq!(
        api.replication(1, soon())
            .await
            .expect("replication")
            .learners,
        vec![4]
    );

    // Abandoned: a replica of group 2 started for a move that never adds
    // it runs out its grace, then is stopped.
    let asked = Instant::now();
    api.ensure_group(2, 4, &addr4, soon())
        .await
        .expect("group 2 runs on node 4");
    let deadline = Instant::now() + grace + Duration::from_secs(20);
    while fourth.raft(2).is_some() {
        assert!(
            Instant::now() < deadline,
            "node 4 still runs group 2, abandoned {:?} ago",
            asked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        asked.elapsed() >= grace,
        "stopped after {:?}, before its grace",
        asked.elapsed()
    );

    fourth.shutdown().await;
    cluster.shutdown().await;
}
