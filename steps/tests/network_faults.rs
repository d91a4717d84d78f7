//! MoveVShard under network faults on an in-process cluster whose nodes
//! reach each other only through UDP relays (`faults/`), real QUIC
//! underneath, every run checked by the DESIGN §5 oracle (`oracle/mod.rs`:
//! inv. 1–7, with the driving node as the engine):
//! - the driver's QUIC connection to the source leader dropped in the
//!   middle of BaseCopy: the copy resumes from its checkpointed cursor;
//! - the target group unreachable for longer than CatchUp's retry budget:
//!   the migration compensates and the target holds nothing once it is
//!   reachable again;
//! - the source leader partitioned away while the vShard moves, then
//!   healed: it never acknowledges a write for the vShard it no longer
//!   owns, and answers a stale routing epoch with the new one.

// The in-process cluster harness the node crate's migration tests use.
#[path = "../../node/tests/support/mod.rs"]
mod support;

mod faults;
mod oracle;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faults::{finish, relayed_scenario};
use oracle::{settle, wait_for_event, Expect, Scenario, SERIAL};
use shardflow_node::rpc::{
    ClientRequest, ClientResponse, NodeRequest, NodeRequestV1, NodeResponse, NodeResponseV1,
};
use shardflow_steps::move_vshard::base_copy::CopyCursor;
use shardflow_steps::move_vshard::catch_up::CatchUpProgress;
use shardflow_steps::move_vshard::{register_with, MoveVShardConfig};
use shardflow_steps::{MoveVShard, MoveVShardInput};
use shardflow_workflow::{Envelope, Event, Phase, WorkflowId};
use tokio::time::Instant;

/// Key and value bytes of one pair the oracle writes (`key-NNNNNN`).
const PAIR_BYTES: u64 = 10 + oracle::VALUE_LEN as u64;

/// A lease long enough to outlive every cut here: the lease is not what
/// these tests exercise (a driver cut off from the metadata leader cannot
/// renew it).
const LEASE_MS: u64 = 60_000;

fn input(scenario: &Scenario) -> MoveVShardInput {
    MoveVShardInput {
        vshard: scenario.vshard,
        to_group: 2,
        pause_budget_ms: 2_000,
        lease_ms: LEASE_MS,
    }
}

/// Registers MoveVShard with `config` on node `driver` and submits the move.
async fn submit(scenario: &Scenario, driver: u64, config: MoveVShardConfig) -> WorkflowId {
    let node = scenario.cluster.node(driver);
    register_with(node.engine(), node.migration_api(), config);
    node.engine()
        .submit::<MoveVShard>(input(scenario))
        .await
        .expect("submit")
}

/// The index of node `id` in the cluster's list (the oracle's `via`).
fn index_of(scenario: &Scenario, id: u64) -> usize {
    (scenario.cluster.nodes.iter())
        .position(|n| n.id() == id)
        .expect("node")
}

/// The journal of `id` on node `driver`.
async fn journal(scenario: &Scenario, driver: u64, id: WorkflowId) -> Vec<Envelope> {
    let engine = scenario.cluster.node(driver).engine();
    engine.events(id).await.expect("events")
}

/// The BaseCopy cursors of a journal, in order.
fn copy_cursors(envelopes: &[Envelope]) -> Vec<CopyCursor> {
    (envelopes.iter())
        .filter_map(|envelope| match envelope.body() {
            Event::Checkpoint { step, progress } if step == "BaseCopy" => {
                Some(CopyCursor::decode(progress).expect("cursor"))
            }
            _ => None,
        })
        .collect()
}

/// The errors of `step`'s failed forward attempts.
fn failures(envelopes: &[Envelope], of: &str) -> Vec<String> {
    (envelopes.iter())
        .filter_map(|envelope| match envelope.body() {
            Event::StepFailed { step, error, .. } if step == of => Some(error.clone()),
            _ => None,
        })
        .collect()
}

