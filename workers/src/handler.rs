//! `HandlerSet`: one `Handler` per function, each a pool of instances.
//!
//! A call takes an idle instance (warm, or paused and resumed) or creates
//! one while the function has fewer than `max_per_function`; beyond that
//! it waits in a bounded queue (full: 429). Each instance serves one call
//! at a time, so concurrent calls run in different sandboxes. A reaper
//! pauses instances idle for `pause_after_ms`, removes them after
//! `evict_after_ms`, and removes the least recently used idle ones while
//! the sum of instance memory limits is over the budget.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config::worker::{InstancesConfig, LimitsConfig};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::registry::{CodeVersion, RegistryError};
use crate::sandbox::rpc::{CallHead, ReplyHead, RuntimeConn};
use crate::sandbox::{Limits, Sandbox, SandboxError, SandboxManager, SandboxState};
use crate::stats::Stats;
use config::wire::{Start, Timing};

/// A call as the worker received it.
pub struct Call<'a> {
    pub method: &'a str,
    pub sub_path: &'a str,
    pub query: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: &'a [u8],
}

/// The runtime's answer.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A failed call: status, one line saying what happened, and detail (a
/// traceback or the runtime's log) where there is one.
#[derive(Debug)]
pub struct CallError {
    pub status: u16,
    pub line: String,
    pub detail: String,
    /// For 405: the allowed methods.
    pub allow: Option<String>,
}

impl CallError {
    pub fn new(status: u16, line: impl Into<String>) -> Self {
        CallError {
            status,
            line: line.into(),
            detail: String::new(),
            allow: None,
        }
    }
}

impl From<RegistryError> for CallError {
    fn from(e: RegistryError) -> Self {
        let status = match &e {
            RegistryError::NotFound(_) => 404,
            RegistryError::Invalid(_) => 400,
            RegistryError::Broken(..) => 500,
            RegistryError::Store(_) => 502,
            RegistryError::Busy(_) => 503,
            RegistryError::Unsupported(_) => 501,
        };
        CallError::new(status, e.to_string())
    }
}

impl From<SandboxError> for CallError {
    fn from(e: SandboxError) -> Self {
        let (status, detail) = match &e {
            SandboxError::Load { log, .. } => (500, log.clone()),
            SandboxError::Timeout { .. } => (504, String::new()),
            SandboxError::Crashed(_) | SandboxError::Setup(_) => (502, String::new()),
        };
        CallError {
            status,
            line: e.to_string(),
            detail,
            allow: None,
        }
    }
}

struct Instance {
    sandbox: Box<dyn Sandbox>,
    conn: RuntimeConn,
    code: Arc<CodeVersion>,
    limits: Limits,
    last_used: Instant,
    acct: Arc<Accounting>,
    /// Set once its share is given back (on discard, before removal ends).
    released: bool,
}

/// Live instances and the memory they reserve. An `Instance` gives its
/// share back when dropped, however the call that held it ended.
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
    name: String,
    permits: Semaphore,
    waiting: AtomicUsize,
    /// Idle instances, least recently used at the front.
    idle: Mutex<VecDeque<Instance>>,
}

pub struct HandlerSet {
    handlers: Mutex<HashMap<String, Arc<Handler>>>,
    manager: Arc<dyn SandboxManager>,
    instances: InstancesConfig,
    limits: LimitsConfig,
    pub stats: Arc<Stats>,
    acct: Arc<Accounting>,
}

impl HandlerSet {
    pub fn new(
        manager: Arc<dyn SandboxManager>,
        instances: InstancesConfig,
        limits: LimitsConfig,
    ) -> Arc<Self> {
        Arc::new(HandlerSet {
            handlers: Mutex::new(HashMap::new()),
            manager,
            instances,
            limits,
            stats: Arc::new(Stats::default()),
            acct: Arc::default(),
        })
    }

    pub fn manager(&self) -> &Arc<dyn SandboxManager> {
        &self.manager
    }

    /// The handler of `name`, created on first use.
    pub fn get(&self, name: &str) -> Arc<Handler> {
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

    /// Runs one call of `name`: resolve code, check the method, queue, get
    /// an instance, run, return the instance. Fills `timing` as it goes.
    pub async fn invoke(
        self: &Arc<Self>,
        name: &str,
        call: Call<'_>,
        timing: &mut Timing,
    ) -> Result<Reply, CallError> {
        let code = self.manager.pull(name).await?;
        let allowed = code.config.allowed_methods();
        if !allowed.is_empty() && !allowed.iter().any(|m| m == call.method) {
            let list = allowed.join(", ");
            return Err(CallError {
                status: 405,
                line: format!(
                    "method {} not allowed for {name}; allowed: {list}",
                    call.method
                ),
                detail: String::new(),
                allow: Some(list),
            });
        }
        let handler = self.get(name);
        let limits = Limits::for_function(&self.limits, &code.config.limits)
            .map_err(|e| CallError::new(500, format!("function {name}: {e}")))?;
        if limits.memory_mb > self.instances.memory_budget_mb {
            // It would evict every other instance and still not fit.
            return Err(CallError::new(
                500,
                format!(
                    "function {name}: limits.memory_mb: {} is above this worker's memory budget of {} (instances.memory_budget_mb)",
                    limits.memory_mb, self.instances.memory_budget_mb
                ),
            ));
        }

        // RunStart: queue for a slot, then an instance.
        let queued = Instant::now();
        let permit = match handler.permits.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                if handler.waiting.fetch_add(1, Relaxed) >= self.instances.queue_per_function {
                    handler.waiting.fetch_sub(1, Relaxed);
                    self.stats.queue_full.fetch_add(1, Relaxed);
                    return Err(CallError::new(
                        429,
                        format!(
                            "{name} is at its limit of {} instances and {} queued calls; retry later",
                            self.instances.max_per_function, self.instances.queue_per_function
                        ),
                    ));
                }
                let p = handler
                    .permits
                    .acquire()
                    .instrument(tracing::debug_span!("queue", function = name))
                    .await;
                handler.waiting.fetch_sub(1, Relaxed);
                p.expect("semaphore is never closed")
            }
        };
        timing.queue = queued.elapsed();
        let mut inst = self.take_instance(&handler, &code, limits, timing).await?;
        self.stats.count_start(timing);

