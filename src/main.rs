//! The `shardflow` command line. It only parses arguments, calls the
//! library and prints; errors reach the user as one line on stderr.
//!
//! Exit codes: 0 success; 1 the operation failed (including a journal that
//! does not verify); 2 the command line was invalid.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shardflow::audit::{self, Timeline};
use shardflow::workflow::WorkflowId;

#[derive(Parser)]
#[command(
    name = "shardflow",
    version,
    about = "Durable, journaled data migrations inside a live multi-Raft cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Audit a stopped node's workflow journal (no cluster needed).
    #[command(subcommand)]
    Journal(JournalCommand),
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Print each workflow's timeline: steps, attempts, durations, how it ended.
    ///
    /// Example: shardflow journal replay --data /var/lib/shardflow/node-1
    Replay {
        /// The node's data directory (holds journal.redb).
        #[arg(long)]
        data: PathBuf,
        /// Only this workflow (e.g. wf-1-7).
        #[arg(long)]
        workflow: Option<WorkflowId>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check every hash chain and replay rule; name the first bad event.
    ///
    /// Example: shardflow journal verify --data /var/lib/shardflow/node-1
    Verify {
        /// The node's data directory (holds journal.redb).
        #[arg(long)]
        data: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Journal(JournalCommand::Replay {
            data,
            workflow,
            json,
        }) => {
            let timelines = audit::replay(&data, workflow)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "workflows": timelines }))?
                );
            } else {
                timelines.iter().for_each(print_timeline);
            }
        }
        Command::Journal(JournalCommand::Verify { data, json }) => {
            let summary = audit::verify(&data)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!(
                    "ok: {} workflows, {} events verified in {}",
                    summary.workflows, summary.events, summary.path
                );
            }
        }
    }
    Ok(())
}

fn print_timeline(timeline: &Timeline) {
    let reason = timeline
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    println!(
        "{}  {}  {}{}  epoch {}  {} events",
        timeline.id, timeline.kind, timeline.phase, reason, timeline.epoch, timeline.events
    );
    println!(
        "  {:<16} {:<13} {:>8} {:>11} {:>11}",
        "STEP", "STATUS", "ATTEMPTS", "DURATION_MS", "CHECKPOINTS"
    );
    for step in &timeline.steps {
        let duration = step
            .duration_ms
            .map_or_else(|| "-".to_string(), |d| d.to_string());
        println!(
            "  {:<16} {:<13} {:>8} {:>11} {:>11}",
            step.name, step.status, step.attempts, duration, step.checkpoints
        );
    }
    for metric in &timeline.metrics {
        println!(
            "  metric {}.{} = {}",
            metric.step, metric.name, metric.value
        );
    }
}
