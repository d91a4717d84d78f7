//! Migrations across real `shardflow node` processes, driven from the CLI
//! and the client library, under live writes checked by the oracle
//! (`support::oracle`, DESIGN §5):
//!
//! - `migrate vshard --wait` completes, prints the measured pause, and
//!   `workflow show` lists the phases in order with the pause;
//! - the driving node SIGKILLed during BaseCopy resumes the copy from its
//!   checkpointed cursor after a restart (chunk numbering continues; bytes
//!   copied stay within 1.2x the vShard) and completes;
//! - the driving node SIGKILLed once CutOver has started completes after a
//!   restart;
//! - bad submissions are refused with one line and change nothing.
//!
//! Every check waits on a condition with a deadline; no fixed sleeps.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shardflow::node::client::{Client, ClientConfig};
use shardflow::steps::move_vshard::base_copy::CopyCursor;
use shardflow::workflow::{Event, Phase, WorkflowId};
use support::oracle::{keys_of, Oracle};
use support::*;
use tokio::time::Instant;

/// The vShard moved (owned by group 1 of 2 at bootstrap) and another one
/// written throughout.
const MOVED: u16 = 100;
const OTHER: u16 = 900;

fn flags(extra: &[&str]) -> Vec<String> {
    let mut flags = vec!["--ghost-ttl-ms".to_string(), "500".to_string()];
    flags.extend(extra.iter().map(|s| s.to_string()));
    flags
}

struct Running {
    _dir: tempfile::TempDir,
    certs: std::path::PathBuf,
    nodes: Vec<NodeProcess>,
    client: Client,
}

impl Running {
    fn cluster_arg(&self) -> String {
        let addrs: Vec<&str> = self.nodes.iter().map(|n| n.addr.as_str()).collect();
        addrs.join(",")
    }

    fn certs_arg(&self) -> &str {
        self.certs.to_str().expect("utf-8")
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProcess {
        (self.nodes.iter_mut())
            .find(|n| n.id == id)
            .expect("a node of the cluster")
    }
}

async fn start(extra: &[&str]) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let (certs, nodes) = start_cluster(dir.path(), "1,2,3", 3, 2, &flags(extra));
    let seeds = nodes.iter().map(|n| n.addr.clone()).collect();
    let client = Client::from_certs_dir(&certs, ClientConfig::new(seeds)).expect("client");
    client
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("cluster ready");
    Running {
        _dir: dir,
        certs,
        nodes,
        client,
    }
}

