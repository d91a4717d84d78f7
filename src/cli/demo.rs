//! `shardflow demo`: runs [`shardflow::demo`] and shows it: narrative lines
//! on stdout (stderr with `--json`), progress bars on stderr when it is a
//! terminal (step-change lines otherwise), then the audit timelines of both
//! workflows and the verification summary. Exits 0 only if every check
//! passed; its last line starts `verified:` (or `NOT verified:`).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use shardflow::demo::{self, DemoOptions, DemoReport, Observer};
use shardflow::steps::progress::progress;
use shardflow::workflow::WorkflowState;

use super::args::DemoArgs;
use super::journal::render_replay;
use super::table::Table;
use super::{runtime, CliError, Output};

pub fn run(args: DemoArgs) -> Result<Output, CliError> {
    let options = DemoOptions {
        keys: args.keys,
        data: args.data,
        ..DemoOptions::default()
    };
    let display = Display::new(args.json);
    display.say(&format!(
        "shardflow demo: a {}-node cluster inside this process, {} keys, two migrations under live writes",
        3, options.keys
    ));
    let report = runtime()?.block_on(demo::run(&options, &display))?;
    display.finish();
    let verified = report.verified();
    let output = match args.json {
        true => {
            let mut value = serde_json::to_value(&report)?;
            value["verified"] = serde_json::Value::Bool(verified);
            Output::Json(value)
        }
        false => Output::Text(render(&report)),
    };
    if verified {
        return Ok(output);
    }
    // The report is printed either way; the exit code says it failed.
    crate::print(output)?;
    Err(CliError::NotVerified(report.failures.join("; ")))
}

/// The human report: timelines, journals, the verification table and the
/// closing line.
fn render(report: &DemoReport) -> String {
    let mut lines = vec![
        String::new(),
        "Audit: both workflows as their drivers' journals tell them (replayed from the stopped nodes' data directories)".to_string(),
    ];
    for timeline in &report.timelines {
        lines.push(render_replay(timeline));
    }
    for journal in &report.journals {
        lines.push(format!(
            "journal {}: {} workflows, {} events verified (hash chains and replay rules)",
            journal.path, journal.workflows, journal.events
        ));
    }
    lines.push(String::new());
    lines.push("Verification".to_string());
    let mut table = Table::new(&["CHECK", "RESULT"]);
    for (check, result) in checks(report) {
        table.row(vec![check.to_string(), result]);
    }
    lines.extend(table.render().lines().map(|line| format!("  {line}")));
    if let Some(dir) = &report.data_dir {
        lines.push(format!(
            "  data kept in {dir} (audit it with `shardflow journal replay --data {dir}/node-N`)"
        ));
    }
    lines.push(String::new());
    lines.push(closing_line(report));
    lines.join("\n")
}

fn checks(report: &DemoReport) -> Vec<(&'static str, String)> {
    let data = &report.data;
    let owners = &report.owners;
    let moved = &report.vshard_move;
    let mut rows = vec![
        (
            "acknowledged writes checked",
            format!(
                "{} ({} loaded + {} live): every key holds its last acknowledged value",
                data.acknowledged_writes, report.load.keys, report.live_writes
            ),
        ),
        (
            "keys lost",
            format!(
                "{} (stale values: {}, never written: {})",
                data.keys_lost, data.stale_values, data.unexpected
            ),
        ),
        (
            "duplicates",
            format!(
                "{} (full scan: {} keys returned, {} expected, each exactly once)",
                data.duplicates, data.keys_scanned, data.keys_expected
            ),
        ),
        (
            "owners per vShard",
            format!(
                "{} of {} vShards with one owner; {} of {} nodes answered, routing tables {}",
                owners.vshards_with_one_owner,
                owners.vshards,
                owners.nodes_answered,
                owners.nodes,
                if owners.routing_agreed {
                    "identical"
                } else {
                    "DIFFER"
                }
            ),
        ),
        (
            "write pause (measured)",
            format!(
                "{} (budget {} ms); slowest client write to vShard {}: {}",
                moved
                    .write_pause_us
                    .map_or_else(|| "none journaled".to_string(), millis),
                moved.pause_budget_ms,
                moved.vshard,
                millis(moved.worst_client_write_us)
            ),
        ),
    ];
    rows.push((
        "driver restart",
        match &moved.restart {
            Some(restart) => format!(
                "node {} stopped in {} ({} rounds checkpointed), back after {:.1}s; {} resumed, driver epoch {}",
                restart.node,
                restart.step,
                restart.catch_up_rounds,
                restart.down_ms as f64 / 1000.0,
                moved.migration.id,
                moved.migration.driver_epoch
            ),
            None => "none (CatchUp was not caught)".to_string(),
        },
    ));
    for migration in [&moved.migration, &report.replica_move.migration] {
        rows.push((
            "migration",
            format!(
                "{} {} ({}): {} in {:.1}s",
                migration.id,
                migration.kind,
                migration.what,
                migration.phase,
                migration.took_ms as f64 / 1000.0
            ),
        ));
    }
    rows
}

