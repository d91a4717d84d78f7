//! `shardflow journal replay|verify` on the data directory of a stopped
//! node, as an operator runs them: the timeline matches what the engine
//! reported; the `--json` field names are the documented schema
//! (`docs/journal-schema.md`); a tampered event of a copied journal of a
//! real MoveVShard run is named by instance and seq with a non-zero exit.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use shardflow::audit::{JOURNAL_FILE, REPLAY_SCHEMA, VERIFY_SCHEMA};
use shardflow::embedded::{EmbeddedCluster, EmbeddedOptions};
use shardflow::node::server::MigrationTimings;
use shardflow::node::vshard::vshard_of;
use shardflow::steps::move_vshard::base_copy::CopyCursor;
use shardflow::store::redb_journal::ROW_SEQ;
use shardflow::store::RedbJournal;
use shardflow::workflow::envelope::decode;
use shardflow::workflow::{
    Engine, EngineConfig, Event, Phase, RetryPolicy, Step, StepContext, StepError, Workflow,
    WorkflowId,
};

const BIN: &str = env!("CARGO_BIN_EXE_shardflow");
const EVENTS: TableDefinition<(u64, u64, u64), &[u8]> = TableDefinition::new("journal_events");

/// A step that checkpoints once and measures a write pause.
struct Measured(&'static str);

#[async_trait]
impl Step<()> for Measured {
    fn name(&self) -> &'static str {
        self.0
    }
    async fn run(&self, ctx: &StepContext<()>) -> Result<Vec<u8>, StepError> {
        ctx.checkpoint(vec![1]).await?;
        ctx.record_metric("write_pause_us", 1234).await?;
        Ok(Vec::new())
    }
    async fn compensate(&self, _: &StepContext<()>) -> Result<(), StepError> {
        Ok(())
    }
}

struct TwoSteps;

impl Workflow for TwoSteps {
    type Input = ();
    const KIND: &'static str = "two-steps";
    fn steps(&self) -> Vec<Arc<dyn Step<()>>> {
        vec![Arc::new(Measured("copy")), Arc::new(Measured("cut-over"))]
    }
}

/// Runs TwoSteps to completion on an engine over `dir`'s journal.
async fn stopped_node_dir(dir: &Path) {
    let journal = RedbJournal::open(dir.join(JOURNAL_FILE)).expect("journal");
    let engine = Engine::new(Arc::new(journal), EngineConfig::default());
    engine.register(TwoSteps);
    let id = engine.submit::<TwoSteps>(()).await.expect("submit");
    assert_eq!(engine.wait(id).await.expect("wait").phase, Phase::Completed);
}

fn shardflow(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(BIN)
        .args(args)
        .output()
        .expect("run shardflow");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into(),
        String::from_utf8_lossy(&output.stderr).into(),
    )
}

