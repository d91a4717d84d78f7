//! **The crash matrix** (issue 5): for each failpoint × the node that dies,
//! a fresh cluster of real `shardflow node` processes runs one migration
//! under live writes, the victim dies exactly at the failpoint, comes back,
//! and every invariant of DESIGN §5 is checked (`crash/mod.rs`):
//!
//! - the victim **driver** aborts itself at the failpoint (`abort`);
//! - the **source / target group's leader** (MoveVShard) or the **group's
//!   leader / the node receiving the replica** (MoveReplica): the driver
//!   holds at the failpoint (`hold`), the test looks up who that is at
//!   that instant, SIGKILLs it, lets the driver go on and restarts the
//!   victim. When the role falls on the driver itself it is SIGKILLed
//!   while holding (the line says `=driver`).
//!
//! Then: the migration settles (Completed or Aborted, never Paused;
//! invariant 7), writes flow, every acknowledged write reads back and scans
//! are exact (1, 5), no stale read was seen (6), no two owners were
//! sampled (2), routing epochs never went back and all nodes converge (3),
//! the vShard lives in one group only or the group has exactly its new
//! members, no migration stays live, and once every node is SIGKILLed their
//! journals verify and replay to the state reported live (4).
//!
//! `cargo test --test crash_matrix` runs the CI subset (each failpoint
//! once, the victims rotating); `SHARDFLOW_FULL_MATRIX=1 cargo test --test
//! crash_matrix -- --nocapture` runs every cell. Each prints one line per
//! cell and a total.

mod crash;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crash::*;
use shardflow::workflow::{Phase, WorkflowId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    VShard,
    Replica,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    /// The node driving the migration.
    Driver,
    /// MoveVShard: the source group's leader; MoveReplica: the group's leader.
    SourceLeader,
    /// MoveVShard: the target group's leader; MoveReplica: the node the
    /// replica moves to.
    Target,
}

const VICTIMS: [Victim; 3] = [Victim::Driver, Victim::SourceLeader, Victim::Target];

/// The failpoints of the matrix: `(kind, name, hit)`. Each class of the
/// issue has its point; the names are in `steps/src/failpoint.rs`.
const POINTS: &[(Kind, &str, u64)] = &[
    // before / after a journal append
    (
        Kind::VShard,
        "workflow.append.before:StepStarted:CutOver",
        1,
    ),
    (Kind::VShard, "workflow.append.after:Checkpoint:BaseCopy", 2),
    // before / after a Raft proposal of a step
    (Kind::VShard, "vshard.propose.before:CutOver/fence", 1),
    (Kind::VShard, "vshard.propose.after:CutOver/activate", 1),
    // between copy chunks
    (Kind::VShard, "vshard.copy.between-chunks", 1),
    // between fence and drain
    (Kind::VShard, "vshard.cutover.fenced", 1),
    // between the metadata commit (Transfer) and its journal event
    (Kind::VShard, "vshard.cutover.transferred", 1),
    // MoveReplica: membership changes, the metadata proposal, the journal
    (Kind::Replica, "replica.membership.after:add_learner", 1),
    (
        Kind::Replica,
        "replica.membership.before:change_membership",
        1,
    ),
    (
        Kind::Replica,
        "workflow.append.after:PointOfNoReturn:Promote",
        1,
    ),
    (Kind::Replica, "replica.propose.before:Record", 1),
];

fn victim_name(kind: Kind, victim: Victim) -> &'static str {
    match (kind, victim) {
        (_, Victim::Driver) => "driver",
        (Kind::VShard, Victim::SourceLeader) => "source-leader",
        (Kind::VShard, Victim::Target) => "target-leader",
        (Kind::Replica, Victim::SourceLeader) => "group-leader",
        (Kind::Replica, Victim::Target) => "new-replica",
    }
}

/// One cell's result.
struct Cell {
    kind: Kind,
    point: &'static str,
    hit: u64,
    victim: Victim,
}

