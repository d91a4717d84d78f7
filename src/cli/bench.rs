//! `shardflow bench`: runs [`shardflow::bench::run`] with the command's
//! options and prints the fifteen figures — one JSON object with `--json`,
//! otherwise tables: the figures with their targets, then the figures
//! behind them. Progress goes to stderr: a progress bar on a terminal, one
//! line per stage and per migration otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use shardflow::bench::{self, BenchOptions, BenchReport, Figures, Observer, STAGES};

use super::args::BenchArgs;
use super::table::Table;
use super::{CliError, Output};

pub fn run(args: BenchArgs) -> Result<Output, CliError> {
    let options = BenchOptions {
        keys: usize_of(args.keys),
        value_bytes: usize_of(args.value_bytes),
        migrations: usize_of(args.migrations),
        writes: usize_of(args.writes),
        writers: usize_of(args.writers),
        replay_events: args.replay_events,
        copy_rate: args.copy_rate,
        ingest_window: args.ingest_window.map(|w| w as usize),
        dir: args.dir,
    };
    let progress = Progress::new();
    let figures = super::runtime()?.block_on(bench::run(&options, &progress));
    progress.finish();
    let figures = figures?;
    let report = figures.report()?;
    Ok(match args.json {
        true => Output::Json(serde_json::to_value(&report)?),
        false => Output::Text(render(&figures, &report)?),
    })
}

/// clap bounds every count well inside `usize`.
fn usize_of(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// Stage and migration progress on stderr.
struct Progress {
    /// A bar on a terminal; lines otherwise.
    bar: Option<ProgressBar>,
    stage: Mutex<usize>,
}

impl Progress {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(STAGES.len() as u64);
            if let Ok(style) =
                ProgressStyle::with_template("{elapsed_precise} [{bar:24}] {pos}/{len} {msg}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Progress {
            bar,
            stage: Mutex::new(0),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn stage_name(&self) -> &'static str {
        let index = *self.stage.lock().unwrap_or_else(|p| p.into_inner());
        STAGES.get(index).copied().unwrap_or("")
    }
}

impl Observer for Progress {
    fn stage(&self, index: usize) {
        *self.stage.lock().unwrap_or_else(|p| p.into_inner()) = index;
        let name = STAGES.get(index).copied().unwrap_or("");
        match &self.bar {
            Some(bar) => {
                bar.set_position(index as u64);
                bar.set_message(name);
            }
            None => eprintln!("bench [{}/{}] {name}", index + 1, STAGES.len()),
        }
    }

    fn step(&self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{} {done}/{total}", self.stage_name()));
        }
    }

    fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("  {line}")),
            None => eprintln!("  {line}"),
        }
    }
}

/// The report as tables: the fifteen figures, then the figures behind them.
fn render(figures: &Figures, report: &BenchReport) -> Result<String, CliError> {
    let options = &figures.options;
    let writes = &figures.writes;
    let lines = [
        format!(
            "shardflow bench: 3 nodes, {} data groups of 3 replicas on loopback; vShard {} holds {} keys of {} B ({:.1} MB); took {:.0} s",
            bench::GROUPS,
            bench::MOVING_VSHARD,
            options.keys,
            options.value_bytes,
            figures.ingest.bytes as f64 / 1e6,
            figures.elapsed.as_secs_f64(),
        ),
        format!(
            "{} sequential writes; {} writers, {} writes; {} migrations under live writes, {} under the writers; a {:.0} MB QUIC stream; {} ingest commits; {} events replayed",
            writes.sequential,
            writes.writers,
            writes.concurrent,
            figures.pause.pauses_us.len(),
            figures.foreground.migrations,
            figures.quic.bytes as f64 / 1e6,
            figures.ingest.commits,
            figures.engine.replay_events,
        ),
        String::new(),
        main_table(report)?.render(),
        String::new(),
        detail_table(figures).render(),
    ];
    Ok(lines.join("\n"))
}

/// A figure's target: at most, or at least, this.
#[derive(Clone, Copy)]
enum Target {
    AtMost(f64),
    AtLeast(f64),
}