fn replay_json(data: &str) -> Value {
    let (code, stdout, stderr) = shardflow(&["journal", "replay", "--data", data, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).expect("json")
}

// Proves replay (text and --json) shows the timeline the engine produced
// and verify passes.
#[tokio::test]
async fn replay_and_verify_a_stopped_nodes_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    stopped_node_dir(dir.path()).await;
    let data = dir.path().to_str().expect("utf-8 path");
    let json = replay_json(data);
    assert_eq!(json["schema"], REPLAY_SCHEMA);
    let workflow = &json["workflows"][0];
    assert_eq!(workflow["id"], "wf-1-1");
    assert_eq!(workflow["phase"], "Completed");
    assert_eq!(workflow["reason"], Value::Null);
    assert_eq!(workflow["steps"][1]["name"], "cut-over");
    assert_eq!(workflow["steps"][1]["checkpoints"], 1);
    assert_eq!(workflow["metrics"][0]["value"], 1234);
    assert_eq!(workflow["write_pause_us"], 1234);
    assert_eq!(workflow["copy"], Value::Null, "not a MoveVShard");
    assert!(workflow["duration_ms"].is_u64());
    let (code, stdout, _) = shardflow(&["journal", "replay", "--data", data]);
    assert_eq!(code, 0);
    assert!(
        stdout.starts_with("wf-1-1  two-steps  Completed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("outcome: completed: every step succeeded"),
        "{stdout}"
    );
    assert!(stdout.contains("write pause: 1.2 ms (1234 us)"), "{stdout}");
    let (code, stdout, stderr) = shardflow(&["journal", "verify", "--data", data]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("ok: 1 workflows"), "{stdout}");
    let (code, stdout, stderr) = shardflow(&["journal", "verify", "--data", data, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let summary: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(summary["schema"], VERIFY_SCHEMA);
    assert_eq!(summary["workflows"], 1);
}

// ---------------------------------------------------------------------------
// The JSON schema, pinned on a known journal.

/// MoveVShard's step names, run by stand-ins: BaseCopy checkpoints a copy
/// cursor and fails its first attempt, CutOver measures a write pause.
struct StandIn(&'static str);

#[async_trait]
impl Step<()> for StandIn {
    fn name(&self) -> &'static str {
        self.0
    }
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(1),
            ..RetryPolicy::attempts(3)
        }
    }
    async fn run(&self, ctx: &StepContext<()>) -> Result<Vec<u8>, StepError> {
        match self.0 {
            "BaseCopy" => {
                let cursor = CopyCursor {
                    after_key: Some(b"k".to_vec()),
                    chunks: 1,
                    keys: 3,
                    bytes: 30,
                    total_keys: 3,
                    total_bytes: 30,
                };
                let progress = postcard::to_stdvec(&cursor).expect("cursor");
                ctx.checkpoint(progress).await?;
                if ctx.attempt() == 1 {
                    return Err(StepError::retryable("connection lost"));
                }
            }
            "CutOver" => {
                ctx.point_of_no_return().await?;
                ctx.record_metric("write_pause_us", 150_345).await?;
            }
            _ => {}
        }
        Ok(Vec::new())
    }
    async fn compensate(&self, _: &StepContext<()>) -> Result<(), StepError> {
        Ok(())
    }
}

/// A workflow journaled under MoveVShard's kind with its step names.
struct KnownMove;

impl Workflow for KnownMove {
    type Input = ();
    const KIND: &'static str = "MoveVShard";
    fn steps(&self) -> Vec<Arc<dyn Step<()>>> {
        ["Lock", "BaseCopy", "CatchUp", "CutOver", "Cleanup"]
            .into_iter()
            .map(|name| Arc::new(StandIn(name)) as Arc<dyn Step<()>>)
            .collect()
    }
}

/// Every field path of a JSON value: `a.b`, `a[].c` (arrays' elements
/// merged).
fn paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let path = match prefix {
                    "" => key.clone(),
                    _ => format!("{prefix}.{key}"),
                };
                out.insert(path.clone());
                paths(inner, &path, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

/// The field paths of `journal replay --json` (schema
/// `shardflow.journal.replay.v1`). Fields are only ever added: a change
/// here that removes or renames a path breaks the schema's users.
const REPLAY_FIELDS: &[&str] = &[
    "path",
    "schema",
    "workflows",
    "workflows[].attempts",
    "workflows[].cancel_requested_by",
    "workflows[].checkpoints",
    "workflows[].copy",
    "workflows[].copy.bytes_copied",
    "workflows[].copy.bytes_total",
    "workflows[].copy.catch_up_rounds",
    "workflows[].copy.keys_copied",
    "workflows[].copy.keys_total",
    "workflows[].copy.last_lag",
    "workflows[].definition_version",
    "workflows[].drivers",
    "workflows[].drivers[].at_ms",
    "workflows[].drivers[].epoch",
    "workflows[].drivers[].node",
    "workflows[].duration_ms",
    "workflows[].ended_at_ms",
    "workflows[].epoch",
    "workflows[].events",
    "workflows[].failures",
    "workflows[].id",
    "workflows[].kind",
    "workflows[].log",
    "workflows[].log[].at_ms",
    "workflows[].log[].attempt",
    "workflows[].log[].detail",
    "workflows[].log[].event",
    "workflows[].log[].node",
    "workflows[].log[].offset_ms",
    "workflows[].log[].seq",
    "workflows[].log[].step",
    "workflows[].metrics",
    "workflows[].metrics[].at_ms",
    "workflows[].metrics[].name",
    "workflows[].metrics[].step",
    "workflows[].metrics[].value",
    "workflows[].node",
    "workflows[].phase",
    "workflows[].point_of_no_return",
    "workflows[].reason",
    "workflows[].steps",
    "workflows[].steps[].attempts",
    "workflows[].steps[].checkpoints",
    "workflows[].steps[].compensated_at_ms",
    "workflows[].steps[].compensation_attempts",
    "workflows[].steps[].compensation_started_at_ms",
    "workflows[].steps[].duration_ms",
    "workflows[].steps[].ended_at_ms",
    "workflows[].steps[].failures",
    "workflows[].steps[].first_checkpoint_at_ms",
    "workflows[].steps[].last_checkpoint_at_ms",
    "workflows[].steps[].last_compensation_error",
    "workflows[].steps[].last_error",
    "workflows[].steps[].last_error_retryable",
    "workflows[].steps[].name",
    "workflows[].steps[].started_at_ms",
    "workflows[].steps[].status",
    "workflows[].submitted_at_ms",
    "workflows[].updated_at_ms",
    "workflows[].write_pause_us",
];

/// The field paths of `journal verify --json`.
const VERIFY_FIELDS: &[&str] = &["events", "path", "schema", "workflows"];

/// The schema document's field paths, as `replay: PATH` and `verify:
/// PATH`: the backquoted first cell of each table row, under the section
/// (`## ...`) naming the command.
fn documented_fields() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/journal-schema.md"
    ))
    .expect("docs/journal-schema.md");
    let mut section = "";
    let mut fields = BTreeSet::new();
    for line in doc.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            section = if heading.contains("journal replay") {
                "replay"
            } else if heading.contains("journal verify") {
                "verify"
            } else {
                ""
            };
        } else if let Some((path, _)) = line.strip_prefix("| `").and_then(|r| r.split_once('`')) {
            if !section.is_empty() {
                fields.insert(format!("{section}: {path}"));
            }
        }
    }
    fields
}

