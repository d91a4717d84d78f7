//! `shardflow journal replay|verify`: the audit of a stopped node's journal.

use shardflow::audit::{self, Timeline};

use super::args::JournalCommand;
use super::table::{opt, Table};
use super::{CliError, Output};

pub fn run(command: JournalCommand) -> Result<Output, CliError> {
    match command {
        JournalCommand::Replay {
            data,
            workflow,
            json,
        } => {
            let timelines = audit::replay(&data, workflow)?;
            if json {
                return Ok(Output::Json(serde_json::json!({ "workflows": timelines })));
            }
            let text: Vec<String> = timelines.iter().map(render_timeline).collect();
            Ok(Output::Text(text.join("\n")))
        }
        JournalCommand::Verify { data, json } => {
            let summary = audit::verify(&data)?;
            if json {
                return Ok(Output::Json(serde_json::to_value(&summary)?));
            }
            Ok(Output::Text(format!(
                "ok: {} workflows, {} events verified in {}",
                summary.workflows, summary.events, summary.path
            )))
        }
    }
}

/// A timeline as text: a header line, the steps table, the measured figures.
pub(super) fn render_timeline(timeline: &Timeline) -> String {
    let reason = timeline
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let mut lines = vec![format!(
        "{}  {}  {}{}  epoch {}  {} events",
        timeline.id, timeline.kind, timeline.phase, reason, timeline.epoch, timeline.events
    )];
    let mut steps = Table::new(&["STEP", "STATUS", "ATTEMPTS", "DURATION_MS", "CHECKPOINTS"]);
    for step in &timeline.steps {
        steps.row(vec![
            step.name.clone(),
            step.status.clone(),
            step.attempts.to_string(),
            opt(step.duration_ms),
            step.checkpoints.to_string(),
        ]);
    }
    lines.extend(steps.render().lines().map(|line| format!("  {line}")));
    for metric in &timeline.metrics {
        lines.push(format!(
            "  metric {}.{} = {}",
            metric.step, metric.name, metric.value
        ));
    }
    lines.join("\n")
}