/// The fifteen figures in report order: name, target, what it measures.
const FIGURES: [(&str, Option<Target>, &str); 15] = [
    ("write_p50_us", None, "one write at a time, idle cluster"),
    ("write_p99_us", None, "the same writes, p99"),
    (
        "throughput_wps",
        None,
        "concurrent writers, each one put at a time",
    ),
    (
        "quic_mb_s",
        None,
        "one QUIC stream between two node endpoints",
    ),
    (
        "redb_ingest_mb_s",
        None,
        "bare redb: the vShard's data, a durable commit per copy chunk",
    ),
    (
        "pause_p50_us",
        None,
        "per migration, the longest write to the moving vShard, as the client saw it",
    ),
    ("pause_p99_us", None, "the same, p99"),
    ("pause_max_us", None, "the same, max"),
    (
        "copy_mb_s",
        None,
        "base copy: bytes over the BaseCopy step's time, median",
    ),
    (
        "foreground_ratio",
        Some(Target::AtLeast(0.8)),
        "writers' throughput during a migration / just before, median round",
    ),
    (
        "pause_ratio",
        Some(Target::AtMost(3.0)),
        "pause_p99 / write_p99",
    ),
    (
        "copy_ratio",
        Some(Target::AtLeast(0.5)),
        "copy_mb_s / min(quic_mb_s, redb_ingest_mb_s)",
    ),
    (
        "step_overhead_ratio",
        Some(Target::AtMost(1.3)),
        "no-op step on the redb journal / bare durable commit",
    ),
    (
        "replay_events_per_s",
        Some(Target::AtLeast(1e6)),
        "journal events folded into a workflow state",
    ),
    (
        "resume_ms",
        Some(Target::AtMost(100.0)),
        "restarted driver: groups ready -> migration progressing",
    ),
];

fn main_table(report: &BenchReport) -> Result<Table, CliError> {
    let values = serde_json::to_value(report)?;
    let mut table = Table::new(&["FIGURE", "VALUE", "TARGET", "WHAT"]);
    for (name, target, what) in FIGURES {
        let value = values
            .get(name)
            .and_then(|v| v.as_f64())
            .unwrap_or(f64::NAN);
        let target = match target {
            None => String::new(),
            Some(Target::AtMost(bound)) => verdict("<=", bound, value <= bound),
            Some(Target::AtLeast(bound)) => verdict(">=", bound, value >= bound),
        };
        table.row(vec![name.into(), number(value), target, what.into()]);
    }
    Ok(table)
}

fn verdict(relation: &str, bound: f64, met: bool) -> String {
    let word = if met { "met" } else { "MISSED" };
    format!("{relation} {bound} {word}")
}

fn detail_table(figures: &Figures) -> Table {
    let (pause, fg, engine, resume) = (
        &figures.pause,
        &figures.foreground,
        &figures.engine,
        &figures.resume,
    );
    let journaled = |fraction| bench::stats::percentile(&pause.journaled_us, fraction);
    let mut table = Table::new(&["BEHIND THE FIGURES", "VALUE"]);
    let mut row = |name: &str, value: String| table.row(vec![name.into(), value]);
    row(
        "journaled pause p50 / p99 (fence -> target accepts), µs",
        format!("{} / {}", number(journaled(0.5)), number(journaled(0.99))),
    );
    let split = |us: &[f64]| {
        let at = |fraction| number(bench::stats::percentile(us, fraction));
        format!("{} / {}", at(0.5), at(0.99))
    };
    row(
        "client pause p50 / p99: longest write during CutOver, µs",
        split(&pause.cut_over_us),
    );
    row(
        "client pause p50 / p99: longest write outside it, µs",
        split(&pause.elsewhere_us),
    );
    row(
        "stay-put vShard write p50 / p99 during those migrations, µs",
        format!(
            "{} / {}",
            number(pause.stay_p50_us),
            number(pause.stay_p99_us)
        ),
    );
    row(
        "probe writes to the moving vShard",
        pause.probe_writes.to_string(),
    );
    row(
        "foreground in the quiet windows / during migrations, writes/s",
        format!(
            "{} / {} ({} writers, {} migrations)",
            number(fg.before_wps),
            number(fg.during_wps),
            fg.writers,
            fg.migrations
        ),
    );
    row(
        "copy under the concurrent writers, MB/s",
        number(fg.copy_mb_s),
    );
    row(
        "bare durable redb commit / no-op step, µs",
        format!(
            "{} / {}",
            number(engine.redb_commit_us),
            number(engine.step_us)
        ),
    );
    row(
        "replay with decode and hash chain, events/s",
        number(engine.verify_events_per_s),
    );
    row(
        "restart -> node started / groups ready, ms",
        format!(
            "{} / {}",
            number(resume.started_ms),
            number(resume.ready_ms)
        ),
    );
    row(
        "of resume_ms: the engine's retry backoff, ms",
        number(resume.backoff_ms),
    );
    row(
        "of resume_ms: groups ready -> the re-run attempt started, ms",
        number(resume.to_attempt_ms),
    );
    row("step in flight at the restart", resume.step.clone());
    table
}

/// `1234.5` -> `1234.50`; large figures without decimals.
fn number(value: f64) -> String {
    if value.abs() >= 100_000.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}
