//! `random`: a uniformly random healthy worker. Baseline.

use crate::hash::AtomicRng;
use crate::{Picks, Policy, PolicyKind, Request, View};

/// A splitmix64 sequence in one atomic (seeded, so runs repeat); an
/// unhealthy draw moves to the next healthy worker.
#[derive(Debug)]
pub struct Random {
    rng: AtomicRng,
}

impl Random {
    /// A random policy whose draws start from `seed`.
    pub fn new(seed: u64) -> Self {
        Random {
            rng: AtomicRng::new(seed),
        }
    }
}

impl Policy for Random {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Random
    }

    #[inline]
    fn pick(&self, _: &Request<'_>, view: &View<'_>) -> Option<Picks> {
        let mut p = Picks::new();
        let n = view.len();
        if n > 0 {
            view.fill_from(&mut p, self.rng.below(n));
        }
        Some(p)
    }
}
