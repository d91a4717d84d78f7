//! The crash harness shared by `tests/crash_matrix.rs` and `tests/soak.rs`:
//! real `shardflow node` processes (the test build has failpoints, see
//! `steps/src/failpoint.rs`), a failpoint armed from the environment, the
//! victim killed exactly there, and every invariant of DESIGN §5 checked
//! afterwards with the acknowledged-writes oracle (`support::oracle`), a
//! node-certificate probe of the groups (`probe`), samplers that run during
//! the cell, and the journals audited offline once the nodes are dead.
//!
//! Every wait has a deadline; nothing sleeps as a way of waiting.

#![allow(dead_code)] // the matrix and the soak each use their part

pub mod probe;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardflow::node::client::{Client, ClientConfig};
use shardflow::node::data::VShardState;
use shardflow::steps::failpoint::{hit_file, release_file, ENV_ACTIONS, ENV_DIR};
use shardflow::store::{JournalOptions, RedbJournal};
use shardflow::workflow::{Phase, WorkflowId, WorkflowState};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::support::oracle::{keys_of, Oracle};
use crate::support::{sigkill, start_cluster_opts, NodeProcess, SpawnOpts};
use probe::Probe;

/// The vShard a MoveVShard cell moves (group 1 owns it at bootstrap) and
/// one of group 2 written throughout.
pub const MOVED: u16 = 100;
pub const OTHER: u16 = 900;
pub const SOURCE: u64 = 1;
pub const TARGET: u64 = 2;

/// The node flags of every crash cluster: a short ghost TTL so Cleanup
/// ends quickly, and a copy rate that cuts the moved vShard (600 keys,
/// about 45 kB) into three chunks of at most 20 kB.
pub fn node_flags() -> Vec<String> {
    ["--ghost-ttl-ms", "300", "--copy-rate", "20000"]
        .map(String::from)
        .to_vec()
}

/// How long a migration may take to settle after its kill.
pub const SETTLE_WITHIN: Duration = Duration::from_secs(180);

/// Runs blocking process work (spawn, wait, kill) off the async workers'
/// backs.
pub fn blocking<R>(work: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(work)
}

/// A cluster of real node processes in a temporary directory.
pub struct Cluster {
    /// The cluster's directory: certificates, `nN/` data, `nN.log` stderr.
    pub dir: PathBuf,
    /// Deletes `dir` on drop, unless the test is panicking.
    guard: Option<tempfile::TempDir>,
    pub certs: PathBuf,
    pub nodes: Vec<NodeProcess>,
    pub client: Client,
    pub probe: Probe,
    /// Where the failpoints write their markers.
    pub marks: PathBuf,
    /// Restarts per node, for the samplers (a node's incarnation).
    pub restarts: Arc<Mutex<BTreeMap<u64, u64>>>,
}

/// A failpoint action armed in the node processes.
#[derive(Clone, Debug)]
pub struct Arm {
    /// `name#N`.
    pub spec: String,
    /// `abort` or `hold`.
    pub action: &'static str,
}

/// How many times node `id` said it armed failpoints (its stderr log in
/// `dir`): the test build's `shardflow node` prints one line per start.
fn armed_lines(dir: &Path, id: u64) -> usize {
    let log = std::fs::read_to_string(dir.join(format!("n{id}.log"))).unwrap_or_default();
    log.lines()
        .filter(|line| line.starts_with("failpoints armed: "))
        .count()
}

/// The environment that arms `arms` (markers in `marks`).
fn arm_env(arms: &[Arm], marks: &Path) -> Vec<(String, String)> {
    if arms.is_empty() {
        return Vec::new();
    }
    let spec: Vec<String> = (arms.iter())
        .map(|a| format!("{}={}", a.spec, a.action))
        .collect();
    vec![
        (ENV_ACTIONS.to_string(), spec.join(";")),
        (ENV_DIR.to_string(), marks.display().to_string()),
    ]
}