/// Invariant 3: every node's routing table routes `vshard` to `group` with
/// the same epoch, higher than `before` (waits for all to converge).
async fn check_routing_converged(client: &Client, vshard: u16, group: u64, before: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reports = client.status_all().await;
        let routes: BTreeMap<String, Option<(u64, u64)>> = (reports.iter())
            .map(|report| {
                let route = report.status.as_ref().ok().and_then(|status| {
                    (status.routing.routes.get(usize::from(vshard))).map(|r| (r.group, r.epoch))
                });
                (report.addr.clone(), route)
            })
            .collect();
        let agreed = routes
            .values()
            .all(|route| route.is_some_and(|(g, epoch)| g == group && epoch > before))
            && routes
                .values()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                == 1;
        if agreed && routes.len() == 3 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nodes do not agree that vShard {vshard} is on group {group}: {routes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn epoch_of(client: &Client, vshard: u16) -> (u64, u64) {
    let table = client.routing().await.expect("routing");
    let route = &table.routes[usize::from(vshard)];
    (route.group, route.epoch)
}

/// The BaseCopy cursors journaled, in order, and whether each came after
/// the driver's restart (a `StepStarted BaseCopy` of a later epoch).
fn copy_cursors(events: &[shardflow::node::rpc::WorkflowEvent]) -> Vec<(u64, CopyCursor)> {
    let mut attempt = 0;
    let mut cursors = Vec::new();
    for event in events {
        match &event.event {
            Event::StepStarted { step, attempt: a } if step == "BaseCopy" => attempt = *a,
            Event::Checkpoint { step, progress } if step == "BaseCopy" => {
                let cursor: CopyCursor = postcard::from_bytes(progress).expect("a copy cursor");
                cursors.push((u64::from(attempt), cursor));
            }
            _ => {}
        }
    }
    cursors
}

async fn wait_settled(client: &Client, id: WorkflowId) -> shardflow::workflow::WorkflowState {
    client
        .workflow_watch(id, Duration::from_secs(120), |_| {})
        .await
        .expect("the migration settles")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_moves_a_vshard_under_writes_and_shows_its_phases() {
    let running = start(&[]).await;
    let client = running.client.clone();
    let oracle = Oracle::new();
    let moved = keys_of("m", MOVED, 300);
    let other = keys_of("o", OTHER, 50);
    oracle.load(&client, &moved, 64).await;
    oracle.load(&client, &other, 64).await;
    let (from_group, epoch_before) = epoch_of(&client, MOVED).await;
    assert_eq!(from_group, 1);

    let writers = vec![
        oracle.spawn_writer(client.clone(), moved.clone()),
        oracle.spawn_writer(client.clone(), other.clone()),
        oracle.spawn_reader(client.clone(), moved.clone()),
    ];
    let (cluster, certs) = (running.cluster_arg(), running.certs_arg().to_string());
    let args = [
        "migrate",
        "vshard",
        "100",
        "--to-group",
        "2",
        "--wait",
        "--cluster",
        &cluster,
        "--certs",
        &certs,
    ]
    .map(String::from);
    let output = tokio::task::spawn_blocking(move || {
        cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("cli task");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "migrate failed: {stderr}");
    assert!(
        stdout.contains(" Completed in ") && stdout.contains("write pause"),
        "{stdout}"
    );
    let id: WorkflowId = stdout
        .split_whitespace()
        .next()
        .and_then(|word| word.parse().ok())
        .expect("the line starts with the workflow id");
    // The writers keep writing after the cut-over (invariant 7: writable).
    let writes_at_end = oracle.writes.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(20);
    while oracle.writes.load(std::sync::atomic::Ordering::Relaxed) < writes_at_end + 50 {
        assert!(
            Instant::now() < deadline,
            "writes stopped after the migration"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    oracle.stop();
    for task in writers {
        task.await.expect("writer or reader");
    }

    oracle.check_all_readable(&client).await;
    oracle.check_scan(&client, MOVED).await;
    oracle.check_scan(&client, OTHER).await;
    check_routing_converged(&client, MOVED, 2, epoch_before).await;

    // `workflow show`: the phases in order, the pause measured.
    let show = run_cli(&[
        "workflow",
        "show",
        &id.to_string(),
        "--cluster",
        &cluster,
        "--certs",
        &certs,
        "--json",
    ]);
    let shown: serde_json::Value = serde_json::from_str(&show).expect("json");
    let text = show.to_string();
    let positions: Vec<usize> = ["Lock", "BaseCopy", "CatchUp", "CutOver", "Cleanup"]
        .iter()
        .map(|step| {
            text.find(&format!("\"{step}\""))
                .unwrap_or_else(|| panic!("{step} missing from {text}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert!(text.contains("write_pause_us"), "{shown}");
    let detail = client.workflow_show(id).await.expect("show");
    assert_eq!(detail.state.phase, Phase::Completed);
    assert!(
        detail.state.point_of_no_return.as_deref() == Some("CutOver"),
        "{:?}",
        detail.state.point_of_no_return
    );
    println!(
        "moved vShard {MOVED}: {} writes, {} reads checked; {}",
        oracle.writes.load(std::sync::atomic::Ordering::Relaxed),
        oracle.reads.load(std::sync::atomic::Ordering::Relaxed),
        stdout.trim()
    );
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_are_refused_and_change_nothing() {
    let running = start(&[]).await;
    let (cluster, certs) = (running.cluster_arg(), running.certs_arg().to_string());
    let refused = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--cluster", &cluster, "--certs", &certs]);
        let output = cli(&all);
        assert_eq!(output.status.code(), Some(1), "{args:?} was not refused");
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        stderr
    };
    assert!(refused(&["migrate", "vshard", "1024", "--to-group", "2"]).contains("does not exist"));
    assert!(
        refused(&["migrate", "vshard", "5", "--to-group", "7"]).contains("group 7 does not exist")
    );
    assert!(refused(&["migrate", "vshard", "5", "--to-group", "1"])
        .contains("already owned by group 1"));
    assert!(
        refused(&["migrate", "replica", "--group", "1", "--from", "3", "--to", "9"])
            .contains("node 9 is not a node")
    );
    assert!(
        refused(&["migrate", "replica", "--group", "1", "--from", "3", "--to", "2"])
            .contains("node 2 already holds a replica of group 1")
    );
    // Nothing was journaled anywhere.
    let listing = running.client.workflow_list(true).await.expect("list");
    assert!(listing.workflows.is_empty(), "{:?}", listing.workflows);
    let (group, epoch) = epoch_of(&running.client, 5).await;
    assert_eq!((group, epoch), (1, 1));
    running.client.shutdown().await;
}

/// Loads the moved vShard, starts writers, submits the move and returns
/// its id; the copy is slowed by the nodes' `--copy-rate`.
async fn slow_move(
    running: &Running,
    oracle: &Arc<Oracle>,
) -> (WorkflowId, Vec<tokio::task::JoinHandle<()>>) {
    let client = &running.client;
    let moved = keys_of("m", MOVED, 3_000);
    oracle.load(client, &moved, 64).await;
    let other = keys_of("o", OTHER, 50);
    oracle.load(client, &other, 64).await;
    let tasks = vec![
        oracle.spawn_writer(client.clone(), moved[..200].to_vec()),
        oracle.spawn_writer(client.clone(), other),
        oracle.spawn_reader(client.clone(), moved[..200].to_vec()),
    ];
    let id = client
        .migrate_vshard(u32::from(MOVED), 2, None)
        .await
        .expect("submitted");
    (id, tasks)
}

/// Polls until `ready` holds for the workflow's state.
async fn wait_for(
    client: &Client,
    id: WorkflowId,
    what: &str,
    ready: impl Fn(&shardflow::node::client::WorkflowDetail) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(detail) = client.workflow_show(id).await {
            if ready(&detail) {
                return;
            }
            assert!(
                !detail.state.phase.is_settled(),
                "{id} settled before {what}"
            );
        }
        assert!(Instant::now() < deadline, "{id}: never reached {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn finish_and_check(
    running: &Running,
    oracle: &Arc<Oracle>,
    id: WorkflowId,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    epoch_before: u64,
) -> shardflow::node::client::WorkflowDetail {
    let client = &running.client;
    let state = wait_settled(client, id).await;
    assert_eq!(state.phase, Phase::Completed, "{:?}", state.phase);
    oracle.stop();
    for task in tasks {
        task.await.expect("writer or reader");
    }
    oracle.check_all_readable(client).await;
    oracle.check_scan(client, MOVED).await;
    oracle.check_scan(client, OTHER).await;
    check_routing_converged(client, MOVED, 2, epoch_before).await;
    client.workflow_show(id).await.expect("show")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_killed_in_base_copy_resumes_from_its_cursor() {
    let mut running = start(&["--copy-rate", "60000"]).await;
    let oracle = Oracle::new();
    let (_, epoch_before) = epoch_of(&running.client, MOVED).await;
    let (id, tasks) = slow_move(&running, &oracle).await;
    // Two chunks copied (the first checkpoint holds the totals only).
    wait_for(&running.client, id, "two copied chunks", |detail| {
        copy_cursors(&detail.events)
            .last()
            .is_some_and(|(_, c)| c.chunks >= 2)
    })
    .await;
    let driver = id.node;
    sigkill(running.node_mut(driver));
    let certs = running.certs.clone();
    running.node_mut(driver).restart(&certs);

    let detail = finish_and_check(&running, &oracle, id, tasks, epoch_before).await;
    let cursors = copy_cursors(&detail.events);
    let (first_attempt, _) = cursors[0];
    let before: Vec<&CopyCursor> = cursors
        .iter()
        .filter(|(a, _)| *a == first_attempt)
        .map(|(_, c)| c)
        .collect();
    let after: Vec<&CopyCursor> = cursors
        .iter()
        .filter(|(a, _)| *a != first_attempt)
        .map(|(_, c)| c)
        .collect();
    let killed_at = before.last().expect("cursors before the kill").chunks;
    let resumed_at = after.first().expect("cursors after the restart").chunks;
    assert!(killed_at >= 2);
    assert!(
        resumed_at >= killed_at,
        "the copy restarted from chunk {resumed_at}, not from its cursor at {killed_at}"
    );
    assert!(
        cursors.windows(2).all(|w| w[1].1.chunks >= w[0].1.chunks),
        "chunk numbering went back"
    );
    let last = &cursors.last().expect("a cursor").1;
    assert!(last.total_bytes > 0);
    assert!(
        (last.bytes as f64) < 1.2 * last.total_bytes as f64,
        "copied {} bytes of a {}-byte vShard",
        last.bytes,
        last.total_bytes
    );
    println!(
        "killed node {driver} at chunk {killed_at}, resumed at chunk {resumed_at}; copied {} of {} bytes in {} chunks",
        last.bytes, last.total_bytes, last.chunks
    );
    running.client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_killed_in_cut_over_completes_after_restart() {
    let mut running = start(&[]).await;
    let oracle = Oracle::new();
    let (_, epoch_before) = epoch_of(&running.client, MOVED).await;
    let (id, tasks) = slow_move(&running, &oracle).await;
    wait_for(&running.client, id, "CutOver", |detail| {
        detail
            .events
            .iter()
            .any(|e| matches!(&e.event, Event::StepStarted { step, .. } if step == "CutOver"))
    })
    .await;
    let driver = id.node;
    sigkill(running.node_mut(driver));
    let certs = running.certs.clone();
    running.node_mut(driver).restart(&certs);
    let detail = finish_and_check(&running, &oracle, id, tasks, epoch_before).await;
    // Where the kill landed, from the journal: the events between
    // CutOver's start and the second driver's takeover.
    let position =
        |what: &dyn Fn(&Event) -> bool| detail.events.iter().position(|e| what(&e.event));
    let cut_over = position(&|e| matches!(e, Event::StepStarted { step, .. } if step == "CutOver"))
        .expect("CutOver started");
    let takeover = position(&|e| matches!(e, Event::DriverStarted { epoch } if *epoch >= 2))
        .expect("a second driver took the workflow over");
    assert!(cut_over < takeover, "the kill came after CutOver started");
    let last_before = &detail.events[takeover - 1].event;
    println!(
        "killed node {driver} after CutOver started; its last journaled event was {} ({})",
        last_before.name(),
        last_before.detail()
    );
    running.client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_moves_a_replica_to_a_new_node_under_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (certs, nodes) = start_cluster(dir.path(), "1,2,3,4", 4, 2, &flags(&[]));
    let seeds: Vec<String> = nodes.iter().take(3).map(|n| n.addr.clone()).collect();
    let client = Client::from_certs_dir(&certs, ClientConfig::new(seeds)).expect("client");
    client
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("ready");
    client
        .add_node(4, &nodes[3].addr)
        .await
        .expect("node 4 registered");
    let oracle = Oracle::new();
    let keys = keys_of("r", MOVED, 200);
    oracle.load(&client, &keys, 64).await;
    let tasks = vec![
        oracle.spawn_writer(client.clone(), keys.clone()),
        oracle.spawn_reader(client.clone(), keys.clone()),
    ];
    let routing_before = client.routing().await.expect("routing").routes;

    let cluster: Vec<&str> = nodes.iter().take(3).map(|n| n.addr.as_str()).collect();
    let args = [
        "migrate",
        "replica",
        "--group",
        "1",
        "--from",
        "3",
        "--to",
        "4",
        "--wait",
        "--cluster",
        &cluster.join(","),
        "--certs",
        certs.to_str().expect("utf-8"),
    ]
    .map(String::from);
    let output = tokio::task::spawn_blocking(move || {
        cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("cli task");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "migrate replica failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(" Completed in "), "{stdout}");
    oracle.stop();
    for task in tasks {
        task.await.expect("writer or reader");
    }
    oracle.check_all_readable(&client).await;
    oracle.check_scan(&client, MOVED).await;

    // Every node agrees: group 1 is on 1, 2, 4; node 4 runs it and node 3
    // stopped its replica; routing unchanged.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reports = client.status_all().await;
        let views: Vec<_> = reports
            .iter()
            .filter_map(|r| r.status.as_ref().ok())
            .collect();
        let agreed = views.len() == 4
            && views
                .iter()
                .all(|s| s.routing.groups.get(&1) == Some(&vec![1, 2, 4]));
        let runs = |node: u64| {
            views
                .iter()
                .find(|s| s.node == node)
                .is_some_and(|s| s.groups.iter().any(|g| g.group == 1))
        };
        if agreed && runs(4) && !runs(3) {
            assert!(views.iter().all(|s| s.routing.routes == routing_before));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster never agreed on group 1 = [1, 2, 4] with node 3 stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.shutdown().await;
}
