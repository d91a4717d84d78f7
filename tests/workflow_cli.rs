//! `shardflow workflow list|show|watch|cancel|resume` run as an operator
//! runs them, against a one-node cluster in this process whose engine
//! drives small test workflows (`Gate` waits for the test or a cancel;
//! `Finish` journals a measured figure; `Commit` crosses the point of no
//! return and `Apply` fails until the test lets it, so the workflow
//! pauses). Checks the tables, the JSON, the streamed events of `watch`
//! and its exit codes (0 only on `Completed`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shardflow::node::certs::write_cluster_certs;
use shardflow::node::client::{Client, ClientConfig};
use shardflow::node::server::{Node, NodeConfig};
use shardflow::workflow::{Step, StepContext, StepError, Workflow, WorkflowId};
use tokio::sync::watch;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_shardflow");
const DEADLINE: Duration = Duration::from_secs(30);

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Gated(watch::Sender<bool>);

impl Workflow for Gated {
    type Input = ();
    const KIND: &'static str = "test.gated";

    fn steps(&self) -> Vec<Arc<dyn Step<()>>> {
        vec![Arc::new(Gate(self.0.clone())), Arc::new(Finish)]
    }
}

struct Gate(watch::Sender<bool>);

#[async_trait]
impl Step<()> for Gate {
    fn name(&self) -> &'static str {
        "Gate"
    }

    async fn run(&self, ctx: &StepContext<()>) -> Result<Vec<u8>, StepError> {
        let mut gate = self.0.subscribe();
        tokio::select! {
            opened = gate.wait_for(|open| *open) => opened
                .map(|_| Vec::new())
                .map_err(|_| StepError::retryable("the gate is gone")),
            () = ctx.cancelled() => Err(StepError::Cancelled),
        }
    }

    async fn compensate(&self, _ctx: &StepContext<()>) -> Result<(), StepError> {
        Ok(())
    }
}

struct Finish;

#[async_trait]
impl Step<()> for Finish {
    fn name(&self) -> &'static str {
        "Finish"
    }

    async fn run(&self, ctx: &StepContext<()>) -> Result<Vec<u8>, StepError> {
        ctx.record_metric("write_pause_ms", 12).await?;
        Ok(Vec::new())
    }

    async fn compensate(&self, _ctx: &StepContext<()>) -> Result<(), StepError> {
        Ok(())
    }
}

/// Pauses: `Commit` crosses the point of no return, then `Apply` fails
/// terminally until the flag is set.
struct Stuck(Arc<AtomicBool>);

impl Workflow for Stuck {
    type Input = ();
    const KIND: &'static str = "test.stuck";

    fn steps(&self) -> Vec<Arc<dyn Step<()>>> {
        vec![Arc::new(Commit), Arc::new(Apply(self.0.clone()))]
    }
}

struct Commit;

#[async_trait]
impl Step<()> for Commit {
    fn name(&self) -> &'static str {
        "Commit"
    }

    fn is_point_of_no_return(&self) -> bool {
        true
    }

    async fn run(&self, _ctx: &StepContext<()>) -> Result<Vec<u8>, StepError> {
        Ok(Vec::new())
    }

    async fn compensate(&self, _ctx: &StepContext<()>) -> Result<(), StepError> {
        Ok(())
    }
}

struct Apply(Arc<AtomicBool>);

#[async_trait]
impl Step<()> for Apply {
    fn name(&self) -> &'static str {
        "Apply"
    }

    async fn run(&self, _ctx: &StepContext<()>) -> Result<Vec<u8>, StepError> {
        match self.0.load(Ordering::SeqCst) {
            true => Ok(Vec::new()),
            false => Err(StepError::terminal("the disk is full")),
        }
    }

    async fn compensate(&self, _ctx: &StepContext<()>) -> Result<(), StepError> {
        Ok(())
    }
}

