//! MoveVShard driven by a node's engine on an in-process 3-node cluster
//! with 2 data groups: a full migration under a live writer, and a cancel
//! during BaseCopy that compensates fully.

// The in-process cluster harness the node crate's migration tests use.
#[path = "../../node/tests/support/mod.rs"]
mod support;

use support::*;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardflow_node::data::VShardState;
use shardflow_node::metadata::MigrationPhase;
use shardflow_node::server::MigrationTimings;
use shardflow_steps::move_vshard::{register_with, MoveVShardConfig};
use shardflow_steps::{MoveVShard, MoveVShardInput};
use shardflow_workflow::{replay, Event, Phase, WorkflowStatus};

fn fast() -> MigrationTimings {
    MigrationTimings {
        reactor_interval: Duration::from_millis(50),
        ghost_ttl: Duration::from_millis(1_000),
        cleanup_batch: 16,
        batches_per_pass: 4,
    }
}

/// Writes keys of the vShard round-robin until stopped, recording the
/// last acknowledged value of each key (the client-side oracle).
fn spawn_writer(
    cluster: Arc<Cluster>,
    keys: Vec<Vec<u8>>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut writes = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let key = &keys[(writes as usize) % keys.len()];
            let value = format!("w{writes}").into_bytes();
            cluster.put(key, &value).await;
            acked.lock().unwrap().insert(key.clone(), value);
            writes += 1;
        }
        writes
    })
}

async fn check_journal(cluster: &Cluster, id: shardflow_workflow::WorkflowId) -> Vec<Event> {
    let engine = cluster.nodes[0].engine();
    let status = engine.status(id).await.expect("status");
    let events = engine.events(id).await.expect("events");
    let state = replay(id, &events).expect("the journal replays");
    assert_eq!(
        WorkflowStatus::from(&state),
        status,
        "the journal replays to the reported status"
    );
    events.iter().map(|e| e.body().clone()).collect()
}

// Proves MoveVShard completes under a live writer to the moving vShard:
// every acknowledged write is readable with its last acknowledged value,
// the routing epoch grew and names the target, the source holds nothing
// after cleanup, the pause was measured, and the journal replays to the
// reported status.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn move_vshard_completes_under_writes() {
    let cluster = Arc::new(cluster(2, &[1, 2, 3], fast()).await);
    let node = &cluster.nodes[0];
    let config = MoveVShardConfig {
        chunk_pairs: 16,
        ..MoveVShardConfig::default()
    };
    register_with(node.engine(), node.migration_api(), config);
    let api = node.migration_api();
    let before = api.metadata(soon()).await.expect("metadata");
    let vshard = before.vshards_of_group(1)[5];
    let epoch_before = before.route(vshard).expect("route").epoch;
    let keys = keys_of(vshard, 60);
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    for key in &keys {
        cluster.put(key, b"base").await;
        acked.lock().unwrap().insert(key.clone(), b"base".to_vec());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(
        Arc::clone(&cluster),
        keys.clone(),
        Arc::clone(&stop),
        Arc::clone(&acked),
    );

    let input = MoveVShardInput {
        vshard,
        to_group: 2,
        pause_budget_ms: 2_000,
        lease_ms: 10_000,
    };
    let id = node
        .engine()
        .submit::<MoveVShard>(input)
        .await
        .expect("submit");
    let status = tokio::time::timeout(Duration::from_secs(90), node.engine().wait(id))
        .await
        .expect("finishes in time")
        .expect("wait");
    stop.store(true, Ordering::SeqCst);
    let writes = writer.await.expect("writer");
    assert_eq!(status.phase, Phase::Completed, "{status:?}");
    assert!(writes > 0);

    let after = api.metadata(soon()).await.expect("metadata");
    let route = after.route(vshard).expect("route");
    assert_eq!(route.group, 2);
    assert!(route.epoch > epoch_before, "the routing epoch grew");
    let record = after.migration(&id.to_string()).expect("record");
    assert!(matches!(record.phase, MigrationPhase::Transferred { .. }));
    assert!(record.finished.is_some(), "the lock is released");
    let acked = acked.lock().unwrap().clone();
    for (key, value) in acked {
        assert_eq!(
            cluster.get(&key).await,
            Some(value),
            "an acknowledged write"
        );
    }
    let source = api.digest(1, vshard, soon()).await.expect("digest");
    assert_eq!(source.digest.key_count, 0, "the source holds nothing");
    assert_eq!(source.state, None);
    let target = api.digest(2, vshard, soon()).await.expect("digest");
    assert_eq!(target.state, Some(VShardState::Owned));
    assert_eq!(target.digest.key_count, keys.len() as u64);

    let events = check_journal(&cluster, id).await;
    let pause = events.iter().find_map(|e| match e {
        Event::Metric { name, value, .. } if name == "write_pause_us" => Some(*value),
        _ => None,
    });
    // The pause is a measured figure, journaled for audit; timings are
    // reported by benchmarks, not asserted by tests.
    let pause = pause.expect("the write pause is journaled");
    assert!(pause > 0, "a measured pause, not a placeholder");
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::PointOfNoReturn { .. })));
    eprintln!("write pause: {pause} us, {writes} writes during the migration");
    match Arc::try_unwrap(cluster) {
        Ok(cluster) => cluster.shutdown().await,
        Err(_) => panic!("the writer still holds the cluster"),
    }
}