        let head = CallHead {
            method: call.method,
            path: call.sub_path,
            query: call.query,
            headers: call.headers,
        };
        let ran = Instant::now();
        let res = tokio::time::timeout(limits.runtime, inst.conn.call(&head, call.body))
            .instrument(tracing::debug_span!("handler.run", function = name))
            .await;
        timing.run = ran.elapsed();
        self.stats.run.record(timing.run);

        // RunFinish: a healthy instance goes back to the pool.
        let result = match res {
            Ok(Ok((ReplyHead { status, headers }, body))) => {
                inst.last_used = Instant::now();
                handler.idle.lock().unwrap().push_back(inst);
                Ok(Reply {
                    status,
                    headers,
                    body,
                })
            }
            Ok(Err(io)) => {
                self.stats.crashes.fetch_add(1, Relaxed);
                let why = inst.sandbox.exit_reason().await;
                let log = inst.sandbox.logs(2048);
                tracing::warn!(function = name, %io, %why, "runtime failed during a call");
                self.discard(inst);
                Err(CallError {
                    status: 502,
                    line: format!("function {name}'s runtime died during the call: {why}"),
                    detail: log,
                    allow: None,
                })
            }
            Err(_) => {
                self.stats.timeouts.fetch_add(1, Relaxed);
                self.discard(inst);
                Err(SandboxError::Timeout {
                    name: name.to_string(),
                    ms: limits.runtime.as_millis(),
                }
                .into())
            }
        };
        drop(permit);
        result
    }

    /// The most recently used idle instance of the current code version,
    /// resumed if paused; else a new one.
    async fn take_instance(
        &self,
        handler: &Handler,
        code: &Arc<CodeVersion>,
        limits: Limits,
        timing: &mut Timing,
    ) -> Result<Instance, CallError> {
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
            .create_instance(code, limits)
            .instrument(tracing::debug_span!("sandbox.create", function = %code.name))
            .await;
        timing.create = t.elapsed();
        if inst.as_ref().is_ok_and(|i| i.sandbox.forked()) {
            timing.start = Start::Zygote;
        }
        inst
    }

    async fn create_instance(
        &self,
        code: &Arc<CodeVersion>,
        limits: Limits,
    ) -> Result<Instance, CallError> {
        self.make_room(limits.memory_mb).await;
        let mut sandbox = self.manager.create(code, limits).await?;
        self.acct.add(limits.memory_mb);
        let started = sandbox.start().await;
        let conn = match started {
            Ok(()) => RuntimeConn::connect(sandbox.address()).await.map_err(|e| {
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
                Err(e.into())
            }
        }
    }

    /// Removes an instance in the background (the caller's reply need not wait).
    fn discard(&self, mut inst: Instance) {
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
        let handlers: Vec<Arc<Handler>> = self.handlers.lock().unwrap().values().cloned().collect();
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

    /// One pass of the reaper: pause and evict idle instances.
    pub async fn reap(&self) {
        let pause_after = Duration::from_millis(self.instances.pause_after_ms);
        let evict_after = Duration::from_millis(self.instances.evict_after_ms);
        let handlers: Vec<Arc<Handler>> = self.handlers.lock().unwrap().values().cloned().collect();
        for h in handlers {
            let mut to_pause = Vec::new();
            {
                let mut idle = h.idle.lock().unwrap();
                while let Some(front) = idle.front() {
                    if front.last_used.elapsed() < evict_after {
                        break;
                    }
                    let inst = idle.pop_front().unwrap();
                    self.stats.evictions.fetch_add(1, Relaxed);
                    self.discard(inst);
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
                        self.stats.pauses.fetch_add(1, Relaxed);
                        paused.push(inst);
                    }
                    Err(e) => {
                        tracing::warn!(function = %h.name, %e, "pause failed; removing instance");
                        self.discard(inst);
                    }
                }
            }
            let mut idle = h.idle.lock().unwrap();
            for inst in paused.into_iter().rev() {
                idle.push_front(inst);
            }
        }
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
        let handlers: Vec<Arc<Handler>> = self.handlers.lock().unwrap().values().cloned().collect();
        for h in handlers {
            let drained: Vec<Instance> = h.idle.lock().unwrap().drain(..).collect();
            for mut inst in drained {
                inst.sandbox.remove().await;
            }
        }
    }
}
