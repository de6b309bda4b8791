//! The per-request context the hooks share, and the two slots it holds
//! for exactly as long as it lives: the request's place in [`IN_FLIGHT`]
//! (shutdown waits for it) and the worker's in-flight count in the
//! policies' table (the load policies read it).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use config::wire::Timing;
use http::HeaderValue;
use policies::Picks;

use crate::caches::CallState;
use crate::http::answer::Served;
use crate::state::routing::PolicyId;
use crate::state::{Snapshot, IN_FLIGHT};

/// Counts a request in flight for as long as its context lives.
pub struct InFlight;

impl InFlight {
    fn new() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-request state shared by the hooks.
pub struct Ctx {
    /// The snapshot this request was decided under, to its end.
    pub(super) snap: Option<Arc<Snapshot>>,
    pub(super) route: usize,
    pub(super) policy: PolicyId,
    pub(super) policy_header: Option<HeaderValue>,
    pub(super) picks: Picks,
    pub(super) attempt: usize,
    /// The worker index (in `snap`) holding an in-flight slot.
    attached: Option<usize>,
    /// The last worker tried, kept for metrics and error messages.
    pub(super) worker: Option<usize>,
    pub(super) worker_header: Option<HeaderValue>,
    pub(super) started: Instant,
    pub(super) upstream_started: Option<Instant>,
    pub(super) deadline: Option<Instant>,
    pub(super) retries: u64,
    /// The caches' per-request state.
    pub(super) caches: CallState,
    /// Experiment and arm, when one applies.
    pub(super) arm: Option<(usize, usize)>,
    /// The worker's `x-ol-timing`, when it sent one.
    pub(super) timing: Option<Timing>,
    _in_flight: InFlight,
}

impl Ctx {
    pub(super) fn new() -> Ctx {
        Ctx {
            snap: None,
            route: usize::MAX,
            policy: 0,
            policy_header: None,
            picks: Picks::new(),
            attempt: 0,
            attached: None,
            worker: None,
            worker_header: None,
            started: Instant::now(),
            upstream_started: None,
            deadline: None,
            retries: 0,
            caches: Default::default(),
            arm: None,
            timing: None,
            _in_flight: InFlight::new(),
        }
    }

    /// The `x-ol-worker` and `x-ol-policy` values of this request so far.
    pub(super) fn served(&self) -> Served<'_> {
        Served {
            worker: self.worker_header.as_ref(),
            policy: self.policy_header.as_ref(),
        }
    }

    /// Takes an in-flight slot on worker `i` (giving back the one a
    /// previous attempt held).
    pub(super) fn attach(&mut self, i: usize) {
        let Some(snap) = &self.snap else { return };
        if let Some(prev) = self.attached.replace(i) {
            snap.routing.table.finish(prev);
        }
        snap.routing.table.start(i);
    }

    /// Gives the in-flight slot back to the policies' state table.
    pub(super) fn release(&mut self) {
        if let (Some(s), Some(i)) = (&self.snap, self.attached.take()) {
            s.routing.table.finish(i);
        }
    }
}

impl Drop for Ctx {
    /// Every exit path (success, error, cancelled task) releases the slot.
    fn drop(&mut self) {
        self.release();
    }
}