struct Report {
    victim: String,
    outcome: String,
    /// What the samplers noted without failing (see `crash::Samplers`).
    notes: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_matrix() {
    let full = std::env::var("SHARDFLOW_FULL_MATRIX").is_ok_and(|v| v == "1");
    let mut cells = Vec::new();
    for (i, &(kind, point, hit)) in POINTS.iter().enumerate() {
        if full {
            for victim in VICTIMS {
                cells.push(Cell {
                    kind,
                    point,
                    hit,
                    victim,
                });
            }
            continue;
        }
        // The CI subset: each failpoint once, the victim rotating.
        let victim = VICTIMS[i % VICTIMS.len()];
        cells.push(Cell {
            kind,
            point,
            hit,
            victim,
        });
    }
    if let Ok(only) = std::env::var("SHARDFLOW_MATRIX_ONLY") {
        cells.retain(|c| c.point.contains(&only));
    }
    println!(
        "crash matrix: {} cells ({})",
        cells.len(),
        if full { "full" } else { "CI subset" }
    );
    let started = std::time::Instant::now();
    let mut failed = Vec::new();
    let mut passed = 0;
    for cell in cells {
        let cell_started = std::time::Instant::now();
        let what = format!(
            "{:<7} {:<48} {:<14}",
            match cell.kind {
                Kind::VShard => "vshard",
                Kind::Replica => "replica",
            },
            format!("{}#{}", cell.point, cell.hit),
            victim_name(cell.kind, cell.victim)
        );
        let run = tokio::spawn(run_cell(cell.kind, cell.point, cell.hit, cell.victim)).await;
        let secs = cell_started.elapsed().as_secs_f64();
        match run {
            Ok(report) => {
                passed += 1;
                let notes = match report.notes.as_slice() {
                    [] => String::new(),
                    [first, ..] => format!(" note: {first}"),
                };
                println!(
                    "cell {what} {:<10} {:<12} {secs:6.1} s{notes}",
                    report.victim, report.outcome
                );
            }
            Err(error) => {
                let message = match error.try_into_panic() {
                    Ok(panic) => panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default(),
                    Err(error) => error.to_string(),
                };
                println!("cell {what} FAILED     {secs:6.1} s: {message}");
                failed.push(format!("{what}: {message}"));
            }
        }
    }
    println!(
        "crash matrix: {passed} passed, {} failed; total {:.1} s",
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "failed cells:\n{}", failed.join("\n"));
}

async fn run_cell(kind: Kind, point: &'static str, hit: u64, victim: Victim) -> Report {
    let action = if victim == Victim::Driver {
        "abort"
    } else {
        "hold"
    };
    let arm = Arm {
        spec: format!("{point}#{hit}"),
        action,
    };
    let nodes = match kind {
        Kind::VShard => 3,
        Kind::Replica => 4,
    };
    let mut cluster = Cluster::start(nodes, |id| {
        // Only nodes 1..=3 drive; node 4 never arms.
        if id <= 3 {
            vec![arm.clone()]
        } else {
            Vec::new()
        }
    })
    .await;
    let result = match kind {
        Kind::VShard => vshard_cell(&mut cluster, point, victim).await,
        Kind::Replica => replica_cell(&mut cluster, point, victim).await,
    };
    cluster.close_clients().await;
    result
}

/// A driver among nodes 1..=3 that is none of `busy` if one is free.
fn pick_driver(busy: &[u64]) -> u64 {
    (1..=3).find(|id| !busy.contains(id)).unwrap_or(1)
}

/// What a cell submits: the migration, and through which node.
#[derive(Clone, Copy, Debug)]
enum Submit {
    /// MoveVShard of `MOVED` to `TARGET`, driven by `driver`.
    VShard { driver: u64 },
    /// MoveReplica of group `SOURCE`'s replica on `from` to node 4.
    Replica { driver: u64, from: u64 },
}

/// How many times a cell submits its migration when one settles (aborted
/// by the load: a lease or a pause budget missed on a busy machine) before
/// reaching its failpoint. The failpoint stays armed across submissions.
const SUBMISSIONS: u32 = 3;

/// Submits the migration and waits until it stands at the failpoint
/// (resubmitting one that aborted before it, at most `SUBMISSIONS` times:
/// a cell that cannot reach its point fails, it never passes silently);
/// kills the victim there and restarts it. The workflow and the victim's
/// description.
async fn kill_at_failpoint(
    cluster: &mut Cluster,
    submit: Submit,
    point: &str,
    victim: Victim,
    kind: Kind,
    group: u64,
    target: u64,
) -> (WorkflowId, String) {
    let client = cluster.client.clone();
    let mut attempt = 0;
    let id = loop {
        attempt += 1;
        let id = match submit {
            Submit::VShard { driver } => {
                let submitter = cluster.client_of(driver);
                let id = submitter
                    .migrate_vshard(u32::from(MOVED), TARGET, None)
                    .await;
                submitter.shutdown().await;
                id.expect("MoveVShard submitted")
            }
            Submit::Replica { driver, from } => {
                let submitter = cluster.client_of(driver);
                let id = submitter.migrate_replica(SOURCE, from, 4).await;
                submitter.shutdown().await;
                id.expect("MoveReplica submitted")
            }
        };
        let hit = wait_hit(&cluster.marks, point, SETTLE_WITHIN, || async {
            shown(&client, id)
                .await
                .is_some_and(|s| s.phase.is_settled())
        })
        .await;
        if hit {
            break id;
        }
        let state = shown(&client, id).await;
        let phase = state.as_ref().map(|s| s.phase.clone());
        let aborted = matches!(phase, Some(Phase::Aborted { .. }));
        assert!(
            aborted && attempt < SUBMISSIONS,
            "failpoint {point} never fired: {id} (submission {attempt} of {SUBMISSIONS}) \
             ended {phase:?} without reaching it{}",
            state
                .map(|s| format!("; {}", timeline(&s)))
                .unwrap_or_default()
        );
        println!(
            "note: {id} aborted before failpoint {point} ({}); submitting again",
            state.map(|s| timeline(&s)).unwrap_or_default()
        );
    };
    let driver = id.node;
    if victim == Victim::Driver {
        let node = cluster.node_mut(driver);
        let exit = blocking(|| node.wait_exit(Duration::from_secs(30)));
        assert!(
            exit.is_some_and(|e| !e.success()),
            "node {driver} did not abort at {point}: {exit:?}"
        );
        cluster.wait_failover(driver).await;
        cluster.restart(driver);
        return (id, format!("n{driver}"));
    }
    let who = match (kind, victim) {
        (Kind::Replica, Victim::Target) => target,
        (_, Victim::SourceLeader) => cluster.wait_leader_of(group).await,
        _ => cluster.wait_leader_of(target).await,
    };
    cluster.kill(who);
    if who != driver {
        release(&cluster.marks, point);
    }
    cluster.wait_failover(who).await;
    cluster.restart(who);
    if who == driver {
        (id, format!("n{who}=driver"))
    } else {
        (id, format!("n{who}"))
    }
}

async fn vshard_cell(cluster: &mut Cluster, point: &str, victim: Victim) -> Report {
    let client = cluster.client.clone();
    let load = Load::start(&client, &[(MOVED, 600), (OTHER, 50)]).await;
    let epoch_before = client.routing().await.expect("routing").routes[usize::from(MOVED)].epoch;
    let samplers = Samplers::spawn(cluster, vec![MOVED, OTHER]);
    samplers.moves.lock().unwrap().push((MOVED, SOURCE, TARGET));

    let leaders = [
        cluster.wait_leader_of(SOURCE).await,
        cluster.wait_leader_of(TARGET).await,
    ];
    let submit = Submit::VShard {
        driver: pick_driver(&leaders),
    };
    let (id, who) =
        kill_at_failpoint(cluster, submit, point, victim, Kind::VShard, SOURCE, TARGET).await;
    let state = wait_settled(&client, id, SETTLE_WITHIN).await;
    let owner = match &state.phase {
        Phase::Completed => TARGET,
        Phase::Aborted { .. } => SOURCE,
        other => panic!("{id} settled {other:?}, not Completed or Aborted (invariant 7)"),
    };
    check_writes_flow(&load.oracle, 50).await;
    let (violations, notes) = samplers.finish().await;
    assert!(violations.is_empty(), "{violations:#?}");
    load.finish_and_check(&client).await;
    let min_epoch = if owner == TARGET {
        epoch_before + 1
    } else {
        epoch_before
    };
    let expected = BTreeMap::from([(MOVED, (owner, min_epoch)), (OTHER, (TARGET, 1))]);
    check_routing_converged(&client, 3, &expected).await;
    let other = if owner == TARGET { SOURCE } else { TARGET };
    check_single_owner(&cluster.probe, MOVED, owner, other).await;
    check_no_live_migration(&cluster.probe).await;
    let live = wait_settled(&client, id, SETTLE_WITHIN).await;
    cluster.kill_all();
    check_journals(cluster, &[live]);
    Report {
        victim: who,
        outcome: outcome(&state.phase),
        notes,
    }
}

async fn replica_cell(cluster: &mut Cluster, point: &str, victim: Victim) -> Report {
    let client = cluster.client.clone();
    let load = Load::start(&client, &[(MOVED, 300), (OTHER, 50)]).await;
    let routes_before = client.routing().await.expect("routing").routes;
    let samplers = Samplers::spawn(cluster, vec![MOVED, OTHER]);

    // Move group 1's replica from a follower to node 4, driven by the
    // third node (none of the group's leader, the follower, node 4).
    let leader = cluster.wait_leader_of(SOURCE).await;
    let from = pick_driver(&[leader]);
    let driver = pick_driver(&[leader, from]);
    let before: BTreeSet<u64> = members(&cluster.probe).await[&SOURCE].clone();
    let after: BTreeSet<u64> = (before.iter().copied())
        .filter(|n| *n != from)
        .chain([4])
        .collect();
    let submit = Submit::Replica { driver, from };
    let (id, who) =
        kill_at_failpoint(cluster, submit, point, victim, Kind::Replica, SOURCE, 4).await;
    let state = wait_settled(&client, id, SETTLE_WITHIN).await;
    let expected = match &state.phase {
        Phase::Completed => after,
        Phase::Aborted { .. } => before,
        other => panic!("{id} settled {other:?}, not Completed or Aborted (invariant 7)"),
    };
    check_writes_flow(&load.oracle, 50).await;
    let (violations, notes) = samplers.finish().await;
    assert!(violations.is_empty(), "{violations:#?}");
    load.finish_and_check(&client).await;
    check_members(cluster, SOURCE, &expected, from).await;
    let routes_after = client.routing().await.expect("routing").routes;
    assert_eq!(
        routes_after, routes_before,
        "a replica move changed routing"
    );
    let live = wait_settled(&client, id, SETTLE_WITHIN).await;
    cluster.kill_all();
    check_journals(cluster, &[live]);
    Report {
        victim: who,
        outcome: outcome(&state.phase),
        notes,
    }
}

// ---------------------------------------------------------------------------
// Focused tests of the node bugs the matrix found.

/// Bug E: a node outside group 0 (node 4, holding only a replica moved to
/// it) that restarts must run that replica again. Proves it by taking the
/// group's third member down afterwards: writes to the group then need
/// node 4's vote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_outside_group0_runs_its_moved_replica() {
    let mut cluster = Cluster::start(4, |_| Vec::new()).await;
    let client = cluster.client.clone();
    let load = Load::start(&client, &[(MOVED, 100)]).await;
    let leader = cluster.wait_leader_of(SOURCE).await;
    let from = pick_driver(&[leader]);
    let before: BTreeSet<u64> = members(&cluster.probe).await[&SOURCE].clone();
    let after: BTreeSet<u64> = (before.iter().copied())
        .filter(|n| *n != from)
        .chain([4])
        .collect();
    let id = client
        .migrate_replica(SOURCE, from, 4)
        .await
        .expect("submitted");
    let state = wait_settled(&client, id, SETTLE_WITHIN).await;
    assert_eq!(state.phase, Phase::Completed, "{}", timeline(&state));
    check_members(&cluster, SOURCE, &after, from).await;

