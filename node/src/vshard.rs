//! Which vShard a key belongs to.
//!
//! A key's vShard is `u64::from_le_bytes(BLAKE3(key)[0..8]) % 1024`: the
//! first eight bytes of the key's BLAKE3 hash, read as a little-endian
//! integer, modulo [`VSHARDS`].
//!
//! **Invariant:** this function never changes. Data on disk is filed under
//! the vShard it returns and state machines check it at apply time, so a
//! different hash would strand every key; the golden test pins it.

/// How many vShards the key space is cut into.
pub const VSHARDS: u16 = 1024;

/// The vShard `key` belongs to, in `0..VSHARDS`.
pub fn vshard_of(key: &[u8]) -> u16 {
    let hash = blake3::hash(key);
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    let vshard = u64::from_le_bytes(first) % u64::from(VSHARDS);
    // The remainder is below VSHARDS, which fits in a u16.
    vshard as u16
}

/// Whether `vshard` names one of the [`VSHARDS`] vShards.
pub fn is_valid(vshard: u16) -> bool {
    vshard < VSHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash is pinned: these keys map to these vShards forever. (The
    /// empty key checks the formula by hand: BLAKE3("") starts `af 13 49 ..`,
    /// and 0x..4913af % 1024 = 0x3af = 943.)
    #[test]
    fn golden_vshards() {
        let golden: [(&[u8], u16); 6] = [
            (b"", 943),
            (b"a", 535),
            (b"user:1", 174),
            (b"user:2", 169),
            (b"hello world", 471),
            (&[0u8, 255, 7], 809),
        ];
        for (key, vshard) in golden {
            assert_eq!(vshard_of(key), vshard, "key {key:?}");
        }
    }

    /// Keys spread over every vShard, none more than twice the mean.
    #[test]
    fn spreads_keys_evenly() {
        let mut counts = vec![0u32; usize::from(VSHARDS)];
        for i in 0..102_400u32 {
            counts[usize::from(vshard_of(format!("key-{i}").as_bytes()))] += 1;
        }
        let (min, max) = (counts.iter().min(), counts.iter().max());
        assert!(min.is_some_and(|&m| m > 50), "min {min:?}");
        assert!(max.is_some_and(|&m| m < 200), "max {max:?}");
    }
}
