//! Client load: closed-loop writers through the real [`Client`], each
//! writing its own keys one put at a time — once each, or round and round
//! until stopped — and recording when every write started and ended
//! (since a common origin), so a measurement can cut any window out of
//! the run afterwards. A failed write ends its writer with the error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardflow_node::client::{Client, ClientError};
use shardflow_node::vshard::vshard_of;
use tokio::task::JoinSet;

use super::BenchError;

/// One acknowledged write: when it was sent and when its answer came,
/// since the load's origin.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub start: Duration,
    pub end: Duration,
}

impl Sample {
    /// How long the write took, retries and redirects included.
    pub fn latency(&self) -> Duration {
        self.end.saturating_sub(self.start)
    }

    /// Whether the write was in flight at some point of `[from, to]`.
    pub fn overlaps(&self, from: Duration, to: Duration) -> bool {
        self.start <= to && self.end >= from
    }
}

/// Writers running until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<Result<Vec<Sample>, ClientError>>,
}

impl Load {
    /// Starts one writer per key list, writing its keys round and round
    /// with values of `value_bytes` bytes; times are since `origin`.
    pub fn start(
        client: &Client,
        writers: Vec<Vec<Vec<u8>>>,
        value_bytes: usize,
        origin: Instant,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        for keys in writers {
            let (client, stop) = (client.clone(), Arc::clone(&stop));
            tasks.spawn(async move {
                let mut samples = Vec::new();
                for (round, key) in keys.iter().cycle().enumerate() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    samples.push(put(&client, key, value_bytes, round as u64, origin).await?);
                }
                Ok(samples)
            });
        }
        Load { stop, tasks }
    }

    /// Stops the writers after their write in flight; every sample, or the
    /// first failure.
    pub async fn stop(mut self) -> Result<Vec<Sample>, BenchError> {
        self.stop.store(true, Ordering::Relaxed);
        collect(&mut self.tasks).await
    }
}

/// One writer per key list writes each of its keys once; every sample.
pub async fn write_once(
    client: &Client,
    writers: Vec<Vec<Vec<u8>>>,
    value_bytes: usize,
    origin: Instant,
) -> Result<Vec<Sample>, BenchError> {
    let mut tasks = JoinSet::new();
    for keys in writers {
        let client = client.clone();
        tasks.spawn(async move {
            let mut samples = Vec::with_capacity(keys.len());
            for (i, key) in keys.iter().enumerate() {
                samples.push(put(&client, key, value_bytes, i as u64, origin).await?);
            }
            Ok(samples)
        });
    }
    collect(&mut tasks).await
}

async fn collect(
    tasks: &mut JoinSet<Result<Vec<Sample>, ClientError>>,
) -> Result<Vec<Sample>, BenchError> {
    let mut all = Vec::new();
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(samples)) => all.extend(samples),
            Ok(Err(error)) => failure = failure.or(Some(BenchError::Client(error))),
            Err(error) => failure = failure.or(Some(BenchError::Task(error.to_string()))),
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(all),
    }
}

async fn put(
    client: &Client,
    key: &[u8],
    value_bytes: usize,
    serial: u64,
    origin: Instant,
) -> Result<Sample, ClientError> {
    let value = value(value_bytes, serial);
    let start = origin.elapsed();
    client.put(key, &value).await?;
    Ok(Sample {
        start,
        end: origin.elapsed(),
    })
}

/// A value of `bytes` bytes that differs from the last one written.
pub fn value(bytes: usize, serial: u64) -> Vec<u8> {
    let mut value = vec![0x76; bytes];
    let stamp = serial.to_le_bytes();
    let n = stamp.len().min(bytes);
    value[..n].copy_from_slice(&stamp[..n]);
    value
}

/// `count` keys `PREFIX-N` that hash to `vshard`.
pub fn keys_in(vshard: u16, prefix: &str, count: usize) -> Vec<Vec<u8>> {
    (0u64..)
        .map(|i| format!("{prefix}-{i}").into_bytes())
        .filter(|key| vshard_of(key) == vshard)
        .take(count)
        .collect()
}

/// `writers` lists of `each` keys `PREFIX-W-N`, none of them in `avoid`.
pub fn keys_outside(avoid: u16, prefix: &str, writers: usize, each: usize) -> Vec<Vec<Vec<u8>>> {
    (0..writers)
        .map(|writer| {
            (0u64..)
                .map(|i| format!("{prefix}-{writer}-{i}").into_bytes())
                .filter(|key| vshard_of(key) != avoid)
                .take(each)
                .collect()
        })
        .collect()
}

/// Writes completed in `[from, to]`.
pub fn completed_in(samples: &[Sample], from: Duration, to: Duration) -> usize {
    (samples.iter())
        .filter(|sample| sample.end >= from && sample.end <= to)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_land_where_asked() {
        let keys = keys_in(7, "k", 3);
        assert_eq!(keys.len(), 3);
        assert!(keys.iter().all(|key| vshard_of(key) == 7));
        let lists = keys_outside(7, "f", 2, 5);
        assert_eq!(lists.len(), 2);
        assert!(lists.iter().flatten().all(|key| vshard_of(key) != 7));
    }

    #[test]
    fn windows_and_values() {
        let ms = Duration::from_millis;
        let sample = Sample {
            start: ms(10),
            end: ms(30),
        };
        assert_eq!(sample.latency(), ms(20));
        assert!(sample.overlaps(ms(25), ms(40)));
        assert!(sample.overlaps(ms(0), ms(10)));
        assert!(!sample.overlaps(ms(31), ms(40)));
        assert_eq!(completed_in(&[sample], ms(30), ms(31)), 1);
        assert_eq!(value(3, 1), vec![1, 0, 0]);
        assert_eq!(value(10, 2).len(), 10);
        assert_ne!(value(10, 2), value(10, 3));
    }
}
