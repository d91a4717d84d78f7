//! The running digest of one vShard's data, kept in `sm_vshard_digests`
//! beside the pairs it digests.
//!
//! The digest of a set of pairs is the sum, modulo 2^256, of one BLAKE3
//! hash per pair (an additive multiset hash): `BLAKE3(len(key) as u64 LE,
//! key, len(value) as u64 LE, value)`, read as a little-endian 256-bit
//! number. A sum does not depend on the order the pairs were added in, and
//! a pair's term can be subtracted again, so every write to `sm_kv` updates
//! the digest in O(1): an insert adds the new pair (and subtracts the value
//! it replaced), a delete subtracts it. Reading a vShard's digest is one
//! row, however large the vShard; a cut-over compares it inside the write
//! pause.
//!
//! **Invariant:** after every committed state-machine transaction, a
//! vShard's row equals [`DigestSum::of_pairs`] over its rows in `sm_kv`
//! (no row = the empty vShard). Kept by `SmWrite` (every `sm_kv` write goes
//! through it), snapshot install (recomputed from the imported pairs) and
//! [`super::RaftStore::new`] (a store created before this table existed is
//! backfilled from `sm_kv` when the table is created).

use serde::{Deserialize, Serialize};

/// The digest of a set of pairs: their hash sum, how many, and their key
/// and value bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DigestSum {
    /// The sum of the pairs' hashes, little-endian.
    pub sum: [u8; 32],
    pub key_count: u64,
    /// Key and value bytes.
    pub bytes: u64,
}

/// The encoded size of a [`DigestSum`] row: sum, count, bytes.
const ROW_LEN: usize = 32 + 8 + 8;

/// One pair's term of the sum.
pub fn pair_hash(key: &[u8], value: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    for part in [key, value] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    *hasher.finalize().as_bytes()
}

fn limbs(bytes: &[u8; 32]) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (limb, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        *limb = u64::from_le_bytes(word);
    }
    out
}

fn to_bytes(limbs: [u64; 4]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, limb) in out.chunks_exact_mut(8).zip(limbs) {
        chunk.copy_from_slice(&limb.to_le_bytes());
    }
    out
}

/// `a + b` modulo 2^256.
fn add(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let (a, b) = (limbs(a), limbs(b));
    let mut out = [0u64; 4];
    let mut carry = false;
    for i in 0..4 {
        let (sum, c1) = a[i].overflowing_add(b[i]);
        let (sum, c2) = sum.overflowing_add(u64::from(carry));
        out[i] = sum;
        carry = c1 || c2;
    }
    to_bytes(out)
}

/// `a - b` modulo 2^256.
fn sub(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let (a, b) = (limbs(a), limbs(b));
    let mut out = [0u64; 4];
    let mut borrow = false;
    for i in 0..4 {
        let (diff, b1) = a[i].overflowing_sub(b[i]);
        let (diff, b2) = diff.overflowing_sub(u64::from(borrow));
        out[i] = diff;
        borrow = b1 || b2;
    }
    to_bytes(out)
}

fn pair_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() as u64).saturating_add(value.len() as u64)
}

impl DigestSum {
    /// The digest of `pairs`, in any order.
    pub fn of_pairs<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut digest = Self::default();
        for (key, value) in pairs {
            digest.add_pair(key, value);
        }
        digest
    }

    /// Adds one pair (one not in the set yet).
    pub fn add_pair(&mut self, key: &[u8], value: &[u8]) {
        self.sum = add(&self.sum, &pair_hash(key, value));
        self.key_count = self.key_count.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(pair_bytes(key, value));
    }

    /// Takes one pair of the set out again.
    pub fn remove_pair(&mut self, key: &[u8], value: &[u8]) {
        self.sum = sub(&self.sum, &pair_hash(key, value));
        self.key_count = self.key_count.wrapping_sub(1);
        self.bytes = self.bytes.wrapping_sub(pair_bytes(key, value));
    }

    /// Takes every pair of `other` (a subset of this set) out.
    pub fn subtract(&mut self, other: &DigestSum) {
        self.sum = sub(&self.sum, &other.sum);
        self.key_count = self.key_count.wrapping_sub(other.key_count);
        self.bytes = self.bytes.wrapping_sub(other.bytes);
    }

    /// The digest of no pairs.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The stored row.
    pub(crate) fn encode(&self) -> [u8; ROW_LEN] {
        let mut out = [0u8; ROW_LEN];
        out[..32].copy_from_slice(&self.sum);
        out[32..40].copy_from_slice(&self.key_count.to_le_bytes());
        out[40..].copy_from_slice(&self.bytes.to_le_bytes());
        out
    }

    /// Reads a stored row; `None` if it is not one.
    pub(crate) fn decode(row: &[u8]) -> Option<Self> {
        let row: &[u8; ROW_LEN] = row.try_into().ok()?;
        let mut sum = [0u8; 32];
        sum.copy_from_slice(&row[..32]);
        let word = |range: std::ops::Range<usize>| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&row[range]);
            u64::from_le_bytes(word)
        };
        Some(Self {
            sum,
            key_count: word(32..40),
            bytes: word(40..48),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(n: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n)
            .map(|i| (format!("k{i}").into_bytes(), vec![i as u8; i as usize % 7]))
            .collect()
    }

    #[test]
    fn order_does_not_matter_and_removal_undoes_addition() {
        let pairs = pairs(50);
        let forward = DigestSum::of_pairs(pairs.iter().map(|(k, v)| (&k[..], &v[..])));
        let backward = DigestSum::of_pairs(pairs.iter().rev().map(|(k, v)| (&k[..], &v[..])));
        assert_eq!(forward, backward);
        assert_eq!(forward.key_count, 50);

        let mut less = forward;
        less.remove_pair(&pairs[7].0, &pairs[7].1);
        let without: Vec<_> = (pairs.iter().enumerate())
            .filter(|(i, _)| *i != 7)
            .map(|(_, (k, v))| (&k[..], &v[..]))
            .collect();
        assert_eq!(less, DigestSum::of_pairs(without));
        assert_ne!(less, forward);

        let mut empty = forward;
        for (key, value) in &pairs {
            empty.remove_pair(key, value);
        }
        assert!(empty.is_empty(), "{empty:?}");
    }

    #[test]
    fn a_changed_value_or_a_moved_byte_changes_the_digest() {
        let one = DigestSum::of_pairs([(&b"ab"[..], &b"c"[..])]);
        // The same bytes split differently: the length prefixes tell them apart.
        let split = DigestSum::of_pairs([(&b"a"[..], &b"bc"[..])]);
        let value = DigestSum::of_pairs([(&b"ab"[..], &b"d"[..])]);
        assert_ne!(one.sum, split.sum);
        assert_ne!(one.sum, value.sum);
    }

    #[test]
    fn carries_cross_limbs_both_ways() {
        let max = [0xffu8; 32];
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(add(&max, &one), [0u8; 32]);
        assert_eq!(sub(&[0u8; 32], &one), max);
        let mut low = [0u8; 32];
        low[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut carried = [0u8; 32];
        carried[8] = 1;
        assert_eq!(add(&low, &one), carried);
        assert_eq!(sub(&carried, &one), low);
    }

    #[test]
    fn rows_round_trip_and_bad_rows_are_refused() {
        let digest = DigestSum::of_pairs([(&b"k"[..], &b"v"[..])]);
        assert_eq!(DigestSum::decode(&digest.encode()), Some(digest));
        assert_eq!(DigestSum::decode(&[0u8; 47]), None);
    }
}
