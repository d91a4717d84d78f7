//! `shardflow migrate vshard|replica`: submits a migration to any node
//! (which checks it, journals it and drives it) and prints the workflow id.
//!
//! With `--wait` it follows the workflow to its end: on a terminal, a
//! progress bar on stderr (phase and step, keys and bytes copied of the
//! vShard's total, the catch-up lag); otherwise one stderr line per step
//! change. It exits 0 only if the migration completes; its final line
//! names the outcome, with the measured write pause of a vShard move.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use shardflow::node::client::Client;
use shardflow::node::rpc::WorkflowPage;
use shardflow::steps::progress::{progress, MigrationProgress};
use shardflow::workflow::{Phase, WorkflowId, WorkflowState};

use super::args::{ClusterArgs, MigrateCommand, WaitArgs};
use super::{with_client, CliError, Output};

pub fn run(command: MigrateCommand) -> Result<Output, CliError> {
    match command {
        MigrateCommand::Vshard {
            vshard,
            to_group,
            pause_budget_ms,
            wait,
            cluster,
            json,
        } => {
            let vshard = shardflow::node::client::check_vshard(vshard)?;
            let what = format!("vShard {vshard} -> group {to_group}");
            submit_and_follow(&cluster, &wait, json, what, move |client| async move {
                (client.migrate_vshard(u32::from(vshard), to_group, pause_budget_ms)).await
            })
        }
        MigrateCommand::Replica {
            group,
            from,
            to,
            wait,
            cluster,
            json,
        } => {
            let what = format!("group {group}'s replica on node {from} -> node {to}");
            submit_and_follow(&cluster, &wait, json, what, move |client| async move {
                client.migrate_replica(group, from, to).await
            })
        }
    }
}

fn submit_and_follow<F, Fut>(
    cluster: &ClusterArgs,
    wait: &WaitArgs,
    json: bool,
    what: String,
    submit: F,
) -> Result<Output, CliError>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<WorkflowId, shardflow::node::client::ClientError>>,
{
    let follow = wait.wait;
    let max_wait = Duration::from_secs(wait.max_wait_secs);
    let (id, state) = with_client(cluster, |client| async move {
        let id = submit(client.clone()).await?;
        if !follow {
            return Ok((id, None));
        }
        eprintln!("{id}: {what}");
        let mut display = Display::new();
        let state = client
            .workflow_follow(id, max_wait, |page| display.update(page))
            .await;
        display.finish();
        Ok((id, Some(state?)))
    })?;
    let Some(state) = state else {
        return Ok(match json {
            true => Output::Json(json!({ "id": id.to_string() })),
            false => Output::Text(id.to_string()),
        });
    };
    let figures = progress(&state);
    if state.phase != Phase::Completed {
        let reason = match &state.phase {
            Phase::Aborted { reason }
            | Phase::Paused { reason, .. }
            | Phase::Compensating { reason } => format!(": {reason}"),
            Phase::Running | Phase::Completed => String::new(),
        };
        return Err(CliError::NotCompleted {
            id: id.to_string(),
            phase: state.phase.label(),
            reason,
        });
    }
    Ok(match json {
        true => Output::Json(json!({
            "id": id.to_string(),
            "phase": state.phase.label(),
            "progress": figures,
            "took_ms": took_ms(&state),
        })),
        false => Output::Text(completed_line(id, &state, &figures)),
    })
}

fn took_ms(state: &WorkflowState) -> u64 {
    state.updated_at_ms.saturating_sub(state.submitted_at_ms)
}

/// `wf-1-3 Completed in 4.210s: 5000 keys (1.2 MiB) copied, write pause 41.3 ms`.
fn completed_line(id: WorkflowId, state: &WorkflowState, figures: &MigrationProgress) -> String {
    let mut line = format!("{id} Completed in {:.3}s", took_ms(state) as f64 / 1000.0);
    let mut parts = Vec::new();
    if figures.keys_copied > 0 || figures.bytes_total > 0 {
        parts.push(format!(
            "{} keys ({}) copied",
            figures.keys_copied,
            bytes(figures.bytes_copied)
        ));
    }
    if let Some(pause) = figures.write_pause_us {
        parts.push(format!("write pause {:.1} ms", pause as f64 / 1000.0));
    }
    if !parts.is_empty() {
        line.push_str(": ");
        line.push_str(&parts.join(", "));
    }
    line
}

/// Human bytes: `512 B`, `3.4 KiB`, `1.2 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// One line describing where a migration stands.
fn status_line(figures: &MigrationProgress) -> String {
    let mut parts = vec![match &figures.step {
        Some(step) => format!("{} {step}", figures.phase),
        None => figures.phase.clone(),
    }];
    if figures.bytes_total > 0 || figures.keys_copied > 0 {
        parts.push(format!(
            "{}/{} keys, {}/{}",
            figures.keys_copied,
            figures.keys_total,
            bytes(figures.bytes_copied),
            bytes(figures.bytes_total)
        ));
    }
    if let Some(lag) = figures.lag {
        parts.push(format!("lag {lag} changes"));
    }
    if let Some(pause) = figures.write_pause_us {
        parts.push(format!("write pause {:.1} ms", pause as f64 / 1000.0));
    }
    parts.join(", ")
}

/// The progress display: a bar on a terminal, step-change lines otherwise.
struct Display {
    bar: Option<ProgressBar>,
    last_line: String,
}

impl Display {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            bar,
            last_line: String::new(),
        }
    }

    fn update(&mut self, page: &WorkflowPage) {
        let figures = progress(&page.state);
        let line = status_line(&figures);
        match &self.bar {
            Some(bar) => {
                bar.set_length(figures.bytes_total.max(figures.bytes_copied));
                bar.set_position(figures.bytes_copied);
                bar.set_message(line.clone());
            }
            None => {
                // Without a terminal: a line when the phase or step changes.
                let head = format!("{} {:?}", figures.phase, figures.step);
                if !self.last_line.starts_with(&head) {
                    eprintln!("{line}");
                }
            }
        }
        self.last_line = format!("{} {:?} {line}", figures.phase, figures.step);
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_human() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 + 400), "3.4 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
    }

    #[test]
    fn status_line_names_step_copy_and_lag() {
        let figures = MigrationProgress {
            phase: "Running".into(),
            step: Some("BaseCopy".into()),
            keys_copied: 10,
            keys_total: 40,
            bytes_copied: 2048,
            bytes_total: 8192,
            ..MigrationProgress::default()
        };
        assert_eq!(
            status_line(&figures),
            "Running BaseCopy, 10/40 keys, 2.0 KiB/8.0 KiB"
        );
        let figures = MigrationProgress {
            step: Some("CatchUp".into()),
            lag: Some(7),
            ..figures
        };
        assert_eq!(
            status_line(&figures),
            "Running CatchUp, 10/40 keys, 2.0 KiB/8.0 KiB, lag 7 changes"
        );
    }
}
