//! The journal audit from code: runs a MoveVShard on an in-process cluster
//! it starts (`EmbeddedCluster`: real QUIC on loopback, real redb files),
//! stops the node that drove the migration, then verifies and replays that
//! node's journal with `shardflow::audit::{verify, replay}` — no cluster
//! needed for the audit — and prints the timeline.
//!
//! `cargo run --example audit_replay`
//!
//! The same audit from the command line, on the data directory of any
//! stopped node: `shardflow journal verify --data DIR` and
//! `shardflow journal replay --data DIR [--workflow ID] [--json]`.

use std::error::Error;
use std::path::Path;
use std::time::Duration;

use shardflow::audit::{self, Timeline};
use shardflow::embedded::{EmbeddedCluster, EmbeddedOptions};
use shardflow::node::server::MigrationTimings;
use shardflow::node::vshard::vshard_of;

/// The vShard that moves (group 1 owns it after bootstrap) and where to.
const VSHARD: u16 = 7;
const TO_GROUP: u64 = 2;

/// What the example saw, for its test.
#[derive(Debug)]
struct Audited {
    phase: &'static str,
    workflows: u64,
    events: u64,
    timelines: Vec<Timeline>,
}

/// The example: a cluster in `dir`, a migration, the driver's journal
/// audited with the cluster stopped.
async fn run(dir: &Path) -> Result<Audited, Box<dyn Error>> {
    let options = EmbeddedOptions {
        groups: 2,
        // A short ghost time to live, so the source's copy is cleaned up
        // (and the migration completes) within a second.
        migration: MigrationTimings {
            ghost_ttl: Duration::from_millis(300),
            reactor_interval: Duration::from_millis(50),
            ..MigrationTimings::default()
        },
        ..EmbeddedOptions::default()
    };
    println!("starting a 3-node cluster in {}", dir.display());
    let mut cluster = EmbeddedCluster::start(dir, options).await?;
    let client = cluster.client().clone();

    let keys: Vec<Vec<u8>> = (0u64..)
        .map(|i| format!("audit-{i:05}").into_bytes())
        .filter(|key| vshard_of(key) == VSHARD)
        .take(50)
        .collect();
    for key in &keys {
        client.put(key, b"a value worth moving").await?;
    }
    println!("wrote {} keys to vShard {VSHARD}", keys.len());

    let id = client
        .migrate_vshard(u32::from(VSHARD), TO_GROUP, None)
        .await?;
    println!("migration {id} submitted; node {} drives it", id.node);
    let state = client
        .workflow_watch(id, Duration::from_secs(120), |event| {
            if let Some(step) = event.event.step() {
                if matches!(
                    event.event.name(),
                    "StepStarted" | "StepSucceeded" | "StepFailed"
                ) {
                    println!("  {} {step}", event.event.name());
                }
            }
        })
        .await?;
    println!("migration {id}: {}", state.phase.label());

    // The audit needs no cluster: stop the driving node and read its data
    // directory, as an operator would after the fact.
    cluster.stop_node(id.node).await?;
    let data = cluster.data_dir(id.node)?.to_path_buf();
    let summary = audit::verify(&data)?;
    println!(
        "\njournal {}: {} workflows, {} events, every hash chain and replay rule verified",
        summary.path, summary.workflows, summary.events
    );
    let timelines = audit::replay(&data, Some(id))?;
    for timeline in &timelines {
        print_timeline(timeline);
    }
    cluster.shutdown().await;
    Ok(Audited {
        phase: state.phase.label(),
        workflows: summary.workflows,
        events: summary.events,
        timelines,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let audited = run(dir.path()).await?;
    let verified = audited.workflows >= 1 && audited.events > 0;
    if audited.phase != "Completed" || audited.timelines.len() != 1 || !verified {
        return Err(format!("unexpected: {audited:?}").into());
    }
    Ok(())
}

fn print_timeline(timeline: &Timeline) {
    println!(
        "\n{}  {}  {}{}",
        timeline.id,
        timeline.kind,
        timeline.phase,
        timeline
            .reason
            .as_deref()
            .map(|reason| format!(" ({reason})"))
            .unwrap_or_default()
    );
    println!(
        "  took {} ms; {} attempts ({} failed), {} checkpoints; write pause {}",
        timeline
            .duration_ms
            .map_or_else(|| "-".to_string(), |ms| ms.to_string()),
        timeline.attempts,
        timeline.failures,
        timeline.checkpoints,
        timeline
            .write_pause_us
            .map_or_else(|| "none".to_string(), |us| format!("{us} us")),
    );
    if let Some(copy) = &timeline.copy {
        println!(
            "  copied {} keys, {} bytes (of {} keys, {} bytes when the copy began), \
             {} catch-up rounds",
            copy.keys_copied,
            copy.bytes_copied,
            copy.keys_total,
            copy.bytes_total,
            copy.catch_up_rounds
        );
    }
    println!(
        "  {:<10} {:<10} {:>8} {:>7} {:>9} {:>11} {:>12}",
        "STEP", "STATUS", "ATTEMPTS", "FAILED", "START_MS", "DURATION_MS", "CHECKPOINTS"
    );
    for step in &timeline.steps {
        let start = step
            .started_at_ms
            .map(|at| at.saturating_sub(timeline.submitted_at_ms));
        println!(
            "  {:<10} {:<10} {:>8} {:>7} {:>9} {:>11} {:>12}",
            step.name,
            step.status,
            step.attempts,
            step.failures,
            start.map_or_else(|| "-".to_string(), |ms| ms.to_string()),
            step.duration_ms
                .map_or_else(|| "-".to_string(), |ms| ms.to_string()),
            step.checkpoints
        );
    }
    println!("  events (checkpoints counted above):");
    for line in &timeline.log {
        println!(
            "  {:>4} +{:>6} ms  node {}  {:<24} {:<9} {}",
            line.seq,
            line.offset_ms,
            line.node,
            line.event,
            line.step.as_deref().unwrap_or(""),
            line.detail
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the example runs as written: the migration completes, the
    // stopped driver's journal verifies, and its replay is the migration's
    // timeline with every MoveVShard step done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_example_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audited = run(dir.path()).await.expect("the example runs");
        assert_eq!(audited.phase, "Completed");
        assert!(audited.workflows >= 1, "{audited:?}");
        assert!(audited.events > 10, "{audited:?}");
        let [timeline] = audited.timelines.as_slice() else {
            panic!("one timeline: {audited:?}");
        };
        assert_eq!(timeline.kind, "MoveVShard");
        assert_eq!(timeline.phase, "Completed");
        let steps: Vec<&str> = timeline.steps.iter().map(|s| s.name.as_str()).collect();
        for step in ["BaseCopy", "CatchUp", "CutOver", "Cleanup"] {
            assert!(steps.contains(&step), "{steps:?}");
        }
        assert!(timeline.write_pause_us.is_some(), "{timeline:?}");
    }
}
