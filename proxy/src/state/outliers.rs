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
    if cfg.consecutive_failures == 0 || o.ejected(now) {
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
    let out = workers.iter().filter(|w| w.outlier.ejected(now)).count();
    if (out + 1) * 100 > workers.len() * cfg.max_ejected_percent as usize {
        return None;
    }
    let k = o.ejections.fetch_add(1, Relaxed).min(20);
    let ms = cfg.eject_ms.saturating_mul(1 << k).min(cfg.max_eject_ms);
    o.failures.store(0, Relaxed);
    o.until.store(now + ms, Relaxed);
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
