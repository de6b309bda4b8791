//! `openwhisk`: Apache OpenWhisk's `ShardingContainerPoolBalancer` as a
//! published baseline. The function's hash picks a home invoker
//! (`hash mod N`) and a step size from the numbers that are co-prime to N
//! and pairwise co-prime (`hash mod len`); invokers are probed home, home +
//! step, home + 2 step, ... and the first healthy one with a free slot
//! (`max_in_flight`) wins. When none has a slot, a random healthy one does.
//!
//! Unlike consistent hashing, `mod N` remaps most functions when N changes.

use crate::hash::AtomicRng;
use crate::{Picks, Policy, PolicyKind, Request, View};

/// N, the co-prime step sizes of N (computed at build) and the slots per
/// worker.
#[derive(Debug)]
pub struct OpenWhisk {
    n: usize,
    steps: Box<[u32]>,
    slots: u32,
    rng: AtomicRng,
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// OpenWhisk's `pairwiseCoprimeNumbersUntil(n)`.
pub(crate) fn pairwise_coprimes(n: usize) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for cur in 1..=n {
        if gcd(cur, n) == 1 && out.iter().all(|&p| gcd(p as usize, cur) == 1) {
            out.push(cur as u32);
        }
    }
    out
}

impl OpenWhisk {
    /// `n` workers, each taking `max_in_flight` requests before probing on.
    pub fn new(n: usize, max_in_flight: u32, seed: u64) -> Self {
        OpenWhisk {
            n,
            steps: pairwise_coprimes(n).into(),
            slots: max_in_flight,
            rng: AtomicRng::new(seed),
        }
    }
}

impl Policy for OpenWhisk {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Openwhisk
    }

    /// O(1) while the home invoker has a slot; O(N) probing when many are
    /// full.
    #[inline]
    fn pick(&self, req: &Request<'_>, view: &View<'_>) -> Option<Picks> {
        let mut p = Picks::new();
        let n = self.n.min(view.len());
        if n == 0 || self.steps.is_empty() {
            return Some(p);
        }
        let h = req.function_hash();
        let home = (h % n as u64) as usize;
        let step = self.steps[((h >> 32) % self.steps.len() as u64) as usize] as usize % n;
        let mut i = home;
        for _ in 0..n {
            if view.eligible(i) && view.workers.in_flight(i) < self.slots {
                p.push(i);
                if p.is_full() {
                    break;
                }
            }
            i += step;
            if i >= n {
                i -= n;
            }
        }
        if p.is_empty() {
            // Every invoker is full: a random healthy one.
            if let Some(r) = view.next_eligible(self.rng.below(n)) {
                p.push(r);
            }
        }
        view.fill_from(&mut p, home);
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coprimes_match_openwhisk() {
        assert_eq!(pairwise_coprimes(1), vec![1]);
        assert_eq!(pairwise_coprimes(6), vec![1, 5]);
        assert_eq!(pairwise_coprimes(10), vec![1, 3, 7]);
        assert_eq!(pairwise_coprimes(12), vec![1, 5, 7, 11]);
    }
}
