//! The invariant oracle of the MoveVShard tests: DESIGN §5, checked on an
//! in-process cluster (`support::Cluster`) while a migration runs and after
//! it ended.
//!
//! While the migration runs:
//! - **writers** (real [`Client`]s, routing cache and retries included) put
//!   to the keys of the moving vShard and of another one; every value names
//!   its key and a per-key sequence number, so a read can tell which write
//!   it sees. The oracle records, per key, the last acknowledged and the
//!   highest attempted sequence (a write that failed may or may not have
//!   applied);
//! - **readers** check that no read returns a value older than one
//!   acknowledged before the read began, nor one never written (inv. 6, and
//!   inv. 1's "applied twice": a re-applied old write reads as a regression);
//! - an **owner sampler** reads the vShard's state on the target, then on
//!   the source, and flags both `Owned` (inv. 2: states only move forward,
//!   so target-then-source never shows both by accident);
//! - a **metadata sampler** reads every node's metadata replica and flags
//!   an epoch that went back or an owner change without a new epoch
//!   (inv. 3).
//!
//! After it ended ([`Oracle::check_all`]): every acknowledged write is
//! readable with its last value (inv. 1); a full scan returns every key
//! exactly once, nothing missing, nothing extra (inv. 5); every node's
//! routing table converges to the metadata group's, epochs only grew
//! (inv. 3); the journal replays to the reported status (inv. 4); after a
//! completion the source holds nothing of the vShard, after an abort the
//! target holds nothing (inv. 5); the workflow ended, its lock is released
//! and the vShard takes writes again (inv. 7).

#![allow(dead_code)] // each test file uses its own part of the oracle

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use shardflow_node::client::{Client, ClientConfig};
use shardflow_node::data::{VShardDigester, VShardState};
use shardflow_node::metadata::{MigrationPhase, Route};
use shardflow_node::migration::MigrationApi;
use shardflow_node::server::Node;
use shardflow_node::vshard::vshard_of;
use shardflow_workflow::{replay, Event, Phase, WorkflowId, WorkflowStatus};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::support::Cluster;

/// Bytes of every value the oracle writes (sequence, key, padding).
pub const VALUE_LEN: usize = 64;

/// What the oracle knows of one key.
#[derive(Clone, Debug, Default)]
struct KeyLog {
    /// The last acknowledged sequence (writes to a key are sequential).
    acked: u64,
    /// The highest sequence sent (acked or not).
    attempted: u64,
    /// Sequences whose write failed: each may or may not have applied, at
    /// any time (a pending write may take effect late).
    failed: Vec<u64>,
}

#[derive(Default)]
struct State {
    keys: BTreeMap<Vec<u8>, KeyLog>,
    violations: Vec<String>,
    writes_acked: u64,
    writes_failed: u64,
    reads_ok: u64,
    reads_failed: u64,
    owner_samples: u64,
    metadata_samples: u64,
    /// Node -> the routing table it last showed.
    routes: BTreeMap<u64, Vec<Route>>,
}

/// How a migration ended, as the oracle checks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Completed,
    Aborted,
}

/// The migration under test.
#[derive(Clone, Debug)]
pub struct Run {
    pub id: WorkflowId,
    pub vshard: u16,
    pub from: u64,
    pub to: u64,
    /// The vShard's route before the migration.
    pub route_before: Route,
    /// The keys of the moving vShard the oracle wrote.
    pub keys: Vec<Vec<u8>>,
    pub expect: Expect,
}

/// Counts and measures, for the report.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub writes_acked: u64,
    pub writes_failed: u64,
    pub reads_ok: u64,
    pub reads_failed: u64,
    pub owner_samples: u64,
    pub metadata_samples: u64,
    pub write_pause_us: Option<u64>,
}

