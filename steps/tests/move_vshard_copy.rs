//! MoveVShard's base copy on an in-process cluster, under the DESIGN §5
//! oracle: a driver restart in the middle of the copy resumes from the
//! checkpointed cursor (with one chunk in flight and with several), and the
//! copy honours its rate limit.

// The in-process cluster harness the node crate's migration tests use.
#[path = "../../node/tests/support/mod.rs"]
mod support;

mod oracle;

use std::time::Duration;

use oracle::{settle, wait_for_event, Expect, Scenario, SERIAL};
use shardflow_node::server::Node;
use shardflow_steps::move_vshard::base_copy::CopyCursor;
use shardflow_steps::move_vshard::{register_with, MoveVShardConfig};
use shardflow_steps::{MoveVShard, MoveVShardInput};
use shardflow_workflow::{Envelope, Event, Phase};

/// Key and value bytes of one pair the oracle writes (`key-NNNNNN`).
const PAIR_BYTES: u64 = 10 + oracle::VALUE_LEN as u64;

/// The BaseCopy checkpoints of a journal: (index in the journal, when,
/// cursor).
fn copy_checkpoints(envelopes: &[Envelope]) -> Vec<(usize, u64, CopyCursor)> {
    (envelopes.iter().enumerate())
        .filter_map(|(index, envelope)| match envelope.body() {
            Event::Checkpoint { step, progress } if step == "BaseCopy" => {
                let cursor = postcard::from_bytes::<CopyCursor>(progress).expect("cursor");
                Some((index, envelope.current().at_ms, cursor))
            }
            _ => None,
        })
        .collect()
}

// Proves a driver restart resumes the copy from its cursor: the driving
// node is shut down once at least 2 chunks are checkpointed and started
// again on the same data directory; the workflow resumes (new driver
// epoch), its first checkpoint after the restart continues the chunk
// count, the totals measured by the first attempt are kept, the bytes
// copied over both attempts stay under 1.2x the vShard's size, and it
// completes with every invariant holding.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn driver_restart_resumes_the_copy_from_its_cursor() {
    let _serial = SERIAL.lock().await;
    // ~2.5 s of copy in chunks of 740 bytes, one at a time.
    let config = MoveVShardConfig {
        chunk_pairs: 10,
        ingest_window: 1,
        copy_bytes_per_sec: Some(6_000),
        ghost_ttl: Some(oracle::fast().ghost_ttl),
        ..MoveVShardConfig::default()
    };
    let (before, after) = restart_mid_copy(13, config, 2).await;
    assert_eq!(
        after,
        before + 1,
        "the copy resumed from its cursor, not from the start"
    );
}

// Proves a copy with several chunks in flight resumes without losing a
// key: chunks of 2 pairs sent every ~7 ms (faster than one ingest commits
// here, so several are in flight), a window of 8; the driver restarts
// once 10 chunks are checkpointed. The cursor only passes chunks that
// committed, oldest first, so the resumed attempt starts at or before the
// first chunk not ingested: the oracle finds every key on the target, and
// the resumed copy continues the chunk count.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_with_chunks_in_flight_loses_no_key() {
    let _serial = SERIAL.lock().await;
    let window = 8;
    let config = MoveVShardConfig {
        chunk_pairs: 2,
        ingest_window: window,
        copy_bytes_per_sec: Some(20_000),
        ghost_ttl: Some(oracle::fast().ghost_ttl),
        ..MoveVShardConfig::default()
    };
    let (before, after) = restart_mid_copy(17, config, 10).await;
    assert!(
        after > before,
        "the copy resumed from its cursor: {before} chunks before, {after} first after"
    );
}

