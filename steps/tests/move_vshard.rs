//! MoveVShard driven by a node's engine on an in-process 3-node cluster
//! with 2 data groups, under live writes and reads, every run checked by
//! the DESIGN §5 oracle (`oracle/mod.rs`): a full migration, a cancel
//! during BaseCopy, a cancel during CatchUp, and a pause budget that can
//! never be met.

// The in-process cluster harness the node crate's migration tests use.
#[path = "../../node/tests/support/mod.rs"]
mod support;

mod oracle;

use std::time::Duration;

use oracle::{settle, wait_for_event, Expect, Scenario, SERIAL};
use shardflow_node::server::MigrationTimings;
use shardflow_steps::move_vshard::base_copy::CopyCursor;
use shardflow_steps::move_vshard::catch_up::CatchUpProgress;
use shardflow_steps::move_vshard::{register_with, MoveVShardConfig};
use shardflow_steps::{MoveVShard, MoveVShardInput};
use shardflow_workflow::{Event, Phase, WorkflowId};

fn input(scenario: &Scenario, pause_budget_ms: u64) -> MoveVShardInput {
    MoveVShardInput {
        vshard: scenario.vshard,
        to_group: 2,
        pause_budget_ms,
        lease_ms: 10_000,
    }
}

async fn submit(
    scenario: &Scenario,
    config: MoveVShardConfig,
    input: MoveVShardInput,
) -> WorkflowId {
    let node = &scenario.cluster.nodes[0];
    register_with(node.engine(), node.migration_api(), config);
    node.engine()
        .submit::<MoveVShard>(input)
        .await
        .expect("submit")
}

async fn events(scenario: &Scenario, id: WorkflowId) -> Vec<Event> {
    let engine = scenario.cluster.nodes[0].engine();
    let events = engine.events(id).await.expect("events");
    events.into_iter().map(|e| e.body().clone()).collect()
}

// Proves the oracle flags what it must (stale, foreign, lost and unwritten
// values; epochs going back) and accepts what it may.
#[test]
fn oracle_flags_what_it_must() {
    oracle::self_check();
}

// Proves MoveVShard completes under live writers (the moving vShard and
// another one of the source group) and readers, with every DESIGN §5
// invariant checked by the oracle; the step itself deletes the ghost
// after its TTL (the nodes' reactors wait for a TTL of 10 minutes here, so
// only the step can have done it); the copy cursor carries the vShard's
// size from its first checkpoint on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn move_vshard_completes_under_writes() {
    let _serial = SERIAL.lock().await;
    let reactors = MigrationTimings {
        ghost_ttl: Duration::from_secs(600),
        ..oracle::fast()
    };
    let mut scenario = Scenario::start_with(reactors, 5, 80, 40).await;
    let config = MoveVShardConfig {
        chunk_pairs: 16,
        ghost_ttl: Some(Duration::from_millis(300)),
        ..MoveVShardConfig::default()
    };
    let mut progress = scenario.cluster.nodes[0].engine().subscribe();
    scenario.load(2, 1);
    let id = submit(&scenario, config, input(&scenario, 2_000)).await;
    let first = wait_for_event(&mut progress, id, Duration::from_secs(30), |e| match e {
        Event::Checkpoint { step, progress } if step == "BaseCopy" => Some(progress.clone()),
        _ => None,
    })
    .await;
    let first: CopyCursor = postcard::from_bytes(&first).expect("a copy cursor");
    assert_eq!(
        first.chunks, 0,
        "the size is checkpointed before the first chunk"
    );
    assert_eq!(first.total_keys, scenario.keys.len() as u64);
    assert!(first.total_bytes > 0);
    let status = settle(&scenario.cluster.nodes[0], id, Duration::from_secs(90)).await;
    assert_eq!(status.phase, Phase::Completed, "{status:?}");
    let writes = scenario.oracle.writes_acked();

    let events = events(&scenario, id).await;
    let last = events.iter().rev().find_map(|e| match e {
        Event::Checkpoint { step, progress } if step == "BaseCopy" => {
            Some(postcard::from_bytes::<CopyCursor>(progress).expect("cursor"))
        }
        _ => None,
    });
    let last = last.expect("a cursor");
    assert_eq!(
        (last.total_keys, last.total_bytes),
        (first.total_keys, first.total_bytes)
    );
    assert_eq!(last.keys, scenario.keys.len() as u64);
    let run = scenario.run(id, Expect::Completed);
    let report = scenario.finish(&run).await;
    eprintln!("completed: {report:?}, {writes} acknowledged writes by then");
}