/// Runs `shardflow ARGS --cluster ADDR --certs DIR` off the async runtime.
async fn cli(args: &[&str], addr: &str, certs: &Path) -> Result<Output, std::io::Error> {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .args(["--cluster", addr, "--certs"])
        .arg(certs)
        .env_remove("SHARDFLOW_CLUSTER")
        .env_remove("SHARDFLOW_CERTS")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(std::io::Error::other)?
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

struct OneNode {
    node: Node,
    addr: String,
    certs: PathBuf,
    _dir: tempfile::TempDir,
}

async fn one_node(gate: &watch::Sender<bool>) -> Result<OneNode, Box<dyn std::error::Error>> {
    one_node_with(gate, Arc::new(AtomicBool::new(false))).await
}

async fn one_node_with(
    gate: &watch::Sender<bool>,
    unstuck: Arc<AtomicBool>,
) -> Result<OneNode, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    write_cluster_certs(&certs, &[1])?;
    let config = NodeConfig::new(
        1,
        "127.0.0.1:0".parse()?,
        dir.path().join("data"),
        certs.clone(),
    );
    let node = Node::start(config).await?;
    node.engine().register(Gated(gate.clone()));
    node.engine().register(Stuck(unstuck));
    node.resume_workflows().await?;
    let addr = node.local_addr().to_string();
    let client = Client::from_certs_dir(&certs, ClientConfig::new(vec![addr.clone()]))?;
    client.bootstrap(vec![(1, addr.clone())], 1, 1).await?;
    client.wait_ready(DEADLINE).await?;
    client.shutdown().await;
    Ok(OneNode {
        node,
        addr,
        certs,
        _dir: dir,
    })
}

