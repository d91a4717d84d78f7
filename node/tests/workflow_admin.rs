//! Workflow administration on a live in-process 3-node cluster (real QUIC,
//! real redb journals): a test workflow submitted on node 2's engine is
//! listed, shown, cancelled, watched and resumed through a `Client` that
//! asks node 1, which forwards to node 2; a node restarted on its data
//! directory drives its unfinished workflow again, with a new epoch; a
//! corrupt journal stops a node from starting.
//!
//! The test workflow, `test.gated`: `Gate` waits for the test to open a
//! gate (or for a cancel), `Commit` crosses the point of no return, `Finish`
//! fails while the test says so (after the point of no return: `Paused`).
//! Every effect and compensation is recorded for the assertions.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use shardflow_node::certs::{write_cluster_certs, PeerIdentity};
use shardflow_node::client::{Client, ClientConfig, ClientError, WorkflowDetail};
use shardflow_node::rpc::{
    AdminRequest, AdminResponse, NodeRequest, NodeRequestV1, NodeResponse, NodeResponseV1,
};
use shardflow_node::server::{Node, NodeConfig, JOURNAL_FILE};
use shardflow_node::transport::{ClusterTls, Transport, TransportConfig};
use shardflow_workflow::{
    Event, Phase, RetryPolicy, Step, StepContext, StepError, Workflow, WorkflowId,
};
use tokio::sync::watch;
use tokio::time::Instant;

/// Bound on every wait of these tests.
const DEADLINE: Duration = Duration::from_secs(30);

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// What the test controls and observes, shared by every node's steps.
struct Harness {
    gate: watch::Sender<bool>,
    fail_finish: AtomicBool,
    effects: Mutex<Vec<String>>,
}

impl Harness {
    fn new() -> Arc<Self> {
        Arc::new(Harness {
            gate: watch::channel(false).0,
            fail_finish: AtomicBool::new(false),
            effects: Mutex::new(Vec::new()),
        })
    }

    fn record(&self, id: WorkflowId, what: &str) {
        let mut effects = self.effects.lock().unwrap_or_else(|p| p.into_inner());
        effects.push(format!("{id} {what}"));
    }

    fn effects_of(&self, id: WorkflowId) -> Vec<String> {
        let prefix = format!("{id} ");
        let effects = self.effects.lock().unwrap_or_else(|p| p.into_inner());
        effects
            .iter()
            .filter_map(|e| e.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }
}

struct Gated(Arc<Harness>);

impl Workflow for Gated {
    type Input = String;
    const KIND: &'static str = "test.gated";

    fn steps(&self) -> Vec<Arc<dyn Step<String>>> {
        vec![
            Arc::new(Gate(Arc::clone(&self.0))),
            Arc::new(Commit(Arc::clone(&self.0))),
            Arc::new(Finish(Arc::clone(&self.0))),
        ]
    }
}

struct Gate(Arc<Harness>);

#[async_trait]
impl Step<String> for Gate {
    fn name(&self) -> &'static str {
        "Gate"
    }

    async fn run(&self, ctx: &StepContext<String>) -> Result<Vec<u8>, StepError> {
        let mut gate = self.0.gate.subscribe();
        tokio::select! {
            opened = gate.wait_for(|open| *open) => {
                opened.map_err(|_| StepError::retryable("the gate is gone"))?;
            }
            () = ctx.cancelled() => return Err(StepError::Cancelled),
        }
        self.0.record(ctx.workflow_id(), "passed Gate");
        Ok(Vec::new())
    }

    async fn compensate(&self, ctx: &StepContext<String>) -> Result<(), StepError> {
        self.0.record(ctx.workflow_id(), "undid Gate");
        Ok(())
    }
}

struct Commit(Arc<Harness>);

#[async_trait]
impl Step<String> for Commit {
    fn name(&self) -> &'static str {
        "Commit"
    }

    fn is_point_of_no_return(&self) -> bool {
        true
    }

    async fn run(&self, ctx: &StepContext<String>) -> Result<Vec<u8>, StepError> {
        self.0.record(ctx.workflow_id(), "committed");
        Ok(Vec::new())
    }

    async fn compensate(&self, ctx: &StepContext<String>) -> Result<(), StepError> {
        self.0.record(ctx.workflow_id(), "undid Commit");
        Ok(())
    }
}

struct Finish(Arc<Harness>);

#[async_trait]
impl Step<String> for Finish {
    fn name(&self) -> &'static str {
        "Finish"
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::attempts(1)
    }

    async fn run(&self, ctx: &StepContext<String>) -> Result<Vec<u8>, StepError> {
        if self.0.fail_finish.load(Ordering::SeqCst) {
            return Err(StepError::terminal("injected failure"));
        }
        ctx.record_metric("pause_ms", 7).await?;
        self.0.record(ctx.workflow_id(), "finished");
        Ok(Vec::new())
    }

    async fn compensate(&self, ctx: &StepContext<String>) -> Result<(), StepError> {
        self.0.record(ctx.workflow_id(), "undid Finish");
        Ok(())
    }
}

