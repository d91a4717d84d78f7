//! `shardflow journal replay|verify` on the data directory of a stopped
//! engine, as an operator runs them: the timeline matches what the engine
//! reported, and a tampered event is named by instance and seq with a
//! non-zero exit.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};
use shardflow::audit::JOURNAL_FILE;
use shardflow::store::RedbJournal;
use shardflow::workflow::{Engine, EngineConfig, Phase, Step, StepContext, StepError, Workflow};

const BIN: &str = env!("CARGO_BIN_EXE_shardflow");
const EVENTS: TableDefinition<(u64, u64, u64), &[u8]> = TableDefinition::new("journal_events");

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

// Proves replay --json shows the timeline the engine produced and verify passes.
#[tokio::test]
async fn replay_and_verify_a_stopped_nodes_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    stopped_node_dir(dir.path()).await;
    let data = dir.path().to_str().expect("utf-8 path");
    let (code, stdout, stderr) = shardflow(&["journal", "replay", "--data", data, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let workflow = &json["workflows"][0];
    assert_eq!(workflow["id"], "wf-1-1");
    assert_eq!(workflow["phase"], "Completed");
    assert_eq!(workflow["steps"][1]["name"], "cut-over");
    assert_eq!(workflow["steps"][1]["checkpoints"], 1);
    assert_eq!(workflow["metrics"][0]["value"], 1234);
    let (code, stdout, _) = shardflow(&["journal", "replay", "--data", data]);
    assert_eq!(code, 0);
    assert!(stdout.contains("wf-1-1  two-steps  Completed"), "{stdout}");
    let (code, stdout, stderr) = shardflow(&["journal", "verify", "--data", data]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("ok: 1 workflows"), "{stdout}");
}

// Proves a tampered event is named by instance and seq, with exit code 1.
#[tokio::test]
async fn verify_names_a_tampered_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    stopped_node_dir(dir.path()).await;
    let db = Database::create(dir.path().join(JOURNAL_FILE)).expect("raw open");
    let txn = db.begin_write().expect("txn");
    {
        let mut events = txn.open_table(EVENTS).expect("events");
        let mut bytes = events
            .get((1, 1, 3))
            .expect("get")
            .expect("seq 3")
            .value()
            .to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x04;
        events.insert((1, 1, 3), bytes.as_slice()).expect("insert");
    }
    txn.commit().expect("commit");
    drop(db);
    let data = dir.path().to_str().expect("utf-8 path");
    let (code, _, stderr) = shardflow(&["journal", "verify", "--data", data]);
    assert_eq!(code, 1);
    assert!(stderr.contains("workflow wf-1-1, event seq 3"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
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
