//! `shardflow demo`: the whole job of shardflow in one process, verified.
//!
//! [`run`] starts a 3-node [`EmbeddedCluster`] (real QUIC on loopback, real
//! redb files) with 4 data groups of 3 replicas, loads keys with many
//! concurrent writes, starts live writers that record every acknowledged
//! write in a [`Ledger`], moves a vShard to another group while its writer
//! keeps it busy, stops the node driving that migration in the middle of
//! CatchUp and starts it again on the same redb files (it resumes the
//! workflow from its journal), moves a replica to a fourth node, stops the
//! writers and checks everything: a full scan against the ledger (nothing
//! lost, nothing stale, each key exactly once), every node's routing table
//! and every replica's owned vShards (one owner per vShard), the measured
//! write pause. Finally the cluster stops and both workflows' journals are
//! verified and replayed from the nodes' data directories, as an auditor
//! would, with no cluster running.
//!
//! The caller watches through an [`Observer`] (the CLI draws progress bars)
//! and gets a [`DemoReport`]; [`DemoReport::verified`] says whether every
//! check passed.

pub mod ledger;
pub mod owners;
pub mod writers;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use shardflow_node::client::{Client, ClientError};
use shardflow_node::server::{MigrationLimits, MigrationTimings};
use shardflow_node::vshard::vshard_of;
use shardflow_steps::progress::progress;
use shardflow_workflow::{Phase, WorkflowId, WorkflowState};
use tokio::time::Instant;

use crate::audit::{self, AuditError, Timeline, VerifySummary};
use crate::embedded::{EmbeddedCluster, EmbeddedError, EmbeddedOptions};
use ledger::{Ledger, ScanCheck};
use owners::OwnerCheck;
use writers::{key, LiveWriters, Mode};

/// Nodes started and bootstrapped; a fourth joins for the replica move.
const NODES: u64 = 3;
/// Data groups of 3 replicas.
const GROUPS: u64 = 4;
const REPLICAS: u64 = 3;
/// The node added for the replica move.
const NEW_NODE: u64 = NODES + 1;
/// Keys of the moving vShard the live writers use at least (keys beyond
/// the loaded ones are added when the vShard holds fewer).
const MOVING_KEYS_MIN: usize = 48;
/// Live writers on the moving vShard in heavy mode, and elsewhere.
const MOVING_WRITERS: usize = 24;
const BACKGROUND_WRITERS: usize = 2;
const BACKGROUND_KEYS: usize = 64;
/// How long the base copy of the moving vShard should take: the nodes'
/// copy rate (`--copy-rate`) is set from the vShard's size so that the live
/// writers build a backlog that CatchUp then works through in rounds.
const BASE_COPY_TARGET: Duration = Duration::from_millis(1_500);
/// How long the ghost of the moved vShard stays before Cleanup deletes it.
const GHOST_TTL: Duration = Duration::from_millis(500);
/// The longest the demo follows one migration.
const MIGRATION_DEADLINE: Duration = Duration::from_secs(60);
/// How often a followed workflow is polled.
const POLL: Duration = Duration::from_millis(20);
/// How long the nodes get to agree on the routing table and owners.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Keys loaded before the migrations.
    pub keys: u64,
    /// Where the nodes keep their data (created, must be empty); `None`: a
    /// temporary directory, deleted at the end.
    pub data: Option<PathBuf>,
    /// Writes in flight while loading.
    pub load_concurrency: usize,
    /// Padding of each value, in bytes.
    pub value_bytes: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            keys: 100_000,
            data: None,
            load_concurrency: 256,
            value_bytes: 32,
        }
    }
}

/// Watches a demo run. Every method has an empty default.
pub trait Observer: Send + Sync {
    /// A line of narrative: what the demo does now.
    fn say(&self, _line: &str) {}
    /// Keys loaded so far, of `total`.
    fn loading(&self, _done: u64, _total: u64) {}
    /// The load finished.
    fn loaded(&self) {}
    /// A migration's state, each time it is polled.
    fn migrating(&self, _state: &WorkflowState) {}
    /// The migration followed until now settled.
    fn migrated(&self) {}
}

