//! The instances: one `Handler` per function (its slots and its idle
//! instances, most recently used at the back), and the accounting of live
//! instances and the memory they reserve.
//!
//! Memory accounting follows the `Instance` value: dropping it, however
//! the call that held it ended, gives its share back.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use config::wire::{Start, Timing};
use config::worker::InstancesConfig;
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::Instrument;

use crate::code::CodeVersion;
use crate::runtime::RuntimeConn;
use crate::sandbox::{Limits, Sandbox, SandboxError, SandboxManager, SandboxState};
use crate::stats::Stats;

pub struct Instance {
    pub sandbox: Box<dyn Sandbox>,
    pub conn: RuntimeConn,
    pub code: Arc<CodeVersion>,
    pub limits: Limits,
    pub last_used: Instant,
    acct: Arc<Accounting>,
    /// Set once its share is given back (on discard, before removal ends).
    released: bool,
}

/// Live instances and the memory they reserve.
#[derive(Default)]
struct Accounting {
    live: AtomicUsize,
    reserved_mb: AtomicU64,
}

impl Accounting {
    fn add(&self, memory_mb: u64) {
        self.live.fetch_add(1, Relaxed);
        self.reserved_mb.fetch_add(memory_mb, Relaxed);
    }

    fn sub(&self, memory_mb: u64) {
        self.live.fetch_sub(1, Relaxed);
        self.reserved_mb.fetch_sub(memory_mb, Relaxed);
    }
}

impl Instance {
    fn release(&mut self) {
        if !self.released {
            self.released = true;
            self.acct.sub(self.limits.memory_mb);
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.release();
    }
}

/// The instances of one function.
pub struct Handler {
    pub name: String,
    permits: Semaphore,
    waiting: AtomicUsize,
    /// Idle instances, least recently used at the front.
    pub idle: Mutex<VecDeque<Instance>>,
}

impl Handler {
    /// A slot to run in: at once, or after waiting in the queue; `None`
    /// when `queue_limit` calls wait already.
    pub async fn admit(&self, queue_limit: usize) -> Option<SemaphorePermit<'_>> {
        if let Ok(p) = self.permits.try_acquire() {
            return Some(p);
        }
        if self.waiting.fetch_add(1, Relaxed) >= queue_limit {
            self.waiting.fetch_sub(1, Relaxed);
            return None;
        }
        let p = self
            .permits
            .acquire()
            .instrument(tracing::debug_span!("queue", function = %self.name))
            .await;
        self.waiting.fetch_sub(1, Relaxed);
        Some(p.expect("semaphore is never closed"))
    }
}

/// Every function's instances, and the sandbox manager that makes them.
pub struct Pool {
    handlers: Mutex<HashMap<String, Arc<Handler>>>,
    manager: Arc<dyn SandboxManager>,
    pub instances: InstancesConfig,
    pub stats: Arc<Stats>,
    acct: Arc<Accounting>,
}

impl Pool {
    pub fn new(
        manager: Arc<dyn SandboxManager>,
        instances: InstancesConfig,
        stats: Arc<Stats>,
    ) -> Pool {
        Pool {
            handlers: Mutex::new(HashMap::new()),
            manager,
            instances,
            stats,
            acct: Arc::default(),
        }
    }

    /// The handler of `name`, created on first use.
    pub fn handler(&self, name: &str) -> Arc<Handler> {
        let mut map = self.handlers.lock().unwrap();
        if let Some(h) = map.get(name) {
            return h.clone();
        }
        let h = Arc::new(Handler {
            name: name.to_string(),
            permits: Semaphore::new(self.instances.max_per_function),
            waiting: AtomicUsize::new(0),
            idle: Mutex::new(VecDeque::new()),
        });
        map.insert(name.to_string(), h.clone());
        h
    }

    /// Every handler, for a pass over all of them.
    pub fn handlers(&self) -> Vec<Arc<Handler>> {
        self.handlers.lock().unwrap().values().cloned().collect()
    }

