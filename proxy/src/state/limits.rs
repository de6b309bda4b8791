//! `[[admission.limits]]`: concurrency and rate limits at the balancer,
//! per function and optionally per request key (a tenant header, a
//! cookie, a query value). Over a limit the call is answered 429 with
//! `Retry-After` before any worker or the hold sees it.
//!
//! - Concurrency: calls in flight at this proxy per (rule, function, key
//!   value), a counter taken by [`Limits::admit`] and given back when the
//!   returned [`Slot`] drops (the request's context ends). Entries leave
//!   the map at zero, so it holds at most the calls in flight.
//! - Rate: governor's keyed GCRA token bucket per rule, `rate_per_s`
//!   refill and `burst` size. Keys a client makes up cannot grow it
//!   without bound: at [`MAX_RATE_KEYS`] the idle ones (indistinguishable
//!   from a fresh bucket) are dropped, at most once a second, and while
//!   the map stays full every call of a function shares one bucket.
//!
//! Keys are hashed with a per-process random SipHash key, so a client
//! cannot aim key values at one counter. The limits live in the snapshot
//! and carry over a reload that leaves `admission.limits` unchanged.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use config::policy::glob_match;
use config::proxy::LimitConfig;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use pingora::http::RequestHeader;

use crate::inspect;

/// Rate buckets kept per rule before idle ones are dropped.
pub const MAX_RATE_KEYS: usize = 65_536;

/// Every rule of one config.
pub struct Limits {
    pub config: Vec<LimitConfig>,
    pub rules: Vec<Rule>,
    hasher: RandomState,
}

/// One rule: its counters and, for `/metrics`, its label and refusals.
pub struct Rule {
    /// `functions` joined with `,` (the metrics label).
    pub label: String,
    rate: Option<DefaultKeyedRateLimiter<u64>>,
    /// Milliseconds of the last idle-key sweep.
    swept_ms: AtomicU64,
    in_flight: Mutex<HashMap<u64, u32>>,
    pub over_concurrency: AtomicU64,
    pub over_rate: AtomicU64,
}

/// A call admitted under a concurrency limit; dropping it ends the call.
pub struct Slot {
    limits: Arc<Limits>,
    rule: usize,
    key: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let rule = &self.limits.rules[self.rule];
        let mut m = rule.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// A call over a limit: 429, its reason and `Retry-After` seconds.
#[derive(Debug)]
pub struct Over {
    pub reason: String,
    pub retry_after: u32,
}

impl Limits {
    pub fn build(config: &[LimitConfig]) -> Arc<Limits> {
        let rules = config
            .iter()
            .map(|c| Rule {
                label: c.functions.join(","),
                rate: NonZeroU32::new(c.rate_per_s).map(|rate| {
                    let burst = NonZeroU32::new(c.burst).unwrap_or(rate);
                    RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
                }),
                swept_ms: AtomicU64::new(0),
                in_flight: Mutex::new(HashMap::new()),
                over_concurrency: AtomicU64::new(0),
                over_rate: AtomicU64::new(0),
            })
            .collect();
        Arc::new(Limits {
            config: config.to_vec(),
            rules,
            hasher: RandomState::new(),
        })
    }

    /// Whether any rule is configured (the request path skips the rest
    /// when none is).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Admits a call of `function` under the first rule that matches it:
    /// `Ok(None)` when no rule does, `Ok(Some(slot))` to hold for the
    /// call's length, `Err` when it is over a limit.
    pub fn admit(
        self: &Arc<Self>,
        function: &str,
        req: &RequestHeader,
    ) -> Result<Option<Slot>, Over> {
        let Some(i) = self.config.iter().position(|c| {
            c.functions
                .iter()
                .any(|g| glob_match(g.as_bytes(), function.as_bytes()))
        }) else {
            return Ok(None);
        };
        let (c, rule) = (&self.config[i], &self.rules[i]);
        let value = c.key.as_ref().and_then(|k| inspect::header_key(req, k));
        let mut h = self.hasher.build_hasher();
        h.write(function.as_bytes());
        h.write_u8(0xff);
        // A key's value (even an empty cookie) never hashes as no key.
        h.write_u8(u8::from(value.is_some()));
        h.write(value.unwrap_or_default());
        let key = h.finish();
        let whose = match value {
            Some(_) => format!("{function} for this {}", key_name(c)),
            None => function.to_string(),
        };
        let slot = match c.max_concurrent {
            0 => None,
            max => {
                let mut m = rule.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                let n = m.entry(key).or_insert(0);
                if *n >= max {
                    drop(m);
                    rule.over_concurrency.fetch_add(1, Relaxed);
                    return Err(Over {
                        reason: format!(
                            "{max} calls of {whose} are in flight already, the limit (admission.limits: max_concurrent); retry shortly"
                        ),
                        retry_after: 1,
                    });
                }
                *n += 1;
                Some(Slot {
                    limits: self.clone(),
                    rule: i,
                    key,
                })
            }
        };
        if let Some(rate) = &rule.rate {
            let rate_key = match room_for_a_key(rule, rate) {
                true => key,
                false => self.overflow_key(function),
            };
            if let Err(not_until) = rate.check_key(&rate_key) {
                rule.over_rate.fetch_add(1, Relaxed);
                let wait = not_until.wait_time_from(rate.clock().now());
                let secs = wait.as_secs_f64().ceil().max(1.0) as u32;
                return Err(Over {
                    reason: format!(
                        "{whose} is over its rate of {} calls per second (admission.limits: rate_per_s); retry in {secs} s",
                        c.rate_per_s
                    ),
                    retry_after: secs,
                });
            }
        }
        Ok(slot)
    }

