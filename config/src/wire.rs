//! What the proxy and the worker say to each other and to clients beyond
//! HTTP itself: the `x-ol-*` header names, in one list, and the format of
//! `x-ol-timing`, written by the worker and read by the proxy with the same
//! code so the two cannot drift apart.
//!
//! Every `x-ol-*` name is the platform's: a function's reply never carries
//! one to a client (the worker strips them), so a client can trust them.

use std::fmt::Write as _;
use std::time::Duration;

/// The prefix of every platform header ([`is_platform`]).
pub const X_OL_PREFIX: &str = "x-ol-";
/// Proxy -> client: the worker that served the call (`host:port`), or
/// `none` when the proxy answered itself (cache hit, refusal, error).
pub const X_OL_WORKER: &str = "x-ol-worker";
/// Proxy -> client: the routing policy that picked the worker, or `none`.
pub const X_OL_POLICY: &str = "x-ol-policy";
/// Proxy -> client: `hit` or `miss` for calls the result cache may answer.
pub const X_OL_CACHE: &str = "x-ol-cache";
/// Worker -> proxy and client: where the call's time went ([`Timing`]).
pub const X_OL_TIMING: &str = "x-ol-timing";
/// Code store -> caller: the version of the package served (the first 16
/// hex digits of its SHA-256, `codestore::version`); also on the worker's
/// `GET /grpc/<service>` descriptors.
pub const X_OL_VERSION: &str = "x-ol-version";
/// Worker -> proxy: the function bound to a gRPC service (`GET /grpc/<service>`).
pub const X_OL_FUNCTION: &str = "x-ol-function";
/// Worker -> function: the gRPC method path a call came in on, so a WSGI
/// handler can tell its methods apart.
pub const X_OL_GRPC_METHOD: &str = "x-ol-grpc-method";
/// Runtime -> worker: marks an error reply whose body is one line and then
/// a traceback (`ol_runtime.py`); never passed on.
pub const X_OL_TRACEBACK: &str = "x-ol-traceback";

/// Keys of the worker's `GET /stats` JSON that the proxy reads (and shows
/// on its `/metrics`): the worker writes them with these names.
pub mod stats {
    pub const ZYGOTES_LIVE: &str = "zygotes.live";
    pub const ZYGOTES_CREATED: &str = "zygotes.created";
    pub const ZYGOTES_FALLBACKS: &str = "zygotes.fallbacks";
    pub const PACKAGES_INSTALLED: &str = "packages.installed";
    pub const PACKAGES_INSTALL_FAILED: &str = "packages.install-failed";
}

/// On every error response (status 400 or more, or a gRPC error): who
/// wrote it. [`LEVEL_PROXY`]: the proxy itself (no worker could take the
/// call, a bad request, a worker it could not reach); [`LEVEL_WORKER`]:
/// the worker (unknown function, at its limits, the instance crashed or
/// ran out of time); [`LEVEL_FUNCTION`]: the function's own reply (its
/// status, or the exception it raised).
pub const X_OL_ERROR: &str = "x-ol-error";
pub const LEVEL_PROXY: &str = "proxy";
pub const LEVEL_WORKER: &str = "worker";
pub const LEVEL_FUNCTION: &str = "function";
/// Worker -> proxy: the call was refused before any of the function's code
/// ran (the value says why: [`REFUSED_QUEUE_FULL`], [`REFUSED_DRAINING`]),
/// so another worker may take it, whatever its method.
pub const X_OL_REFUSED: &str = "x-ol-refused";
pub const REFUSED_QUEUE_FULL: &str = "queue-full";
pub const REFUSED_DRAINING: &str = "draining";

/// Whether `name` is a platform header (`x-ol-*`, any case).
pub fn is_platform(name: &str) -> bool {
    name.len() >= X_OL_PREFIX.len()
        && name.as_bytes()[..X_OL_PREFIX.len()].eq_ignore_ascii_case(X_OL_PREFIX.as_bytes())
}

/// Whether a `content-type` is gRPC's (`application/grpc`, `+proto`,
/// `;...`; not gRPC-Web): the test the proxy and the worker both route by.
pub fn is_grpc_content_type(ct: &str) -> bool {
    ct == "application/grpc"
        || ct.starts_with("application/grpc+")
        || ct.starts_with("application/grpc;")
}

/// How the instance that served a call was obtained (`start=` of
/// `x-ol-timing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// No instance was involved (the call was refused before one was
    /// needed). A value this version does not know also reads as `None`.
    #[default]
    None,
    /// A new sandbox was created and started for this call.
    Cold,
    /// An idle, running instance was reused.
    Warm,
    /// A paused instance was resumed.
    Unpaused,
    /// A new instance was forked from a zygote (process backend): a cold
    /// start without interpreter start-up or the zygote's imports.
    Zygote,
}

impl Start {
    pub fn as_str(self) -> &'static str {
        match self {
            Start::None => "none",
            Start::Cold => "cold",
            Start::Warm => "warm",
            Start::Unpaused => "unpaused",
            Start::Zygote => "zygote",
        }
    }

    /// The start named `s`; `None` for anything else.
    pub fn parse(s: &str) -> Start {
        match s {
            "cold" => Start::Cold,
            "warm" => Start::Warm,
            "unpaused" => Start::Unpaused,
            "zygote" => Start::Zygote,
            _ => Start::None,
        }
    }

    /// Whether a new sandbox was made for the call (cold or forked).
    pub fn is_new(self) -> bool {
        matches!(self, Start::Cold | Start::Zygote)
    }
}

