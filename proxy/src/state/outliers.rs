//! Outlier ejection and slow start: what the proxy learns about a worker
//! from its calls, beyond health checks.
//!
//! Ejection (`[outliers]`): a worker whose calls fail the platform's way
//! `consecutive_failures` times in a row (its own 502/503/504, marked
//! `x-ol-error: worker` and not a refusal, or a failed connect) leaves
//! every policy for `eject_ms`. Then it gets calls again: the first one
//! that fails the same way ejects it for twice as long (up to
//! `max_eject_ms`); one that does not ends the streak. A function's own
//! errors (`x-ol-error: function`: its status, its crash, its timeout)
//! never count, so a hostile function cannot get workers ejected; at most
//! `max_ejected_percent` of the workers are out at once.
//!
//! Slow start (`health.slow_start_ms`): a worker that comes back (health
//! rises again, an ejection ends) is the policy's first pick for only a
//! share of the calls that would go to it, growing from 10% to all over
//! the ramp; the other calls take their next pick.
//!
//! All of it is relaxed atomics on the worker, read on the request path
//! without locks; times are [`super::warm::now_ms`].

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use config::proxy::OutliersConfig;
use config::wire::{LEVEL_WORKER, X_OL_ERROR};
use policies::Picks;

use super::workers::Worker;

/// The least share (in thousandths) a worker in slow start gets.
const MIN_SHARE: u64 = 100;

/// One worker's streaks, ejection and ramp.
#[derive(Default)]
pub struct Outlier {
    /// Platform failures in a row.
    failures: AtomicU32,
    /// Ejections in a row (the back-off's exponent).
    ejections: AtomicU32,
    /// Ejected until this time; 0: not ejected (or the end was seen).
    until: AtomicU64,
    /// When it came back (slow start); 0: at full share.
    back_at: AtomicU64,
    /// Ejections since start, for `/metrics`.
    pub ejected_total: AtomicU64,
}

impl Outlier {
    pub fn ejected(&self, now: u64) -> bool {
        self.until.load(Relaxed) > now
    }

    /// Starts the slow-start ramp.
    pub fn came_back(&self, now: u64) {
        self.back_at.store(now, Relaxed);
    }

    /// The share of its calls the worker takes now, in thousandths.
    fn share(&self, now: u64, ramp_ms: u64) -> u64 {
        let back = self.back_at.load(Relaxed);
        if back == 0 {
            return 1000;
        }
        let elapsed = now.saturating_sub(back);
        if elapsed >= ramp_ms {
            self.back_at.store(0, Relaxed);
            return 1000;
        }
        (elapsed * 1000 / ramp_ms).max(MIN_SHARE)
    }

    /// Ends an ejection whose time is up; true when one ended (the worker
    /// is back, on probation, at the start of its ramp).
    pub fn end_if_due(&self, now: u64) -> bool {
        let until = self.until.load(Relaxed);
        if until == 0 || until > now {
            return false;
        }
        let ended = self
            .until
            .compare_exchange(until, 0, Relaxed, Relaxed)
            .is_ok();
        if ended {
            self.came_back(now);
        }
        ended
    }
}

/// What one call said about its worker.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// The worker failed (not the function): a failed connect, or its own
    /// 502/503/504.
    PlatformFailure,
    /// Any other answer (a refusal says nothing and is not reported).
    Answered,
}

/// What the head of a function call's answer says about its worker:
/// its own 502/503/504 (gRPC: UNAVAILABLE or DEADLINE_EXCEEDED in a
/// trailers-only answer), marked `x-ol-error: worker`, is a platform
/// failure; anything else answers. `None` for a `[[paths]]` forward
/// (`function_call` false): an upload's "busy" is not the worker failing
/// calls. Refusals are taken apart before this (they say nothing).
pub fn outcome_of(function_call: bool, status: u16, headers: &http::HeaderMap) -> Option<Outcome> {
    if !function_call {
        return None;
    }
    // Every response passes here: `x-ol-error` is looked up only for a
    // failure.
    let failed = match headers.get("grpc-status") {
        Some(code) => matches!(code.as_bytes(), b"14" | b"4"),
        None => matches!(status, 502..=504),
    };
    let by_worker = || {
        headers
            .get(X_OL_ERROR)
            .is_some_and(|v| v.as_bytes() == LEVEL_WORKER.as_bytes())
    };
    Some(match failed && by_worker() {
        true => Outcome::PlatformFailure,
        false => Outcome::Answered,
    })
}

