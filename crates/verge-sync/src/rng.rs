//! The core's only source of randomness: a SplitMix64 generator seeded at construction, used for
//! retry jitter. Seeded, so a simulation replays exactly; a node seeds it from anything (its id
//! and start time) since only the spread of retries matters.

/// SplitMix64 (Steele, Lea and Flood): tiny, fast, and good enough for jitter.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `lo..=hi`.
    pub(crate) fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = hi - lo;
        if span == u64::MAX {
            return self.next_u64();
        }
        lo + self.next_u64() % (span + 1)
    }
}

/// The delay before retry number `failures` (1 for the first failure): `min_ms` doubled for each
/// earlier failure, capped at `max_ms`, then drawn between half of it and all of it ("equal
/// jitter"), so retries of many streams spread out but never come sooner than half the delay.
pub(crate) fn backoff_ms(rng: &mut SplitMix64, failures: u32, min_ms: u64, max_ms: u64) -> u64 {
    let doublings = failures.saturating_sub(1).min(63);
    let base = min_ms.saturating_mul(1u64 << doublings).min(max_ms).max(1);
    jitter_ms(rng, base)
}

/// A delay between half of `base_ms` and all of it.
pub(crate) fn jitter_ms(rng: &mut SplitMix64, base_ms: u64) -> u64 {
    rng.between(base_ms - base_ms / 2, base_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn backoff_is_capped_and_never_below_half(
            seed in any::<u64>(),
            failures in 1u32..200,
            min_ms in 1u64..10_000,
            extra in 0u64..100_000,
        ) {
            let max_ms = min_ms + extra;
            let mut rng = SplitMix64::new(seed);
            let d = backoff_ms(&mut rng, failures, min_ms, max_ms);
            let base = min_ms.saturating_mul(1u64 << (failures - 1).min(63)).min(max_ms);
            prop_assert!(d <= base && d <= max_ms);
            prop_assert!(d >= base - base / 2 && d >= 1);
        }
    }

    #[test]
    fn backoff_doubles_until_the_cap() {
        let mut rng = SplitMix64::new(1);
        let upper: Vec<u64> = (1..=8)
            .map(|f| {
                (0..50)
                    .map(|_| backoff_ms(&mut rng, f, 100, 3_000))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        assert!(upper[0] <= 100 && upper[1] <= 200 && upper[2] <= 400);
        assert!(upper[7] <= 3_000 && upper[7] > 1_500);
    }

    #[test]
    fn same_seed_same_draws() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }
}