/// An observer that ignores everything.
pub struct Quiet;

impl Observer for Quiet {}

/// Why the demo could not run to its verification.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("--data {}: not empty (the demo needs a new or empty directory)", .0.display())]
    DataNotEmpty(PathBuf),
    #[error("--keys must be at least 1")]
    NoKeys,
    #[error("the write to {key} was not acknowledged within 60 s: {error}")]
    Write {
        key: String,
        error: Box<ClientError>,
    },
    #[error("{0}")]
    Stopped(&'static str),
}

/// The load.
#[derive(Clone, Debug, Serialize)]
pub struct LoadFigures {
    pub keys: u64,
    pub concurrency: usize,
    pub took_ms: u64,
    pub writes_per_sec: u64,
}

/// The stop and restart of the driving node.
#[derive(Clone, Debug, Serialize)]
pub struct Restart {
    pub node: u64,
    /// The step in flight when it stopped, and the CatchUp rounds done.
    pub step: String,
    pub catch_up_rounds: u32,
    /// From the stop until the node served again with the workflow resumed.
    pub down_ms: u64,
}

/// One migration as the demo saw it.
#[derive(Clone, Debug, Serialize)]
pub struct MigrationFigures {
    pub id: String,
    pub kind: String,
    pub what: String,
    pub phase: String,
    pub reason: Option<String>,
    pub took_ms: u64,
    /// The driver epoch it ended with (bumped by each resume).
    pub driver_epoch: u64,
}

/// The vShard move.
#[derive(Clone, Debug, Serialize)]
pub struct VShardMove {
    pub migration: MigrationFigures,
    pub vshard: u16,
    pub from_group: u64,
    pub to_group: u64,
    pub keys_copied: u64,
    pub bytes_copied: u64,
    pub catch_up_rounds: u32,
    /// Measured by CutOver and journaled: fence applied -> target accepting.
    pub write_pause_us: Option<u64>,
    pub pause_budget_ms: u64,
    /// The slowest acknowledged write to the vShard a live writer saw,
    /// retries included.
    pub worst_client_write_us: u64,
    pub restart: Option<Restart>,
}

/// The replica move.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicaMove {
    pub migration: MigrationFigures,
    pub group: u64,
    pub from_node: u64,
    pub to_node: u64,
}

/// Everything the demo did and found.
#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    /// The data directory, when kept (`--data`).
    pub data_dir: Option<String>,
    pub load: LoadFigures,
    /// Live writes acknowledged during the migrations.
    pub live_writes: u64,
    pub vshard_move: VShardMove,
    pub replica_move: ReplicaMove,
    /// The full scan against the acknowledged writes.
    pub data: ScanCheck,
    /// Routing agreement and owners per vShard.
    pub owners: OwnerCheck,
    /// Both workflows as their drivers' journals tell them (replayed from
    /// the stopped nodes' data directories).
    pub timelines: Vec<Timeline>,
    /// The drivers' journals, verified (hash chains and replay rules).
    pub journals: Vec<VerifySummary>,
    /// Every check that failed; empty when verified.
    pub failures: Vec<String>,
    pub took_ms: u64,
}

