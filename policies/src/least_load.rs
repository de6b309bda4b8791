//! `least-load`: the power of two choices (Mitzenmacher, 2001). Two random
//! healthy workers are compared and the less loaded wins: nearly the balance
//! of a full scan at O(1) cost and without herding on one "best" worker.

use crate::hash::AtomicRng;
use crate::{Picks, Policy, PolicyKind, Request, View};

/// Compares in-flight counts; ties go to the worker that holds the function
/// warm (per [`crate::Warm`]), then to the lower latency estimate.
#[derive(Debug)]
pub struct LeastLoad {
    rng: AtomicRng,
}

impl LeastLoad {
    /// A least-load policy whose random draws start from `seed`.
    pub fn new(seed: u64) -> Self {
        LeastLoad {
            rng: AtomicRng::new(seed),
        }
    }
}

/// Whether `a` is a better choice than `b` for `req`.
#[inline]
fn better(a: usize, b: usize, req: &Request<'_>, view: &View<'_>) -> bool {
    let w = view.workers;
    let (fa, fb) = (w.in_flight(a), w.in_flight(b));
    if fa != fb {
        return fa < fb;
    }
    let h = req.function_hash();
    let (wa, wb) = (view.warm.is_warm(a, h), view.warm.is_warm(b, h));
    if wa != wb {
        return wa;
    }
    w.latency_us(a) <= w.latency_us(b)
}

impl Policy for LeastLoad {
    fn kind(&self) -> PolicyKind {
        PolicyKind::LeastLoad
    }

    #[inline]
    fn pick(&self, req: &Request<'_>, view: &View<'_>) -> Option<Picks> {
        let mut p = Picks::new();
        let n = view.len();
        if n == 0 {
            return Some(p);
        }
        let Some(a) = view.next_eligible(self.rng.below(n)) else {
            return Some(p);
        };
        let mut b = a;
        if n > 1 {
            // A second, distinct draw.
            let j = self.rng.below(n - 1);
            let j = if j >= a { j + 1 } else { j };
            b = view.next_eligible(j).unwrap_or(a);
            if b == a {
                b = view.next_eligible(a + 1).unwrap_or(a);
            }
        }
        if b != a && better(b, a, req, view) {
            p.push(b);
            p.push(a);
        } else {
            p.push(a);
            p.push(b);
        }
        view.fill_from(&mut p, a + 1);
        Some(p)
    }
}
