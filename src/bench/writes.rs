//! The write baselines of an idle cluster: the latency of one write at a
//! time (p50, p99) — a Raft round trip with the leader's and a follower's
//! durable log appends — and the throughput of many concurrent writers
//! (each writing its own keys, one put at a time).

use std::time::Instant;

use shardflow_node::client::Client;

use super::load::{keys_outside, write_once};
use super::stats::{micros, percentile, sorted};
use super::BenchError;

/// Writes before the sequential run, not counted (at most as many as
/// are timed).
const WARM_UP: usize = 50;

/// What the baselines measured.
#[derive(Clone, Debug)]
pub struct WriteFigures {
    pub p50_us: f64,
    pub p99_us: f64,
    pub throughput_wps: f64,
    /// Sequential writes timed.
    pub sequential: usize,
    /// Writes of the concurrent run, and its writers.
    pub concurrent: usize,
    pub writers: usize,
}

/// `sequential` single writes, then `writers` writers of `per_writer`
/// writes each; keys avoid the `moving` vShard.
pub async fn measure(
    client: &Client,
    moving: u16,
    sequential: usize,
    writers: usize,
    per_writer: usize,
    value_bytes: usize,
) -> Result<WriteFigures, BenchError> {
    let origin = Instant::now();
    let warm = keys_outside(moving, "warm", 1, WARM_UP.min(sequential));
    write_once(client, warm, value_bytes, origin).await?;
    let keys = keys_outside(moving, "seq", 1, sequential);
    let samples = write_once(client, keys, value_bytes, origin).await?;
    let latencies = sorted(samples.iter().map(|s| micros(s.latency())).collect());

    let keys = keys_outside(moving, "conc", writers, per_writer);
    let started = Instant::now();
    let samples = write_once(client, keys, value_bytes, origin).await?;
    let throughput_wps = samples.len() as f64 / started.elapsed().as_secs_f64().max(1e-9);
    Ok(WriteFigures {
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
        throughput_wps,
        sequential: latencies.len(),
        concurrent: samples.len(),
        writers,
    })
}