impl DemoReport {
    /// Every check passed.
    pub fn verified(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs the demo. An error means it could not get to its verification; a
/// failed check is a report with [`DemoReport::verified`] false.
pub async fn run(options: &DemoOptions, observer: &dyn Observer) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    if options.keys == 0 {
        return Err(DemoError::NoKeys);
    }
    let (_temp, dir) = data_dir(options.data.as_deref())?;
    let vshard = vshard_of(&key(0));
    let copy_rate = copy_rate(vshard, options);
    observer.say(&format!(
        "starting {NODES} nodes (QUIC on 127.0.0.1, redb) and bootstrapping {GROUPS} data groups of {REPLICAS} replicas"
    ));
    let embedded = EmbeddedOptions {
        nodes: NODES,
        groups: GROUPS,
        replicas: REPLICAS,
        spare_nodes: 1,
        migration: MigrationTimings {
            ghost_ttl: GHOST_TTL,
            reactor_interval: Duration::from_millis(100),
            ..MigrationTimings::default()
        },
        limits: MigrationLimits {
            copy_bytes_per_sec: Some(copy_rate),
            ..MigrationLimits::default()
        },
        ..EmbeddedOptions::default()
    };
    let mut cluster = EmbeddedCluster::start(&dir, embedded).await?;
    let addrs: Vec<String> = (cluster.node_ids().iter())
        .filter_map(|&id| cluster.node(id).map(|n| format!("{id}={}", n.local_addr())))
        .collect();
    observer.say(&format!(
        "cluster ready after {:.1}s: nodes {}",
        started.elapsed().as_secs_f64(),
        addrs.join(" ")
    ));
    let plan = Plan {
        vshard,
        copy_rate,
        keys: options.keys,
        value_bytes: options.value_bytes,
        load_concurrency: options.load_concurrency,
    };
    let outcome = scenario(&mut cluster, &plan, observer).await;
    let drivers: Vec<(WorkflowId, PathBuf)> = match &outcome {
        Ok(run) => (run.workflows.iter())
            .filter_map(|&id| Some((id, cluster.data_dir(id.node).ok()?.to_path_buf())))
            .collect(),
        Err(_) => Vec::new(),
    };
    observer.say("stopping the cluster");
    cluster.shutdown().await;
    let mut report = outcome?.report;

    observer.say("auditing the drivers' journals on their stopped nodes' data directories");
    for (id, data) in &drivers {
        let summary = audit::verify(data)?;
        if !report.journals.iter().any(|j| j.path == summary.path) {
            report.journals.push(summary);
        }
        report.timelines.extend(audit::replay(data, Some(*id))?);
    }
    report.data_dir = options.data.as_ref().map(|d| d.display().to_string());
    report.took_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// The directory to run in: `--data` (created, must be empty) or a new
/// temporary one (kept alive by the returned guard).
fn data_dir(data: Option<&Path>) -> Result<(Option<tempfile::TempDir>, PathBuf), DemoError> {
    let io = |what| move |source| DemoError::Io { what, source };
    match data {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(io("create the data directory"))?;
            let mut entries = std::fs::read_dir(dir).map_err(io("read the data directory"))?;
            if entries.next().is_some() {
                return Err(DemoError::DataNotEmpty(dir.to_path_buf()));
            }
            Ok((None, dir.to_path_buf()))
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("shardflow-demo-")
                .tempdir()
                .map_err(io("create a temporary directory"))?;
            let path = temp.path().to_path_buf();
            Ok((Some(temp), path))
        }
    }
}

/// The scenario's result before the audit.
struct ScenarioRun {
    report: DemoReport,
    workflows: Vec<WorkflowId>,
}

/// What the scenario works with.
struct Plan {
    vshard: u16,
    copy_rate: u64,
    keys: u64,
    value_bytes: usize,
    load_concurrency: usize,
}

/// The copy rate that makes the moving vShard's base copy take about
/// [`BASE_COPY_TARGET`] (at least 256 bytes per second).
fn copy_rate(vshard: u16, options: &DemoOptions) -> u64 {
    let value_len = ledger::value(1, options.value_bytes).len();
    let bytes: usize = moving_keys(vshard, options.keys)
        .iter()
        .map(|key| key.len() + value_len)
        .sum();
    let rate = bytes as f64 / BASE_COPY_TARGET.as_secs_f64();
    (rate as u64).max(256)
}

async fn scenario(
    cluster: &mut EmbeddedCluster,
    options: &Plan,
    observer: &dyn Observer,
) -> Result<ScenarioRun, DemoError> {
    let client = cluster.client().clone();
    let ledger = Arc::new(Ledger::new());

    // Load.
    observer.say(&format!(
        "loading {} keys ({} writes in flight)",
        options.keys, options.load_concurrency
    ));
    let load = load(&client, &ledger, options, observer).await?;
    observer.say(&format!(
        "loaded {} keys in {:.1}s ({} writes/s)",
        load.keys,
        load.took_ms as f64 / 1000.0,
        load.writes_per_sec
    ));

    // The vShard to move and the live writers.
    let vshard = options.vshard;
    let routing = client.routing().await?;
    let from_group = routing
        .routes
        .get(usize::from(vshard))
        .map_or(1, |route| route.group);
    let data_groups: Vec<u64> = routing.groups.keys().copied().filter(|&g| g != 0).collect();
    let to_group = data_groups
        .iter()
        .copied()
        .find(|&g| g > from_group)
        .or_else(|| data_groups.first().copied())
        .unwrap_or(from_group);
    let moving_keys = moving_keys(vshard, options.keys);
    let background: Vec<Vec<u8>> = (0..options.keys)
        .map(key)
        .filter(|k| vshard_of(k) != vshard)
        .take(BACKGROUND_KEYS)
        .collect();
    let writers = LiveWriters::start(
        &client,
        &ledger,
        moving_keys,
        MOVING_WRITERS,
        background,
        BACKGROUND_WRITERS,
        options.value_bytes,
    );
    observer.say(&format!(
        "live writers started: {MOVING_WRITERS} on {} keys of vShard {vshard}, {BACKGROUND_WRITERS} elsewhere; every acknowledged write is recorded",
        writers.moving_keys
    ));

    // Move the vShard; stop and restart its driver during CatchUp.
    let pause_budget_ms = MigrationLimits::default().default_pause_budget_ms;
    let id = client
        .migrate_vshard(u32::from(vshard), to_group, None)
        .await?;
    observer.say(&format!(
        "{id}: MoveVShard vShard {vshard} group {from_group} -> group {to_group}, driven by node {}; \
         base copy paced at {} B/s (--copy-rate) so the writers build a backlog for CatchUp",
        id.node, options.copy_rate
    ));
    let (state, restart) = follow(cluster, &client, id, Some(&writers), observer).await?;
    writers.set_mode(Mode::Light);
    let figures = progress(&state);
    observer.say(&format!(
        "{id} {}: {} keys copied, {} catch-up rounds, write pause {}",
        state.phase.label(),
        figures.keys_copied,
        figures.catch_up_rounds,
        figures.write_pause_us.map_or_else(
            || "-".to_string(),
            |us| format!("{:.1} ms", us as f64 / 1000.0)
        )
    ));

    // Move a replica to a fourth node.
    let group = to_group;
    let members = client
        .routing()
        .await?
        .groups
        .get(&group)
        .cloned()
        .unwrap_or_default();
    let from_node = pick_leaving(&client, group, &members).await;
    observer.say(&format!("starting node {NEW_NODE} and registering it"));
    cluster.add_node(NEW_NODE).await?;
    let replica_id = client.migrate_replica(group, from_node, NEW_NODE).await?;
    observer.say(&format!(
        "{replica_id}: MoveReplica group {group}: node {from_node} -> node {NEW_NODE}"
    ));
    let (replica_state, _) = follow(cluster, &client, replica_id, None, observer).await?;
    observer.say(&format!("{replica_id} {}", replica_state.phase.label()));

    // Stop writing, then check.
    let live = writers.stop().await?;
    observer.say(&format!(
        "writers stopped after {} live writes; scanning every key",
        live.writes
    ));
    let pairs = client.scan_all().await?;
    let data = ledger.check(&pairs);
    observer.say("checking every node's routing table and every replica's owners");
    let owners = owners::check_until(&client, CONVERGE_DEADLINE).await;
    let routing = client.routing().await?;

    let mut failures = Vec::new();
    if !data.ok() {
        failures.push(format!(
            "data: {} lost, {} stale, {} duplicated, {} unexpected ({})",
            data.keys_lost,
            data.stale_values,
            data.duplicates,
            data.unexpected,
            data.examples.join("; ")
        ));
    }
    failures.extend(owners.problems.iter().map(|p| format!("owners: {p}")));
    for (what, state) in [("vShard move", &state), ("replica move", &replica_state)] {
        if !state.phase.is_settled() {
            failures.push(format!(
                "{what} {} did not settle within {} s: {}",
                state.id,
                MIGRATION_DEADLINE.as_secs(),
                where_stuck(state)
            ));
        } else if state.phase != Phase::Completed {
            failures.push(format!(
                "{what} {} ended {}{}",
                state.id,
                state.phase.label(),
                reason(&state.phase)
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ));
        }
    }
    match routing.routes.get(usize::from(vshard)) {
        Some(route) if route.group == to_group => {}
        route => failures.push(format!(
            "vShard {vshard} is routed to {route:?}, not group {to_group}"
        )),
    }
    let new_members = routing.groups.get(&group).cloned().unwrap_or_default();
    if !new_members.contains(&NEW_NODE) || new_members.contains(&from_node) {
        failures.push(format!(
            "group {group}'s members are {new_members:?} after moving node {from_node}'s replica to node {NEW_NODE}"
        ));
    }
    match &restart {
        None => failures.push(format!(
            "the demo did not see {id} in CatchUp, so its driver was not restarted there"
        )),
        Some(restart) if restart.step != "CatchUp" => failures.push(format!(
            "the driver was restarted in {}, not in CatchUp",
            restart.step
        )),
        Some(_) => {}
    }
    if figures.write_pause_us.is_none() && state.phase == Phase::Completed {
        failures.push(format!("{id} journaled no write pause"));
    }

    let report = DemoReport {
        data_dir: None,
        load,
        live_writes: live.writes,
        vshard_move: VShardMove {
            migration: migration_figures(&state, format!("vShard {vshard} to group {to_group}")),
            vshard,
            from_group,
            to_group,
            keys_copied: figures.keys_copied,
            bytes_copied: figures.bytes_copied,
            catch_up_rounds: figures.catch_up_rounds,
            write_pause_us: figures.write_pause_us,
            pause_budget_ms,
            worst_client_write_us: live.worst_moving_write_us,
            restart,
        },
        replica_move: ReplicaMove {
            migration: migration_figures(
                &replica_state,
                format!("group {group}'s replica from node {from_node} to node {NEW_NODE}"),
            ),
            group,
            from_node,
            to_node: NEW_NODE,
        },
        data,
        owners,
        timelines: Vec::new(),
        journals: Vec::new(),
        failures,
        took_ms: 0,
    };
    Ok(ScenarioRun {
        report,
        workflows: vec![id, replica_id],
    })
}

/// Loads the keys, reporting progress every 100 ms.
async fn load(
    client: &Client,
    ledger: &Arc<Ledger>,
    options: &Plan,
    observer: &dyn Observer,
) -> Result<LoadFigures, DemoError> {
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let work = writers::load(
        client,
        ledger,
        options.keys,
        options.load_concurrency,
        options.value_bytes,
        &done,
    );
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            outcome = &mut work => {
                outcome?;
                break;
            }
            _ = tick.tick() => observer.loading(done.load(Ordering::Relaxed), options.keys),
        }
    }
    observer.loading(options.keys, options.keys);
    observer.loaded();
    let took = started.elapsed();
    Ok(LoadFigures {
        keys: options.keys,
        concurrency: options.load_concurrency,
        took_ms: took.as_millis() as u64,
        writes_per_sec: (options.keys as f64 / took.as_secs_f64().max(1e-3)) as u64,
    })
}

