//! Client connections on the public listener: a cap on how many are open,
//! a deadline for each request head, and the idle keep-alive timeout.
//!
//! Why a wrapper around pingora's `HttpProxy` (a `ServerApp` of our own):
//! pingora 0.9 has no connection cap (its accept loop spawns a task per
//! connection, and on EMFILE it sleeps 1 s per failed accept, so every
//! client waits), and no deadline for a whole request head: with h2c on,
//! `ServerApp::process_new` (pingora-core `apps/mod.rs`) first peeks the
//! 24-byte HTTP/2 preface with `read_exact` and no timeout at all, and the
//! HTTP/1 head read (`v1/server.rs`, `read_request_buf`) times out per
//! read (60 s, then no timeout once a keep-alive request set
//! `KeepaliveStatus::Infinite`), so a head trickled a byte at a time, or
//! half-sent and left, holds its connection and fd indefinitely.
//!
//! What this module does, per connection:
//! - counts it in [`OPEN`]; beyond `limits.max_connections` (clamped to
//!   what the fd limit allows, [`init`]) it answers a one-line `503` and
//!   closes at once, before anything else reads it;
//! - reads the h2c preface itself, within `timeouts.header_read_ms`
//!   (pingora's own peek then finds the bytes in the stream's rewind
//!   buffer); an HTTP/2 connection is then pingora's (`h2_idle_timeout`);
//! - for HTTP/1, runs pingora's connection future beside a watchdog: the
//!   first head must be complete `header_read_ms` after the connection
//!   started, a later one within the idle time plus `header_read_ms` of
//!   the previous request's end. The hooks tell the watchdog through a
//!   task-local ([`head_read`] from `early_request_filter`, [`request_done`]
//!   from `logging`; HTTP/1 hooks run on the connection's own task). When
//!   the deadline passes the connection future is dropped, which closes
//!   the socket; no request is in flight then (the deadline is off from
//!   a complete head to the end of its request).
//!
//! The idle keep-alive timeout itself is pingora's: `early_request_filter`
//! sets the session's keep-alive to `timeouts.idle_keepalive_ms` (whole
//! seconds, rounded up) instead of pingora's "infinite" for HTTP/1.1, and
//! a connection with no byte of a next request in that time is closed.
//!
//! The settings are read from the config snapshot for each new connection,
//! so a reload applies to connections opened after it (except the h2c idle
//! timeout, fixed in pingora's server options at start).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http::answer;
use crate::state::warm::now_ms;
use crate::state::State;

/// Client connections open on the public listener.
pub static OPEN: AtomicUsize = AtomicUsize::new(0);
/// Connections refused at `limits.max_connections`.
pub static REFUSED: AtomicU64 = AtomicU64::new(0);
/// Connections closed because a request head did not arrive in time.
pub static HEAD_TIMEOUTS: AtomicU64 = AtomicU64::new(0);

/// fds kept for everything but client connections and their upstream
/// connections: listeners, logs, health checks, DNS, local workers.
const FD_RESERVE: u64 = 128;

/// The most client connections the fd limit allows (set by [`init`]).
static FD_CAP: OnceLock<usize> = OnceLock::new();

/// The HTTP/2 connection preface (RFC 9113 3.4), as pingora checks it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (as the Go runtime
/// does) and sets the connection cap that limit allows: each client
/// connection may need a second fd for its worker, and the upstream
/// keep-alive pool and [`FD_RESERVE`] come first. Returns the fd limit
/// and that cap. Call once at start, before any listener.
pub fn init(keepalive_pool: usize) -> (u64, usize) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write `r`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                r = raised;
            }
        }
    }
    let nofile = r.rlim_cur;
    let cap = (nofile.saturating_sub(FD_RESERVE + keepalive_pool as u64) / 2).max(1);
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    let _ = FD_CAP.set(cap);
    (nofile, cap)
}

/// The connection cap in force for `configured` (`limits.max_connections`).
pub fn cap(configured: usize) -> usize {
    configured.min(FD_CAP.get().copied().unwrap_or(usize::MAX))
}

/// `deadline` while a request is being handled: no deadline.
const BUSY: u64 = 0;

