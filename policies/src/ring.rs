//! A consistent-hash ring with virtual nodes, and the two walks the hashing
//! policies use: plain (first healthy owners clockwise) and bounded-load
//! (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded
//! Loads", 2018: skip a worker whose load would exceed ceil((1+e) x average)).
//!
//! Built once per membership (sorting `workers x vnodes` points); a lookup
//! is a binary search over a dense `u64` array plus a short walk.

use crate::hash::hash_seeded;
use crate::{Picks, View};

/// Points of all workers, sorted, with the owner of each.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    points: Box<[u64]>,
    owners: Box<[u32]>,
}

impl Ring {
    /// `vnodes` points per worker, placed by hashing the worker's key, so a
    /// worker keeps its points when others come or go.
    pub(crate) fn build(keys: &[&str], vnodes: u32) -> Ring {
        let mut v: Vec<(u64, u32)> = Vec::with_capacity(keys.len() * vnodes as usize);
        for (w, k) in keys.iter().enumerate() {
            for r in 0..vnodes as u64 {
                v.push((hash_seeded(k.as_bytes(), r.wrapping_add(0x5eed)), w as u32));
            }
        }
        // Ties (practically impossible) are broken by owner for determinism.
        v.sort_unstable();
        Ring {
            points: v.iter().map(|p| p.0).collect(),
            owners: v.iter().map(|p| p.1).collect(),
        }
    }

    #[inline]
    fn start(&self, h: u64) -> usize {
        let p = self.points.partition_point(|&x| x < h);
        if p == self.points.len() {
            0
        } else {
            p
        }
    }

    /// Owners clockwise from `h`, each worker once per call order, at most
    /// one full turn.
    #[inline]
    fn owners_from(&self, h: u64) -> impl Iterator<Item = usize> + '_ {
        let n = self.owners.len();
        let s = if n == 0 { 0 } else { self.start(h) };
        (0..n).map(move |k| {
            let i = s + k;
            self.owners[if i >= n { i - n } else { i }] as usize
        })
    }

    /// Plain consistent hashing: the first eligible distinct owners clockwise.
    #[inline]
    pub(crate) fn pick_plain(&self, h: u64, view: &View<'_>) -> Picks {
        let mut p = Picks::new();
        for w in self.owners_from(h) {
            if view.eligible(w) {
                p.push(w);
                if p.is_full() {
                    break;
                }
            }
        }
        p
    }

    /// Bounded loads. The bound is b = (1+e) x (in-flight + 1) / workers.
    /// Eligible owners are visited clockwise; a worker is *under* when its
    /// in-flight count + 1 <= b, *at* when it is below ceil(b) (always
    /// feasible: some worker is), *over* otherwise. The choice is, among
    /// the first [`LOOK`] distinct ones, a worker that holds `warm_key`
    /// warm (when given) and is under, else one that is warm and at, else
    /// the first under worker; else the first under or at worker further
    /// on. The rest follow: under, at, then over, in ring
    /// order. Typically walks a handful of points; a full turn at worst.
    #[inline]
    pub(crate) fn pick_bounded(
        &self,
        h: u64,
        view: &View<'_>,
        one_plus_e: f64,
        warm_key: Option<u64>,
    ) -> Picks {
        // b >= (in-flight + 1) / n, so ceil(b) always admits the least
        // loaded worker: floor(in-flight / n) + 1 <= ceil((in-flight + 1) / n).
        let bound = view.load_bound(one_plus_e);
        let strict = (bound.floor() as u32).max(1);
        let cap = (bound.ceil() as u32).max(1);
        // Distinct eligible owners in ring order with their class (0 under,
        // 1 at, 2 over); the walk stops at LOOK + 4 of them or once the
        // choice is certain.
        let mut seen = [(0u32, 0u8); SEEN];
        let mut len = 0;
        let mut extra: Option<usize> = None; // first under/at worker past the buffer
        let mut under_in_look = false;
        let mut any_ok = false;
        for w in self.owners_from(h) {
            if !view.eligible(w) || seen[..len].iter().any(|s| s.0 as usize == w) {
                continue;
            }
            let f = view.workers.in_flight(w);
            let class = if f < strict {
                0
            } else if f < cap {
                1
            } else {
                2
            };
            if len < SEEN {
                seen[len] = (w as u32, class);
                len += 1;
                if class == 0 && len <= LOOK {
                    under_in_look = true;
                }
                any_ok |= class < 2;
                if (under_in_look && len >= LOOK)
                    || (any_ok && len == SEEN)
                    || len == view.eligible_count()
                {
                    break;
                }
            } else if class < 2 {
                extra = Some(w);
                break;
            }
        }
        let seen = &seen[..len];
        let mut p = Picks::new();
        let first_under = seen.iter().take(LOOK).position(|s| s.1 == 0);
        // A warm worker among the first LOOK: under the bound first, then
        // at it (still within the cap): a cold start costs more than the
        // one extra call an at-bound worker takes.
        let warm = |class: u8| {
            let k = warm_key?;
            seen.iter()
                .take(LOOK)
                .position(|s| s.1 == class && view.warm.is_warm(s.0 as usize, k))
        };
        let choice = warm(0)
            .or_else(|| warm(1))
            .or(first_under)
            .or_else(|| seen.iter().position(|s| s.1 < 2));
        match choice {
            Some(i) => {
                p.push(seen[i].0 as usize);
            }
            None => {
                if let Some(w) = extra {
                    p.push(w);
                }
            }
        }
        for class in 0..3 {
            for s in seen.iter().filter(|s| s.1 == class) {
                p.push(s.0 as usize);
            }
        }
        p
    }
}

