//! A fast, stable, non-cryptographic string hash and a lock-free PRNG.
//!
//! Stable across runs and builds (unlike `std`'s SipHash with random keys),
//! so that a key maps to the same worker on every proxy instance, and the
//! simulator is deterministic. Keys come from clients, but a skewed key only
//! moves load along the ring, where bounded loads cap it.

use std::sync::atomic::{AtomicU64, Ordering};

const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// Final avalanche (MurmurHash3's fmix64).
#[inline]
pub(crate) fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Hashes `s` with `seed`: 8 bytes per step, then an avalanche.
#[inline]
pub(crate) fn hash_seeded(s: &[u8], seed: u64) -> u64 {
    let mut h = seed ^ (s.len() as u64).wrapping_mul(K);
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ v).wrapping_mul(K).rotate_left(29);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(K).rotate_left(29);
    }
    mix64(h)
}

/// The hash every policy uses for names and keys (function, package,
/// session, DB key). A warm index ([`crate::Warm`]) keyed by it agrees with
/// the policies. A few ns for short strings; no allocation.
#[inline]
pub fn hash_str(s: &str) -> u64 {
    hash_seeded(s.as_bytes(), 0)
}

/// A splitmix64 sequence behind one atomic: lock-free, shareable, and
/// deterministic when used from one thread.
#[derive(Debug)]
pub(crate) struct AtomicRng(AtomicU64);

impl AtomicRng {
    pub(crate) fn new(seed: u64) -> Self {
        AtomicRng(AtomicU64::new(seed))
    }

    #[inline]
    pub(crate) fn next_u64(&self) -> u64 {
        mix64(self.0.fetch_add(K, Ordering::Relaxed).wrapping_add(K))
    }

    /// A uniform index below `n` (n > 0), by multiply-shift.
    #[inline]
    pub(crate) fn below(&self, n: usize) -> usize {
        ((self.next_u64() >> 32).wrapping_mul(n as u64) >> 32) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_spread() {
        assert_eq!(hash_str("hello"), hash_str("hello"));
        assert_ne!(hash_str("hello"), hash_str("hellp"));
        assert_ne!(hash_str(""), hash_str("\0"));
        assert_ne!(hash_seeded(b"a", 1), hash_seeded(b"a", 2));
        // Low bits of similar keys differ (used modulo N by openwhisk).
        let mut buckets = [0u32; 8];
        for i in 0..8000 {
            buckets[(hash_str(&format!("fn-{i}")) % 8) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (800..1200).contains(&b)),
            "{buckets:?}"
        );
    }

    #[test]
    fn rng_below_is_in_range_and_covers() {
        let r = AtomicRng::new(7);
        let mut seen = [false; 5];
        for _ in 0..200 {
            let v = r.below(5);
            assert!(v < 5);
            seen[v] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