    cluster.kill(4);
    cluster.restart(4);
    check_members(&cluster, SOURCE, &after, from).await;
    // The group's other member (neither its leader nor node 4) goes down:
    // group SOURCE keeps a quorum only if node 4 runs its replica.
    let leader = cluster.wait_leader_of(SOURCE).await;
    let other = *after
        .iter()
        .find(|n| **n != leader && **n != 4)
        .expect("a third member");
    cluster.kill(other);
    check_writes_flow(&load.oracle, 30).await;
    cluster.restart(other);
    load.finish_and_check(&client).await;
    cluster.kill_all();
    check_journals(&cluster, &[state]);
    cluster.close_clients().await;
}

/// Bug C: a group's leader SIGKILLed and restarted at once (within the
/// election timeout, so openraft restarts it as the leader of its old
/// term, with the committed id it restored) must serve no read older than
/// a write it acknowledged before the crash (invariant 6). The oracle's
/// reader checks every read; bug D rides along: no node's routing epoch
/// goes back across the restarts (the samplers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_restarted_within_its_term_serves_no_stale_read() {
    let mut cluster = Cluster::start(3, |_| Vec::new()).await;
    let client = cluster.client.clone();
    let load = Load::start(&client, &[(MOVED, 100), (OTHER, 50)]).await;
    let samplers = Samplers::spawn(&cluster, vec![MOVED, OTHER]);
    for group in [SOURCE, METADATA, SOURCE] {
        let leader = cluster.wait_leader_of(group).await;
        let reads = load.oracle.reads.load(std::sync::atomic::Ordering::Relaxed);
        cluster.kill(leader);
        cluster.restart(leader);
        check_writes_flow(&load.oracle, 30).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while load.oracle.reads.load(std::sync::atomic::Ordering::Relaxed) < reads + 30 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "reads stopped after n{leader}'s restart"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (violations, _) = samplers.finish().await;
    assert!(violations.is_empty(), "{violations:#?}");
    load.finish_and_check(&client).await;
    cluster.kill_all();
    cluster.close_clients().await;
}