/// The keys the live writers use on `vshard`: its loaded keys, and new
/// ones of the same vShard if it holds fewer than [`MOVING_KEYS_MIN`].
fn moving_keys(vshard: u16, loaded: u64) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = (0..loaded)
        .map(key)
        .filter(|k| vshard_of(k) == vshard)
        .collect();
    let missing = MOVING_KEYS_MIN.saturating_sub(keys.len());
    keys.extend(
        (loaded..)
            .map(key)
            .filter(|k| vshard_of(k) == vshard)
            .take(missing),
    );
    keys
}

/// A member of `group` to move away: one that does not lead it (no
/// leadership change needed), else the last member.
async fn pick_leaving(client: &Client, group: u64, members: &[u64]) -> u64 {
    let leader = client
        .status_all()
        .await
        .into_iter()
        .filter_map(|report| report.status.ok())
        .flat_map(|status| status.groups)
        .filter(|g| g.group == group)
        .max_by_key(|g| g.term)
        .and_then(|g| g.leader);
    (members.iter().rev())
        .copied()
        .find(|&m| Some(m) != leader)
        .or_else(|| members.last().copied())
        .unwrap_or(1)
}

/// Follows workflow `id` until it settles, or [`MIGRATION_DEADLINE`] has
/// passed (then returns its unsettled state). With `writers`, stops the
/// driving node as soon as the workflow is seen with a CatchUp attempt in
/// flight (whether or not a round is checkpointed yet: on a loaded machine
/// the backlog can be one short round), switches the writers to light mode (so the lag can
/// shrink) and starts the node again.
async fn follow(
    cluster: &mut EmbeddedCluster,
    client: &Client,
    id: WorkflowId,
    writers: Option<&LiveWriters>,
    observer: &dyn Observer,
) -> Result<(WorkflowState, Option<Restart>), DemoError> {
    let deadline = Instant::now() + MIGRATION_DEADLINE;
    let mut restart = None;
    loop {
        let state = match client.workflow_show(id).await {
            Ok(detail) => detail.state,
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(%error, %id, "workflow not readable yet");
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        observer.migrating(&state);
        if state.phase.is_settled() {
            observer.migrated();
            return Ok((state, restart));
        }
        if let (Some(writers), None) = (writers, &restart) {
            if let Some(step) = in_catch_up(&state) {
                let figures = progress(&state);
                let rounds = figures.catch_up_rounds;
                let node = id.node;
                let done = match (rounds, figures.lag) {
                    (0, _) | (_, None) => "no round checkpointed yet".to_string(),
                    (1, Some(lag)) => format!("1 round checkpointed, lag {lag} changes"),
                    (_, Some(lag)) => format!("{rounds} rounds checkpointed, lag {lag} changes"),
                };
                observer.say(&format!(
                    "{id} is in {step} ({done}): stopping node {node}, which drives it"
                ));
                let stopped = Instant::now();
                cluster.stop_node(node).await?;
                writers.set_mode(Mode::Light);
                observer.say(&format!(
                    "node {node} stopped; starting it again on the same address and redb files"
                ));
                cluster.restart_node(node).await?;
                let down = stopped.elapsed();
                observer.say(&format!(
                    "node {node} is back after {:.1}s and resumed {id} from its journal",
                    down.as_secs_f64()
                ));
                restart = Some(Restart {
                    node,
                    step,
                    catch_up_rounds: rounds,
                    down_ms: down.as_millis() as u64,
                });
            }
        }
        if Instant::now() >= deadline {
            // Reported as a failed check, with the rest of the report.
            observer.migrated();
            return Ok((state, restart));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `Some("CatchUp")` while a forward attempt of CatchUp is in flight.
fn in_catch_up(state: &WorkflowState) -> Option<String> {
    let in_flight = state.in_flight.filter(|f| !f.compensation)?;
    let step = state.steps.get(in_flight.index)?;
    (step.name == "CatchUp").then(|| step.name.clone())
}

/// Where an unsettled workflow stands: its phase, step and the step's
/// last error.
fn where_stuck(state: &WorkflowState) -> String {
    let figures = progress(state);
    let mut text = format!(
        "{} {}",
        figures.phase,
        figures.step.as_deref().unwrap_or("-")
    );
    let last_error = (state.steps.iter())
        .find(|step| Some(&step.name) == figures.step.as_ref())
        .and_then(|step| step.last_failure.as_ref());
    if let Some(failure) = last_error {
        text.push_str(&format!(" (last error: {})", failure.error));
    }
    text
}

fn reason(phase: &Phase) -> Option<&str> {
    match phase {
        Phase::Aborted { reason }
        | Phase::Paused { reason, .. }
        | Phase::Compensating { reason } => Some(reason),
        Phase::Running | Phase::Completed => None,
    }
}

fn migration_figures(state: &WorkflowState, what: String) -> MigrationFigures {
    MigrationFigures {
        id: state.id.to_string(),
        kind: state.kind.clone(),
        what,
        phase: state.phase.label().to_string(),
        reason: reason(&state.phase).map(str::to_string),
        took_ms: state.updated_at_ms.saturating_sub(state.submitted_at_ms),
        driver_epoch: state.epoch,
    }
}