impl Cluster {
    /// Closes the test's client and probe connections (the processes are
    /// left as they are).
    pub async fn close_clients(&self) {
        self.client.shutdown().await;
        self.probe.shutdown().await;
    }

    /// `count` nodes (ids 1..=count; groups on 1..=3), two data groups of
    /// three replicas; node 4, if any, is added to the cluster. `arm(id)`
    /// gives the failpoints armed in node `id`'s first start (restarts
    /// never re-arm).
    pub async fn start(count: u64, arm: impl Fn(u64) -> Vec<Arm>) -> Cluster {
        let guard = tempfile::Builder::new()
            .prefix("shardflow-crash-")
            .tempdir()
            .expect("tempdir");
        let dir = guard.path().to_path_buf();
        let marks = dir.join("marks");
        std::fs::create_dir_all(&marks).expect("marks dir");
        let ids: Vec<String> = (1..=count).map(|id| id.to_string()).collect();
        let opts = |id: u64| SpawnOpts {
            env: arm_env(&arm(id), &marks),
            stderr_log: Some(dir.join(format!("n{id}.log"))),
        };
        let (certs, nodes) =
            blocking(|| start_cluster_opts(&dir, &ids.join(","), count, 2, &node_flags(), opts));
        let seeds: Vec<String> = nodes.iter().take(3).map(|n| n.addr.clone()).collect();
        let client = Client::from_certs_dir(&certs, ClientConfig::new(seeds)).expect("client");
        client
            .wait_ready(Duration::from_secs(60))
            .await
            .expect("cluster ready");
        for node in nodes.iter().skip(3) {
            client
                .add_node(node.id, &node.addr)
                .await
                .expect("node added");
        }
        for node in &nodes {
            if !arm(node.id).is_empty() {
                assert_eq!(
                    armed_lines(&dir, node.id),
                    1,
                    "node {} did not arm its failpoints (is the binary built without the \
                     `failpoints` feature?): {}",
                    node.id,
                    std::fs::read_to_string(dir.join(format!("n{}.log", node.id)))
                        .unwrap_or_default()
                );
            }
        }
        let probe = Probe::new(&certs, nodes.iter().map(|n| n.addr.clone()).collect());
        Cluster {
            dir,
            guard: Some(guard),
            restarts: Arc::default(),
            certs,
            nodes,
            client,
            probe,
            marks,
        }
    }