/// A node outside group 0 whose last replica moved away holds no group
/// to find a peer through: it must still follow the routing table, and
/// after a restart too (it keeps its peers' addresses). Found by the soak:
/// node 4 reported a vShard's old owner forever (invariant 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_without_replicas_follows_routing_across_restart() {
    let mut cluster = Cluster::start(4, |_| Vec::new()).await;
    let client = cluster.client.clone();
    let leader = cluster.wait_leader_of(SOURCE).await;
    let from = pick_driver(&[leader]);
    for (from, to) in [(from, 4), (4, from)] {
        let id = client
            .migrate_replica(SOURCE, from, to)
            .await
            .expect("submitted");
        let state = wait_settled(&client, id, SETTLE_WITHIN).await;
        assert_eq!(state.phase, Phase::Completed, "{}", timeline(&state));
    }
    let members: BTreeSet<u64> = [1, 2, 3].into();
    check_members(&cluster, SOURCE, &members, 4).await;
    let epoch = client.routing().await.expect("routing").routes[usize::from(MOVED)].epoch;
    let moved = BTreeMap::from([(MOVED, (TARGET, epoch + 1))]);
    let id = client
        .migrate_vshard(u32::from(MOVED), TARGET, None)
        .await
        .expect("submitted");
    let state = wait_settled(&client, id, SETTLE_WITHIN).await;
    assert_eq!(state.phase, Phase::Completed, "{}", timeline(&state));
    check_routing_converged(&client, 4, &moved).await;
    cluster.kill(4);
    cluster.restart(4);
    check_routing_converged(&client, 4, &moved).await;
    cluster.kill_all();
    cluster.close_clients().await;
}

/// Group 0.
const METADATA: u64 = 0;