/// The time one call spent at each level of the worker, and how its
/// instance was obtained: the value of `x-ol-timing`.
///
/// On the wire: `queue=0.004;create=0.000;unpause=0.000;run=0.182;total=0.240;start=warm`,
/// milliseconds with microsecond precision, always all six keys in this
/// order ([`Timing::to_header`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    /// Waiting for a free instance slot.
    pub queue: Duration,
    /// Creating and starting a sandbox (cold and zygote starts).
    pub create: Duration,
    /// Resuming a paused instance.
    pub unpause: Duration,
    /// The handler's run, as the worker saw it.
    pub run: Duration,
    /// The whole call at the worker, body read to reply.
    pub total: Duration,
    pub start: Start,
}

/// `d` in milliseconds, with microsecond precision: what `x-ol-timing` says.
pub fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

impl Timing {
    /// The `x-ol-timing` value.
    pub fn to_header(&self) -> String {
        let mut s = String::with_capacity(96);
        let _ = write!(
            s,
            "queue={:.3};create={:.3};unpause={:.3};run={:.3};total={:.3};start={}",
            millis(self.queue),
            millis(self.create),
            millis(self.unpause),
            millis(self.run),
            millis(self.total),
            self.start.as_str()
        );
        s
    }

    /// Reads an `x-ol-timing` value. Keys may come in any order, with
    /// spaces around them; unknown keys are skipped and missing times are
    /// zero. `None` when there is no `start=` (the one key that says a
    /// worker handled the call) or a time is not a non-negative number of
    /// milliseconds.
    pub fn parse(value: &str) -> Option<Timing> {
        let mut t = Timing::default();
        let mut started = false;
        for part in value.split(';') {
            let Some((k, v)) = part.trim().split_once('=') else {
                continue;
            };
            let slot = match k {
                "queue" => &mut t.queue,
                "create" => &mut t.create,
                "unpause" => &mut t.unpause,
                "run" => &mut t.run,
                "total" => &mut t.total,
                "start" => {
                    t.start = Start::parse(v);
                    started = true;
                    continue;
                }
                _ => continue,
            };
            let ms: f64 = v.parse().ok()?;
            if !ms.is_finite() || ms < 0.0 {
                return None;
            }
            // Rounded to the microsecond the writer counts in, so that
            // `parse(to_header())` gives the same value back.
            *slot = Duration::from_micros((ms * 1000.0).round() as u64);
        }
        started.then_some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_what_the_worker_always_wrote() {
        let t = Timing {
            run: Duration::from_micros(1500),
            start: Start::Warm,
            ..Default::default()
        };
        assert_eq!(
            t.to_header(),
            "queue=0.000;create=0.000;unpause=0.000;run=1.500;total=0.000;start=warm"
        );
        let t = Timing {
            queue: Duration::from_nanos(4_999),
            create: Duration::from_millis(312),
            unpause: Duration::from_micros(1),
            run: Duration::from_secs(90),
            total: Duration::from_micros(90_312_005),
            start: Start::Zygote,
        };
        assert_eq!(
            t.to_header(),
            "queue=0.004;create=312.000;unpause=0.001;run=90000.000;total=90312.005;start=zygote"
        );
    }

    #[test]
    fn parse_reads_what_to_header_writes() {
        for start in [
            Start::None,
            Start::Cold,
            Start::Warm,
            Start::Unpaused,
            Start::Zygote,
        ] {
            let t = Timing {
                queue: Duration::from_micros(4),
                create: Duration::from_micros(20_100),
                unpause: Duration::from_micros(1),
                run: Duration::from_micros(3_200),
                total: Duration::from_micros(25_000),
                start,
            };
            assert_eq!(Timing::parse(&t.to_header()), Some(t));
        }
    }

    #[test]
    fn parse_is_lenient_in_layout_strict_in_values() {
        let t = Timing::parse(" start=cold ; queue=1.5;later=x").unwrap();
        assert_eq!(t.start, Start::Cold);
        assert!(t.start.is_new());
        assert_eq!(millis(t.queue), 1.5);
        assert_eq!(t.run, Duration::ZERO);
        assert_eq!(
            Timing::parse("start=teleported").unwrap().start,
            Start::None
        );
        assert_eq!(Timing::parse("queue=1.000"), None, "no start=");
        assert_eq!(Timing::parse("garbage"), None);
        assert_eq!(Timing::parse("queue=x;start=warm"), None);
        assert_eq!(Timing::parse("queue=-1;start=warm"), None);
        assert_eq!(Timing::parse("queue=NaN;start=warm"), None);
    }

    #[test]
    fn grpc_content_types() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc; x=1",
        ] {
            assert!(is_grpc_content_type(ct), "{ct}");
        }
        for ct in ["application/grpc-web", "application/json", ""] {
            assert!(!is_grpc_content_type(ct), "{ct}");
        }
    }

    #[test]
    fn platform_headers_are_known_by_prefix() {
        for h in [X_OL_WORKER, X_OL_TIMING, "X-OL-Cache", "x-ol-"] {
            assert!(is_platform(h), "{h}");
        }
        for h in ["x-olive", "x-o", "content-type", ""] {
            assert!(!is_platform(h), "{h}");
        }
    }
}