/// Notes one call's outcome on worker `i` of `workers`; `Some(ms)` when
/// it ejects the worker for that long (the caller takes it out of the
/// policies' table).
pub fn record(
    workers: &[std::sync::Arc<Worker>],
    i: usize,
    outcome: Outcome,
    cfg: &OutliersConfig,
    now: u64,
) -> Option<u64> {
    let w = workers.get(i)?;
    let o = &w.outlier;
    if outcome == Outcome::Answered {
        if o.failures.load(Relaxed) != 0 {
            o.failures.store(0, Relaxed);
        }
        if o.ejections.load(Relaxed) != 0 && !o.ejected(now) {
            o.ejections.store(0, Relaxed);
            tracing::info!("worker {} answers again: its ejection streak ends", w.addr);
        }
        return None;
    }
    let until = o.until.load(Relaxed);
    if cfg.consecutive_failures == 0 || until > now {
        return None;
    }
    let n = o.failures.fetch_add(1, Relaxed) + 1;
    // On probation after an ejection, one failure is enough.
    let needed = if o.ejections.load(Relaxed) > 0 {
        1
    } else {
        cfg.consecutive_failures
    };
    if n < needed {
        return None;
    }
    // Workers out for any reason (unhealthy, draining, ejected) count
    // toward the cap, and the last routable one always stays: a failing
    // worker is better than none.
    let others_out = (workers.iter().enumerate())
        .filter(|&(j, w)| j != i && !w.routable(now))
        .count();
    if (others_out + 1) * 100 > workers.len() * cfg.max_ejected_percent as usize
        || others_out + 1 >= workers.len()
    {
        return None;
    }
    let k = o.ejections.load(Relaxed).min(20);
    let ms = cfg.eject_ms.saturating_mul(1 << k).min(cfg.max_eject_ms);
    // Failures seen at once race here: one of them ejects, the others
    // find it done.
    if o.until
        .compare_exchange(until, now + ms, Relaxed, Relaxed)
        .is_err()
    {
        return None;
    }
    o.ejections.fetch_add(1, Relaxed);
    o.failures.store(0, Relaxed);
    o.ejected_total.fetch_add(1, Relaxed);
    tracing::warn!(
        "worker {} ejected for {ms} ms after {n} platform failure{} in a row (ejection {} in a row)",
        w.addr,
        if n == 1 { "" } else { "s" },
        k + 1
    );
    Some(ms)
}

