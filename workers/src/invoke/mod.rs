//! Running one call: `HandlerSet::invoke` resolves the function's current
//! version, checks the method and limits, waits for a slot, takes an
//! instance (`pool`), runs the call over the runtime connection and gives
//! the instance back, or drops it when the call failed at the transport
//! level. The `reaper` pauses and evicts what stays idle.
//!
//! Each instance serves one call at a time, so concurrent calls of a
//! function run in different sandboxes; at most `max_per_function` run
//! at once and at most `queue_per_function` wait (full: 429).

mod pool;
mod reaper;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use config::wire::Timing;
use config::worker::{EgressConfig, InstancesConfig, LimitsConfig};
use tokio::task::JoinHandle;
use tracing::Instrument;

use self::pool::{Handler, Instance, Pool};
use crate::code::registry::{CodeVersion, Registry, RegistryError};
use crate::runtime::{CallHead, ReplyHead, ReplyTooLarge};
use crate::sandbox::{Limits, SandboxError, SandboxManager};
use crate::stats::Stats;

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
    /// Refused before any of the function's code ran, and why
    /// (`config::wire::REFUSED_*`): another worker may take the call.
    pub refused: Option<&'static str>,
    /// Who failed (`x-ol-error`): `worker` for the platform (its store,
    /// its sandboxes), `function` when the function's own code did (its
    /// runtime died, ran past its limit, failed to load, sent too much).
    /// A proxy ejects workers on the first kind only, so a function cannot
    /// get workers ejected.
    pub level: &'static str,
}

impl CallError {
    pub fn new(status: u16, line: impl Into<String>) -> Self {
        CallError {
            status,
            line: line.into(),
            detail: String::new(),
            allow: None,
            refused: None,
            level: config::wire::LEVEL_WORKER,
        }
    }

    /// The function's code failed, not the worker.
    pub fn by_function(self) -> Self {
        CallError {
            level: config::wire::LEVEL_FUNCTION,
            ..self
        }
    }

    /// A refusal before any of the function's code ran (`why`: one of
    /// `config::wire::REFUSED_*`).
    pub fn refused(status: u16, why: &'static str, line: impl Into<String>) -> Self {
        CallError {
            refused: Some(why),
            ..CallError::new(status, line)
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
        use config::wire::{LEVEL_FUNCTION, LEVEL_WORKER};
        // Loading, crashing, timing out and installing its pins are the
        // function's doing (its import, its exit, its loop, its
        // requirements.txt); setting a sandbox up is the worker's.
        let (status, detail, level) = match &e {
            SandboxError::Load { log, .. } => (500, log.clone(), LEVEL_FUNCTION),
            SandboxError::Timeout { .. } => (504, String::new(), LEVEL_FUNCTION),
            SandboxError::Crashed(_) => (502, String::new(), LEVEL_FUNCTION),
            SandboxError::Packages { .. } => (502, String::new(), LEVEL_FUNCTION),
            SandboxError::Setup(_) => (502, String::new(), LEVEL_WORKER),
        };
        CallError {
            status,
            line: e.to_string(),
            detail,
            allow: None,
            refused: None,
            level,
        }
    }
}

/// Every function's calls: the registry for their code, the pool for
/// their instances.
pub struct HandlerSet {
    registry: Arc<Registry>,
    pool: Arc<Pool>,
    limits: LimitsConfig,
    /// Who may have `network: egress` (a stored package may ask anyway).
    egress: EgressConfig,
    /// `max_reply_bytes`: the worker holds each reply whole.
    max_reply_bytes: usize,
    pub stats: Arc<Stats>,
}

impl HandlerSet {
    pub fn new(
        registry: Arc<Registry>,
        manager: Arc<dyn SandboxManager>,
        instances: InstancesConfig,
        limits: LimitsConfig,
        egress: EgressConfig,
        max_reply_bytes: usize,
    ) -> Arc<Self> {
        let stats = Arc::new(Stats::default());
        Arc::new(HandlerSet {
            registry,
            pool: Arc::new(Pool::new(manager, instances, stats.clone())),
            limits,
            egress,
            max_reply_bytes,
            stats,
        })
    }

    /// Runs one call of `name`. Fills `timing` as it goes.
    pub async fn invoke(
        &self,
        name: &str,
        call: Call<'_>,
        timing: &mut Timing,
    ) -> Result<Reply, CallError> {
        let code = self.registry.resolve(name).await?;
        check_method(&code, call.method)?;
        self.check_network(&code)?;
        let limits = self.limits_of(&code)?;
        let handler = self.pool.handler(name);
        let queued = Instant::now();
        let slot = self.admit(&handler).await?;
        timing.queue = queued.elapsed();
        let mut inst = self.pool.take(&handler, &code, limits, timing).await?;
        self.stats.count_start(timing);
        let ran = self.run(&mut inst, call, timing).await;
        let result = self.finish(&handler, inst, ran).await;
        drop(slot);
        result
    }

    /// Starts the reaper; abort the handle to stop it.
    pub fn start_reaper(&self) -> JoinHandle<()> {
        reaper::spawn(self.pool.clone())
    }