struct Cluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
    harness: Arc<Harness>,
}

impl Cluster {
    /// Three nodes (each with `test.gated` registered and its workflows
    /// resumed), bootstrapped with one data group, ready.
    async fn start(harness: Arc<Harness>) -> Result<Cluster, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        write_cluster_certs(&dir.path().join("certs"), &[1, 2, 3])?;
        let mut nodes = Vec::new();
        for id in 1..=3 {
            let any_port = "127.0.0.1:0".parse()?;
            nodes.push(start_node(dir.path(), id, any_port, &harness).await?);
        }
        let cluster = Cluster {
            nodes,
            dir,
            harness,
        };
        let members = cluster
            .nodes
            .iter()
            .map(|n| (n.id(), n.local_addr().to_string()))
            .collect();
        let client = cluster.client()?;
        client.bootstrap(members, 1, 3).await?;
        client.wait_ready(DEADLINE).await?;
        client.shutdown().await;
        Ok(cluster)
    }

    fn node(&self, id: u64) -> &Node {
        let found = self.nodes.iter().find(|n| n.id() == id);
        found.unwrap_or_else(|| panic!("node {id} is not running"))
    }

    fn certs(&self) -> std::path::PathBuf {
        self.dir.path().join("certs")
    }

    /// An admin client that knows only node 1.
    fn client(&self) -> Result<Client, ClientError> {
        let seed = self.node(1).local_addr().to_string();
        Client::from_certs_dir(&self.certs(), ClientConfig::new(vec![seed]))
    }

    /// A raw transport presenting `identity`'s certificate.
    fn transport(&self, identity: PeerIdentity) -> Result<Transport, Box<dyn std::error::Error>> {
        let tls = ClusterTls::load(&self.certs(), identity)?;
        let bind = "127.0.0.1:0".parse()?;
        Ok(Transport::client(bind, &tls, TransportConfig::default())?)
    }

    async fn shutdown(self) {
        for node in &self.nodes {
            node.shutdown().await;
        }
    }
}

async fn start_node(
    dir: &Path,
    id: u64,
    listen: SocketAddr,
    harness: &Arc<Harness>,
) -> Result<Node, Box<dyn std::error::Error>> {
    let config = NodeConfig::new(
        id,
        listen,
        dir.join(format!("data-{id}")),
        dir.join("certs"),
    );
    let node = Node::start(config).await?;
    node.engine().register(Gated(Arc::clone(harness)));
    node.resume_workflows().await?;
    Ok(node)
}