// Proves a cancel during BaseCopy compensates fully under live load:
// `Aborted`, the target holds nothing, the source still owns and serves
// the vShard, every invariant holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_during_base_copy_compensates() {
    let _serial = SERIAL.lock().await;
    let mut scenario = Scenario::start(7, 40, 20).await;
    let config = MoveVShardConfig {
        chunk_pairs: 1,
        ..MoveVShardConfig::default()
    };
    let mut progress = scenario.cluster.nodes[0].engine().subscribe();
    scenario.load(1, 1);
    let id = submit(&scenario, config, input(&scenario, 2_000)).await;
    // Cancel once the copy has checkpointed a chunk.
    wait_for_event(&mut progress, id, Duration::from_secs(30), |e| match e {
        Event::Checkpoint { step, progress } if step == "BaseCopy" => {
            let cursor: CopyCursor = postcard::from_bytes(progress).expect("cursor");
            (cursor.chunks >= 1).then_some(())
        }
        _ => None,
    })
    .await;
    let node = &scenario.cluster.nodes[0];
    node.engine().cancel(id, "test").await.expect("cancel");
    let status = settle(node, id, Duration::from_secs(60)).await;
    assert!(matches!(status.phase, Phase::Aborted { .. }), "{status:?}");
    let events = events(&scenario, id).await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::StepStarted { step, .. } if step == "CatchUp")),
        "cancelled during BaseCopy"
    );
    let run = scenario.run(id, Expect::Aborted);
    let report = scenario.finish(&run).await;
    eprintln!("cancelled in BaseCopy: {report:?}");
}

// Proves a cancel during CatchUp aborts cleanly under live load: the
// target holds nothing, the source stayed the owner and served reads and
// writes throughout (inv. 2 sampled, inv. 6 checked on every read), and
// CatchUp journaled its progress per round.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_during_catch_up_aborts() {
    let _serial = SERIAL.lock().await;
    let mut scenario = Scenario::start(9, 60, 20).await;
    // A slow copy builds a backlog of changes; one change per round and no
    // lag low enough keep CatchUp busy until the cancel.
    let config = MoveVShardConfig {
        chunk_pairs: 10,
        copy_bytes_per_sec: Some(8_000),
        changes_per_round: 1,
        lag_threshold: 0,
        max_rounds: 100_000,
        max_stalled_rounds: 100_000,
        ..MoveVShardConfig::default()
    };
    let mut progress = scenario.cluster.nodes[0].engine().subscribe();
    scenario.load(2, 1);
    let id = submit(&scenario, config, input(&scenario, 2_000)).await;
    let first = wait_for_event(&mut progress, id, Duration::from_secs(30), |e| match e {
        Event::Checkpoint { step, progress } if step == "CatchUp" => {
            Some(postcard::from_bytes::<CatchUpProgress>(progress).expect("progress"))
        }
        _ => None,
    })
    .await;
    let node = &scenario.cluster.nodes[0];
    node.engine().cancel(id, "test").await.expect("cancel");
    assert_eq!(first.round, 1);
    assert!(first.applied_up_to > 0, "{first:?}");
    let status = settle(node, id, Duration::from_secs(60)).await;
    assert!(matches!(status.phase, Phase::Aborted { .. }), "{status:?}");
    let events = events(&scenario, id).await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::StepStarted { step, .. } if step == "CutOver")),
        "cancelled during CatchUp"
    );
    let compensated: Vec<&str> = (events.iter())
        .filter_map(|e| match e {
            Event::Compensated { step } => Some(step.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(compensated, ["CatchUp", "BaseCopy", "Lock"]);
    let run = scenario.run(id, Expect::Aborted);
    let report = scenario.finish(&run).await;
    assert_eq!(report.reads_failed, 0, "the source served throughout");
    eprintln!("cancelled in CatchUp: {report:?}");
}

// Proves a pause budget that can never be met ends in a clean abort after
// a bounded number of CutOver attempts, each of which lifted its own
// fence: the source stayed the owner, the target holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn impossible_pause_budget_aborts_after_bounded_cut_overs() {
    let _serial = SERIAL.lock().await;
    let mut scenario = Scenario::start(11, 40, 20).await;
    let config = MoveVShardConfig {
        chunk_pairs: 16,
        ..MoveVShardConfig::default()
    };
    scenario.load(1, 1);
    let id = submit(&scenario, config, input(&scenario, 0)).await;
    let status = settle(&scenario.cluster.nodes[0], id, Duration::from_secs(90)).await;
    assert!(matches!(status.phase, Phase::Aborted { .. }), "{status:?}");
    let events = events(&scenario, id).await;
    let cut_overs: Vec<String> = (events.iter())
        .filter_map(|e| match e {
            Event::StepFailed { step, error, .. } if step == "CutOver" => Some(error.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        cut_overs.len(),
        5,
        "bounded CutOver attempts: {cut_overs:?}"
    );
    assert!(
        cut_overs.iter().all(|e| e.contains("budget")),
        "each failed on the budget: {cut_overs:?}"
    );
    let run = scenario.run(id, Expect::Aborted);
    let report = scenario.finish(&run).await;
    eprintln!("impossible budget: {report:?}");
}