    /// Gauges for `/stats`: live, idle and paused instances.
    pub fn gauges(&self) -> [(&'static str, u64); 3] {
        self.pool.gauges()
    }

    /// Removes every idle instance (at shutdown).
    pub async fn remove_all(&self) {
        self.pool.remove_all().await
    }

    /// A network the operator does not give the function (its `ol.yaml`
    /// asks for egress, `egress.functions` does not name it): 500.
    fn check_network(&self, code: &CodeVersion) -> Result<(), CallError> {
        self.egress
            .check(&code.name, &code.config)
            .map_err(|e| CallError::new(500, format!("function {}: {e}", code.name)))
    }

    /// The limits `code` runs under: the worker's, with what its `ol.yaml`
    /// asks for within the ceilings, and within the memory budget.
    fn limits_of(&self, code: &CodeVersion) -> Result<Limits, CallError> {
        let name = &code.name;
        let limits = Limits::for_function(&self.limits, &code.config.limits)
            .map_err(|e| CallError::new(500, format!("function {name}: {e}")))?;
        let budget = self.pool.instances.memory_budget_mb;
        if limits.memory_mb > budget {
            // It would evict every other instance and still not fit.
            return Err(CallError::new(
                500,
                format!(
                    "function {name}: limits.memory_mb: {} is above this worker's memory budget of {budget} (instances.memory_budget_mb)",
                    limits.memory_mb
                ),
            ));
        }
        Ok(limits)
    }

    /// A slot of `handler`, after the queue if need be; 429 when it is full.
    async fn admit<'h>(
        &self,
        handler: &'h Handler,
    ) -> Result<tokio::sync::SemaphorePermit<'h>, CallError> {
        let cfg = &self.pool.instances;
        match handler.admit(cfg.queue_per_function).await {
            Some(slot) => Ok(slot),
            None => {
                self.stats.queue_full.fetch_add(1, Relaxed);
                Err(CallError::refused(
                    429,
                    config::wire::REFUSED_QUEUE_FULL,
                    format!(
                        "{} is at its limit of {} instances and {} queued calls; retry later",
                        handler.name, cfg.max_per_function, cfg.queue_per_function
                    ),
                ))
            }
        }
    }

    /// The call on `inst`'s runtime, within the runtime limit.
    async fn run(&self, inst: &mut Instance, call: Call<'_>, timing: &mut Timing) -> Ran {
        let head = CallHead {
            method: call.method,
            path: call.sub_path,
            query: call.query,
            headers: call.headers,
        };
        let ran = Instant::now();
        let call = inst.conn.call(&head, call.body, self.max_reply_bytes);
        let res = tokio::time::timeout(inst.limits.runtime, call)
            .instrument(tracing::debug_span!("handler.run", function = %inst.code.name))
            .await;
        timing.run = ran.elapsed();
        self.stats.run.record(timing.run);
        match res {
            Ok(Ok(reply)) => Ran::Replied(reply),
            Ok(Err(io)) => match io.get_ref().and_then(|e| e.downcast_ref::<ReplyTooLarge>()) {
                Some(t) => Ran::TooLarge(t.to_string()),
                None => Ran::Broke(io),
            },
            Err(_) => Ran::TimedOut,
        }
    }

    /// A healthy instance goes back to the pool; one whose call failed at
    /// the transport level never serves again.
    async fn finish(
        &self,
        handler: &Handler,
        mut inst: Instance,
        ran: Ran,
    ) -> Result<Reply, CallError> {
        let name = &handler.name;
        match ran {
            Ran::Replied((ReplyHead { status, headers }, body)) => {
                self.pool.give_back(handler, inst);
                Ok(Reply {
                    status,
                    headers,
                    body,
                })
            }
            Ran::Broke(io) => {
                self.stats.crashes.fetch_add(1, Relaxed);
                let why = inst.sandbox.exit_reason().await;
                let log = inst.sandbox.logs(2048);
                tracing::warn!(function = %name, %io, %why, "runtime failed during a call");
                self.pool.discard(inst);
                Err(CallError {
                    detail: log,
                    ..CallError::new(
                        502,
                        format!("function {name}'s runtime died during the call: {why}"),
                    )
                    .by_function()
                })
            }
            Ran::TooLarge(what) => {
                // The rest of the reply is unread: the connection is spent.
                self.pool.discard(inst);
                Err(CallError::new(502, format!("function {name} sent {what}")).by_function())
            }
            Ran::TimedOut => {
                self.stats.timeouts.fetch_add(1, Relaxed);
                let ms = inst.limits.runtime.as_millis();
                self.pool.discard(inst);
                Err(SandboxError::Timeout {
                    name: name.to_string(),
                    ms,
                }
                .into())
            }
        }
    }
}

/// How a call on an instance ended.
enum Ran {
    Replied((ReplyHead, Vec<u8>)),
    /// The runtime died or broke the protocol.
    Broke(std::io::Error),
    /// The reply was over `max_reply_bytes` (what it was, one line).
    TooLarge(String),
    /// Past the runtime limit.
    TimedOut,
}

/// 405 unless `ol.yaml` allows `method` (no list: every method).
fn check_method(code: &CodeVersion, method: &str) -> Result<(), CallError> {
    let allowed = code.config.allowed_methods();
    if allowed.is_empty() || allowed.iter().any(|m| m == method) {
        return Ok(());
    }
    let list = allowed.join(", ");
    let line = format!(
        "method {method} not allowed for {}; allowed: {list}",
        code.name
    );
    Err(CallError {
        allow: Some(list),
        ..CallError::new(405, line)
    })
}
