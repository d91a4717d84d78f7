//! What a run measured ([`Figures`]) and the fifteen figures and ratios
//! `shardflow bench --json` prints ([`BenchReport`]), two decimals each.

use std::time::Duration;

use serde::Serialize;

use super::stats::{ratio, round2};
use super::{engine, foreground, ingest, pause, quic, resume, writes, BenchError, BenchOptions};

/// Everything a run measured.
#[derive(Clone, Debug)]
pub struct Figures {
    pub options: BenchOptions,
    pub engine: engine::EngineFigures,
    pub ingest: ingest::IngestFigures,
    pub quic: quic::QuicFigures,
    pub writes: writes::WriteFigures,
    pub pause: pause::PauseFigures,
    pub foreground: foreground::ForegroundFigures,
    pub resume: resume::ResumeFigures,
    /// The whole run.
    pub elapsed: Duration,
}

/// The fifteen figures of `shardflow bench --json`, with these names.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    pub write_p50_us: f64,
    pub write_p99_us: f64,
    pub throughput_wps: f64,
    pub quic_mb_s: f64,
    pub redb_ingest_mb_s: f64,
    pub pause_p50_us: f64,
    pub pause_p99_us: f64,
    pub pause_max_us: f64,
    pub copy_mb_s: f64,
    pub foreground_ratio: f64,
    pub pause_ratio: f64,
    pub copy_ratio: f64,
    pub step_overhead_ratio: f64,
    pub replay_events_per_s: f64,
    pub resume_ms: f64,
}

impl Figures {
    /// The report: figures and ratios, two decimals.
    pub fn report(&self) -> Result<BenchReport, BenchError> {
        let (pause, foreground) = (&self.pause, &self.foreground);
        let floor = self.quic.mb_s.min(self.ingest.mb_s);
        let foreground_ratio = foreground.ratio;
        let pause_ratio = ratio("pause_ratio", pause.pause_p99_us(), self.writes.p99_us)?;
        let copy_ratio = ratio("copy_ratio", pause.copy_mb_s(), floor)?;
        Ok(BenchReport {
            write_p50_us: round2(self.writes.p50_us),
            write_p99_us: round2(self.writes.p99_us),
            throughput_wps: round2(self.writes.throughput_wps),
            quic_mb_s: round2(self.quic.mb_s),
            redb_ingest_mb_s: round2(self.ingest.mb_s),
            pause_p50_us: round2(pause.pause_p50_us()),
            pause_p99_us: round2(pause.pause_p99_us()),
            pause_max_us: round2(pause.pause_max_us()),
            copy_mb_s: round2(pause.copy_mb_s()),
            foreground_ratio: round2(foreground_ratio),
            pause_ratio: round2(pause_ratio),
            copy_ratio: round2(copy_ratio),
            step_overhead_ratio: round2(self.engine.step_overhead_ratio),
            replay_events_per_s: round2(self.engine.replay_events_per_s),
            resume_ms: round2(self.resume.resume_ms),
        })
    }
}