/// Waits (with a deadline) until `condition` holds.
async fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Proves a QUIC connection dropped in the middle of BaseCopy does not
// restart the copy: the driver's connection to the source group's leader
// is cut (its datagrams dropped both ways at the leader's relay, the
// leader's own connection to the driver untouched) until both ends drop
// it for idleness — seen as the driver dialing a new connection through
// the still-cut relay — then healed. The copy fails while cut, a new
// connection is handshaken after the heal, the attempts after it resume
// from the checkpointed cursor (the chunk count continues, never restarts),
// the bytes copied stay under 1.2x the vShard's size, and the migration
// completes with every invariant holding.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_connection_mid_copy_resumes_from_the_cursor() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (mut scenario, net) = relayed_scenario(3, 17, 80, 20).await;
    let size = scenario.keys.len() as u64 * PAIR_BYTES;
    let source_leader = scenario.cluster.leader_of(1).await;
    let target_leader = scenario.cluster.leader_of(2).await;
    let metadata_leader = scenario.cluster.leader_of(0).await;
    // The driver: not the source's leader (its export calls must cross the
    // network), leading as few groups as possible (its own Raft traffic to
    // the source leader crosses the same cut).
    let driver = (1..=3u64)
        .filter(|n| *n != source_leader)
        .min_by_key(|n| u8::from(*n == target_leader) + u8::from(*n == metadata_leader))
        .expect("a driver");
    // ~2 s of copy in chunks of 5 pairs (370 bytes).
    let config = MoveVShardConfig {
        chunk_pairs: 5,
        copy_bytes_per_sec: Some(3_000),
        call_timeout: Duration::from_secs(3),
        ghost_ttl: Some(oracle::fast().ghost_ttl),
        ..MoveVShardConfig::default()
    };
    let mut progress = scenario.cluster.node(driver).engine().subscribe();
    scenario.load(1, index_of(&scenario, driver));
    let id = submit(&scenario, driver, config).await;
    wait_for_event(&mut progress, id, Duration::from_secs(30), |e| match e {
        Event::Checkpoint { step, progress } if step == "BaseCopy" => {
            let cursor = CopyCursor::decode(progress).expect("cursor");
            (cursor.chunks >= 2).then_some(())
        }
        _ => None,
    })
    .await;
    drop(progress);

    // Cut the driver's connection to the source leader until both ends
    // dropped it (the transport's idle timeout, 10 s): the driver then
    // dials a new one, whose Initial packets the relay sees (and drops).
    let relay = net.relay(source_leader);
    let driver_addr = net.direct(driver);
    let at_cut = relay.stats(driver_addr);
    let cut_at = Instant::now();
    net.cut_dial(driver, source_leader);
    wait_until(
        "the driver dials a new connection to the source leader",
        Duration::from_secs(30),
        || relay.stats(driver_addr).initials_seen > at_cut.initials_seen,
    )
    .await;
    let cut_for = cut_at.elapsed();
    net.heal_dial(driver, source_leader);
    let at_heal = relay.stats(driver_addr);
    assert!(
        at_heal.dropped > at_cut.dropped,
        "the cut dropped datagrams"
    );

    let node = scenario.cluster.node(driver).clone();
    let status = settle(&node, id, Duration::from_secs(60)).await;
    assert_eq!(status.phase, Phase::Completed, "{status:?}");
    let after = relay.stats(driver_addr);
    assert!(
        after.initials_forwarded > at_heal.initials_forwarded,
        "a new connection was handshaken after the heal: {after:?}"
    );

    let envelopes = journal(&scenario, driver, id).await;
    let failed = failures(&envelopes, "BaseCopy");
    assert!(!failed.is_empty(), "the copy failed while cut");
    let cursors = copy_cursors(&envelopes);
    let (first, rest) = cursors.split_first().expect("cursors");
    assert_eq!(first.chunks, 0, "the size checkpoint comes first");
    assert_eq!(first.total_bytes, size);
    // Every chunk checkpoint continues the previous one: no attempt
    // restarted the copy from the beginning.
    for (before, next) in cursors.iter().zip(rest) {
        assert_eq!(next.chunks, before.chunks + 1, "{before:?} -> {next:?}");
        assert!(next.bytes > before.bytes, "{before:?} -> {next:?}");
        assert_eq!(next.total_bytes, size, "the totals are kept");
    }
    let last = cursors.last().expect("cursors");
    assert_eq!(last.keys, scenario.keys.len() as u64);
    // Bytes copied over every attempt: each checkpoint adds what it copied
    // since the previous one (from 0 again if an attempt restarted).
    let mut copied = 0u64;
    let mut previous = 0u64;
    for cursor in &cursors {
        copied += cursor.bytes.checked_sub(previous).unwrap_or(cursor.bytes);
        previous = cursor.bytes;
    }
    assert!(
        copied * 10 < size * 12,
        "copied {copied} bytes for a vShard of {size}"
    );
    let attempts = (envelopes.iter())
        .filter(|e| matches!(e.body(), Event::StepStarted { step, .. } if step == "BaseCopy"))
        .count();
    assert!(attempts >= 2, "a new attempt resumed the copy: {attempts}");

    let run = scenario.run(id, Expect::Completed);
    let report = finish(scenario, net, driver, &run).await;
    eprintln!(
        "dropped connection: driver {driver}, source leader {source_leader}, cut {cut_for:?}, \
         {} BaseCopy failures ({:?}), {attempts} attempts, copied {copied} of {size} bytes, \
         {report:?}, {:?} in all",
        failed.len(),
        failed.first(),
        started.elapsed()
    );
}

