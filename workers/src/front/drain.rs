//! Draining: what the worker does between SIGTERM and exit.
//!
//! While draining, `/status` answers 503 `draining` and gRPC health
//! `NOT_SERVING`, and each new call is refused before any of its code runs
//! (503 with `x-ol-refused: draining`, or gRPC `UNAVAILABLE` with it in the
//! metadata), so a proxy sends it elsewhere and takes this worker out of
//! rotation at once. Calls already open finish. The port stays open, for
//! those refusals, until the open calls are done and `drain_ms` has passed.
//!
//! Invariant: a call counted in `open` never meets a refusal, and a call
//! refused is never counted: [`Drain::enter`] counts first, then looks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Default)]
pub struct Drain {
    draining: AtomicBool,
    open: AtomicUsize,
    idle: Notify,
}

/// One open call; dropping it ends the call.
pub struct OpenCall(Arc<Drain>);

impl Drop for OpenCall {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.draining.load(SeqCst)
    }

    /// From now on new calls are refused.
    pub fn begin(&self) {
        self.draining.store(true, SeqCst);
    }

    /// Counts a new call; `None` (refuse it) while draining.
    pub fn enter(self: &Arc<Self>) -> Option<OpenCall> {
        self.open.fetch_add(1, SeqCst);
        let call = OpenCall(self.clone());
        (!self.is_draining()).then_some(call)
    }

    /// Calls open now.
    pub fn open(&self) -> usize {
        self.open.load(SeqCst)
    }

    /// Resolves when no call is open.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_open_at_the_start_of_a_drain_is_waited_for_and_new_ones_refused() {
        let d = Arc::new(Drain::default());
        let call = d.enter().expect("not draining yet");
        d.begin();
        assert!(d.enter().is_none(), "refused while draining");
        assert_eq!(d.open(), 1, "the refused call is not counted");
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.idle().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "a call is still open");
        drop(call);
        tokio::time::timeout(std::time::Duration::from_secs(2), waiter)
            .await
            .expect("idle once the call ends")
            .unwrap();
    }
}