/// Waits until the engine reports `id` paused.
async fn wait_paused(node: &Node, id: WorkflowId) -> TestResult {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = node.engine().status(id).await?;
        if status.phase.label() == "Paused" {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{id} never paused: {status:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the engine reports `id` inside step `step`.
async fn wait_in_step(node: &Node, id: WorkflowId, step: &str) -> TestResult {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = node.engine().status(id).await?;
        if status.step.as_deref() == Some(step) && status.events >= 3 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{id} never reached {step}: {status:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Proves list and show print the workflow (tables and JSON), watch streams
// its events and exits 1 when a cancel aborts it, exits 0 when another one
// completes, and show reports the figure a step measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_lists_shows_watches_and_cancels() -> TestResult {
    let gate = watch::channel(false).0;
    let cluster = one_node(&gate).await?;
    let (addr, certs) = (cluster.addr.as_str(), cluster.certs.as_path());
    let first = cluster.node.engine().submit::<Gated>(()).await?;
    wait_in_step(&cluster.node, first, "Gate").await?;

    let list = cli(&["workflow", "list"], addr, certs).await?;
    assert!(list.status.success(), "{}", stderr(&list));
    let table = stdout(&list);
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("ID      KIND        PHASE    STEP"),
        "{table}"
    );
    let row = lines.next().unwrap_or_default();
    assert!(
        row.starts_with("wf-1-1  test.gated  Running  Gate  StepStarted  3"),
        "{table}"
    );

    let json = cli(&["workflow", "show", "wf-1-1", "--json"], addr, certs).await?;
    assert!(json.status.success(), "{}", stderr(&json));
    let shown: serde_json::Value = serde_json::from_slice(&json.stdout)?;
    assert_eq!(shown["workflow"]["id"], "wf-1-1");
    assert_eq!(shown["workflow"]["phase"], "Running");
    assert_eq!(shown["events"][2]["event"], "StepStarted");
    assert_eq!(shown["events"][2]["step"], "Gate");
    assert_eq!(shown["events"][2]["attempt"], 1);

    let watcher = Command::new(BIN)
        .args([
            "workflow",
            "watch",
            "wf-1-1",
            "--max-wait-secs",
            "30",
            "--cluster",
            addr,
        ])
        .arg("--certs")
        .arg(certs)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let cancel = cli(
        &["workflow", "cancel", "wf-1-1", "--by", "ops"],
        addr,
        certs,
    )
    .await?;
    assert!(cancel.status.success(), "{}", stderr(&cancel));
    assert!(stdout(&cancel).starts_with("cancel of wf-1-1 requested"));
    let watched = tokio::task::spawn_blocking(move || watcher.wait_with_output()).await??;
    assert_eq!(watched.status.code(), Some(1), "{}", stderr(&watched));
    assert_eq!(
        stderr(&watched).trim(),
        "error: workflow wf-1-1 ended Aborted: cancelled by ops"
    );
    let streamed = stdout(&watched);
    assert!(
        streamed.lines().any(|l| l.contains("#0  Submitted")),
        "{streamed}"
    );
    assert!(
        streamed
            .lines()
            .any(|l| l.ends_with("CancelRequested  by ops")),
        "{streamed}"
    );
    assert!(
        streamed
            .lines()
            .last()
            .is_some_and(|l| l.contains("Aborted")),
        "{streamed}"
    );

    let again = cli(&["workflow", "cancel", "wf-1-1"], addr, certs).await?;
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(
        stderr(&again).trim(),
        "error: refused: workflow wf-1-1 already ended (Aborted)"
    );

    gate.send_replace(true);
    let second = cluster.node.engine().submit::<Gated>(()).await?;
    let done = cli(&["workflow", "watch", &second.to_string()], addr, certs).await?;
    assert!(done.status.success(), "{}", stderr(&done));
    let last = stdout(&done).lines().last().map(str::to_string);
    assert!(
        last.as_deref()
            .is_some_and(|l| l.starts_with("wf-1-2 Completed (8 events")),
        "{}",
        stdout(&done)
    );

    let show = cli(&["workflow", "show", "wf-1-2"], addr, certs).await?;
    let text = stdout(&show);
    assert!(text.starts_with("wf-1-2  test.gated  Completed"), "{text}");
    assert!(text.contains("metric Finish.write_pause_ms = 12"), "{text}");
    assert!(text.contains("SEQ  TIME"), "{text}");

    let all = cli(&["workflow", "list", "--all", "--json"], addr, certs).await?;
    let listed: serde_json::Value = serde_json::from_slice(&all.stdout)?;
    assert_eq!(listed["workflows"][0]["phase"], "Aborted");
    assert_eq!(listed["workflows"][1]["phase"], "Completed");
    assert_eq!(listed["unreachable"], serde_json::json!([]));

    let missing = cli(&["workflow", "show", "wf-1-99"], addr, certs).await?;
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        stderr(&missing).trim(),
        "error: refused: workflow wf-1-99 does not exist (node 1 has no such workflow)"
    );
    cluster.node.shutdown().await;
    Ok(())
}

// Proves `resume --json` and `cancel --json` answer with what was asked: a
// workflow paused after its point of no return is resumed (journaled with
// --by) and completes, a second resume is refused with one line and no
// JSON, and a cancel of a running workflow aborts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_and_cancel_answer_in_json() -> TestResult {
    let gate = watch::channel(false).0;
    let unstuck = Arc::new(AtomicBool::new(false));
    let cluster = one_node_with(&gate, unstuck.clone()).await?;
    let (addr, certs) = (cluster.addr.as_str(), cluster.certs.as_path());

    let stuck = cluster.node.engine().submit::<Stuck>(()).await?;
    wait_paused(&cluster.node, stuck).await?;
    let id = stuck.to_string();
    let shown = cli(&["workflow", "show", &id, "--json"], addr, certs).await?;
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout)?;
    assert_eq!(shown["workflow"]["phase"], "Paused", "{shown}");

    unstuck.store(true, Ordering::SeqCst);
    // The engine reports Paused a moment before its driver task ends, and
    // refuses a resume until then.
    let deadline = Instant::now() + DEADLINE;
    let resumed = loop {
        let args = ["workflow", "resume", &id, "--by", "ops", "--json"];
        let output = cli(&args, addr, certs).await?;
        if output.status.success() || Instant::now() >= deadline {
            break output;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let answer: serde_json::Value = serde_json::from_slice(&resumed.stdout)?;
    assert_eq!(
        answer,
        serde_json::json!({ "id": id, "requested": "resume", "by": "ops" })
    );
    let done = cli(&["workflow", "watch", &id, "--json"], addr, certs).await?;
    assert!(done.status.success(), "{}", stderr(&done));
    let events: Vec<serde_json::Value> = stdout(&done)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "ResumeRequested" && e["detail"] == "by ops"),
        "{}",
        stdout(&done)
    );
    assert_eq!(
        events.last().map(|e| e["phase"].clone()),
        Some(serde_json::json!("Completed")),
        "{}",
        stdout(&done)
    );
    let again = cli(&["workflow", "resume", &id, "--json"], addr, certs).await?;
    assert_eq!(again.status.code(), Some(1));
    assert!(again.stdout.is_empty());
    let line = stderr(&again);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.starts_with("error: refused: "), "{line}");

    let running = cluster.node.engine().submit::<Gated>(()).await?;
    wait_in_step(&cluster.node, running, "Gate").await?;
    let id = running.to_string();
    let cancel = cli(
        &["workflow", "cancel", &id, "--by", "ops", "--json"],
        addr,
        certs,
    )
    .await?;
    assert!(cancel.status.success(), "{}", stderr(&cancel));
    let answer: serde_json::Value = serde_json::from_slice(&cancel.stdout)?;
    assert_eq!(
        answer,
        serde_json::json!({ "id": id, "requested": "cancel", "by": "ops" })
    );
    let watched = cli(&["workflow", "watch", &id], addr, certs).await?;
    assert_eq!(watched.status.code(), Some(1));
    assert_eq!(
        stderr(&watched).trim(),
        format!("error: workflow {id} ended Aborted: cancelled by ops")
    );
    cluster.node.shutdown().await;
    Ok(())
}