/// Polls `id` through `client` until `done` holds, within [`DEADLINE`].
async fn show_until(
    client: &Client,
    id: WorkflowId,
    done: impl Fn(&WorkflowDetail) -> bool,
) -> Result<WorkflowDetail, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let detail = client.workflow_show(id).await?;
        if done(&detail) {
            return Ok(detail);
        }
        if Instant::now() >= deadline {
            return Err(format!("{id} never got there: {:?}", detail.state.phase).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn names(detail: &WorkflowDetail) -> Vec<&'static str> {
    detail.events.iter().map(|e| e.event.name()).collect()
}

fn started(step: &'static str) -> impl Fn(&WorkflowDetail) -> bool {
    move |detail| {
        detail
            .events
            .iter()
            .any(|e| matches!(&e.event, Event::StepStarted { step: s, .. } if s == step))
    }
}

fn rejected(result: Result<impl std::fmt::Debug, ClientError>, says: &str) {
    match result {
        Err(ClientError::Rejected { reason }) => assert!(reason.contains(says), "{reason}"),
        other => panic!("expected a rejection saying {says:?}, got {other:?}"),
    }
}

// Proves list, show, cancel (-> Aborted with compensation), watch and
// resume of a paused workflow (-> Completed) all work through node 1 for
// workflows node 2 drives, that node 1 forwards (and a forwarded request is
// never forwarded again), that refusals are clear, and that a down node is
// reported by list without failing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_are_operated_through_any_node() -> TestResult {
    let harness = Harness::new();
    let mut cluster = Cluster::start(Arc::clone(&harness)).await?;
    let client = cluster.client()?;
    let driver = cluster.node(2).engine().clone();

    let a = driver.submit::<Gated>("a".to_string()).await?;
    assert_eq!(a.node, 2);
    let detail = show_until(&client, a, started("Gate")).await?;
    assert_eq!(detail.state.phase, Phase::Running);
    assert_eq!(
        names(&detail),
        ["Submitted", "DriverStarted", "StepStarted"]
    );
    let gate = &detail.events[2];
    assert_eq!(
        (gate.event.step(), gate.event.attempt()),
        (Some("Gate"), Some(1))
    );
    assert!(detail.events.iter().all(|e| e.node == 2));
    assert_eq!(detail.state.next_seq, 3);

    let listing = client.workflow_list(false).await?;
    assert!(listing.unreachable.is_empty(), "{:?}", listing.unreachable);
    let row = listing.workflows.iter().find(|w| w.instance.id == a);
    let row = row.ok_or("wf-2-1 is listed")?;
    assert_eq!(
        (row.phase.as_str(), row.step.as_deref()),
        ("Running", Some("Gate"))
    );
    assert_eq!(row.instance.kind, "test.gated");

    forwarding_is_one_hop(&cluster, a).await?;
    let long_name = "x".repeat(300);
    rejected(client.workflow_cancel(a, &long_name).await, "at most 256");

    client.workflow_cancel(a, "tester").await?;
    let mut seen = Vec::new();
    let state = client
        .workflow_watch(a, DEADLINE, |event| seen.push(event.seq))
        .await?;
    assert!(
        matches!(state.phase, Phase::Aborted { .. }),
        "{:?}",
        state.phase
    );
    assert_eq!(
        seen,
        (0..state.next_seq).collect::<Vec<_>>(),
        "each event once"
    );
    assert_eq!(harness.effects_of(a), ["undid Gate"]);
    let detail = client.workflow_show(a).await?;
    let cancel = detail
        .events
        .iter()
        .find(|e| e.event.name() == "CancelRequested");
    assert_eq!(
        cancel.map(|e| e.event.detail()),
        Some("by tester".to_string())
    );
    for name in ["CompensationStarted", "Compensated", "Aborted"] {
        assert!(
            names(&detail).contains(&name),
            "{name} in {:?}",
            names(&detail)
        );
    }

    rejected(client.workflow_cancel(a, "tester").await, "already ended");
    rejected(client.workflow_resume(a, "tester").await, "not paused");
    rejected(
        client.workflow_show(WorkflowId::new(2, 999)).await,
        "does not exist",
    );
    rejected(
        client.workflow_show(WorkflowId::new(9, 1)).await,
        "not a node of this cluster",
    );

    pause_then_resume(&client, &driver, &harness).await?;

    let all = client.workflow_list(true).await?;
    let phases: Vec<(WorkflowId, &str)> = all
        .workflows
        .iter()
        .map(|w| (w.instance.id, w.phase.as_str()))
        .collect();
    let b = WorkflowId::new(2, 2);
    assert_eq!(phases, [(a, "Aborted"), (b, "Completed")]);
    assert!(client.workflow_list(false).await?.workflows.is_empty());

    let stopped = cluster.nodes.pop().ok_or("node 3")?;
    stopped.shutdown().await;
    let partial = client.workflow_list(true).await?;
    assert_eq!(
        partial.workflows.len(),
        2,
        "node 2's workflows still listed"
    );
    let missing: Vec<Option<u64>> = partial.unreachable.iter().map(|f| f.node).collect();
    assert_eq!(missing, [Some(3)]);

    client.shutdown().await;
    cluster.shutdown().await;
    Ok(())
}

/// A second workflow fails after its point of no return (-> Paused), is
/// resumed by an operator (a new driver epoch) and completes.
async fn pause_then_resume(
    client: &Client,
    driver: &shardflow_workflow::Engine,
    harness: &Harness,
) -> TestResult {
    harness.fail_finish.store(true, Ordering::SeqCst);
    harness.gate.send_replace(true);
    let b = driver.submit::<Gated>("b".to_string()).await?;
    let paused = client.workflow_watch(b, DEADLINE, |_| {}).await?;
    assert!(
        matches!(paused.phase, Phase::Paused { .. }),
        "{:?}",
        paused.phase
    );
    assert_eq!(paused.point_of_no_return.as_deref(), Some("Commit"));
    let listing = client.workflow_list(false).await?;
    let row = listing.workflows.iter().find(|w| w.instance.id == b);
    assert_eq!(row.map(|w| w.phase.as_str()), Some("Paused"));

    harness.fail_finish.store(false, Ordering::SeqCst);
    client.workflow_resume(b, "tester").await?;
    let done = client.workflow_watch(b, DEADLINE, |_| {}).await?;
    assert_eq!(done.phase, Phase::Completed);
    assert_eq!(
        done.epoch, 2,
        "the operator's resume started a new driver epoch"
    );
    assert_eq!(
        harness.effects_of(b),
        ["passed Gate", "committed", "finished"]
    );
    assert_eq!(done.metrics.len(), 1);
    rejected(client.workflow_resume(b, "tester").await, "not paused");
    Ok(())
}

