//! `shardflow workflow list|show|watch|cancel|resume`: the workflows of a
//! running cluster, through any node (a workflow id names the node that
//! drives it; the node asked forwards the request there).
//!
//! A workflow id is checked (`wf-<node>-<serial>`) before certificates or
//! the network are touched. `watch` prints events as they are journaled and
//! exits 0 only if the workflow completes.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use shardflow::audit::Timeline;
use shardflow::node::client::{WorkflowDetail, WorkflowListing};
use shardflow::node::rpc::{WorkflowEvent, WorkflowSummary};
use shardflow::workflow::{Phase, WorkflowState};

use super::args::{ClusterArgs, WorkflowCommand};
use super::journal::render_timeline;
use super::table::{opt, utc_datetime, utc_time, Table};
use super::{parse, with_client, CliError, Output};

pub fn run(command: WorkflowCommand) -> Result<Output, CliError> {
    match command {
        WorkflowCommand::List { all, cluster, json } => list(all, &cluster, json),
        WorkflowCommand::Show { id, cluster, json } => show(&id, &cluster, json),
        WorkflowCommand::Watch {
            id,
            max_wait_secs,
            cluster,
            json,
        } => watch(&id, Duration::from_secs(max_wait_secs), &cluster, json),
        WorkflowCommand::Cancel {
            id,
            by,
            cluster,
            json,
        } => request(Request::Cancel, &id, by, &cluster, json),
        WorkflowCommand::Resume {
            id,
            by,
            cluster,
            json,
        } => request(Request::Resume, &id, by, &cluster, json),
    }
}

/// One workflow of a listing.
#[derive(Debug, Serialize)]
struct WorkflowRow {
    id: String,
    node: u64,
    kind: String,
    phase: String,
    step: Option<String>,
    last_event: String,
    events: u64,
    ended: bool,
    created_at_ms: u64,
    updated_at_ms: u64,
}

impl From<&WorkflowSummary> for WorkflowRow {
    fn from(summary: &WorkflowSummary) -> Self {
        let instance = &summary.instance;
        WorkflowRow {
            id: instance.id.to_string(),
            node: instance.id.node,
            kind: instance.kind.clone(),
            phase: summary.phase.clone(),
            step: summary.step.clone(),
            last_event: instance.last_event.clone(),
            events: instance.events,
            ended: instance.ended,
            created_at_ms: instance.created_at_ms,
            updated_at_ms: instance.updated_at_ms,
        }
    }
}

/// One event, as `show` and `watch` print it.
#[derive(Debug, Serialize)]
struct EventRow {
    seq: u64,
    at_ms: u64,
    node: u64,
    event: &'static str,
    step: Option<String>,
    attempt: Option<u32>,
    detail: String,
}

impl From<&WorkflowEvent> for EventRow {
    fn from(event: &WorkflowEvent) -> Self {
        EventRow {
            seq: event.seq,
            at_ms: event.at_ms,
            node: event.node,
            event: event.event.name(),
            step: event.event.step().map(str::to_string),
            attempt: event.event.attempt(),
            detail: event.event.detail(),
        }
    }
}

fn list(all: bool, args: &ClusterArgs, json: bool) -> Result<Output, CliError> {
    let listing = with_client(args, |client| async move {
        Ok(client.workflow_list(all).await?)
    })?;
    let rows: Vec<WorkflowRow> = listing.workflows.iter().map(WorkflowRow::from).collect();
    if json {
        let unanswered: Vec<_> = listing
            .unreachable
            .iter()
            .map(|failure| {
                json!({ "node": failure.node, "addr": failure.addr, "error": failure.error.to_string() })
            })
            .collect();
        return Ok(Output::Json(
            json!({ "workflows": rows, "unreachable": unanswered }),
        ));
    }
    Ok(Output::Text(render_list(&rows, &listing, all)))
}