/// Starts a migration of 200 keys under one writer, restarts its driving
/// node once `min_chunks` copy chunks are checkpointed, checks the resumed
/// workflow completes (new driver epoch, totals kept, at most 1.2x the
/// vShard's bytes copied, two BaseCopy attempts) with every invariant of
/// the oracle, and returns the chunk counts of the last checkpoint before
/// the restart and the first after.
async fn restart_mid_copy(pick: usize, config: MoveVShardConfig, min_chunks: u64) -> (u64, u64) {
    let mut scenario = Scenario::start(pick, 200, 20).await;
    let size = scenario.keys.len() as u64 * PAIR_BYTES;
    let survivors: Vec<Node> = scenario.cluster.nodes[1..].to_vec();
    scenario.load_sampling(1, 1, survivors);
    let driver = scenario.cluster.nodes[0].clone();
    register_with(driver.engine(), driver.migration_api(), config.clone());
    let mut progress = driver.engine().subscribe();
    let input = MoveVShardInput {
        vshard: scenario.vshard,
        to_group: 2,
        pause_budget_ms: 2_000,
        lease_ms: 10_000,
    };
    let id = driver
        .engine()
        .submit::<MoveVShard>(input)
        .await
        .expect("submit");
    wait_for_event(&mut progress, id, Duration::from_secs(30), |e| match e {
        Event::Checkpoint { step, progress } if step == "BaseCopy" => {
            let cursor: CopyCursor = postcard::from_bytes(progress).expect("cursor");
            (cursor.chunks >= min_chunks).then_some(())
        }
        _ => None,
    })
    .await;
    drop(progress);

    // The driver dies mid-copy and comes back on the same data directory
    // and address.
    let addr = driver.local_addr();
    // Shutdown halts the engine, which drops the workflow definitions (and
    // their hold on the node): dropping the node releases its port and files.
    driver.shutdown().await;
    drop(driver);
    drop(scenario.cluster.nodes.remove(0));
    let mut node_config = support::config(scenario.cluster.dir.path(), 1, &oracle::fast());
    node_config.listen = addr;
    let restarted = Node::start(node_config).await.expect("node 1 restarts");
    register_with(restarted.engine(), restarted.migration_api(), config);
    let report = restarted.resume_workflows().await.expect("resume");
    assert!(report.resumed.contains(&id), "{report:?}");
    scenario.cluster.nodes.insert(0, restarted.clone());

    let status = settle(&restarted, id, Duration::from_secs(90)).await;
    assert_eq!(status.phase, Phase::Completed, "{status:?}");
    assert!(status.epoch >= 2, "a new driver epoch: {status:?}");

    let envelopes = restarted.engine().events(id).await.expect("events");
    let resumed_at = (envelopes.iter())
        .enumerate()
        .filter(|(_, e)| matches!(e.body(), Event::DriverStarted { .. }))
        .map(|(index, _)| index)
        .nth(1)
        .expect("a second DriverStarted");
    let checkpoints = copy_checkpoints(&envelopes);
    let (before, after): (Vec<_>, Vec<_>) =
        (checkpoints.iter()).partition(|(i, _, _)| *i < resumed_at);
    let (_, _, last_before) = before.last().expect("checkpoints before the restart");
    let (_, _, first_after) = after.first().expect("checkpoints after the restart");
    assert!(last_before.chunks >= min_chunks, "{last_before:?}");
    assert_eq!(
        (first_after.total_keys, first_after.total_bytes),
        (last_before.total_keys, last_before.total_bytes),
        "the totals of the first attempt are kept"
    );
    assert_eq!(last_before.total_bytes, size);
    // Bytes copied over both attempts: each checkpoint adds what it copied
    // since the previous one (from 0 again if an attempt restarted).
    let mut copied = 0u64;
    let mut previous = 0u64;
    for (_, _, cursor) in &checkpoints {
        copied += if cursor.bytes >= previous {
            cursor.bytes - previous
        } else {
            cursor.bytes
        };
        previous = cursor.bytes;
    }
    assert!(
        copied * 10 < size * 12,
        "copied {copied} bytes for a vShard of {size}"
    );
    let started: Vec<u32> = (envelopes.iter())
        .filter_map(|e| match e.body() {
            Event::StepStarted { step, attempt } if step == "BaseCopy" => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(started, [1, 2], "one interrupted attempt, one resumed");

    let run = scenario.run(id, Expect::Completed);
    let report = scenario.finish(&run).await;
    eprintln!(
        "restart: chunks {} before, {} first after; copied {copied} of {size} bytes; {report:?}",
        last_before.chunks, first_after.chunks
    );
    (last_before.chunks, first_after.chunks)
}

// Proves the copy honours its rate limit: the bytes between the first and
// the last chunk checkpoint, over the journaled time between them, stay
// under 1.5x the limit (a correctness bound, not a performance figure);
// the migration completes under load with every invariant holding.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copy_honours_its_rate_limit() {
    let _serial = SERIAL.lock().await;
    let mut scenario = Scenario::start(15, 150, 20).await;
    let limit = 10_000u64;
    let config = MoveVShardConfig {
        chunk_pairs: 10,
        copy_bytes_per_sec: Some(limit),
        ..MoveVShardConfig::default()
    };
    scenario.load(1, 1);
    let node = scenario.cluster.nodes[0].clone();
    register_with(node.engine(), node.migration_api(), config);
    let input = MoveVShardInput {
        vshard: scenario.vshard,
        to_group: 2,
        pause_budget_ms: 2_000,
        lease_ms: 10_000,
    };
    let id = node
        .engine()
        .submit::<MoveVShard>(input)
        .await
        .expect("submit");
    let status = settle(&node, id, Duration::from_secs(90)).await;
    assert_eq!(status.phase, Phase::Completed, "{status:?}");

    let envelopes = node.engine().events(id).await.expect("events");
    let chunks: Vec<(u64, CopyCursor)> = (copy_checkpoints(&envelopes).into_iter())
        .filter(|(_, _, cursor)| cursor.chunks > 0)
        .map(|(_, at, cursor)| (at, cursor))
        .collect();
    let (first_at, first) = chunks.first().expect("chunks").clone();
    let (last_at, last) = chunks.last().expect("chunks").clone();
    assert!(chunks.len() >= 10, "{} chunks", chunks.len());
    let bytes = last.bytes - first.bytes;
    let millis = (last_at - first_at).max(1);
    let rate = bytes * 1_000 / millis;
    assert!(
        rate * 2 <= limit * 3,
        "{bytes} bytes in {millis} ms: {rate} B/s over the limit of {limit} B/s"
    );
    drop(node);
    let run = scenario.run(id, Expect::Completed);
    let report = scenario.finish(&run).await;
    eprintln!("rate: {bytes} bytes in {millis} ms = {rate} B/s (limit {limit}); {report:?}");
}
