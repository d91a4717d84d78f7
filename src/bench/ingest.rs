//! Bare redb bulk ingest: the moving vShard's pairs written into a fresh
//! redb file in the chunks a base copy sends (at most `chunk_pairs` pairs
//! and about `chunk_bytes` bytes each), one durable write transaction per
//! chunk — what one replica of the target would pay for the copy if
//! nothing else (Raft, QUIC, the journal) stood in the way. The floor of
//! the copy rate on this disk, with the QUIC rate.

use std::path::Path;
use std::time::{Duration, Instant};

use redb::{Database, TableDefinition};

use super::stats::{mb_per_s, median};
use super::{redb_error, BenchError};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ingest");

/// Rounds, each into a fresh file; the median rate is reported.
const ROUNDS: usize = 3;

/// What the bare ingest did.
#[derive(Clone, Debug)]
pub struct IngestFigures {
    /// Key and value bytes per second (decimal MB), median round.
    pub mb_s: f64,
    /// Key and value bytes ingested per round.
    pub bytes: u64,
    /// Durable commits per round.
    pub commits: u64,
}

/// Ingests `pairs` [`ROUNDS`] times under `dir`.
pub fn measure(
    dir: &Path,
    pairs: &[(Vec<u8>, Vec<u8>)],
    chunk_pairs: usize,
    chunk_bytes: usize,
) -> Result<IngestFigures, BenchError> {
    let chunks = chunked(pairs, chunk_pairs.max(1), chunk_bytes.max(1));
    let bytes: u64 = pairs.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
    let mut rates = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let path = dir.join(format!("ingest-{round}.redb"));
        let elapsed = ingest(&path, &chunks)?;
        rates.push(mb_per_s(bytes, elapsed));
        std::fs::remove_file(&path).map_err(|source| BenchError::Io {
            what: "remove the ingest file",
            source,
        })?;
    }
    Ok(IngestFigures {
        mb_s: median(rates),
        bytes,
        commits: chunks.len() as u64,
    })
}

/// Splits `pairs` as a base copy does: a chunk ends at `max_pairs` pairs or
/// once it holds `max_bytes` bytes (at least one pair each).
fn chunked(
    pairs: &[(Vec<u8>, Vec<u8>)],
    max_pairs: usize,
    max_bytes: usize,
) -> Vec<&[(Vec<u8>, Vec<u8>)]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (key, value)) in pairs.iter().enumerate() {
        bytes += key.len() + value.len();
        if i + 1 - start >= max_pairs || bytes >= max_bytes {
            chunks.push(&pairs[start..=i]);
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < pairs.len() {
        chunks.push(&pairs[start..]);
    }
    chunks
}

/// One round: a fresh file, one durable commit per chunk.
fn ingest(path: &Path, chunks: &[&[(Vec<u8>, Vec<u8>)]]) -> Result<Duration, BenchError> {
    let db = Database::create(path).map_err(redb_error)?;
    let started = Instant::now();
    for chunk in chunks {
        let txn = db.begin_write().map_err(redb_error)?;
        {
            let mut table = txn.open_table(TABLE).map_err(redb_error)?;
            for (key, value) in *chunk {
                table
                    .insert(key.as_slice(), value.as_slice())
                    .map_err(redb_error)?;
            }
        }
        txn.commit().map_err(redb_error)?;
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_end_at_the_pair_or_byte_bound() {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..10u8).map(|i| (vec![i], vec![0; 9])).collect();
        let sizes = |chunks: Vec<&[(Vec<u8>, Vec<u8>)]>| chunks.iter().map(|c| c.len()).collect();
        let by_pairs: Vec<usize> = sizes(chunked(&pairs, 4, 1_000));
        assert_eq!(by_pairs, vec![4, 4, 2]);
        let by_bytes: Vec<usize> = sizes(chunked(&pairs, 100, 25));
        assert_eq!(by_bytes, vec![3, 3, 3, 1]);
        assert!(chunked(&[], 4, 4).is_empty());
    }
}