pub struct Oracle {
    pub client: Client,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

/// A value of `key` at `seq`: fixed length.
pub fn value_of(key: &[u8], seq: u64) -> Vec<u8> {
    let mut value = format!("{seq:010}#").into_bytes();
    value.extend_from_slice(key);
    value.resize(VALUE_LEN.max(value.len()), b'.');
    value
}

/// The sequence a value carries, if it is a value of `key`.
fn seq_of(key: &[u8], value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let (seq, rest) = text.split_once('#')?;
    let named = rest.trim_end_matches('.');
    (named.as_bytes() == key).then(|| seq.parse().ok())?
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

impl Oracle {
    /// A client on every node of `cluster` (the admin certificate).
    pub fn new(cluster: &Cluster) -> Oracle {
        let seeds = (cluster.nodes.iter())
            .map(|node| node.local_addr().to_string())
            .collect();
        let certs = cluster.dir.path().join("certs");
        let client = Client::from_certs_dir(&certs, ClientConfig::new(seeds)).expect("client");
        Oracle {
            client,
            state: Arc::new(Mutex::new(State::default())),
            stop: Arc::new(AtomicBool::new(false)),
            tasks: Vec::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Writes sequence 1 to every key (acknowledged before returning).
    pub async fn preload(&self, keys: &[Vec<u8>]) {
        let mut writes = tokio::task::JoinSet::new();
        for part in keys.chunks(keys.len().div_ceil(8).max(1)) {
            let (client, state, part) =
                (self.client.clone(), Arc::clone(&self.state), part.to_vec());
            writes.spawn(async move {
                for key in part {
                    write(&client, &state, &key).await.expect("preload write");
                }
            });
        }
        while let Some(done) = writes.join_next().await {
            done.expect("preload task");
        }
    }

    /// Writes `key` once more through the oracle (its result).
    pub async fn write_once(&self, key: &[u8]) -> Result<(), String> {
        write(&self.client, &self.state, key).await
    }

    /// A writer putting to `keys` in turn until stopped.
    pub fn spawn_writer(&mut self, keys: Vec<Vec<u8>>) {
        let (client, state, stop) = (
            self.client.clone(),
            Arc::clone(&self.state),
            Arc::clone(&self.stop),
        );
        self.tasks.push(tokio::spawn(async move {
            for key in keys.iter().cycle() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                // A failure is counted; the next write retries the key.
                let _ = write(&client, &state, key).await;
            }
        }));
    }

    /// A reader checking inv. 6 on `keys` in turn until stopped.
    pub fn spawn_reader(&mut self, keys: Vec<Vec<u8>>) {
        let (client, state, stop) = (
            self.client.clone(),
            Arc::clone(&self.state),
            Arc::clone(&self.stop),
        );
        self.tasks.push(tokio::spawn(async move {
            for key in keys.iter().cycle() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let before = lock(&state).keys.get(key).map_or(0, |log| log.acked);
                let read = client.get(key).await;
                let mut state = lock(&state);
                match read {
                    Ok(value) => {
                        state.reads_ok += 1;
                        let mut now = state.keys.get(key).cloned().unwrap_or_default();
                        now.acked = before;
                        if let Some(problem) = judge(key, value.as_deref(), &now) {
                            state
                                .violations
                                .push(format!("inv. 6 (read during the run): {problem}"));
                        }
                    }
                    Err(_) => state.reads_failed += 1,
                }
            }
        }));
    }

    /// Samples `vshard`'s state on `to` then on `from` until stopped; both
    /// `Owned` is a second owner (inv. 2).
    pub fn spawn_owner_sampler(&mut self, api: MigrationApi, vshard: u16, from: u64, to: u64) {
        let (state, stop) = (Arc::clone(&self.state), Arc::clone(&self.stop));
        self.tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let deadline = Instant::now() + Duration::from_secs(2);
                let target = api.vshard_status(to, vshard, deadline).await;
                let source = api.vshard_status(from, vshard, deadline).await;
                if let (Ok(target), Ok(source)) = (target, source) {
                    let mut state = lock(&state);
                    state.owner_samples += 1;
                    let owned = Some(VShardState::Owned);
                    if target.state == owned && source.state == owned {
                        state.violations.push(format!(
                            "inv. 2: vShard {vshard} Owned by group {to} (index {}) and then by group {from} (index {})",
                            target.applied_index, source.applied_index
                        ));
                    }
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }));
    }

