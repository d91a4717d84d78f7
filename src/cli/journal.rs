//! `shardflow journal replay|verify`: the audit of a stopped node's journal.
//!
//! `replay` prints each workflow's timeline ([`render_replay`]): how it
//! ended and why, when it started and ended, the measured write pause and
//! copy figures, a table of its steps (attempts, failures, start offset,
//! duration, checkpoints, last error) and its journaled events but
//! checkpoints. `--json` prints [`shardflow::audit::Replay`], the schema of
//! `docs/journal-schema.md`. `verify` prints a one-line summary, or fails
//! with the first bad event (instance, seq, what is wrong) and exit code 1.

use shardflow::audit::{self, Timeline};

use super::args::JournalCommand;
use super::table::{opt, utc_datetime, utc_time, Table};
use super::{CliError, Output};

pub fn run(command: JournalCommand) -> Result<Output, CliError> {
    match command {
        JournalCommand::Replay {
            data,
            workflow,
            json,
        } => {
            let replay = audit::replay_journal(&data, workflow)?;
            if json {
                return Ok(Output::Json(serde_json::to_value(&replay)?));
            }
            if replay.workflows.is_empty() {
                return Ok(Output::Text(format!("no workflows in {}", replay.path)));
            }
            let text: Vec<String> = replay.workflows.iter().map(render_replay).collect();
            Ok(Output::Text(text.join("\n\n")))
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
/// (`workflow show` and the demo print this short form.)
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

/// The full timeline `journal replay` prints.
pub(super) fn render_replay(timeline: &Timeline) -> String {
    let mut lines = vec![format!(
        "{}  {}  {}  epoch {}  {} events",
        timeline.id, timeline.kind, timeline.phase, timeline.epoch, timeline.events
    )];
    lines.push(format!("  outcome: {}", outcome(timeline)));
    let ended = match (timeline.ended_at_ms, timeline.duration_ms) {
        (Some(ended), Some(took)) => format!(
            ", ended {} UTC, took {}",
            utc_datetime(ended),
            duration(took)
        ),
        _ => format!(
            ", not ended (last event {} UTC)",
            utc_datetime(timeline.updated_at_ms)
        ),
    };
    lines.push(format!(
        "  submitted {} UTC{ended}",
        utc_datetime(timeline.submitted_at_ms)
    ));
    let restarts = timeline.drivers.len().saturating_sub(1);
    lines.push(format!(
        "  attempts {} ({} failed), checkpoints {}, driver runs {}{}",
        timeline.attempts,
        timeline.failures,
        timeline.checkpoints,
        timeline.drivers.len(),
        match restarts {
            0 => String::new(),
            n => format!(" ({n} resumed after a restart)"),
        }
    ));
    let pause = timeline
        .write_pause_us
        .map_or_else(|| "none measured".to_string(), micros);
    lines.push(format!("  write pause: {pause}"));
    if let Some(copy) = &timeline.copy {
        let lag = copy
            .last_lag
            .map(|lag| format!(", last lag {lag}"))
            .unwrap_or_default();
        // The totals are the vShard's size when the copy began; writes
        // during the copy can make the copied figures larger.
        lines.push(format!(
            "  copied {} keys, {} bytes (the vShard held {} keys, {} bytes when the copy began); \
             {} catch-up rounds{lag}",
            copy.keys_copied,
            copy.bytes_copied,
            copy.keys_total,
            copy.bytes_total,
            copy.catch_up_rounds
        ));
    }
    if let Some(step) = &timeline.point_of_no_return {
        lines.push(format!("  point of no return crossed in {step}"));
    }
    let mut steps = Table::new(&[
        "STEP",
        "STATUS",
        "ATTEMPTS",
        "FAILED",
        "START",
        "DURATION",
        "CHECKPOINTS",
        "COMPENSATED",
        "LAST ERROR",
    ]);
    for step in &timeline.steps {
        let start = step
            .started_at_ms
            .map(|at| offset(at.saturating_sub(timeline.submitted_at_ms)));
        let compensated = match (step.compensated_at_ms, step.compensation_attempts) {
            (Some(at), attempts) => format!(
                "{} ({attempts} tries)",
                offset(at.saturating_sub(timeline.submitted_at_ms))
            ),
            (None, 0) => "-".to_string(),
            (None, attempts) => format!("no ({attempts} tries)"),
        };
        let error = step
            .last_compensation_error
            .as_ref()
            .or(step.last_error.as_ref());
        steps.row(vec![
            step.name.clone(),
            step.status.clone(),
            step.attempts.to_string(),
            step.failures.to_string(),
            opt(start),
            opt(step.duration_ms.map(duration)),
            step.checkpoints.to_string(),
            compensated,
            opt(error.map(|e| one_line(e, 80))),
        ]);
    }
    lines.extend(steps.render().lines().map(|line| format!("  {line}")));
    for metric in &timeline.metrics {
        lines.push(format!(
            "  metric {}.{} = {}",
            metric.step, metric.name, metric.value
        ));
    }
    if !timeline.log.is_empty() {
        lines.push("  events (checkpoints counted above):".to_string());
        let mut events =
            Table::new(&["SEQ", "TIME", "+", "NODE", "EVENT", "STEP", "TRY", "DETAIL"]);
        for line in &timeline.log {
            events.row(vec![
                line.seq.to_string(),
                utc_time(line.at_ms),
                offset(line.offset_ms),
                line.node.to_string(),
                line.event.clone(),
                opt(line.step.as_ref()),
                opt(line.attempt),
                one_line(&line.detail, 100),
            ]);
        }
        lines.extend(events.render().lines().map(|line| format!("  {line}")));
    }
    lines.join("\n")
}

/// How the workflow ended, and why.
fn outcome(timeline: &Timeline) -> String {
    let why = timeline.reason.as_deref().unwrap_or("");
    let cancelled = timeline
        .cancel_requested_by
        .as_deref()
        .map(|by| format!(" (cancel requested by {by})"))
        .unwrap_or_default();
    match timeline.phase.as_str() {
        "Completed" => "completed: every step succeeded".to_string(),
        "Aborted" => format!("aborted, every started step compensated: {why}{cancelled}"),
        "Paused" => format!("paused, waiting for an operator: {why}{cancelled}"),
        "Compensating" => format!("not ended: compensating: {why}{cancelled}"),
        other => format!("not ended: {other}{cancelled}"),
    }
}

/// `1234` ms -> `1.234 s`; under a second, `56 ms`.
fn duration(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else {
        format!("{}.{:03} s", ms / 1_000, ms % 1_000)
    }
}

/// An offset from the submission: `+1.234s`.
fn offset(ms: u64) -> String {
    format!("+{}.{:03}s", ms / 1_000, ms % 1_000)
}

/// Microseconds as milliseconds with one decimal: `150.3 ms`.
fn micros(us: u64) -> String {
    format!("{}.{} ms ({us} us)", us / 1_000, us % 1_000 / 100)
}

/// At most `max` characters on one line.
fn one_line(text: &str, max: usize) -> String {
    let text = text.replace(['\n', '\r'], " ");
    if text.chars().count() <= max {
        return text;
    }
    let cut: String = text.chars().take(max.saturating_sub(3)).collect();
    format!("{cut}...")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_well() {
        assert_eq!(duration(56), "56 ms");
        assert_eq!(duration(4_444), "4.444 s");
        assert_eq!(offset(1_234), "+1.234s");
        assert_eq!(micros(150_345), "150.3 ms (150345 us)");
        assert_eq!(one_line("a\nb", 10), "a b");
        assert_eq!(one_line("abcdefghijk", 8), "abcde...");
    }
}