    /// The most recently used idle instance of the current code version,
    /// resumed if paused; else a new one.
    pub async fn take(
        &self,
        handler: &Handler,
        code: &Arc<CodeVersion>,
        limits: Limits,
        timing: &mut Timing,
    ) -> Result<Instance, SandboxError> {
        loop {
            let Some(mut inst) = handler.idle.lock().unwrap().pop_back() else {
                break;
            };
            if inst.code.version != code.version || inst.limits != limits {
                self.discard(inst); // old code: drained
                continue;
            }
            if inst.sandbox.state() == SandboxState::Paused {
                let t = Instant::now();
                let res = inst
                    .sandbox
                    .unpause()
                    .instrument(tracing::debug_span!("sandbox.unpause", function = %code.name))
                    .await;
                timing.unpause = t.elapsed();
                if res.is_err() {
                    self.discard(inst);
                    continue;
                }
                timing.start = Start::Unpaused;
            } else {
                timing.start = Start::Warm;
            }
            return Ok(inst);
        }
        timing.start = Start::Cold;
        let t = Instant::now();
        let inst = self
            .create(code, limits)
            .instrument(tracing::debug_span!("sandbox.create", function = %code.name))
            .await;
        timing.create = t.elapsed();
        if inst.as_ref().is_ok_and(|i| i.sandbox.forked()) {
            timing.start = Start::Zygote;
        }
        inst
    }

    async fn create(
        &self,
        code: &Arc<CodeVersion>,
        limits: Limits,
    ) -> Result<Instance, SandboxError> {
        self.make_room(limits.memory_mb).await;
        let mut sandbox = self.manager.create(code, limits).await?;
        self.acct.add(limits.memory_mb);
        let started = sandbox.start().await;
        let conn = match started {
            Ok(()) => sandbox.connect().await.map(RuntimeConn::new).map_err(|e| {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    // A function tampered with its socket (issue 14).
                    tracing::warn!(instance = sandbox.id(), error = %e, "runtime socket refused");
                }
                SandboxError::Crashed(format!("cannot reach the runtime of {}: {e}", code.name))
            }),
            Err(e) => Err(e),
        };
        match conn {
            Ok(conn) => Ok(Instance {
                sandbox,
                conn,
                code: code.clone(),
                limits,
                last_used: Instant::now(),
                acct: self.acct.clone(),
                released: false,
            }),
            Err(e) => {
                if matches!(e, SandboxError::Load { .. }) {
                    self.stats.load_errors.fetch_add(1, Relaxed);
                }
                self.acct.sub(limits.memory_mb);
                sandbox.remove().await;
                Err(e)
            }
        }
    }

    /// Puts a healthy instance back, as the most recently used.
    pub fn give_back(&self, handler: &Handler, mut inst: Instance) {
        inst.last_used = Instant::now();
        handler.idle.lock().unwrap().push_back(inst);
    }

    /// Removes an instance in the background (the caller's reply need not wait).
    pub fn discard(&self, mut inst: Instance) {
        inst.release();
        tokio::spawn(async move { inst.sandbox.remove().await });
    }

    /// Evicts least recently used idle instances until `need_mb` more fits
    /// in the memory budget, or nothing idle is left.
    async fn make_room(&self, need_mb: u64) {
        while self.acct.reserved_mb.load(Relaxed) + need_mb > self.instances.memory_budget_mb {
            let Some(inst) = self.pop_lru_idle() else {
                return;
            };
            tracing::info!(function = %inst.code.name, "evicting idle instance: memory budget");
            self.stats.evictions.fetch_add(1, Relaxed);
            self.discard(inst);
        }
    }

    fn pop_lru_idle(&self) -> Option<Instance> {
        let handlers = self.handlers();
        let oldest = handlers
            .iter()
            .filter_map(|h| {
                h.idle
                    .lock()
                    .unwrap()
                    .front()
                    .map(|i| (i.last_used, h.clone()))
            })
            .min_by_key(|(t, _)| *t)?;
        let popped = oldest.1.idle.lock().unwrap().pop_front();
        popped
    }

    /// Gauges for `/stats`: live and paused instances.
    pub fn gauges(&self) -> [(&'static str, u64); 3] {
        let mut paused = 0;
        let mut idle = 0;
        for h in self.handlers.lock().unwrap().values() {
            for i in h.idle.lock().unwrap().iter() {
                idle += 1;
                paused += (i.sandbox.state() == SandboxState::Paused) as u64;
            }
        }
        [
            ("instances.live", self.acct.live.load(Relaxed) as u64),
            ("instances.idle", idle),
            ("instances.paused", paused),
        ]
    }

    /// Removes every idle instance (at shutdown).
    pub async fn remove_all(&self) {
        for h in self.handlers() {
            let drained: Vec<Instance> = h.idle.lock().unwrap().drain(..).collect();
            for mut inst in drained {
                inst.sandbox.remove().await;
            }
        }
    }
}
