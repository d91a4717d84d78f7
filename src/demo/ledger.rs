//! The demo's record of acknowledged writes, and the check of a full scan
//! against it.
//!
//! A value is `"<seq>:<padding>"` with `seq` growing per key. Every key has
//! one writer at a time, and a writer never moves past a write until it is
//! acknowledged (it retries the same key and value), so once the writers
//! stopped each key must hold exactly its last acknowledged value, or the
//! one write after it that was sent but never acknowledged (which may or may
//! not have landed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// What the writers did to one key.
#[derive(Clone, Copy, Debug, Default)]
struct KeyRecord {
    /// The seq of the last acknowledged write (0: never acknowledged).
    acked: u64,
    /// A write sent after it and not acknowledged (yet).
    pending: Option<u64>,
}

/// Every key written and what was acknowledged.
#[derive(Default)]
pub struct Ledger {
    keys: Mutex<HashMap<Vec<u8>, KeyRecord>>,
    acked_writes: AtomicU64,
}

/// The value of `seq` for a key, padded to about `pad` bytes.
pub fn value(seq: u64, pad: usize) -> Vec<u8> {
    let mut value = format!("{seq}:").into_bytes();
    value.resize(value.len() + pad, b'.');
    value
}

/// The seq a value carries, if it is one the demo wrote.
fn seq_of(value: &[u8]) -> Option<u64> {
    let end = value.iter().position(|&b| b == b':')?;
    std::str::from_utf8(&value[..end]).ok()?.parse().ok()
}

/// A full scan compared with the ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScanCheck {
    /// Writes the cluster acknowledged (the load included).
    pub acknowledged_writes: u64,
    /// Keys the ledger expects.
    pub keys_expected: u64,
    /// Pairs the scan returned.
    pub keys_scanned: u64,
    /// Keys acknowledged but absent from the scan.
    pub keys_lost: u64,
    /// Keys whose value is older than their last acknowledged write.
    pub stale_values: u64,
    /// Keys the scan returned more than once.
    pub duplicates: u64,
    /// Keys the scan returned that the demo never wrote, or values it never
    /// sent.
    pub unexpected: u64,
    /// Up to a few of the problems, for the report.
    pub examples: Vec<String>,
}

impl ScanCheck {
    /// Nothing lost, stale, duplicated or unexpected.
    pub fn ok(&self) -> bool {
        self.keys_lost == 0
            && self.stale_values == 0
            && self.duplicates == 0
            && self.unexpected == 0
    }
}

const EXAMPLES: usize = 5;

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `seq` is being sent to `key`.
    pub fn sending(&self, key: &[u8], seq: u64) {
        let mut keys = self.lock();
        let record = keys.entry(key.to_vec()).or_default();
        record.pending = Some(seq);
    }

    /// Records that the write of `seq` to `key` was acknowledged.
    pub fn acked(&self, key: &[u8], seq: u64) {
        let mut keys = self.lock();
        let record = keys.entry(key.to_vec()).or_default();
        record.acked = record.acked.max(seq);
        if record.pending.is_some_and(|pending| pending <= seq) {
            record.pending = None;
        }
        self.acked_writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes acknowledged so far.
    pub fn acknowledged_writes(&self) -> u64 {
        self.acked_writes.load(Ordering::Relaxed)
    }

    /// The last acknowledged seq of `key` (0 if none).
    pub fn last_acked(&self, key: &[u8]) -> u64 {
        self.lock().get(key).map_or(0, |record| record.acked)
    }

    /// Compares a full scan (every pair of the cluster) with the record.
    pub fn check(&self, pairs: &[(Vec<u8>, Vec<u8>)]) -> ScanCheck {
        let keys = self.lock();
        let mut check = ScanCheck {
            acknowledged_writes: self.acknowledged_writes(),
            keys_expected: keys.values().filter(|r| r.acked > 0).count() as u64,
            keys_scanned: pairs.len() as u64,
            ..ScanCheck::default()
        };
        let mut seen: HashMap<&[u8], u32> = HashMap::with_capacity(pairs.len());
        let note = |check: &mut ScanCheck, line: String| {
            if check.examples.len() < EXAMPLES {
                check.examples.push(line);
            }
        };
        for (key, value) in pairs {
            let times = seen.entry(key.as_slice()).or_default();
            *times += 1;
            if *times == 2 {
                check.duplicates += 1;
                note(&mut check, format!("{} returned twice", shown(key)));
            }
            let Some(record) = keys.get(key) else {
                check.unexpected += 1;
                note(&mut check, format!("{} was never written", shown(key)));
                continue;
            };
            match seq_of(value) {
                Some(seq) if seq == record.acked || Some(seq) == record.pending => {}
                Some(seq) if seq < record.acked => {
                    check.stale_values += 1;
                    note(
                        &mut check,
                        format!(
                            "{} holds write {seq}, write {} was acknowledged",
                            shown(key),
                            record.acked
                        ),
                    );
                }
                _ => {
                    check.unexpected += 1;
                    note(
                        &mut check,
                        format!("{} holds a value never sent", shown(key)),
                    );
                }
            }
        }
        for (key, record) in keys.iter() {
            if record.acked > 0 && !seen.contains_key(key.as_slice()) {
                check.keys_lost += 1;
                note(&mut check, format!("{} is missing", shown(key)));
            }
        }
        check
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, KeyRecord>> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn shown(key: &[u8]) -> String {
    format!("key {:?}", String::from_utf8_lossy(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(key: &str, seq: u64) -> (Vec<u8>, Vec<u8>) {
        (key.as_bytes().to_vec(), value(seq, 4))
    }

    #[test]
    fn a_scan_is_checked_against_the_acknowledged_writes() {
        let ledger = Ledger::new();
        for key in ["a", "b", "c", "d"] {
            ledger.sending(key.as_bytes(), 1);
            ledger.acked(key.as_bytes(), 1);
        }
        ledger.sending(b"b", 2);
        ledger.acked(b"b", 2);
        // c: write 2 sent, never acknowledged: either value is fine.
        ledger.sending(b"c", 2);
        let good = vec![pair("a", 1), pair("b", 2), pair("c", 2), pair("d", 1)];
        let check = ledger.check(&good);
        assert!(check.ok(), "{check:?}");
        assert_eq!(check.acknowledged_writes, 5);
        assert_eq!((check.keys_expected, check.keys_scanned), (4, 4));

        // b lost its acknowledged write 2, d is missing, a is twice, z unknown.
        let bad = vec![
            pair("a", 1),
            pair("a", 1),
            pair("b", 1),
            pair("c", 1),
            pair("z", 1),
        ];
        let check = ledger.check(&bad);
        assert_eq!(
            (
                check.keys_lost,
                check.stale_values,
                check.duplicates,
                check.unexpected
            ),
            (1, 1, 1, 1),
            "{check:?}"
        );
        assert!(!check.ok());
        assert_eq!(check.examples.len(), 4);
    }

    #[test]
    fn values_carry_their_seq() {
        assert_eq!(seq_of(&value(42, 10)), Some(42));
        assert_eq!(seq_of(b"garbage"), None);
        assert_eq!(value(7, 3), b"7:...".to_vec());
    }
}