fn render_list(rows: &[WorkflowRow], listing: &WorkflowListing, all: bool) -> String {
    let mut lines = Vec::new();
    if rows.is_empty() {
        lines.push(match all {
            true => "no workflows".to_string(),
            false => "no unfinished workflows (--all lists the ended ones too)".to_string(),
        });
    } else {
        let mut table = Table::new(&[
            "ID",
            "KIND",
            "PHASE",
            "STEP",
            "LAST_EVENT",
            "EVENTS",
            "UPDATED",
        ]);
        for row in rows {
            table.row(vec![
                row.id.clone(),
                row.kind.clone(),
                row.phase.clone(),
                opt(row.step.as_deref()),
                row.last_event.clone(),
                row.events.to_string(),
                utc_datetime(row.updated_at_ms),
            ]);
        }
        lines.push(table.render());
    }
    for failure in &listing.unreachable {
        let node = failure
            .node
            .map(|n| format!("node {n} "))
            .unwrap_or_default();
        lines.push(format!(
            "warning: {node}({}) did not answer, its workflows are missing: {}",
            failure.addr, failure.error
        ));
    }
    lines.join("\n")
}

fn show(id: &str, args: &ClusterArgs, json: bool) -> Result<Output, CliError> {
    let id = parse::workflow_id(id)?;
    let detail = with_client(
        args,
        |client| async move { Ok(client.workflow_show(id).await?) },
    )?;
    let events: Vec<EventRow> = detail.events.iter().map(EventRow::from).collect();
    if json {
        let workflow = Timeline::from(&detail.state);
        return Ok(Output::Json(
            json!({ "workflow": workflow, "events": events }),
        ));
    }
    Ok(Output::Text(render_show(&detail, &events)))
}

fn render_show(detail: &WorkflowDetail, events: &[EventRow]) -> String {
    let state = &detail.state;
    let timeline = render_timeline(&Timeline::from(state));
    let (title, steps) = timeline.split_once('\n').unwrap_or((&timeline, ""));
    let mut lines = vec![
        title.to_string(),
        format!(
            "  submitted {} UTC, updated {} UTC",
            utc_datetime(state.submitted_at_ms),
            utc_datetime(state.updated_at_ms)
        ),
    ];
    if let Some(step) = &state.point_of_no_return {
        lines.push(format!("  point of no return crossed in {step}"));
    }
    if let Some(by) = &state.cancel_requested {
        lines.push(format!("  cancel requested by {by}"));
    }
    lines.push(steps.to_string());
    let mut table = Table::new(&["SEQ", "TIME", "NODE", "EVENT", "STEP", "ATTEMPT", "DETAIL"]);
    for event in events {
        table.row(vec![
            event.seq.to_string(),
            utc_time(event.at_ms),
            event.node.to_string(),
            event.event.to_string(),
            opt(event.step.as_deref()),
            opt(event.attempt),
            event.detail.clone(),
        ]);
    }
    lines.extend(table.render().lines().map(|line| format!("  {line}")));
    lines.join("\n")
}

fn watch(id: &str, max_wait: Duration, args: &ClusterArgs, json: bool) -> Result<Output, CliError> {
    let id = parse::workflow_id(id)?;
    let state = with_client(args, |client| async move {
        let print = |event: &WorkflowEvent| print_event(event, json);
        Ok(client.workflow_watch(id, max_wait, print).await?)
    })?;
    let reason = phase_reason(&state.phase);
    if state.phase != Phase::Completed {
        return Err(CliError::NotCompleted {
            id: id.to_string(),
            phase: state.phase.label(),
            reason: reason.map(|r| format!(": {r}")).unwrap_or_default(),
        });
    }
    Ok(Output::Text(match json {
        true => json!({ "id": id.to_string(), "phase": state.phase.label() }).to_string(),
        false => format!("{id} Completed ({})", summary(&state)),
    }))
}