/// One HTTP/1 connection's head deadline, shared by its watchdog and the
/// hooks of its requests.
struct Clock {
    /// [`now_ms`] by which the next head must be complete, or [`BUSY`].
    deadline: AtomicU64,
    header_ms: u64,
    idle_ms: u64,
}

tokio::task_local! {
    static CLOCK: Arc<Clock>;
}

/// The idle keep-alive timeout in pingora's unit (whole seconds, at
/// least 1).
pub fn idle_secs(idle_keepalive_ms: u64) -> u64 {
    idle_keepalive_ms.div_ceil(1000).max(1)
}

/// A request head is complete: no head deadline until the request ends.
/// Called from `early_request_filter`; a no-op off an HTTP/1 connection.
pub fn head_read() {
    let _ = CLOCK.try_with(|c| c.deadline.store(BUSY, Ordering::Relaxed));
}

/// A request ended (`logging`): the next head on this connection must be
/// complete within the idle time plus `header_read_ms`.
pub fn request_done() {
    let _ = CLOCK.try_with(|c| {
        let d = now_ms() + idle_secs(c.idle_ms) * 1000 + c.header_ms;
        c.deadline.store(d, Ordering::Relaxed);
    });
}

/// Resolves when the connection's head deadline has passed.
async fn watchdog(c: &Clock) {
    loop {
        let d = c.deadline.load(Ordering::Relaxed);
        let now = now_ms();
        if d == BUSY {
            // A request is in flight; look again later (a new deadline is
            // always at least header_ms away, so none is missed).
            tokio::time::sleep(Duration::from_millis(c.header_ms)).await;
        } else if now >= d {
            return;
        } else {
            tokio::time::sleep(Duration::from_millis(d - now)).await;
        }
    }
}

/// Holds one slot of [`OPEN`].
struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// pingora's HTTP proxy app behind the cap and the head deadline.
pub struct Guarded<A> {
    pub app: Arc<A>,
    pub state: Arc<State>,
}

/// Answers a connection over the cap: what it already sent is read (so
/// that closing does not reset the connection before the answer is
/// read), one line of 503, closed. Bounded to a few milliseconds.
async fn refuse(mut stream: Stream, cap: usize) {
    let n = REFUSED.fetch_add(1, Ordering::Relaxed);
    // Log the first refusal and then one in 1000, not every one.
    if n.is_multiple_of(1000) {
        tracing::warn!(
            "public listener at limits.max_connections ({cap} open): refusing new connections ({} refused so far)",
            n + 1
        );
    }
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(5), stream.read(&mut sink)).await;
    let head = answer::over_connection_cap(cap);
    let _ = tokio::time::timeout(Duration::from_millis(100), async {
        stream.write_all(head.as_bytes()).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
}

#[async_trait]
impl<A> ServerApp for Guarded<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (cap, header_ms, idle_ms) = {
            let snap = self.state.snap.load();
            let c = &snap.config;
            (
                cap(c.limits.max_connections),
                c.timeouts.header_read_ms,
                c.timeouts.idle_keepalive_ms,
            )
        };
        let open = OPEN.fetch_add(1, Ordering::Relaxed) + 1;
        let _slot = Slot;
        if open > cap {
            refuse(stream, cap).await;
            return None;
        }
        let started = now_ms();
        let header = Duration::from_millis(header_ms);
        // The h2c preface check, under the head deadline (pingora's has
        // none). A client that closes first is simply gone.
        let mut preface = [0u8; H2_PREFACE.len()];
        match tokio::time::timeout(header, stream.try_peek(&mut preface)).await {
            Err(_) => {
                HEAD_TIMEOUTS.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("request head not received within {header_ms} ms; closing");
                return None;
            }
            Ok(Err(_)) => return None,
            Ok(Ok(peeked)) => {
                if peeked && preface == H2_PREFACE {
                    return self.app.process_new(stream, shutdown).await;
                }
            }
        }
        let clock = Arc::new(Clock {
            deadline: AtomicU64::new(started + header_ms),
            header_ms,
            idle_ms,
        });
        let work = CLOCK.scope(clock.clone(), self.app.process_new(stream, shutdown));
        tokio::select! {
            r = work => r,
            _ = watchdog(&clock) => {
                HEAD_TIMEOUTS.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("request head not complete in time (header_read_ms {header_ms}); closing");
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}
