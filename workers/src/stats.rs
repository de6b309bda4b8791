//! Counters and timers behind `/stats` (the `x-ol-timing` of one call is
//! `config::wire::Timing`).
//!
//! `/stats` is flat JSON in OpenLambda's style: `<timer>.cnt` and
//! `<timer>.ms-avg` for each timed level, plus plain counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use config::wire::{Start, Timing};

#[derive(Default)]
pub struct Timer {
    cnt: AtomicU64,
    total_us: AtomicU64,
}

impl Timer {
    pub fn record(&self, d: Duration) {
        self.cnt.fetch_add(1, Relaxed);
        self.total_us.fetch_add(d.as_micros() as u64, Relaxed);
    }
}

macro_rules! stats {
    (timers: $($t:ident = $tn:literal),* ; counters: $($c:ident = $cn:literal),* $(,)?) => {
        #[derive(Default)]
        pub struct Stats {
            $(pub $t: Timer,)*
            $(pub $c: AtomicU64,)*
        }

        impl Stats {
            /// The flat JSON object of `/stats`, with `extra` gauges added.
            pub fn to_json(&self, extra: &[(&str, u64)]) -> String {
                let mut m = serde_json::Map::new();
                $(
                    let cnt = self.$t.cnt.load(Relaxed);
                    let total = self.$t.total_us.load(Relaxed);
                    m.insert(concat!($tn, ".cnt").into(), cnt.into());
                    let avg = if cnt == 0 { 0.0 } else { total as f64 / cnt as f64 / 1000.0 };
                    m.insert(concat!($tn, ".ms-avg").into(), ((avg * 1000.0).round() / 1000.0).into());
                )*
                $( m.insert($cn.into(), self.$c.load(Relaxed).into()); )*
                for (k, v) in BACKEND.pairs().iter().chain(extra) {
                    m.insert((*k).into(), (*v).into());
                }
                serde_json::Value::Object(m).to_string()
            }
        }
    };
}

stats! {
    timers: queue = "queue", create = "sandbox-create", unpause = "sandbox-unpause",
            run = "handler-run", total = "run";
    counters: cold_starts = "starts.cold", warm_starts = "starts.warm",
              unpaused_starts = "starts.unpaused", zygote_starts = "starts.zygote",
              status_2xx = "status.2xx",
              status_4xx = "status.4xx", status_5xx = "status.5xx",
              queue_full = "rejected.queue-full", timeouts = "errors.timeout",
              crashes = "errors.crash", load_errors = "errors.load",
              pauses = "instances.paused-total", evictions = "instances.evicted-total",
}

/// Counters kept by a sandbox backend rather than the handler set (the
/// process backend's package store and zygotes), shown in `/stats`. A
/// process-wide static: the backend is created before the handler set
/// and there is one worker per process.
pub struct BackendCounters {
    pub packages_installed: AtomicU64,
    pub packages_failed: AtomicU64,
    pub zygotes_created: AtomicU64,
    pub zygotes_live: AtomicU64,
    /// Cold starts that wanted a zygote but had to start a fresh process.
    pub zygote_fallbacks: AtomicU64,
}

pub static BACKEND: BackendCounters = BackendCounters {
    packages_installed: AtomicU64::new(0),
    packages_failed: AtomicU64::new(0),
    zygotes_created: AtomicU64::new(0),
    zygotes_live: AtomicU64::new(0),
    zygote_fallbacks: AtomicU64::new(0),
};

impl BackendCounters {
    fn pairs(&self) -> [(&'static str, u64); 5] {
        use config::wire::stats::*;
        [
            (PACKAGES_INSTALLED, self.packages_installed.load(Relaxed)),
            (PACKAGES_INSTALL_FAILED, self.packages_failed.load(Relaxed)),
            (ZYGOTES_CREATED, self.zygotes_created.load(Relaxed)),
            (ZYGOTES_LIVE, self.zygotes_live.load(Relaxed)),
            (ZYGOTES_FALLBACKS, self.zygote_fallbacks.load(Relaxed)),
        ]
    }
}

impl Stats {
    pub fn count_status(&self, status: u16) {
        let c = match status {
            200..=399 => &self.status_2xx,
            400..=499 => &self.status_4xx,
            _ => &self.status_5xx,
        };
        c.fetch_add(1, Relaxed);
    }

    pub fn count_start(&self, t: &Timing) {
        let c = match t.start {
            Start::None => return,
            Start::Cold => &self.cold_starts,
            Start::Warm => &self.warm_starts,
            Start::Unpaused => &self.unpaused_starts,
            Start::Zygote => &self.zygote_starts,
        };
        c.fetch_add(1, Relaxed);
        self.queue.record(t.queue);
        if matches!(t.start, Start::Cold | Start::Zygote) {
            self.create.record(t.create);
        }
        if t.start == Start::Unpaused {
            self.unpause.record(t.unpause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_counts_and_averages() {
        let s = Stats::default();
        s.run.record(Duration::from_millis(2));
        s.run.record(Duration::from_millis(4));
        s.count_status(404);
        let v: serde_json::Value =
            serde_json::from_str(&s.to_json(&[("instances.live", 3)])).unwrap();
        assert_eq!(v["handler-run.cnt"], 2);
        assert_eq!(v["handler-run.ms-avg"], 3.0);
        assert_eq!(v["status.4xx"], 1);
        assert_eq!(v["instances.live"], 3);
    }
}
