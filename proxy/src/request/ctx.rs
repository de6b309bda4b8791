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
use crate::state::admission::HOLD;
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
    /// The function called (`policies::Request::function_hash`, and its
    /// name), for the hold.
    pub(super) function_key: u64,
    pub(super) function: String,
    /// A function call (`/run/` or gRPC), not a `[[paths]]` forward: only
    /// these answer for their worker toward ejection.
    pub(super) function_call: bool,
    /// Refusals by workers so far (`x-ol-refused`); `Some` while the last
    /// attempt's refusal is being turned into a retry: where it goes next.
    pub(super) refusals: u32,
    pub(super) after_refusal: Option<AfterRefusal>,
    /// After a wake in the hold: the picks are tried in turn again, at
    /// once and outside the retry budget (the wake is the pacing).
    pub(super) sweep: bool,
    /// Connect failures retried (bounded by `retries`; refusals are not).
    pub(super) connect_retries: usize,
    /// Attempts so far (pingora stops at `MAX_ATTEMPTS`).
    pub(super) attempts: usize,
    /// When this call's time in the hold ends (set at its first wait).
    pub(super) hold_until: Option<Instant>,
    /// The answer to a call the proxy gave up on itself (status, reason,
    /// `Retry-After`), read by `fail_to_proxy`.
    pub(super) answer: Option<(u16, String, Option<u32>)>,
    /// A slot under an `[[admission.limits]]` concurrency limit, given
    /// back when the request ends (this context drops).
    pub(super) limit_slot: Option<crate::state::limits::Slot>,
    _in_flight: InFlight,
}

/// Where a refused call goes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AfterRefusal {
    /// The next pick, at once (the retry budget allowed it).
    NextPick,
    /// The hold, until a slot of its function is released.
    Hold,
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
            limit_slot: None,
            function_key: 0,
            function: String::new(),
            function_call: false,
            refusals: 0,
            after_refusal: None,
            sweep: false,
            connect_retries: 0,
            attempts: 0,
            hold_until: None,
            answer: None,
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

    /// Gives the in-flight slot back to the policies' state table; a call
    /// of the same function waiting in the hold may go.
    pub(super) fn release(&mut self) {
        if let (Some(s), Some(i)) = (&self.snap, self.attached.take()) {
            s.routing.table.finish(i);
            HOLD.released(self.function_key);
        }
    }

    /// Gives back the slot of an attempt the worker refused: nothing
    /// finished there, so no waiter is woken (a refusal waking a waiter
    /// that is refused in turn would go round without end).
    pub(super) fn release_refused(&mut self) {
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
