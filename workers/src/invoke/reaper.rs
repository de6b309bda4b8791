//! The reaper: every few milliseconds, idle instances are paused after
//! `pause_after_ms` (cheap to resume) and removed after `evict_after_ms`,
//! oldest first. Memory-budget evictions happen on the call path instead
//! (`Pool::make_room`), where the room is needed.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::pool::Pool;
use crate::sandbox::SandboxState;

/// Runs [`reap`] about twice per `pause_after_ms` (10 to 100 ms apart)
/// until the task is aborted.
pub fn spawn(pool: Arc<Pool>) -> tokio::task::JoinHandle<()> {
    let every = Duration::from_millis((pool.instances.pause_after_ms / 2).clamp(10, 100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            reap(&pool).await;
        }
    })
}

/// One pass of the reaper: pause and evict idle instances.
pub async fn reap(pool: &Pool) {
    let pause_after = Duration::from_millis(pool.instances.pause_after_ms);
    let evict_after = Duration::from_millis(pool.instances.evict_after_ms);
    for h in pool.handlers() {
        let mut to_pause = Vec::new();
        {
            let mut idle = h.idle.lock().unwrap();
            while let Some(front) = idle.front() {
                if front.last_used.elapsed() < evict_after {
                    break;
                }
                let inst = idle.pop_front().unwrap();
                pool.stats.evictions.fetch_add(1, Relaxed);
                pool.discard(inst);
            }
            // Idle long enough and still running: pause (oldest first).
            let mut i = 0;
            while i < idle.len() {
                let inst = &idle[i];
                if inst.last_used.elapsed() < pause_after {
                    break;
                }
                if inst.sandbox.state() == SandboxState::Running {
                    to_pause.push(idle.remove(i).unwrap());
                } else {
                    i += 1;
                }
            }
        }
        let mut paused = Vec::new();
        for mut inst in to_pause {
            match inst.sandbox.pause().await {
                Ok(()) => {
                    pool.stats.pauses.fetch_add(1, Relaxed);
                    paused.push(inst);
                }
                Err(e) => {
                    tracing::warn!(function = %h.name, %e, "pause failed; removing instance");
                    pool.discard(inst);
                }
            }
        }
        let mut idle = h.idle.lock().unwrap();
        for inst in paused.into_iter().rev() {
            idle.push_front(inst);
        }
    }
}