    /// Samples every node's metadata replica until stopped: a vShard's
    /// epoch never goes back, and its owner never changes without a new
    /// epoch (inv. 3). A node that is down is skipped.
    pub fn spawn_metadata_sampler(&mut self, nodes: Vec<Node>) {
        let (state, stop) = (Arc::clone(&self.state), Arc::clone(&self.stop));
        self.tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                for node in &nodes {
                    if let Ok(metadata) = node.metadata().await {
                        observe_routes(&mut lock(&state), node.id(), &metadata.routing);
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }));
    }

    /// Acknowledged writes so far.
    pub fn writes_acked(&self) -> u64 {
        self.state().writes_acked
    }

    /// Stops the writers, readers and samplers and waits for them.
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks.drain(..) {
            task.await.expect("an oracle task panicked");
        }
    }

    /// Every DESIGN §5 check after the migration `run` ended; `engine_node`
    /// drives it. Panics with every violation found.
    pub async fn check_all(&mut self, cluster: &Cluster, engine_node: &Node, run: &Run) -> Report {
        self.stop().await;
        let api = engine_node.migration_api();

        // inv. 7: the workflow ended the expected way.
        let engine = engine_node.engine();
        let status = engine.status(run.id).await.expect("status");
        match run.expect {
            Expect::Completed => assert_eq!(status.phase, Phase::Completed, "{status:?}"),
            Expect::Aborted => {
                assert!(matches!(status.phase, Phase::Aborted { .. }), "{status:?}")
            }
        }

        // inv. 4: the journal replays to the reported status.
        let envelopes = engine.events(run.id).await.expect("events");
        let replayed = replay(run.id, &envelopes).expect("the journal replays");
        assert_eq!(
            WorkflowStatus::from(&replayed),
            status,
            "inv. 4: the journal replays to the reported status"
        );
        let events: Vec<Event> = envelopes.iter().map(|e| e.body().clone()).collect();
        let crossed = events
            .iter()
            .any(|e| matches!(e, Event::PointOfNoReturn { .. }));
        assert_eq!(
            crossed,
            run.expect == Expect::Completed,
            "PointOfNoReturn journaled iff completed"
        );
        let write_pause_us = events.iter().rev().find_map(|e| match e {
            Event::Metric { name, value, .. } if name == "write_pause_us" => Some(*value),
            _ => None,
        });
        if run.expect == Expect::Completed {
            assert!(
                write_pause_us.is_some_and(|p| p > 0),
                "the write pause is journaled"
            );
        } else {
            assert!(events
                .iter()
                .any(|e| matches!(e, Event::Compensated { .. })));
        }

        // Violations seen while it ran (inv. 2, 3, 6).
        let violations = self.state().violations.clone();
        assert!(
            violations.is_empty(),
            "{} violations:\n{}",
            violations.len(),
            violations.join("\n")
        );

        // inv. 1: every acknowledged write readable with its last value.
        let keys = self.state().keys.clone();
        for (key, log) in &keys {
            let value = self.client.get(key).await.expect("final read");
            if let Some(problem) = judge(key, value.as_deref(), log) {
                panic!("inv. 1: {problem}");
            }
        }

        // inv. 5: a full scan returns every key once, nothing more.
        let scan = self.client.scan_all().await.expect("scan all");
        let mut seen: BTreeMap<&[u8], u32> = BTreeMap::new();
        for (key, value) in &scan {
            *seen.entry(key).or_default() += 1;
            let log = keys.get(key).unwrap_or_else(|| {
                panic!("inv. 5: the scan returned {}, never written", show(key))
            });
            if let Some(problem) = judge(key, Some(value), log) {
                panic!("inv. 5 (scan): {problem}");
            }
        }
        let twice: Vec<String> = (seen.iter())
            .filter(|(_, n)| **n > 1)
            .map(|(k, n)| format!("{} x{n}", show(k)))
            .collect();
        assert!(twice.is_empty(), "inv. 5: the scan double-counts {twice:?}");
        let missing: Vec<String> = (keys.keys())
            .filter(|k| !seen.contains_key(k.as_slice()))
            .map(|k| show(k))
            .collect();
        assert!(missing.is_empty(), "inv. 5: the scan misses {missing:?}");
        let count = self.client.count_all().await.expect("count all");
        assert_eq!(count, keys.len() as u64, "inv. 5: count_all");

        // inv. 3: every node converges to the metadata group's table, and
        // no epoch went back since the samples.
        let metadata = api.metadata(soon()).await.expect("metadata");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut differ = Vec::new();
            for node in &cluster.nodes {
                let local = node.metadata().await.expect("node metadata");
                observe_routes(&mut self.state(), node.id(), &local.routing);
                if local.routing != metadata.routing {
                    differ.push(node.id());
                }
            }
            if differ.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "inv. 3: nodes {differ:?} do not converge to the routing table"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let violations = self.state().violations.clone();
        assert!(violations.is_empty(), "{}", violations.join("\n"));

        // The outcome on both groups (inv. 5), the decision in the registry.
        let route = metadata.route(run.vshard).expect("route");
        let record = metadata
            .migration(&run.id.to_string())
            .expect("the migration's record");
        let moving = run.keys.len() as u64;
        // The owner's running digest (kept at apply) against the pairs the
        // scan read from it, after the writers stopped.
        let mut scanned = VShardDigester::new();
        for (key, value) in scan.iter().filter(|(k, _)| vshard_of(k) == run.vshard) {
            scanned.update(key, value);
        }
        let scanned = scanned.finish();
        match run.expect {
            Expect::Completed => {
                assert_eq!(route.group, run.to, "the target owns the vShard");
                assert!(
                    route.epoch > run.route_before.epoch,
                    "inv. 3: the epoch grew"
                );
                assert_eq!(
                    record.phase,
                    MigrationPhase::Transferred { epoch: route.epoch }
                );
                let source = api
                    .digest(run.from, run.vshard, soon())
                    .await
                    .expect("digest");
                assert_eq!(source.state, None, "inv. 5: the source dropped the ghost");
                assert_eq!(
                    source.digest.key_count, 0,
                    "inv. 5: the source holds nothing"
                );
                let target = api
                    .digest(run.to, run.vshard, soon())
                    .await
                    .expect("digest");
                assert_eq!(target.state, Some(VShardState::Owned));
                assert_eq!(target.digest.key_count, moving);
                assert_eq!(target.digest, scanned, "the target's running digest");
            }
            Expect::Aborted => {
                assert_eq!(route, run.route_before, "the source still owns the vShard");
                assert_eq!(record.phase, MigrationPhase::Aborted);
                let target = api
                    .digest(run.to, run.vshard, soon())
                    .await
                    .expect("digest");
                assert_eq!(target.state, None, "inv. 5: the target holds nothing");
                assert_eq!(
                    target.digest.key_count, 0,
                    "inv. 5: the target holds nothing"
                );
                let source = api
                    .digest(run.from, run.vshard, soon())
                    .await
                    .expect("digest");
                assert_eq!(source.state, Some(VShardState::Owned));
                assert_eq!(source.digest.key_count, moving);
                assert_eq!(source.digest, scanned, "the source's running digest");
            }
        }

        // inv. 7: the lock is released (by the workflow or the reactors).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let metadata = api.metadata(soon()).await.expect("metadata");
            let record = metadata.migration(&run.id.to_string()).expect("record");
            if record.finished.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "inv. 7: the lock is still held: {record:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // ...and the vShard takes writes again.
        let key = &run.keys[0];
        self.write_once(key)
            .await
            .expect("inv. 7: the vShard takes writes");
        let log = self.state().keys[key].clone();
        let value = self.client.get(key).await.expect("read back");
        assert_eq!(
            value,
            Some(value_of(key, log.acked)),
            "inv. 7: the write reads back"
        );

        let state = self.state();
        Report {
            writes_acked: state.writes_acked,
            writes_failed: state.writes_failed,
            reads_ok: state.reads_ok,
            reads_failed: state.reads_failed,
            owner_samples: state.owner_samples,
            metadata_samples: state.metadata_samples,
            write_pause_us,
        }
    }

    pub async fn shutdown(&self) {
        self.client.shutdown().await;
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// One write of `key` at its next sequence, recorded.
async fn write(client: &Client, state: &Mutex<State>, key: &[u8]) -> Result<(), String> {
    let seq = {
        let mut state = lock(state);
        let log = state.keys.entry(key.to_vec()).or_default();
        log.attempted += 1;
        log.attempted
    };
    let result = client.put(key, &value_of(key, seq)).await;
    let mut state = lock(state);
    match result {
        Ok(()) => {
            state.writes_acked += 1;
            let log = state.keys.get_mut(key).expect("logged");
            log.acked = log.acked.max(seq);
            Ok(())
        }
        Err(error) => {
            state.writes_failed += 1;
            state.keys.get_mut(key).expect("logged").failed.push(seq);
            Err(error.to_string())
        }
    }
}

/// Whether a read of `key` returning `value` is allowed: `log.acked` was
/// acknowledged before the read began, at most `log.attempted` was sent,
/// and a failed write may show up at any time.
fn judge(key: &[u8], value: Option<&[u8]>, log: &KeyLog) -> Option<String> {
    let key_name = show(key);
    let acked = log.acked;
    let Some(value) = value else {
        return (acked > 0)
            .then(|| format!("{key_name} read absent after seq {acked} was acknowledged"));
    };
    let Some(seq) = seq_of(key, value) else {
        return Some(format!(
            "{key_name} read a value not written to it: {:?}",
            show(value)
        ));
    };
    if log.failed.contains(&seq) {
        return None;
    }
    if seq < acked {
        return Some(format!(
            "{key_name} read seq {seq}, older than the acknowledged {acked}"
        ));
    }
    if seq > log.attempted {
        return Some(format!(
            "{key_name} read seq {seq}, never written (highest sent {})",
            log.attempted
        ));
    }
    if seq != acked && acked == log.attempted {
        return Some(format!(
            "{key_name} read seq {seq}, not the last acknowledged {acked}"
        ));
    }
    None
}

fn observe_routes(state: &mut State, node: u64, routing: &[Route]) {
    state.metadata_samples += 1;
    if routing.is_empty() {
        return;
    }
    if let Some(before) = state.routes.get(&node) {
        let mut problems = Vec::new();
        for (vshard, (old, new)) in before.iter().zip(routing).enumerate() {
            if new.epoch < old.epoch {
                problems.push(format!(
                    "inv. 3: node {node}: vShard {vshard}'s epoch went back from {} to {}",
                    old.epoch, new.epoch
                ));
            } else if new.epoch == old.epoch && new.group != old.group {
                problems.push(format!(
                    "inv. 3: node {node}: vShard {vshard} moved from group {} to {} at epoch {}",
                    old.group, new.group, new.epoch
                ));
            }
        }
        state.violations.extend(problems);
    }
    state.routes.insert(node, routing.to_vec());
}

// ---------------------------------------------------------------------------
// The scenario the tests share: a cluster, the vShards, the load.

/// Tests of one binary run one at a time: each starts a 3-node cluster on
/// 2 shared cores, and the pause and rate figures they journal should not
/// measure the neighbours.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Reactor timings for tests: a fast reactor and a short ghost TTL.
pub fn fast() -> shardflow_node::server::MigrationTimings {
    shardflow_node::server::MigrationTimings {
        reactor_interval: Duration::from_millis(50),
        ghost_ttl: Duration::from_millis(1_000),
        cleanup_batch: 16,
        batches_per_pass: 4,
        ..shardflow_node::server::MigrationTimings::default()
    }
}

/// A cluster of 3 nodes and 2 data groups, a vShard of group 1 to move
/// (`vshard`, with `keys`) and another of group 1 that stays (`other`,
/// with `other_keys`), both preloaded through the oracle.
pub struct Scenario {
    pub cluster: Cluster,
    pub oracle: Oracle,
    pub vshard: u16,
    pub other: u16,
    pub keys: Vec<Vec<u8>>,
    pub other_keys: Vec<Vec<u8>>,
    pub route_before: Route,
}

impl Scenario {
    /// Starts the cluster and preloads `keys` keys in the moving vShard
    /// (the `pick`-th of group 1) and `other_keys` in another one.
    pub async fn start(pick: usize, keys: usize, other_keys: usize) -> Scenario {
        Scenario::start_with(fast(), pick, keys, other_keys).await
    }

    /// [`Scenario::start`] with the nodes' reactor timings.
    pub async fn start_with(
        timings: shardflow_node::server::MigrationTimings,
        pick: usize,
        keys: usize,
        other_keys: usize,
    ) -> Scenario {
        let cluster = crate::support::cluster(2, &[1, 2, 3], timings).await;
        let api = cluster.nodes[0].migration_api();
        let metadata = api.metadata(soon()).await.expect("metadata");
        let of_group_1 = metadata.vshards_of_group(1);
        let vshard = of_group_1[pick];
        let other = of_group_1[pick + 1];
        let route_before = metadata.route(vshard).expect("route");
        let oracle = Oracle::new(&cluster);
        let keys = crate::support::keys_of(vshard, keys);
        let other_keys = crate::support::keys_of(other, other_keys);
        oracle.preload(&keys).await;
        oracle.preload(&other_keys).await;
        Scenario {
            cluster,
            oracle,
            vshard,
            other,
            keys,
            other_keys,
            route_before,
        }
    }

    /// Starts the load and the samplers: `writers` writers on the moving
    /// vShard (disjoint keys), one on the other vShard, a reader on each,
    /// the owner sampler (through node `via`'s API) and the metadata
    /// sampler on every node.
    pub fn load(&mut self, writers: usize, via: usize) {
        let nodes = self.cluster.nodes.clone();
        self.load_sampling(writers, via, nodes);
    }

    /// [`Scenario::load`], the metadata sampler reading only `nodes` (a
    /// test that restarts a node leaves it out: a sampler's handle would
    /// keep the stopped node's files open).
    pub fn load_sampling(&mut self, writers: usize, via: usize, nodes: Vec<Node>) {
        let writers = writers.max(1);
        for part in 0..writers {
            let keys: Vec<Vec<u8>> = (self.keys.iter())
                .skip(part)
                .step_by(writers)
                .cloned()
                .collect();
            self.oracle.spawn_writer(keys);
        }
        self.oracle.spawn_writer(self.other_keys.clone());
        self.oracle.spawn_reader(self.keys.clone());
        self.oracle.spawn_reader(self.other_keys.clone());
        let api = self.cluster.nodes[via].migration_api();
        self.oracle.spawn_owner_sampler(api, self.vshard, 1, 2);
        self.oracle.spawn_metadata_sampler(nodes);
    }

    /// The run the oracle checks, for workflow `id`.
    pub fn run(&self, id: WorkflowId, expect: Expect) -> Run {
        Run {
            id,
            vshard: self.vshard,
            from: 1,
            to: 2,
            route_before: self.route_before,
            keys: self.keys.clone(),
            expect,
        }
    }

    /// Every check of the oracle, then the cluster's shutdown.
    pub async fn finish(mut self, run: &Run) -> Report {
        let driver = self.cluster.nodes[0].clone();
        let report = self.oracle.check_all(&self.cluster, &driver, run).await;
        self.oracle.shutdown().await;
        // The nodes at once: after a node restart, each shutdown drains its
        // endpoint for seconds.
        let mut shutdowns = tokio::task::JoinSet::new();
        for node in self.cluster.nodes.drain(..) {
            shutdowns.spawn(async move { node.shutdown().await });
        }
        while let Some(done) = shutdowns.join_next().await {
            done.expect("node shutdown");
        }
        report
    }
}

/// Waits for workflow `id` on `node` to settle, with a deadline.
pub async fn settle(node: &Node, id: WorkflowId, within: Duration) -> WorkflowStatus {
    tokio::time::timeout(within, node.engine().wait(id))
        .await
        .unwrap_or_else(|_| panic!("workflow {id} did not settle within {within:?}"))
        .expect("wait")
}

/// Waits (with a deadline) for a journaled event of `id` that `pick`s.
pub async fn wait_for_event<T>(
    progress: &mut tokio::sync::broadcast::Receiver<shardflow_workflow::Progress>,
    id: WorkflowId,
    within: Duration,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let event = tokio::time::timeout_at(deadline, progress.recv())
            .await
            .unwrap_or_else(|_| panic!("no such event of {id} within {within:?}"))
            .expect("progress");
        if event.id == id {
            if let Some(found) = pick(&event.event) {
                return found;
            }
        }
    }
}

