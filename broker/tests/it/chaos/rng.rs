//! A tiny seeded random number generator (SplitMix64), so every chaos run can be replayed from its seed
//! without a dependency.

/// SplitMix64: a fast 64-bit generator with a full period; good enough to pick fault moments, not for crypto.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator that yields the same sequence for the same `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    /// A number in `0..bound`; `bound` must not be zero.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "an empty range has no member");
        // The modulo bias is at most bound / 2^64: irrelevant for picking fault moments.
        self.next_u64() % bound
    }

    /// A float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        // 53 random bits fill an f64 mantissa exactly.
        let bits = self.next_u64() >> 11;
        bits as f64 / (1u64 << 53) as f64
    }
}

/// The seed of a chaos run: `FERRY_CHAOS_SEED` when set (to replay a failure), otherwise a fresh one from the clock.
/// Printed by the caller, so every run can be replayed.
pub fn seed_from_env() -> u64 {
    match std::env::var("FERRY_CHAOS_SEED") {
        Ok(text) => text.trim().parse().unwrap_or_else(|error| panic!("FERRY_CHAOS_SEED={text:?}: {error}")),
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970");
            // Nanoseconds mixed with the pid, so two runs started in the same instant still differ.
            Rng::new(
                u64::try_from(now.as_nanos() & u128::from(u64::MAX)).expect("masked to 64 bits")
                    ^ u64::from(std::process::id()),
            )
            .next_u64()
        }
    }
}

/// Whether the long versions of the chaos tests run (`FERRY_SLOW_TESTS=1`), checked at run time.
pub fn slow_tests() -> bool {
    std::env::var("FERRY_SLOW_TESTS").is_ok_and(|value| value == "1")
}