/// Slow start: when the first pick is ramping up, it stays first for only
/// its share of the calls; the others go to the next pick first.
pub fn ramp(picks: &mut Picks, workers: &[std::sync::Arc<Worker>], now: u64, ramp_ms: u64) {
    if ramp_ms == 0 || picks.len() < 2 {
        return;
    }
    let Some(w) = picks.first().and_then(|i| workers.get(i)) else {
        return;
    };
    let share = w.outlier.share(now, ramp_ms);
    if share < 1000 && fastrand::u64(0..1000) >= share {
        picks.demote_first();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn workers(n: u16) -> Vec<Arc<Worker>> {
        (1..=n)
            .map(|p| Worker::new(([127, 0, 0, 1], p).into(), "static", true))
            .collect()
    }

    #[test]
    fn ejected_after_the_streak_for_a_growing_time_and_a_success_ends_it() {
        let cfg = OutliersConfig {
            consecutive_failures: 3,
            eject_ms: 100,
            max_eject_ms: 250,
            max_ejected_percent: 50,
        };
        let ws = workers(2);
        let fail = Outcome::PlatformFailure;
        assert_eq!(record(&ws, 0, fail, &cfg, 10), None);
        assert_eq!(
            record(&ws, 0, Outcome::Answered, &cfg, 10),
            None,
            "the streak restarts"
        );
        assert_eq!(record(&ws, 0, fail, &cfg, 10), None);
        assert_eq!(record(&ws, 0, fail, &cfg, 10), None);
        assert_eq!(record(&ws, 0, fail, &cfg, 10), Some(100));
        assert!(!ws[0].routable(50) && ws[0].routable(111));
        // The other worker cannot go too: half the workers are out.
        for _ in 0..5 {
            assert_eq!(record(&ws, 1, fail, &cfg, 20), None);
        }
        assert!(ws[0].outlier.end_if_due(111));
        // On probation: one failure, twice as long; then the cap.
        assert_eq!(record(&ws, 0, fail, &cfg, 120), Some(200));
        assert!(ws[0].outlier.end_if_due(320));
        assert_eq!(record(&ws, 0, fail, &cfg, 330), Some(250));
        assert!(ws[0].outlier.end_if_due(580));
        assert_eq!(record(&ws, 0, Outcome::Answered, &cfg, 590), None);
        assert_eq!(
            record(&ws, 0, fail, &cfg, 600),
            None,
            "recovered: a streak again"
        );
    }

    #[test]
    fn the_cap_counts_workers_out_for_any_reason_and_keeps_the_last_one() {
        let cfg = OutliersConfig {
            consecutive_failures: 1,
            eject_ms: 100,
            max_eject_ms: 100,
            max_ejected_percent: 50,
        };
        let fail = Outcome::PlatformFailure;
        let ws = workers(4);
        assert!(ws[1].drain());
        assert_eq!(record(&ws, 0, fail, &cfg, 10), Some(100), "2 of 4 out");
        assert_eq!(
            record(&ws, 2, fail, &cfg, 10),
            None,
            "a third out (one draining, one ejected) is past 50%"
        );
        // Even at 100%, the last routable worker stays: a failing worker
        // beats none.
        let all = OutliersConfig {
            max_ejected_percent: 100,
            ..cfg
        };
        let ws = workers(2);
        ws[1].record_check(false, 1, 1);
        assert!(!ws[1].routable(10));
        assert_eq!(record(&ws, 0, fail, &all, 10), None);
        assert!(ws[0].routable(10));
    }

    #[test]
    fn failures_at_once_eject_a_worker_once() {
        let cfg = OutliersConfig {
            consecutive_failures: 1,
            eject_ms: 1000,
            max_eject_ms: 100_000,
            max_ejected_percent: 50,
        };
        for _ in 0..200 {
            let ws = Arc::new(workers(4));
            let barrier = Arc::new(std::sync::Barrier::new(4));
            let ejections: usize = (0..4)
                .map(|_| {
                    let (ws, barrier, cfg) = (ws.clone(), barrier.clone(), cfg.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        (0..50)
                            .filter(|_| {
                                record(&ws, 0, Outcome::PlatformFailure, &cfg, 10).is_some()
                            })
                            .count()
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().unwrap())
                .sum();
            assert_eq!(ejections, 1);
            assert_eq!(ws[0].outlier.ejected_total.load(Relaxed), 1);
            assert_eq!(
                ws[0].outlier.ejections.load(Relaxed),
                1,
                "the back-off counts one"
            );
        }
    }

    #[test]
    fn only_function_calls_answer_for_their_worker() {
        use http::{HeaderMap, HeaderValue};
        let mut worker = HeaderMap::new();
        worker.insert(X_OL_ERROR, HeaderValue::from_static(LEVEL_WORKER));
        let mut function = HeaderMap::new();
        function.insert(X_OL_ERROR, HeaderValue::from_static("function"));
        let fail = Some(Outcome::PlatformFailure);
        let ok = Some(Outcome::Answered);
        assert_eq!(outcome_of(true, 503, &worker), fail);
        assert_eq!(outcome_of(true, 502, &function), ok);
        assert_eq!(outcome_of(true, 500, &worker), ok);
        assert_eq!(outcome_of(true, 200, &HeaderMap::new()), ok);
        // A `[[paths]]` forward (an upload's 503 "busy", say) says nothing.
        assert_eq!(outcome_of(false, 503, &worker), None);
        assert_eq!(outcome_of(false, 200, &HeaderMap::new()), None);
        // gRPC: a trailers-only answer carries its status in the head.
        let mut grpc = worker.clone();
        grpc.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(outcome_of(true, 200, &grpc), fail);
        grpc.insert("grpc-status", HeaderValue::from_static("4"));
        assert_eq!(outcome_of(true, 200, &grpc), fail);
        grpc.insert("grpc-status", HeaderValue::from_static("13"));
        assert_eq!(outcome_of(true, 200, &grpc), ok);
        let mut by_function = function.clone();
        by_function.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(outcome_of(true, 200, &by_function), ok);
    }

    #[test]
    fn a_worker_back_takes_a_growing_share_of_its_first_picks() {
        let ws = workers(2);
        ws[0].outlier.came_back(1);
        let first_share = |now: u64| {
            (0..2000)
                .filter(|_| {
                    let mut p = Picks::new();
                    p.push(0);
                    p.push(1);
                    ramp(&mut p, &ws, now, 1000);
                    p.first() == Some(0)
                })
                .count()
        };
        let early = first_share(1);
        let half = first_share(501);
        assert!((100..400).contains(&early), "about 10%: {early} of 2000");
        assert!((850..1150).contains(&half), "about 50%: {half} of 2000");
        assert_eq!(first_share(1001), 2000, "the ramp is over");
    }
}