    /// The one bucket a function's calls share while a rule's map is full.
    fn overflow_key(&self, function: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(function.as_bytes());
        h.write_u8(0xfe);
        h.finish()
    }

    /// Calls in flight under rule `i` (`/metrics`).
    pub fn in_flight(&self, i: usize) -> u64 {
        let m = self.rules[i]
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        m.values().map(|&n| n as u64).sum()
    }
}

/// Whether the rule's rate map may take another key: below
/// [`MAX_RATE_KEYS`], or after dropping the idle buckets (at most once a
/// second; a sweep of a full map takes a few milliseconds on the request
/// that runs it). When it stays full, new and old keys alike share one
/// bucket per function until keys go idle: bounded memory, and a flood of
/// made-up keys is limited as one caller.
fn room_for_a_key(rule: &Rule, rate: &DefaultKeyedRateLimiter<u64>) -> bool {
    if rate.len() < MAX_RATE_KEYS {
        return true;
    }
    let now = crate::state::warm::now_ms();
    let last = rule.swept_ms.load(Relaxed);
    if now.saturating_sub(last) >= 1000
        && rule
            .swept_ms
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_ok()
    {
        rate.retain_recent();
        rate.shrink_to_fit();
    }
    rate.len() < MAX_RATE_KEYS
}

/// "header x-tenant" and so on, for a reason line.
fn key_name(c: &LimitConfig) -> String {
    use config::policy::KeySource::*;
    match &c.key {
        Some(Header(n)) => format!("header {n}"),
        Some(Cookie(n)) => format!("cookie {n}"),
        Some(Query(n)) => format!("query value {n}"),
        _ => "key".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::policy::KeySource;

    fn req(tenant: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/run/f", None).unwrap();
        if let Some(t) = tenant {
            r.insert_header("x-tenant", t).unwrap();
        }
        r
    }

    #[test]
    fn concurrency_is_per_function_and_key_and_slots_give_back() {
        let l = Limits::build(&[LimitConfig {
            functions: vec!["img-*".into()],
            key: Some(KeySource::Header("x-tenant".into())),
            max_concurrent: 2,
            ..LimitConfig::default()
        }]);
        let a = req(Some("a"));
        let s1 = l.admit("img-resize", &a).ok().flatten().unwrap();
        let _s2 = l.admit("img-resize", &a).ok().flatten().unwrap();
        let over = l.admit("img-resize", &a).err().expect("a third is over");
        assert!(over.reason.contains("header x-tenant"), "{}", over.reason);
        assert!(
            l.admit("img-resize", &req(Some("b"))).is_ok(),
            "another tenant"
        );
        assert!(l.admit("img-crop", &a).is_ok(), "another function");
        assert!(l.admit("hello", &a).unwrap().is_none(), "no rule");
        drop(s1);
        assert!(l.admit("img-resize", &a).is_ok(), "a slot came back");
        assert_eq!(l.rules[0].over_concurrency.load(Relaxed), 1);
    }

    #[test]
    fn the_rate_allows_the_burst_then_refuses_with_a_retry_after() {
        let l = Limits::build(&[LimitConfig {
            functions: vec!["*".into()],
            rate_per_s: 1,
            burst: 3,
            ..LimitConfig::default()
        }]);
        let r = req(None);
        for _ in 0..3 {
            assert!(l.admit("f", &r).is_ok());
        }
        let over = l.admit("f", &r).err().expect("past the burst");
        assert_eq!(over.retry_after, 1);
        assert!(
            over.reason.contains("rate of 1 calls per second"),
            "{}",
            over.reason
        );
        assert!(l.admit("g", &r).is_ok(), "each function has its bucket");
    }

    #[test]
    fn made_up_keys_cannot_grow_the_rate_map_past_its_cap_or_escape_the_rate() {
        let l = Limits::build(&[LimitConfig {
            functions: vec!["*".into()],
            key: Some(KeySource::Header("x-tenant".into())),
            rate_per_s: 1,
            burst: 1000,
            ..LimitConfig::default()
        }]);
        let mut admitted = 0;
        for n in 0..MAX_RATE_KEYS + 5000 {
            admitted += usize::from(l.admit("f", &req(Some(&n.to_string()))).is_ok());
        }
        let rate = l.rules[0].rate.as_ref().unwrap();
        assert!(rate.len() <= MAX_RATE_KEYS + 1, "{} buckets", rate.len());
        // Past the cap the new keys shared one bucket: its burst, no more.
        assert!(admitted <= MAX_RATE_KEYS + 1000, "{admitted} admitted");
    }
}