fn closing_line(report: &DemoReport) -> String {
    let pause = report
        .vshard_move
        .write_pause_us
        .map_or_else(|| "none".to_string(), millis);
    let figures = format!(
        "{} acknowledged writes checked, {} keys lost, {} duplicates, {} of {} vShards with one owner, write pause {pause} ({:.1}s)",
        report.data.acknowledged_writes,
        report.data.keys_lost + report.data.stale_values,
        report.data.duplicates,
        report.owners.vshards_with_one_owner,
        report.owners.vshards,
        report.took_ms as f64 / 1000.0
    );
    match report.verified() {
        true => format!("verified: {figures}"),
        false => format!("NOT verified: {figures}"),
    }
}

fn millis(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// Narrative lines and progress bars.
struct Display {
    json: bool,
    terminal: bool,
    bar: Mutex<Option<ProgressBar>>,
    /// The last step-change line printed without a terminal.
    last: Mutex<String>,
}

impl Display {
    fn new(json: bool) -> Self {
        Self {
            json,
            terminal: std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
            last: Mutex::new(String::new()),
        }
    }

    fn bar(&self) -> std::sync::MutexGuard<'_, Option<ProgressBar>> {
        self.bar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Prints a line (stdout, or stderr with --json) above any bar.
    fn line(&self, text: &str) {
        let print = || {
            if self.json {
                eprintln!("{text}");
            } else {
                let mut stdout = std::io::stdout().lock();
                // A closed stdout is reported by the final print.
                let _ = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
            }
        };
        match self.bar().as_ref() {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    /// A bar on stderr if it is a terminal.
    fn start_bar(&self, length: u64, template: &str) -> Option<ProgressBar> {
        if !self.terminal {
            return None;
        }
        let bar = ProgressBar::new(length);
        let style =
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        bar.enable_steady_tick(Duration::from_millis(120));
        *self.bar() = Some(bar.clone());
        Some(bar)
    }

    fn finish(&self) {
        if let Some(bar) = self.bar().take() {
            bar.finish_and_clear();
        }
    }

    /// Without a terminal: a line when `line` differs from the last one.
    fn changed(&self, line: String) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last != line {
            *last = line.clone();
            drop(last);
            self.line(&line);
        }
    }
}

impl Observer for Display {
    fn say(&self, line: &str) {
        self.line(line);
    }

    fn loading(&self, done: u64, total: u64) {
        let existing = self.bar().clone();
        let bar = existing.or_else(|| {
            self.start_bar(
                total,
                "  loading [{elapsed_precise}] {bar:40} {pos}/{len} keys {msg} eta {eta}",
            )
        });
        match bar {
            Some(bar) => {
                bar.set_position(done);
                let rate = done as f64 / bar.elapsed().as_secs_f64().max(1e-3);
                bar.set_message(format!("{rate:.0} writes/s"));
            }
            None => {
                // Quarters, without a terminal.
                let quarter = (done * 4).checked_div(total).unwrap_or(4);
                self.changed(format!("  loaded {}% of {total} keys", quarter * 25));
            }
        }
    }

    fn loaded(&self) {
        self.finish();
    }

    fn migrating(&self, state: &WorkflowState) {
        let figures = progress(state);
        let mut parts = vec![match &figures.step {
            Some(step) => format!("{} {} {step}", state.id, figures.phase),
            None => format!("{} {}", state.id, figures.phase),
        }];
        if figures.keys_total > 0 || figures.keys_copied > 0 {
            parts.push(format!(
                "{}/{} keys copied",
                figures.keys_copied,
                figures.keys_total.max(figures.keys_copied)
            ));
        }
        if let Some(lag) = figures.lag {
            parts.push(format!(
                "catch-up round {}, lag {lag} changes",
                figures.catch_up_rounds
            ));
        }
        let message = parts.join(", ");
        let existing = self.bar().clone();
        let bar = existing.or_else(|| {
            self.start_bar(
                0,
                "  {spinner} [{elapsed_precise}] {bar:30} {pos}/{len} keys  {msg}",
            )
        });
        match bar {
            Some(bar) => {
                bar.set_length(figures.keys_total.max(figures.keys_copied));
                bar.set_position(figures.keys_copied);
                bar.set_message(message);
            }
            None => {
                // Without a terminal: a line per step change.
                let step = figures.step.unwrap_or_default();
                let mut last = self
                    .last
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let head = format!("{} {} {step}", state.id, figures.phase);
                if !last.starts_with(&head) {
                    *last = format!("{head} {message}");
                    drop(last);
                    self.line(&format!("  {message}"));
                }
            }
        }
    }

    fn migrated(&self) {
        self.finish();
    }
}
