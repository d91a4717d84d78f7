//! Submit a migration from code: connect to a cluster with certificates,
//! move a vShard to another group (MoveVShard), stream its progress as the
//! workflow journals it, and print the result.
//!
//! `cargo run --example submit_migration`
//!
//! The example starts its own 3-node cluster ([`EmbeddedCluster`]) in a
//! temporary directory; against a real cluster, build the client the same
//! way from its certificate directory and node addresses. `cargo test`
//! runs the same code (see the test at the bottom).

use std::error::Error;
use std::path::Path;
use std::time::Duration;

use shardflow::embedded::{EmbeddedCluster, EmbeddedOptions};
use shardflow::node::client::{Client, ClientConfig};
use shardflow::node::server::MigrationTimings;
use shardflow::node::vshard::vshard_of;
use shardflow::steps::progress::progress;
use shardflow::workflow::Phase;

/// What the example saw, for its test.
#[derive(Debug)]
struct Outcome {
    phase: Phase,
    vshard: u16,
    to_group: u64,
    routed_to: Option<u64>,
    keys_copied: u64,
    write_pause_us: Option<u64>,
    progress_lines: usize,
}

async fn run(dir: &Path) -> Result<Outcome, Box<dyn Error>> {
    // A cluster to migrate in: 3 nodes, 2 data groups. The source keeps a
    // moved vShard's ghost for 500 ms (a node's --ghost-ttl-ms, 60 s by
    // default), so the migration's Cleanup ends quickly.
    let options = EmbeddedOptions {
        groups: 2,
        migration: MigrationTimings {
            ghost_ttl: Duration::from_millis(500),
            ..MigrationTimings::default()
        },
        ..EmbeddedOptions::default()
    };
    let cluster = EmbeddedCluster::start(dir, options).await?;
    let seeds: Vec<String> = (cluster.node_ids().iter())
        .filter_map(|&id| cluster.node(id).map(|node| node.local_addr().to_string()))
        .collect();

    // Connect with certificates: a directory holding ca.pem and admin.pem
    // (migrations need the admin role; client.pem only reads and writes).
    let client = Client::from_certs_dir(cluster.certs_dir(), ClientConfig::new(seeds))?;

    // 200 keys in one vShard, then move that vShard to the other group.
    let vshard = vshard_of(b"order:0");
    let keys = (0u64..)
        .map(|i| format!("order:{i}"))
        .filter(|key| vshard_of(key.as_bytes()) == vshard)
        .take(200);
    for key in keys {
        client.put(key.as_bytes(), b"pending").await?;
    }
    let routing = client.routing().await?;
    let from_group = (routing.routes.get(usize::from(vshard)))
        .map(|route| route.group)
        .ok_or("the cluster is not bootstrapped")?;
    let to_group = if from_group == 1 { 2 } else { 1 };
    let id = client
        .migrate_vshard(u32::from(vshard), to_group, Some(2_000))
        .await?;
    println!("{id}: vShard {vshard} group {from_group} -> group {to_group}");

    // Stream its progress: every poll gives the state and the new events.
    let mut progress_lines = 0;
    let state = client
        .workflow_follow(id, Duration::from_secs(60), |page| {
            for event in &page.events {
                let step = event.event.step().unwrap_or_default();
                println!(
                    "  #{} {} {step} {}",
                    event.seq,
                    event.event.name(),
                    event.event.detail()
                );
            }
            let figures = progress(&page.state);
            if !page.events.is_empty() {
                progress_lines += 1;
                println!(
                    "  {} {}: {}/{} keys copied, lag {:?}",
                    figures.phase,
                    figures.step.as_deref().unwrap_or("-"),
                    figures.keys_copied,
                    figures.keys_total,
                    figures.lag
                );
            }
        })
        .await?;

    // The result: how it ended and what it measured.
    let figures = progress(&state);
    println!(
        "{id} {}: {} keys copied, write pause {}",
        state.phase.label(),
        figures.keys_copied,
        figures
            .write_pause_us
            .map_or_else(|| "-".into(), |us| format!("{:.1} ms", us as f64 / 1000.0))
    );
    let routed_to = client
        .routing()
        .await?
        .routes
        .get(usize::from(vshard))
        .map(|route| route.group);
    client.shutdown().await;
    cluster.shutdown().await;
    Ok(Outcome {
        phase: state.phase,
        vshard,
        to_group,
        routed_to,
        keys_copied: figures.keys_copied,
        write_pause_us: figures.write_pause_us,
        progress_lines,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let outcome = run(dir.path()).await?;
    println!(
        "vShard {} is routed to group {:?} ({} progress updates streamed)",
        outcome.vshard, outcome.routed_to, outcome.progress_lines
    );
    if outcome.phase != Phase::Completed || outcome.routed_to != Some(outcome.to_group) {
        return Err(format!("the migration ended {:?}", outcome.phase).into());
    }
    if outcome.keys_copied == 0 || outcome.write_pause_us.is_none() {
        return Err("the migration copied nothing or measured no pause".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the example runs as written: the migration completes, the
    // vShard is routed to its new group, progress was streamed and the
    // write pause measured.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_example_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outcome = run(dir.path()).await.expect("the example runs");
        assert_eq!(outcome.phase, Phase::Completed, "{outcome:?}");
        assert_eq!(outcome.routed_to, Some(outcome.to_group), "{outcome:?}");
        assert!(outcome.keys_copied >= 200, "{outcome:?}");
        assert!(outcome.write_pause_us.is_some(), "{outcome:?}");
        assert!(outcome.progress_lines >= 3, "{outcome:?}");
        assert!(outcome.vshard < 1024);
    }
}