// Proves a target group unreachable for longer than CatchUp's retry budget
// ends in a clean abort: group 2 lives on node 2 alone (one replica per
// group), node 2 is isolated while CatchUp runs, CatchUp fails its 5
// attempts, compensation begins and its first attempt fails too (the
// target is still unreachable); after the heal the compensation finishes,
// the migration is Aborted, the target holds nothing of the vShard, the
// source still owns and serves it, and every invariant holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_target_compensates_and_leaves_nothing() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (mut scenario, net) = relayed_scenario(1, 19, 60, 20).await;
    let (source, target, driver) = (1u64, 2u64, 3u64);
    assert_eq!(scenario.cluster.leader_of(1).await, source);
    assert_eq!(scenario.cluster.leader_of(2).await, target);
    // One change per round and no lag low enough keep CatchUp busy.
    let config = MoveVShardConfig {
        chunk_pairs: 10,
        changes_per_round: 1,
        lag_threshold: 0,
        max_rounds: 100_000,
        max_stalled_rounds: 100_000,
        call_timeout: Duration::from_secs(2),
        ..MoveVShardConfig::default()
    };
    let mut progress = scenario.cluster.node(driver).engine().subscribe();
    scenario.load(1, index_of(&scenario, driver));
    let id = submit(&scenario, driver, config).await;
    wait_for_event(&mut progress, id, Duration::from_secs(30), |e| match e {
        Event::Checkpoint { step, progress } if step == "CatchUp" => {
            let round: CatchUpProgress = postcard::from_bytes(progress).expect("progress");
            (round.round >= 1).then_some(())
        }
        _ => None,
    })
    .await;

    net.isolate(target);
    let cut_at = Instant::now();
    // Compensation begins once CatchUp's budget is spent; heal once its
    // first attempt failed on the unreachable target.
    wait_for_event(&mut progress, id, Duration::from_secs(40), |e| {
        matches!(e, Event::CompensationFailed { .. }).then_some(())
    })
    .await;
    let cut_for = cut_at.elapsed();
    net.heal_all();
    drop(progress);

    let node = scenario.cluster.node(driver).clone();
    let status = settle(&node, id, Duration::from_secs(60)).await;
    assert!(matches!(status.phase, Phase::Aborted { .. }), "{status:?}");
    let envelopes = journal(&scenario, driver, id).await;
    let bodies: Vec<&Event> = envelopes.iter().map(|e| e.body()).collect();
    let catch_up_failed = failures(&envelopes, "CatchUp");
    assert_eq!(
        catch_up_failed.len(),
        5,
        "CatchUp's retry budget spent: {catch_up_failed:?}"
    );
    let began = (bodies.iter())
        .position(|e| matches!(e, Event::CompensationStarted { .. }))
        .expect("compensation began");
    let last_failure = (bodies.iter())
        .rposition(|e| matches!(e, Event::StepFailed { .. }))
        .expect("failures");
    assert!(last_failure < began, "compensation after the last failure");
    assert!(
        !bodies
            .iter()
            .any(|e| matches!(e, Event::StepStarted { step, .. } if step == "CutOver")),
        "never reached CutOver"
    );
    let compensated: Vec<&str> = (bodies.iter())
        .filter_map(|e| match e {
            Event::Compensated { step } => Some(step.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(compensated, ["CatchUp", "BaseCopy", "Lock"]);
    let compensation_attempts = (bodies.iter())
        .filter(|e| matches!(e, Event::CompensationStepStarted { .. }))
        .count();
    let first_compensation_error = bodies.iter().find_map(|e| match e {
        Event::CompensationFailed { error, .. } => Some(error.clone()),
        _ => None,
    });

    let run = scenario.run(id, Expect::Aborted);
    let report = finish(scenario, net, driver, &run).await;
    eprintln!(
        "unreachable target: cut {cut_for:?}; CatchUp failed with {:?}; compensation first \
         failed with {first_compensation_error:?}, {compensation_attempts} compensation \
         attempts; {report:?}, {:?} in all",
        catch_up_failed.first(),
        started.elapsed()
    );
}

/// What a partitioned node answered to the writes sent straight to it.
#[derive(Debug, Default)]
struct ZombieLog {
    /// Answers, by kind.
    done: u64,
    stale: Vec<u64>,
    redirects: u64,
    retries: u64,
    rejected: u64,
    /// No answer within the attempt's time (a leader without a quorum).
    unanswered: u64,
}

/// Sends `Put`s of `keys` at routing epoch `epoch` straight to `addr` (the
/// node's own socket, as a client on its side of a partition would) until
/// `stop`, logging every answer.
fn spawn_zombie_writer(
    scenario: &Scenario,
    addr: std::net::SocketAddr,
    keys: Vec<Vec<u8>>,
    epoch: u64,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<ZombieLog>>,
) -> tokio::task::JoinHandle<()> {
    let admin = scenario.cluster.admin.clone();
    tokio::spawn(async move {
        for (n, key) in keys.iter().cycle().enumerate() {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let put = ClientRequest::Put {
                key: key.clone(),
                value: format!("zombie-{n}").into_bytes(),
                epoch,
            };
            let request = NodeRequest::V1(NodeRequestV1::Client(put));
            let sent = admin.call_typed::<_, NodeResponse>(addr, &request);
            let answer = tokio::time::timeout(Duration::from_secs(1), sent).await;
            {
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                match answer {
                    Ok(Ok(NodeResponse::V1(NodeResponseV1::Client(answer)))) => match answer {
                        ClientResponse::Done => log.done += 1,
                        ClientResponse::StaleRouting { epoch, .. } => log.stale.push(epoch),
                        ClientResponse::Redirect { .. } => log.redirects += 1,
                        ClientResponse::Retry { .. } | ClientResponse::Fenced { .. } => {
                            log.retries += 1
                        }
                        _ => log.rejected += 1,
                    },
                    Ok(Ok(_)) => log.rejected += 1,
                    Ok(Err(_)) | Err(_) => log.unanswered += 1,
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

// Proves a partitioned, then healed, source leader never accepts a write
// for a vShard it no longer owns: group 1's leader is isolated once the
// copy began; the rest of the cluster elects new leaders and completes the
// move (the new routing epoch commits without it). Writes at the old
// epoch sent straight to the isolated node — a client on its side of the
// partition — are never acknowledged, while it still believes the old
// route; after the heal it learns the new epoch and answers those writes
// `StaleRouting` with it, still never `Done`. None of them is readable
// anywhere (the oracle's full scan would name any key it never wrote), and
// every invariant holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healed_source_leader_never_accepts_writes_it_no_longer_owns() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (mut scenario, net) = relayed_scenario(3, 21, 60, 20).await;
    let old_leader = scenario.cluster.leader_of(1).await;
    let driver = (1..=3u64).find(|n| *n != old_leader).expect("a driver");
    let old_epoch = scenario.route_before.epoch;
    // Keys of the moving vShard the oracle never writes.
    let zombie_keys: Vec<Vec<u8>> =
        support::keys_of(scenario.vshard, scenario.keys.len() + 4).split_off(scenario.keys.len());
    let config = MoveVShardConfig {
        chunk_pairs: 8,
        copy_bytes_per_sec: Some(20_000),
        call_timeout: Duration::from_millis(1_500),
        ghost_ttl: Some(oracle::fast().ghost_ttl),
        ..MoveVShardConfig::default()
    };
    let mut progress = scenario.cluster.node(driver).engine().subscribe();
    scenario.load(1, index_of(&scenario, driver));
    let id = submit(&scenario, driver, config).await;
    wait_for_event(&mut progress, id, Duration::from_secs(30), |e| match e {
        Event::Checkpoint { step, progress } if step == "BaseCopy" => {
            let cursor = CopyCursor::decode(progress).expect("cursor");
            (cursor.chunks >= 1).then_some(())
        }
        _ => None,
    })
    .await;
    drop(progress);

    net.isolate(old_leader);
    let cut_at = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let during = Arc::new(Mutex::new(ZombieLog::default()));
    let zombie = spawn_zombie_writer(
        &scenario,
        net.direct(old_leader),
        zombie_keys.clone(),
        old_epoch,
        Arc::clone(&stop),
        Arc::clone(&during),
    );
    let node = scenario.cluster.node(driver).clone();
    let status = settle(&node, id, Duration::from_secs(60)).await;
    assert_eq!(status.phase, Phase::Completed, "{status:?}");
    // The isolated node never heard of the move.
    let isolated = scenario.cluster.node(old_leader).clone();
    let stale_route = isolated.metadata().await.expect("metadata");
    assert_eq!(
        stale_route.route(scenario.vshard),
        Some(scenario.route_before),
        "the partitioned node still has the old route"
    );
    stop.store(true, Ordering::SeqCst);
    zombie.await.expect("zombie writer");
    let during = std::mem::take(&mut *during.lock().unwrap_or_else(|p| p.into_inner()));
    let cut_for = cut_at.elapsed();

    net.heal_all();
    let api = node.migration_api();
    let metadata = api
        .metadata(Instant::now() + Duration::from_secs(10))
        .await
        .expect("metadata");
    let new_route = metadata.route(scenario.vshard).expect("route");
    assert_eq!(new_route.group, 2);
    assert!(new_route.epoch > old_epoch);
    // Once healed, the old leader learns the new epoch...
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let local = isolated.metadata().await.expect("metadata");
        if local.route(scenario.vshard) == Some(new_route) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {old_leader} never learned the new route"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and answers a write at the old epoch with the new one.
    let after = Arc::new(Mutex::new(ZombieLog::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let zombie = spawn_zombie_writer(
        &scenario,
        net.direct(old_leader),
        zombie_keys.clone(),
        old_epoch,
        Arc::clone(&stop),
        Arc::clone(&after),
    );
    wait_until(
        "the healed node answers StaleRouting with the new epoch",
        Duration::from_secs(20),
        || {
            let log = after.lock().unwrap_or_else(|p| p.into_inner());
            log.stale.iter().filter(|e| **e == new_route.epoch).count() >= zombie_keys.len()
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    zombie.await.expect("zombie writer");
    let after = std::mem::take(&mut *after.lock().unwrap_or_else(|p| p.into_inner()));

    assert_eq!(during.done, 0, "acknowledged while partitioned: {during:?}");
    assert!(
        during.unanswered + during.redirects + during.retries > 0,
        "writes were sent while partitioned: {during:?}"
    );
    assert_eq!(after.done, 0, "acknowledged after the heal: {after:?}");
    assert!(
        after.stale.iter().all(|e| *e == new_route.epoch),
        "{after:?}"
    );
    for key in &zombie_keys {
        let value = scenario.oracle.client.get(key).await.expect("read");
        assert_eq!(value, None, "a zombie write landed");
    }

    let run = scenario.run(id, Expect::Completed);
    let report = finish(scenario, net, driver, &run).await;
    eprintln!(
        "partitioned source leader {old_leader} (driver {driver}): cut {cut_for:?}, epoch \
         {old_epoch} -> {}; while partitioned {during:?}; after the heal {after:?}; {report:?}, \
         {:?} in all",
        new_route.epoch,
        started.elapsed()
    );
}