/// Prints one watched event as it arrives (a closed stdout is not an
/// error here: the final answer reports it).
fn print_event(event: &WorkflowEvent, json: bool) {
    let row = EventRow::from(event);
    let line = match json {
        true => serde_json::to_string(&row).unwrap_or_default(),
        false => event_line(&row),
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

/// `12:00:03.123  #3  StepStarted  Gate  attempt 1  detail`.
fn event_line(row: &EventRow) -> String {
    let mut parts = vec![
        utc_time(row.at_ms),
        format!("#{}", row.seq),
        row.event.to_string(),
    ];
    parts.extend(row.step.clone());
    parts.extend(row.attempt.map(|a| format!("attempt {a}")));
    if !row.detail.is_empty() {
        parts.push(row.detail.clone());
    }
    parts.join("  ")
}

fn phase_reason(phase: &Phase) -> Option<&str> {
    match phase {
        Phase::Aborted { reason }
        | Phase::Paused { reason, .. }
        | Phase::Compensating { reason } => Some(reason),
        Phase::Running | Phase::Completed => None,
    }
}

fn summary(state: &WorkflowState) -> String {
    let took = state.updated_at_ms.saturating_sub(state.submitted_at_ms);
    format!(
        "{} events, {:.3}s, driver epoch {}",
        state.next_seq,
        took as f64 / 1000.0,
        state.epoch
    )
}

/// What `cancel` and `resume` ask of a workflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Cancel,
    Resume,
}

impl Request {
    fn name(self) -> &'static str {
        match self {
            Request::Cancel => "cancel",
            Request::Resume => "resume",
        }
    }
}

/// Sends a cancel or resume request; the node driving the workflow
/// journals it (with `by`) before answering.
fn request(
    what: Request,
    id: &str,
    by: Option<String>,
    args: &ClusterArgs,
    json: bool,
) -> Result<Output, CliError> {
    let id = parse::workflow_id(id)?;
    let by = by.unwrap_or_else(operator);
    let asked = by.clone();
    with_client(args, |client| async move {
        match what {
            Request::Cancel => client.workflow_cancel(id, &asked).await?,
            Request::Resume => client.workflow_resume(id, &asked).await?,
        }
        Ok(())
    })?;
    Ok(match json {
        true => Output::Json(json!({ "id": id.to_string(), "requested": what.name(), "by": by })),
        false => Output::Text(request_line(what, &id.to_string())),
    })
}

fn request_line(what: Request, id: &str) -> String {
    match what {
        Request::Cancel => format!(
            "cancel of {id} requested: before its point of no return it stops and \
             compensates (follow it with `shardflow workflow watch {id}`)"
        ),
        Request::Resume => {
            format!("{id} resumed (follow it with `shardflow workflow watch {id}`)")
        }
    }
}

/// Who runs the command, for the journal: `$USER`, else `operator`.
fn operator() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "operator".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardflow::workflow::Event;

    fn event(seq: u64, event: Event) -> WorkflowEvent {
        WorkflowEvent {
            seq,
            at_ms: 1_740_787_200_007 + seq,
            node: 2,
            event,
        }
    }

    #[test]
    fn watched_events_are_one_line_each() {
        let started = event(
            3,
            Event::StepStarted {
                step: "Gate".into(),
                attempt: 1,
            },
        );
        assert_eq!(
            event_line(&EventRow::from(&started)),
            "00:00:00.010  #3  StepStarted  Gate  attempt 1"
        );
        let cancel = event(4, Event::CancelRequested { by: "ops".into() });
        assert_eq!(
            event_line(&EventRow::from(&cancel)),
            "00:00:00.011  #4  CancelRequested  by ops"
        );
    }

    #[test]
    fn ids_are_checked_offline() {
        assert!(parse::workflow_id("wf-2-7").is_ok());
        let error = parse::workflow_id("wf-2").err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some("invalid workflow id \"wf-2\": expected wf-<node>-<serial>, e.g. wf-1-7")
        );
    }

    #[test]
    fn listing_names_nodes_that_did_not_answer() {
        let listing = WorkflowListing {
            workflows: Vec::new(),
            unreachable: vec![shardflow::node::client::NodeFailure {
                node: Some(3),
                addr: "127.0.0.1:7003".into(),
                error: shardflow::node::client::ClientError::NoSeeds,
            }],
        };
        let text = render_list(&[], &listing, false);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("no unfinished workflows (--all lists the ended ones too)")
        );
        assert!(lines
            .next()
            .is_some_and(|l| l.starts_with("warning: node 3 (127.0.0.1:7003) did not answer")));
    }
}