/// The oracle's own judgments on made-up observations: it must flag a
/// stale read, a value never written, a value of another key, a lost key,
/// an epoch going back and an owner change without a new epoch, and must
/// accept a late failed write and a newer in-flight one.
pub fn self_check() {
    let key = b"key-000001".as_slice();
    let log = KeyLog {
        acked: 5,
        attempted: 7,
        failed: vec![3],
    };
    let read = |seq: u64| judge(key, Some(&value_of(key, seq)), &log);
    assert!(read(5).is_none() && read(6).is_none() && read(7).is_none());
    assert!(read(3).is_none(), "a failed write may land late");
    assert!(read(4).is_some(), "older than acknowledged");
    assert!(read(8).is_some(), "never written");
    assert!(judge(key, None, &log).is_some(), "lost");
    let other = value_of(b"key-000002", 6);
    assert!(
        judge(key, Some(&other), &log).is_some(),
        "another key's value"
    );
    let settled = KeyLog {
        acked: 7,
        attempted: 7,
        failed: vec![],
    };
    assert!(judge(key, Some(&value_of(key, 6)), &settled).is_some());
    assert!(judge(key, Some(&value_of(key, 7)), &settled).is_none());

    let mut state = State::default();
    let route = |group, epoch| Route { group, epoch };
    observe_routes(&mut state, 1, &[route(1, 1), route(1, 1)]);
    observe_routes(&mut state, 1, &[route(2, 2), route(1, 1)]);
    assert!(state.violations.is_empty());
    observe_routes(&mut state, 1, &[route(2, 1), route(2, 1)]);
    assert_eq!(state.violations.len(), 2, "{:?}", state.violations);
}