/// Distinct workers among which an under-bound worker is preferred.
const LOOK: usize = 4;
/// Distinct workers remembered by the bounded walk.
const SEEN: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Workers;

    #[test]
    fn every_worker_has_vnodes_points() {
        let r = Ring::build(&["a", "b", "c"], 16);
        assert_eq!(r.points.len(), 48);
        assert!(r.points.windows(2).all(|w| w[0] <= w[1]));
        for w in 0..3u32 {
            assert_eq!(r.owners.iter().filter(|&&o| o == w).count(), 16);
        }
    }

    #[test]
    fn bounded_skips_capped_home() {
        let r = Ring::build(&["a", "b", "c", "d"], 32);
        let idle = Workers::new(4);
        let home = r
            .pick_bounded(42, &View::new(&idle), 1.25, None)
            .first()
            .unwrap();
        assert_eq!(r.pick_plain(42, &View::new(&idle)).first(), Some(home));
        let mut s = vec![(true, 0, 0); 4];
        s[home].1 = 5; // total 5 -> cap ceil(1.25 * 6/4) = 2
        let w = Workers::from_snapshot(&s);
        let p = r.pick_bounded(42, &View::new(&w), 1.25, None);
        assert_ne!(p.first(), Some(home));
        assert_eq!(p.len(), 4);
        assert_eq!(p.get(3), Some(home), "capped home is the last resort");
        assert_eq!(r.pick_plain(42, &View::new(&w)).first(), Some(home));
    }

    /// The only worker holding key 7 warm.
    struct WarmOn(usize);
    impl crate::Warm for WarmOn {
        fn is_warm(&self, w: usize, key: u64) -> bool {
            w == self.0 && key == 7
        }
    }

    #[test]
    fn a_warm_worker_at_the_bound_beats_a_cold_one_under_it() {
        let r = Ring::build(&["a", "b", "c", "d"], 32);
        let idle = Workers::new(4);
        let order = r.pick_plain(42, &View::new(&idle));
        let (home, second) = (order.get(0).unwrap(), order.get(1).unwrap());
        // 4 in flight in all: bound 1.25 x 5/4 = 1.56, so 1 in flight is
        // *at* the bound (cap 2) and 0 is under it.
        let mut s = vec![(true, 1, 0); 4];
        s[second].1 = 0;
        s[(0..4).find(|w| *w != home && *w != second).unwrap()].1 = 2;
        let w = Workers::from_snapshot(&s);
        let cold = r.pick_bounded(42, &View::new(&w), 1.25, Some(7));
        assert_eq!(cold.first(), Some(second), "no index: the under worker");
        let warm = WarmOn(home);
        let p = r.pick_bounded(42, &View::with_warm(&w, &warm), 1.25, Some(7));
        assert_eq!(p.first(), Some(home), "the warm home, at the bound");
        // Over the cap, warm or not, it is not chosen.
        s[home].1 = 3;
        let w = Workers::from_snapshot(&s);
        let p = r.pick_bounded(42, &View::with_warm(&w, &warm), 1.25, Some(7));
        assert_ne!(p.first(), Some(home));
    }
}