// Proves the `--json` output of both commands has exactly the golden field
// paths on a known journal (a MoveVShard-kind run with a retried step, a
// checkpointed copy cursor, the point of no return and a measured pause),
// that the schema document lists exactly those paths, and that the known
// journal's values read as journaled.
#[tokio::test]
async fn json_field_names_are_the_documented_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = RedbJournal::open(dir.path().join(JOURNAL_FILE)).expect("journal");
    let engine = Engine::new(Arc::new(journal), EngineConfig::default());
    engine.register(KnownMove);
    let id = engine.submit::<KnownMove>(()).await.expect("submit");
    assert_eq!(engine.wait(id).await.expect("wait").phase, Phase::Completed);
    drop(engine);
    let data = dir.path().to_str().expect("utf-8 path");

    let json = replay_json(data);
    let mut found = BTreeSet::new();
    paths(&json, "", &mut found);
    let golden: BTreeSet<String> = REPLAY_FIELDS.iter().map(|f| f.to_string()).collect();
    assert_eq!(found, golden, "journal replay --json field paths");
    let (code, stdout, stderr) = shardflow(&["journal", "verify", "--data", data, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let mut found = BTreeSet::new();
    paths(
        &serde_json::from_str(&stdout).expect("json"),
        "",
        &mut found,
    );
    let golden_verify: BTreeSet<String> = VERIFY_FIELDS.iter().map(|f| f.to_string()).collect();
    assert_eq!(found, golden_verify, "journal verify --json field paths");
    let documented = documented_fields();
    let expected: BTreeSet<String> = (golden.iter())
        .map(|f| format!("replay: {f}"))
        .chain(golden_verify.iter().map(|f| format!("verify: {f}")))
        .collect();
    assert_eq!(
        documented, expected,
        "docs/journal-schema.md lists exactly the fields"
    );

    let workflow = &json["workflows"][0];
    assert_eq!(workflow["kind"], "MoveVShard");
    assert_eq!(workflow["phase"], "Completed");
    assert_eq!(workflow["attempts"], 6);
    assert_eq!(workflow["failures"], 1);
    assert_eq!(workflow["checkpoints"], 2);
    assert_eq!(workflow["write_pause_us"], 150_345);
    assert_eq!(workflow["point_of_no_return"], "CutOver");
    assert_eq!(workflow["copy"]["keys_copied"], 3);
    assert_eq!(workflow["copy"]["bytes_total"], 30);
    assert_eq!(workflow["drivers"].as_array().map(Vec::len), Some(1));
    let copy = &workflow["steps"][1];
    assert_eq!(copy["name"], "BaseCopy");
    assert_eq!(
        (copy["attempts"].clone(), copy["failures"].clone()),
        (2.into(), 1.into())
    );
    assert_eq!(copy["last_error"], Value::Null, "it succeeded since");
    assert!(copy["first_checkpoint_at_ms"].as_u64() <= copy["last_checkpoint_at_ms"].as_u64());
    let log: Vec<String> = (workflow["log"].as_array().expect("log").iter())
        .map(|line| {
            let step = line["step"].as_str().unwrap_or("-");
            format!("{} {step}", line["event"].as_str().expect("event"))
        })
        .collect();
    assert_eq!(
        log,
        [
            "Submitted -",
            "DriverStarted -",
            "StepStarted Lock",
            "StepSucceeded Lock",
            "StepStarted BaseCopy",
            "StepFailed BaseCopy",
            "StepStarted BaseCopy",
            "StepSucceeded BaseCopy",
            "StepStarted CatchUp",
            "StepSucceeded CatchUp",
            "StepStarted CutOver",
            "PointOfNoReturn CutOver",
            "Metric CutOver",
            "StepSucceeded CutOver",
            "StepStarted Cleanup",
            "StepSucceeded Cleanup",
            "Completed -",
        ],
        "every event but checkpoints, in order"
    );
    let seqs: Vec<u64> = (workflow["log"].as_array().expect("log").iter())
        .map(|line| line["seq"].as_u64().expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(
        seqs.len() as u64 + 2,
        workflow["events"].as_u64().expect("n")
    );
}

// ---------------------------------------------------------------------------
// A real migration's journal.

/// Flips one bit of the last byte of event `seq` of `id`.
fn tamper(journal: &Path, id: WorkflowId, seq: u64) {
    let db = Database::create(journal).expect("raw open");
    let txn = db.begin_write().expect("txn");
    {
        let mut events = txn.open_table(EVENTS).expect("events");
        let key = (id.node, id.serial, seq);
        let mut bytes = events
            .get(key)
            .expect("get")
            .expect("the event")
            .value()
            .to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x04;
        events.insert(key, bytes.as_slice()).expect("insert");
    }
    txn.commit().expect("commit");
}

/// The seqs of `id`'s BaseCopy checkpoints, read raw from the journal.
fn copy_checkpoints(journal: &Path, id: WorkflowId) -> Vec<u64> {
    let db = Database::create(journal).expect("raw open");
    let txn = db.begin_read().expect("txn");
    let events = txn.open_table(EVENTS).expect("events");
    // The instance's row follows its events in the same table (format 2).
    let range = (id.node, id.serial, 0)..(id.node, id.serial, ROW_SEQ);
    (events.range(range).expect("range"))
        .map(|entry| {
            let (key, value) = entry.expect("entry");
            (key.value().2, decode(value.value()).expect("an event"))
        })
        .filter(|(_, envelope)| {
            matches!(envelope.body(), Event::Checkpoint { step, .. } if step == "BaseCopy")
        })
        .map(|(seq, _)| seq)
        .collect()
}

// Proves the audit on a real MoveVShard journal: a migration runs on an
// in-process cluster (EmbeddedCluster, the workflows installed as the node
// binary installs them), the driving node is stopped, its journal copied;
// replay shows the completed timeline (every step succeeded, the copy's
// figures, the measured write pause, the point of no return in CutOver);
// then two events of the copy are tampered with — a BaseCopy checkpoint in
// the middle and the last event — and verify (and replay) exit 1 naming
// the first: the instance and the checkpoint's seq; the original still
// verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_tampered_event_of_a_real_migration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = EmbeddedOptions {
        groups: 2,
        migration: MigrationTimings {
            ghost_ttl: Duration::from_millis(300),
            reactor_interval: Duration::from_millis(50),
            ..MigrationTimings::default()
        },
        ..EmbeddedOptions::default()
    };
    let mut cluster = EmbeddedCluster::start(&dir.path().join("cluster"), options)
        .await
        .expect("cluster");
    let client = cluster.client().clone();
    let vshard = 5u16;
    let keys: Vec<Vec<u8>> = (0u64..)
        .map(|i| format!("audit-{i:05}").into_bytes())
        .filter(|key| vshard_of(key) == vshard)
        .take(30)
        .collect();
    for key in &keys {
        client.put(key, b"value").await.expect("put");
    }
    let id = client
        .migrate_vshard(u32::from(vshard), 2, None)
        .await
        .expect("submit");
    let state = client
        .workflow_watch(id, Duration::from_secs(60), |_| {})
        .await
        .expect("watch");
    assert_eq!(state.phase, Phase::Completed);
    cluster.stop_node(id.node).await.expect("stop");
    let original = cluster.data_dir(id.node).expect("dir").to_path_buf();
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).expect("mkdir");
    std::fs::copy(original.join(JOURNAL_FILE), copy.join(JOURNAL_FILE)).expect("copy");
    cluster.shutdown().await;

    let data = copy.to_str().expect("utf-8");
    let json = replay_json(data);
    let workflow = &json["workflows"][0];
    assert_eq!(workflow["id"], id.to_string());
    assert_eq!(workflow["kind"], "MoveVShard");
    assert_eq!(workflow["phase"], "Completed");
    assert_eq!(workflow["point_of_no_return"], "CutOver");
    let steps: Vec<(String, String)> = (workflow["steps"].as_array().expect("steps").iter())
        .map(|s| (s["name"].to_string(), s["status"].to_string()))
        .collect();
    assert_eq!(steps.len(), 5, "{steps:?}");
    assert!(
        steps.iter().all(|(_, status)| status == "\"Succeeded\""),
        "{steps:?}"
    );
    assert!(
        workflow["write_pause_us"].as_u64() > Some(0),
        "the pause is measured"
    );
    assert_eq!(workflow["copy"]["keys_copied"], keys.len());
    assert_eq!(workflow["copy"]["keys_total"], keys.len());
    let (code, text, stderr) = shardflow(&["journal", "replay", "--data", data]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        text.contains(&format!(
            "copied {n} keys, {copied} bytes (the vShard held {n} keys, {total} bytes",
            n = keys.len(),
            copied = workflow["copy"]["bytes_copied"],
            total = workflow["copy"]["bytes_total"]
        )),
        "{text}"
    );
    assert!(
        text.contains("point of no return crossed in CutOver"),
        "{text}"
    );

    let journal = copy.join(JOURNAL_FILE);
    let checkpoints = copy_checkpoints(&journal, id);
    assert!(!checkpoints.is_empty());
    let middle = checkpoints[checkpoints.len() / 2];
    let last = workflow["events"].as_u64().expect("events") - 1;
    assert!(middle < last);
    tamper(&journal, id, last);
    tamper(&journal, id, middle);
    let named = format!("workflow {id}, event seq {middle}:");
    for command in ["verify", "replay"] {
        let (code, stdout, stderr) = shardflow(&["journal", command, "--data", data]);
        assert_eq!(code, 1, "{command}: {stdout}");
        assert!(stderr.contains(&named), "{command} names {named}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    }
    let original = original.to_str().expect("utf-8");
    let (code, stdout, stderr) = shardflow(&["journal", "verify", "--data", original]);
    assert_eq!(code, 0, "the original is untouched: {stderr}");
    assert!(stdout.starts_with("ok: 1 workflows"), "{stdout}");
}

// Proves a journal still held open (a running node's) is refused with a
// clear line, not mistaken for a file that is not a journal.
#[tokio::test]
async fn a_journal_in_use_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    stopped_node_dir(dir.path()).await;
    let held = RedbJournal::open(dir.path().join(JOURNAL_FILE)).expect("journal");
    let data = dir.path().to_str().expect("utf-8 path");
    let (code, _, stderr) = shardflow(&["journal", "verify", "--data", data]);
    assert_eq!(code, 1);
    assert!(stderr.contains("is in use"), "{stderr}");
    assert!(stderr.contains("stop the node first"), "{stderr}");
    drop(held);
    let (code, _, stderr) = shardflow(&["journal", "verify", "--data", data]);
    assert_eq!(code, 0, "{stderr}");
}

// Proves a directory without a journal is a clear one-line error.
#[test]
fn missing_journal_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, stderr) = shardflow(&[
        "journal",
        "verify",
        "--data",
        dir.path().to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.starts_with("error: no journal at"), "{stderr}");
}
