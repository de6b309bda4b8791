//! `round-robin`: each request goes to the next healthy worker. Baseline.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Picks, Policy, PolicyKind, Request, View};

/// One shared counter (a relaxed `fetch_add` per decision); unhealthy
/// workers are skipped. Fail-over candidates are the next workers in order.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A round-robin policy starting at worker 0.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Policy for RoundRobin {
    fn kind(&self) -> PolicyKind {
        PolicyKind::RoundRobin
    }

    #[inline]
    fn pick(&self, _: &Request<'_>, view: &View<'_>) -> Option<Picks> {
        let mut p = Picks::new();
        let n = view.len();
        if n > 0 {
            view.fill_from(&mut p, self.next.fetch_add(1, Ordering::Relaxed) % n);
        }
        Some(p)
    }
}