/// Node 1 answers an admin's show of node 2's workflow (it forwarded it);
/// a forwarded request for a workflow the receiver does not drive is
/// refused, never forwarded again; only node certificates may forward.
async fn forwarding_is_one_hop(cluster: &Cluster, id: WorkflowId) -> TestResult {
    let node1 = cluster.node(1).local_addr();
    let show = AdminRequest::WorkflowShow { id, from_seq: 0 };
    let admin = cluster.transport(PeerIdentity::admin())?;
    let asked = NodeRequest::V1(NodeRequestV1::Admin(show.clone()));
    let answer: NodeResponse = admin.call_typed(node1, &asked).await?;
    let NodeResponse::V1(NodeResponseV1::Admin(AdminResponse::Workflow(page))) = answer else {
        return Err(format!("node 1 did not answer for {id}: {answer:?}").into());
    };
    assert_eq!(page.state.id, id);

    let forwarded = NodeRequest::V1(NodeRequestV1::ForwardAdmin(show));
    let peer = cluster.transport(PeerIdentity::node(3))?;
    let answer: NodeResponse = peer.call_typed(node1, &forwarded).await?;
    let NodeResponse::V1(NodeResponseV1::Admin(AdminResponse::Rejected { reason })) = answer else {
        return Err(format!("a second hop was not refused: {answer:?}").into());
    };
    assert!(reason.contains("not forwarded again"), "{reason}");

    let denied = admin.call_typed::<_, NodeResponse>(node1, &forwarded).await;
    let error = denied.err().ok_or("an admin may not forward")?;
    assert!(error.is_permission_denied(), "{error}");
    admin.shutdown().await;
    peer.shutdown().await;
    Ok(())
}

// Proves a node stopped while a workflow waits in a step drives it again
// after it starts on the same data directory and resumes its workflows:
// the interrupted attempt is journaled, a new driver epoch (2) takes over,
// and the workflow completes; node 1 then shows it through forwarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_drives_its_workflow_again() -> TestResult {
    let harness = Harness::new();
    let mut cluster = Cluster::start(Arc::clone(&harness)).await?;
    let id = cluster.node(2).engine().submit::<Gated>("r".into()).await?;
    let client = cluster.client()?;
    show_until(&client, id, started("Gate")).await?;

    let index = cluster
        .nodes
        .iter()
        .position(|n| n.id() == 2)
        .ok_or("node 2")?;
    let stopped = cluster.nodes.remove(index);
    let addr = stopped.local_addr();
    stopped.shutdown().await;
    drop(stopped);

    let restarted = start_node(cluster.dir.path(), 2, addr, &cluster.harness).await?;
    let status = restarted.engine().status(id).await?;
    assert_eq!(
        status.epoch, 2,
        "resume_workflows started a new driver epoch"
    );
    cluster.nodes.push(restarted.clone());
    harness.gate.send_replace(true);
    let waited = tokio::time::timeout(DEADLINE, restarted.engine().wait(id)).await??;
    assert_eq!(waited.phase, Phase::Completed);
    assert_eq!(waited.epoch, 2);

    let detail = client.workflow_show(id).await?;
    let epochs: Vec<u64> = detail
        .events
        .iter()
        .filter_map(|e| match e.event {
            Event::DriverStarted { epoch } => Some(epoch),
            _ => None,
        })
        .collect();
    assert_eq!(epochs, [1, 2]);
    let interrupted = detail
        .events
        .iter()
        .any(|e| matches!(&e.event, Event::StepFailed { step, attempt: 1, .. } if step == "Gate"));
    assert!(
        interrupted,
        "the interrupted attempt is journaled: {:?}",
        names(&detail)
    );
    assert_eq!(
        harness.effects_of(id),
        ["passed Gate", "committed", "finished"]
    );

    client.shutdown().await;
    cluster.shutdown().await;
    Ok(())
}

// Proves a node whose journal file is not a journal refuses to start, with
// an error naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_journal_stops_the_node_from_starting() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_cluster_certs(&dir.path().join("certs"), &[1])?;
    let data = dir.path().join("data-1");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join(JOURNAL_FILE), b"definitely not redb")?;
    let config = NodeConfig::new(
        1,
        "127.0.0.1:0".parse()?,
        data.clone(),
        dir.path().join("certs"),
    );
    let error = Node::start(config).await.err().map(|e| e.to_string());
    let journal = data.join(JOURNAL_FILE).display().to_string();
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.starts_with("workflow journal ") && e.contains(&journal)),
        "{error:?}"
    );
    Ok(())
}