// Proves a cancel during BaseCopy compensates fully: `Aborted`, the
// registry records the abort and released the lock, the target holds
// nothing, and the source still owns and serves the vShard.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_during_base_copy_compensates() {
    let cluster = cluster(2, &[1, 2, 3], fast()).await;
    let node = &cluster.nodes[0];
    let config = MoveVShardConfig {
        chunk_pairs: 1,
        ..MoveVShardConfig::default()
    };
    register_with(node.engine(), node.migration_api(), config);
    let api = node.migration_api();
    let before = api.metadata(soon()).await.expect("metadata");
    let vshard = before.vshards_of_group(1)[7];
    let route_before = before.route(vshard).expect("route");
    let keys = keys_of(vshard, 40);
    for key in &keys {
        cluster.put(key, b"base").await;
    }
    let mut progress = node.engine().subscribe();
    let input = MoveVShardInput {
        vshard,
        to_group: 2,
        pause_budget_ms: 2_000,
        lease_ms: 10_000,
    };
    let id = node
        .engine()
        .submit::<MoveVShard>(input)
        .await
        .expect("submit");
    // Cancel once the copy has checkpointed a chunk.
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), progress.recv())
            .await
            .expect("progress in time")
            .expect("progress");
        if event.id == id && matches!(event.event, Event::Checkpoint { .. }) {
            break;
        }
    }
    node.engine().cancel(id, "test").await.expect("cancel");
    let status = tokio::time::timeout(Duration::from_secs(60), node.engine().wait(id))
        .await
        .expect("finishes in time")
        .expect("wait");
    assert!(matches!(status.phase, Phase::Aborted { .. }), "{status:?}");

    let after = api.metadata(soon()).await.expect("metadata");
    assert_eq!(
        after.route(vshard),
        Some(route_before),
        "the source still owns it"
    );
    let record = after.migration(&id.to_string()).expect("record");
    assert_eq!(record.phase, MigrationPhase::Aborted);
    assert!(record.finished.is_some(), "the lock is released");
    let target = api.digest(2, vshard, soon()).await.expect("digest");
    assert_eq!(target.state, None, "the target holds nothing");
    assert_eq!(target.digest.key_count, 0);
    let source = api.digest(1, vshard, soon()).await.expect("digest");
    assert_eq!(source.state, Some(VShardState::Owned));
    assert_eq!(source.digest.key_count, keys.len() as u64);
    cluster.put(&keys[0], b"after").await;
    assert_eq!(cluster.get(&keys[0]).await, Some(b"after".to_vec()));
    let events = check_journal(&cluster, id).await;
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Compensated { .. })));
    cluster.shutdown().await;
}
