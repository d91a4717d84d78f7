//! The real-process crash test: a separate program runs a 4-step workflow on
//! a redb journal and is SIGKILLed at every journal boundary in turn (just
//! before and just after each append), then restarted on the same files. It
//! must end `Completed` (or `Aborted` with every compensation done), with
//! each effect applied exactly once.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use shardflow_store::RedbJournal;
use shardflow_workflow::Phase;

const EFFECTS: TableDefinition<&str, u64> = TableDefinition::new("effects");
const CHILD: &str = env!("CARGO_BIN_EXE_journal-crash-child");

/// Runs the child to completion; returns its stdout lines.
fn run_to_end(dir: &Path, mode: &str) -> Vec<String> {
    let output = Command::new(CHILD)
        .arg(dir)
        .arg(mode)
        .output()
        .expect("child starts");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "child failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

/// Runs the child until it reports boundary `boundary`, then SIGKILLs it.
fn kill_at(dir: &Path, mode: &str, boundary: u64) {
    let mut child = Command::new(CHILD)
        .arg(dir)
        .arg(mode)
        .arg("--crash-at")
        .arg(boundary.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("child starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let expected = format!("BOUNDARY {boundary}");
    let reached = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line == expected);
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    assert!(reached, "child never reached boundary {boundary}");
}

fn value(lines: &[String], key: &str) -> String {
    lines
        .iter()
        .find_map(|line| line.strip_prefix(&format!("{key} ")))
        .unwrap_or_else(|| panic!("no {key} line in {lines:?}"))
        .to_string()
}

fn effects(dir: &Path) -> BTreeSet<String> {
    let db = Database::create(dir.join("effects.redb")).expect("effects file");
    let txn = db.begin_read().expect("read");
    let table = txn.open_table(EFFECTS).expect("effects table");
    let mut keys = BTreeSet::new();
    for entry in table.iter().expect("iter") {
        let (key, count) = entry.expect("entry");
        assert_eq!(count.value(), 1, "{} applied more than once", key.value());
        keys.insert(key.value().to_string());
    }
    keys
}

fn expected_effects(mode: &str) -> BTreeSet<String> {
    let keys: &[&str] = match mode {
        "success" => &["wf-1-1/one", "wf-1-1/two", "wf-1-1/three", "wf-1-1/four"],
        _ => &[
            "wf-1-1/one",
            "wf-1-1/two",
            "wf-1-1/one!undo",
            "wf-1-1/two!undo",
            "wf-1-1/three!undo",
        ],
    };
    keys.iter().map(|k| k.to_string()).collect()
}

fn crash_at_every_boundary(mode: &str, settled: &str) {
    let reference = tempfile::tempdir().expect("tempdir");
    let lines = run_to_end(reference.path(), mode);
    assert_eq!(value(&lines, "SETTLED"), settled);
    assert_eq!(effects(reference.path()), expected_effects(mode));
    let appends: u64 = value(&lines, "APPENDS").parse().expect("number");
    assert!(
        appends >= 6,
        "a 4-step workflow needs at least 6 appends, saw {appends}"
    );
    for boundary in 0..2 * appends {
        let dir = tempfile::tempdir().expect("tempdir");
        kill_at(dir.path(), mode, boundary);
        let lines = run_to_end(dir.path(), mode);
        assert_eq!(value(&lines, "SETTLED"), settled, "boundary {boundary}");
        assert_eq!(
            effects(dir.path()),
            expected_effects(mode),
            "boundary {boundary}"
        );
        let journal = RedbJournal::open(dir.path().join("journal.redb")).expect("journal verifies");
        let verified = journal.verify_all().expect("every instance verifies");
        assert_eq!(verified.len(), 1, "boundary {boundary}: one instance");
        let phase = &verified[0].state.phase;
        assert!(phase.is_terminal(), "boundary {boundary}: {phase:?}");
        assert_eq!(phase == &Phase::Completed, settled == "Completed");
    }
}

// Proves a SIGKILL at any journal boundary of a successful workflow still
// ends Completed with every effect applied exactly once.
#[test]
fn sigkill_at_every_boundary_then_restart_completes() {
    crash_at_every_boundary("success", "Completed");
}

// Proves a SIGKILL at any boundary of a failing workflow still ends Aborted
// with every started step compensated exactly once.
#[test]
fn sigkill_at_every_boundary_then_restart_aborts_with_all_compensations() {
    crash_at_every_boundary("fail", "Aborted");
}