    pub fn node_mut(&mut self, id: u64) -> &mut NodeProcess {
        (self.nodes.iter_mut())
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn addr(&self, id: u64) -> String {
        (self.nodes.iter())
            .find(|n| n.id == id)
            .map(|n| n.addr.clone())
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// SIGKILLs node `id` (reaps it).
    pub fn kill(&mut self, id: u64) {
        let node = self.node_mut(id);
        blocking(|| sigkill(node));
    }

    /// Starts node `id` again on its address and data, unarmed.
    pub fn restart(&mut self, id: u64) {
        self.restart_armed(id, &[]);
    }

    /// Starts node `id` again on its address and data with `arms`.
    pub fn restart_armed(&mut self, id: u64, arms: &[Arm]) {
        *self.restarts.lock().unwrap().entry(id).or_default() += 1;
        let opts = SpawnOpts {
            env: arm_env(arms, &self.marks),
            stderr_log: Some(self.dir.join(format!("n{id}.log"))),
        };
        let certs = self.certs.clone();
        let armed_before = armed_lines(&self.dir, id);
        let node = self.node_mut(id);
        let started = blocking(|| node.restart_opts(&certs, &opts));
        if !arms.is_empty() {
            assert_eq!(
                armed_lines(&self.dir, id),
                armed_before + 1,
                "node {id} did not arm its failpoints on restart"
            );
        }
        let node = self.node_mut(id);
        if !started {
            // An armed failpoint fired while it resumed its workflows:
            // a crash during recovery. It comes back unarmed.
            println!("note: n{id} died at its failpoint while restarting; restarted unarmed");
            let unarmed = SpawnOpts {
                env: Vec::new(),
                ..opts
            };
            assert!(
                blocking(|| node.restart_opts(&certs, &unarmed)),
                "node {id} did not start unarmed"
            );
        }
    }

    /// Before a killed node comes back: waits (at most 10 s) until groups
    /// 0, 1 and 2 each have a leader other than `victim`, so the victim
    /// rejoins as a follower. A group that elects none without the victim
    /// (it lost its quorum) is printed as a note and the victim comes back
    /// anyway. With `SHARDFLOW_FAST_RESTART=1` it does not wait: a leader
    /// restarted within the election timeout resumes as leader of its old
    /// term (openraft 0.9 "startup as leader"; its reads are what
    /// `leader_restarted_within_its_term_serves_no_stale_read` checks).
    pub async fn wait_failover(&self, victim: u64) {
        if std::env::var("SHARDFLOW_FAST_RESTART").is_ok_and(|v| v == "1") {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for group in [0, SOURCE, TARGET] {
            loop {
                match self.leader_of(group).await {
                    Some(leader) if leader != victim => break,
                    _ => {}
                }
                if Instant::now() >= deadline {
                    println!(
                        "note: group {group} elected no leader within 10 s of n{victim}'s death; \
                         restarting n{victim} anyway"
                    );
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// SIGKILLs every node still running.
    pub fn kill_all(&mut self) {
        for node in &mut self.nodes {
            if node.is_running() {
                blocking(|| sigkill(node));
            } else {
                node.wait_exit(Duration::ZERO);
            }
        }
    }

    /// A client that knows only node `id` (so a submission is driven there).
    pub fn client_of(&self, id: u64) -> Client {
        Client::from_certs_dir(&self.certs, ClientConfig::new(vec![self.addr(id)])).expect("client")
    }

    /// The leader of `group` now, as its leader says (none during an election).
    pub async fn leader_of(&self, group: u64) -> Option<u64> {
        self.probe.replication(group).await.map(|s| s.leader)
    }

    /// The leader of `group`, waiting (bounded) through an election.
    pub async fn wait_leader_of(&self, group: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(leader) = self.leader_of(group).await {
                return leader;
            }
            assert!(Instant::now() < deadline, "group {group} has no leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of node `id`'s stderr log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let path = self.dir.join(format!("n{id}.log"));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Cluster {
    /// A failing test keeps the directory (logs, data, journals) for a
    /// post-mortem and says where it is; so does any test with
    /// `SHARDFLOW_KEEP_CLUSTER=1` (to run `shardflow journal replay` on it).
    fn drop(&mut self) {
        let keep = std::env::var("SHARDFLOW_KEEP_CLUSTER").is_ok_and(|v| v == "1");
        if std::thread::panicking() || keep {
            if let Some(guard) = self.guard.take() {
                let kept = guard.keep();
                eprintln!("crash cluster kept: {}", kept.display());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Failpoints seen from the test.

/// Waits until failpoint `name` fired (its marker exists); false if
/// `settled()` says the workflow ended first, or at the deadline.
pub async fn wait_hit<F, Fut>(marks: &Path, name: &str, within: Duration, settled: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let marker = hit_file(marks, name);
    let deadline = Instant::now() + within;
    let mut next_look = Instant::now();
    loop {
        if marker.exists() {
            return true;
        }
        if Instant::now() >= next_look {
            if settled().await {
                // One more look: it may have fired just before.
                return marker.exists();
            }
            next_look = Instant::now() + Duration::from_millis(500);
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Lets a held failpoint go on.
pub fn release(marks: &Path, name: &str) {
    std::fs::write(release_file(marks, name), b"go").expect("release file");
}

// ---------------------------------------------------------------------------
// Workflows.

/// The workflow's state as the cluster reports it (`None`: no answer).
pub async fn shown(client: &Client, id: WorkflowId) -> Option<WorkflowState> {
    client.workflow_show(id).await.ok().map(|d| d.state)
}

/// Waits (bounded) for the workflow to settle; its last state.
pub async fn wait_settled(client: &Client, id: WorkflowId, within: Duration) -> WorkflowState {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        if let Some(state) = shown(client, id).await {
            if state.phase.is_settled() {
                return state;
            }
            last = Some(state);
        }
        assert!(
            Instant::now() < deadline,
            "{id} did not settle within {within:?} (invariant 7); last seen: {:?}",
            last.map(|s| (s.current_step().map(str::to_string), s.phase))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A short name for how a workflow ended.
pub fn outcome(phase: &Phase) -> String {
    match phase {
        Phase::Completed => "Completed".into(),
        Phase::Aborted { .. } => "Aborted".into(),
        Phase::Paused { reason, .. } => format!("Paused ({reason})"),
        other => other.label().into(),
    }
}

/// How long a workflow took and, per step, its attempts, duration and last
/// error: `12.3 s [Lock 1x 0.1 s, BaseCopy 2x 3.0 s (timed out), ...]`.
pub fn timeline(state: &WorkflowState) -> String {
    let secs = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1000.0;
    let steps: Vec<String> = (state.steps.iter())
        .filter(|step| step.attempts > 0 || step.compensation_attempts > 0)
        .map(|step| {
            let took = match (step.started_at_ms, step.ended_at_ms) {
                (Some(from), Some(to)) => format!(" {:.1} s", secs(from, to)),
                _ => String::new(),
            };
            let undo = match step.compensation_attempts {
                0 => String::new(),
                n => format!(" undone {n}x"),
            };
            let error = (step.last_failure.as_ref())
                .map(|f| format!(" ({})", f.error.chars().take(120).collect::<String>()))
                .unwrap_or_default();
            format!("{} {}x{took}{undo}{error}", step.name, step.attempts)
        })
        .collect();
    format!(
        "{:.1} s [{}]",
        secs(state.submitted_at_ms, state.updated_at_ms),
        steps.join(", ")
    )
}

// ---------------------------------------------------------------------------
// Samplers (invariants 2 and 3 while the cell runs).

/// A vShard in flight: `(vshard, from_group, to_group)`.
pub type Move = (u16, u64, u64);

/// Samples, until stopped: every node's routing epoch of the watched
/// vShards never goes back (invariant 3; see below for a node that
/// restarted), and no vShard in flight is `Owned` by both groups
/// (invariant 2). The owner check reads the *target* first, then the
/// source, each linearizably on its leader: a target that owned the vShard
/// at t1 means `Transfer` and the fence came before t1, so a source that
/// owns it at t2 > t1 is a real second owner.
///
/// A node's epoch never goes back, across its restarts too (group 0
/// applies durably, so a crash loses none of the routing it reported).
pub struct Samplers {
    stop: Arc<AtomicBool>,
    task: JoinHandle<(Vec<String>, Vec<String>)>,
    pub moves: Arc<Mutex<Vec<Move>>>,
    pub samples: Arc<std::sync::atomic::AtomicU64>,
}

impl Samplers {
    pub fn spawn(cluster: &Cluster, watched: Vec<u16>) -> Samplers {
        let (client, probe) = (cluster.client.clone(), cluster.probe.clone());
        let restarts = Arc::clone(&cluster.restarts);
        let stop = Arc::new(AtomicBool::new(false));
        let moves: Arc<Mutex<Vec<Move>>> = Arc::default();
        let samples = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = {
            let (stop, moves, samples) = (stop.clone(), moves.clone(), samples.clone());
            tokio::spawn(async move {
                let (mut violations, notes) = (Vec::new(), Vec::new());
                // (node, vShard) -> (incarnation, highest epoch seen in it)
                let mut epochs: BTreeMap<(u64, u16), (u64, u64)> = BTreeMap::new();
                while !stop.load(Ordering::SeqCst) {
                    for report in client.status_all().await {
                        let Ok(status) = &report.status else { continue };
                        let incarnation = restarts.lock().unwrap().get(&status.node).copied();
                        let incarnation = incarnation.unwrap_or(0);
                        for &vshard in &watched {
                            let routes = &status.routing.routes;
                            let Some(route) = routes.get(usize::from(vshard)) else {
                                continue;
                            };
                            let key = (status.node, vshard);
                            let (seen_in, seen) = *epochs.entry(key).or_insert((incarnation, 0));
                            if route.epoch < seen {
                                let across = match seen_in == incarnation {
                                    true => "",
                                    false => " across its restart",
                                };
                                violations.push(format!(
                                    "node {}: vShard {vshard}'s routing epoch went back from \
                                     {seen} to {}{across} (invariant 3)",
                                    status.node, route.epoch
                                ));
                            }
                            let highest = seen.max(route.epoch);
                            epochs.insert(key, (incarnation, highest));
                        }
                    }
                    let in_flight = moves.lock().unwrap().clone();
                    for (vshard, from, to) in in_flight {
                        let target = probe.vshard_status(to, vshard).await;
                        let source = probe.vshard_status(from, vshard).await;
                        let owned = |s: &Option<shardflow::node::rpc::VShardStatus>| matches!(s, Some(s) if matches!(s.state, Some(VShardState::Owned)));
                        if owned(&target) && owned(&source) {
                            violations.push(format!(
                                "vShard {vshard} Owned by group {to} (index {}) and then by group \
                                 {from} (index {}) (invariant 2)",
                                target.map_or(0, |s| s.applied_index),
                                source.map_or(0, |s| s.applied_index)
                            ));
                        }
                    }
                    samples.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (violations, notes)
            })
        };
        Samplers {
            stop,
            task,
            moves,
            samples,
        }
    }

    /// Stops sampling; the violations and the notes (deduplicated).
    pub async fn finish(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let (mut violations, mut notes) = self.task.await.expect("sampler");
        violations.dedup();
        notes.dedup();
        (violations, notes)
    }
}

// ---------------------------------------------------------------------------
// Checks after a cell.

/// Invariant 3 at rest: every node of `nodes` routes each of `expected`'s
/// vShards the same way, to the group given, at an epoch of at least the
/// one given (waits, bounded, for all to converge). Returns the epochs.
pub async fn check_routing_converged(
    client: &Client,
    nodes: usize,
    expected: &BTreeMap<u16, (u64, u64)>,
) -> BTreeMap<u16, u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reports = client.status_all().await;
        let tables: Vec<_> = (reports.iter())
            .filter_map(|r| r.status.as_ref().ok())
            .map(|s| (s.node, s.routing.routes.clone(), s.routing.groups.clone()))
            .collect();
        let same = tables
            .windows(2)
            .all(|w| w[0].1 == w[1].1 && w[0].2 == w[1].2);
        let right = tables.first().is_some_and(|(_, routes, _)| {
            expected.iter().all(|(&vshard, &(group, min_epoch))| {
                (routes.get(usize::from(vshard)))
                    .is_some_and(|route| route.group == group && route.epoch >= min_epoch)
            })
        });
        if tables.len() == nodes && same && right {
            let routes = &tables[0].1;
            return (expected.keys())
                .map(|&v| (v, routes[usize::from(v)].epoch))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "the nodes do not converge on the routing of {expected:?} (invariant 3): {:?}",
            tables
                .iter()
                .map(|(node, routes, groups)| (
                    node,
                    expected
                        .keys()
                        .map(|&v| (v, routes.get(usize::from(v)).map(|r| (r.group, r.epoch))))
                        .collect::<Vec<_>>(),
                    groups
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Invariant 5 (and 2 at rest): `vshard` is `Owned` by `owner` and the
/// other group holds no key and no state of it (waits, bounded, for the
/// reactors: cleanup after the ghost's TTL, the dropped incoming copy).
pub async fn check_single_owner(probe: &Probe, vshard: u16, owner: u64, other: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let kept = probe.vshard_status(owner, vshard).await;
        let gone = probe.digest(other, vshard).await;
        let owned = kept
            .as_ref()
            .is_some_and(|s| s.state == Some(VShardState::Owned));
        let empty = gone
            .as_ref()
            .is_some_and(|d| d.state.is_none() && d.digest.key_count == 0);
        if owned && empty {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "vShard {vshard}: group {owner} should own it and group {other} hold nothing \
             (invariant 5); owner's state {:?}, other's state {:?} with {:?} keys",
            kept.map(|s| s.state),
            gone.as_ref().map(|d| d.state.clone()),
            gone.map(|d| d.digest.key_count)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Invariant 7: the registry holds no live migration (the lock was
/// released; waits, bounded, for the reactors).
pub async fn check_no_live_migration(probe: &Probe) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let live: Option<Vec<String>> = probe.metadata().await.map(|m| {
            m.live_migrations()
                .map(|(id, record)| format!("{id}: {}", record.describe()))
                .collect()
        });
        if live.as_ref().is_some_and(Vec::is_empty) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "migrations still live in the registry (invariant 7): {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Invariant 7 (writable): the oracle's writers acknowledge `more` writes.
pub async fn check_writes_flow(oracle: &Oracle, more: u64) {
    let start = oracle.writes.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while oracle.writes.load(Ordering::Relaxed) < start + more {
        assert!(
            Instant::now() < deadline,
            "writes stopped: {} acknowledged in 60 s (invariant 7)",
            oracle.writes.load(Ordering::Relaxed) - start
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Invariant 4, on dead nodes: every node's journal verifies (hash chains,
/// replay rules: `shardflow::audit::verify`, what `shardflow journal
/// verify` runs), and each workflow's state replayed offline from its
/// driver's journal file equals the state the cluster reported live.
pub fn check_journals(cluster: &Cluster, live: &[WorkflowState]) {
    for node in &cluster.nodes {
        if let Err(error) = shardflow::audit::verify(&node.data) {
            panic!(
                "node {}'s journal does not verify (invariant 4): {error}",
                node.id
            );
        }
    }
    for state in live {
        let driver = (cluster.nodes.iter())
            .find(|n| n.id == state.id.node)
            .expect("the driver is a node of the cluster");
        check_journal_cli(&driver.data, state);
        let options = JournalOptions {
            verify_on_open: false,
            ..JournalOptions::default()
        };
        let journal = RedbJournal::open_with(driver.data.join("journal.redb"), options)
            .unwrap_or_else(|e| panic!("node {}'s journal: {e}", driver.id));
        let replayed = journal
            .verified(state.id)
            .unwrap_or_else(|e| panic!("replay of {} on node {}: {e}", state.id, driver.id));
        assert!(
            replayed.state == *state,
            "{}: the journal's replay differs from the state reported live (invariant 4):\n\
             replayed {:?}\nlive {:?}",
            state.id,
            replayed.state,
            state
        );
    }
}

/// What an operator runs on a dead node's data directory: `shardflow
/// journal verify` passes and `shardflow journal replay --json` shows the
/// workflow in the phase the cluster reported live.
pub fn check_journal_cli(data: &Path, state: &WorkflowState) {
    let data_arg = data.to_str().expect("utf-8 path");
    let verify = crate::support::cli(&["journal", "verify", "--data", data_arg]);
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && stdout.starts_with("ok: "),
        "shardflow journal verify --data {data_arg}: {}; stdout {stdout}; stderr {}",
        verify.status,
        String::from_utf8_lossy(&verify.stderr)
    );
    let replay = crate::support::cli(&["journal", "replay", "--data", data_arg, "--json"]);
    assert!(
        replay.status.success(),
        "shardflow journal replay --data {data_arg} --json: {}; stderr {}",
        replay.status,
        String::from_utf8_lossy(&replay.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&replay.stdout).expect("replay json");
    let id = state.id.to_string();
    let workflow = (json["workflows"].as_array())
        .and_then(|all| all.iter().find(|w| w["id"] == id.as_str()))
        .unwrap_or_else(|| panic!("journal replay of {data_arg} lists no {id}: {json}"));
    assert_eq!(
        workflow["phase"].as_str(),
        Some(state.phase.label()),
        "journal replay's phase of {id} (invariant 4)"
    );
}

// ---------------------------------------------------------------------------
// Data and writers.

/// The data and the live load of a cell.
pub struct Load {
    pub oracle: Arc<Oracle>,
    pub tasks: Vec<JoinHandle<()>>,
    pub vshards: Vec<u16>,
}

impl Load {
    /// Loads `(vshard, keys)` (64-byte values), then writes (one writer
    /// per vShard over its first 100 keys) and reads (the first vShard's)
    /// until stopped.
    pub async fn start(client: &Client, vshards: &[(u16, usize)]) -> Load {
        let oracle = Oracle::new();
        let mut tasks = Vec::new();
        for (i, &(vshard, count)) in vshards.iter().enumerate() {
            let keys = keys_of(&format!("k{vshard}"), vshard, count);
            oracle.load(client, &keys, 64).await;
            let hot = keys[..keys.len().min(100)].to_vec();
            if i == 0 {
                tasks.push(oracle.spawn_reader(client.clone(), hot.clone()));
            }
            tasks.push(oracle.spawn_writer(client.clone(), hot));
        }
        Load {
            oracle,
            tasks,
            vshards: vshards.iter().map(|(v, _)| *v).collect(),
        }
    }

    /// Stops the load and checks invariants 1, 5 (scans) and 6 (the
    /// readers' checks, re-raised here if one failed).
    pub async fn finish_and_check(self, client: &Client) {
        self.oracle.stop();
        for task in self.tasks {
            if let Err(error) = task.await {
                if error.is_panic() {
                    std::panic::resume_unwind(error.into_panic());
                }
            }
        }
        self.oracle.check_all_readable(client).await;
        for vshard in &self.vshards {
            self.oracle.check_scan(client, *vshard).await;
        }
    }
}

/// The members of every group, as the metadata says.
pub async fn members(probe: &Probe) -> BTreeMap<u64, BTreeSet<u64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(metadata) = probe.metadata().await {
            return metadata.groups;
        }
        assert!(Instant::now() < deadline, "no metadata");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After a replica move: every node's metadata names `expected` as the
/// group's members, the group's leader has exactly them as voters and no
/// learner, each of them runs the group and a removed node stopped its
/// replica (waits, bounded).
pub async fn check_members(cluster: &Cluster, group: u64, expected: &BTreeSet<u64>, from: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let want: Vec<u64> = expected.iter().copied().collect();
    loop {
        let reports = cluster.client.status_all().await;
        let views: Vec<_> = (reports.iter())
            .filter_map(|r| r.status.as_ref().ok())
            .collect();
        let agreed = views.len() == cluster.nodes.len()
            && views
                .iter()
                .all(|s| s.routing.groups.get(&group) == Some(&want));
        let runs = |node: u64| {
            (views.iter())
                .find(|s| s.node == node)
                .is_some_and(|s| s.groups.iter().any(|g| g.group == group))
        };
        let replication = cluster.probe.replication(group).await;
        let raft_right = replication.as_ref().is_some_and(|r| {
            r.voters.iter().copied().collect::<BTreeSet<_>>() == *expected
                && r.learners.is_empty()
                && !r.joint
        });
        let removed_stopped = expected.contains(&from) || !runs(from);
        if agreed && raft_right && expected.iter().all(|n| runs(*n)) && removed_stopped {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "group {group} never settled on members {want:?}: metadata {:?}, raft {:?}, \
             running on {:?}",
            views
                .iter()
                .map(|s| (s.node, s.routing.groups.get(&group).cloned()))
                .collect::<Vec<_>>(),
            replication.map(|r| (r.voters, r.learners, r.joint)),
            (1..=cluster.nodes.len() as u64)
                .filter(|n| runs(*n))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
