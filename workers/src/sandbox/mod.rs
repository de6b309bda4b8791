//! Isolation only: the sandbox layer, after the interfaces of OpenLambda's
//! sandbox package (`Sandbox`: start, stop, pause, unpause, remove, logs,
//! state; `SandboxManager`: create). A sandbox runs one instance of one
//! function version: a Python runtime (`workers/runtime/ol_runtime.py`,
//! spoken to through `crate::runtime`) that listens on a unix socket,
//! never a TCP port. It is given a `CodeVersion` and never asks the
//! registry for one: which version runs is the invoke layer's choice.
//!
//! Backends:
//! - `process`: a Python process per instance (its own uid, cgroup or
//!   rlimits, network namespace), forked from a zygote when one fits;
//! - `docker`: a container per instance (its own root filesystem and
//!   namespaces), from a pool of pre-started ones when the limits allow.

mod cgroup;
pub mod docker;
pub mod process;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::code::registry::CodeVersion;

/// The unprivileged uids handlers run as, one per live instance, when the
/// worker is root (no passwd entries needed). Shared by every backend.
#[derive(Clone)]
pub struct UidPool(Arc<Mutex<Vec<u32>>>);

impl UidPool {
    pub fn new(users: &config::worker::SandboxUserConfig) -> UidPool {
        let free = (users.uid_base..users.uid_base + users.uid_count)
            .rev()
            .collect();
        UidPool(Arc::new(Mutex::new(free)))
    }

    /// A uid for one sandbox, back in the pool when the `Uid` is dropped.
    pub fn take(&self) -> Result<Uid, SandboxError> {
        let id = self.0.lock().unwrap().pop();
        let id = id.ok_or_else(|| SandboxError::Setup("no free sandbox uid".into()))?;
        Ok(Uid {
            id,
            pool: self.clone(),
        })
    }

    /// The uid `take` would give next, without taking it.
    pub fn peek(&self) -> Option<u32> {
        self.0.lock().unwrap().last().copied()
    }
}

/// A uid on loan to one sandbox.
pub struct Uid {
    id: u32,
    pool: UidPool,
}

impl Uid {
    pub fn get(&self) -> u32 {
        self.id
    }
}

impl Drop for Uid {
    fn drop(&mut self) {
        self.pool.0.lock().unwrap().push(self.id);
    }
}

/// Life cycle of a sandbox: Created -> Running <-> Paused -> Stopped -> Removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    Created,
    Running,
    Paused,
    Stopped,
    Removed,
}

/// The limits one instance runs under (worker defaults with `ol.yaml`
/// overrides applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_mb: u64,
    pub procs: u64,
    pub runtime: Duration,
    pub cpu_percent: u64,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
}

impl Limits {
    /// The worker's defaults with what the function asks for, within the
    /// worker's ceilings (`[limits.max]`); the error names the field.
    pub fn for_function(
        worker: &config::worker::LimitsConfig,
        f: &config::function::FunctionLimits,
    ) -> Result<Limits, String> {
        let l = worker.for_function(f)?;
        Ok(Limits {
            memory_mb: l.memory_mb,
            procs: l.procs,
            runtime: Duration::from_millis(l.runtime_ms),
            cpu_percent: l.cpu_percent,
            open_files: l.open_files,
        })
    }
}

/// Why a sandbox could not do what was asked. Each displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The function's code failed to import: the author's bug (500).
    #[error("function {name} failed to load: {reason}")]
    Load {
        name: String,
        reason: String,
        log: String,
    },
    /// The runtime died or misbehaved (502).
    #[error("{0}")]
    Crashed(String),
    /// The call ran past the runtime limit; the instance was killed (504).
    #[error("function {name} ran past its runtime limit of {ms} ms and was stopped")]
    Timeout { name: String, ms: u128 },
    /// The sandbox could not be set up (502).
    #[error("sandbox: {0}")]
    Setup(String),
}

impl SandboxError {
    /// The runtime ended before it was ready; `why` is its `exit_reason`.
    pub fn died_at_start(name: &str, why: &str) -> SandboxError {
        SandboxError::Crashed(format!("runtime of {name} died at start: {why}"))
    }

    /// The runtime did not `what` ("start", "load") `within` its time.
    pub fn not_ready(name: &str, what: &str, within: &str) -> SandboxError {
        SandboxError::Crashed(format!("runtime of {name} did not {what} within {within}"))
    }
}

/// How a runtime ended, in the words of `Sandbox::exit_reason`, the same
/// for every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Killed by its memory limit (MiB).
    OutOfMemory(u64),
    Signal(i32),
    Status(i32),
    /// No exit seen (it may still run, but does not answer).
    Unknown,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::OutOfMemory(mb) => write!(f, "killed by its memory limit of {mb} MiB"),
            Exit::Signal(libc::SIGKILL) => f.write_str("killed (SIGKILL)"),
            Exit::Signal(n) => write!(f, "killed by signal {n}"),
            Exit::Status(c) => write!(f, "runtime exited with status {c}"),
            Exit::Unknown => f.write_str("runtime stopped answering"),
        }
    }
}

/// One isolated instance of a function's runtime.
#[async_trait]
pub trait Sandbox: Send + Sync {
    fn id(&self) -> &str;
    fn state(&self) -> SandboxState;
    /// Where the runtime listens: a unix socket path, in a directory the
    /// sandbox may write (so connect with `runtime::connect_own`).
    fn address(&self) -> &Path;
    /// The uid the runtime runs as: its socket's owner and the only peer
    /// the worker talks to.
    fn runtime_uid(&self) -> u32;
    /// Starts the runtime and waits until it has loaded the function and
    /// listens; a function that fails to import gives `SandboxError::Load`.
    async fn start(&mut self) -> Result<(), SandboxError>;
    /// Freezes every process of the sandbox (cheap to resume).
    async fn pause(&mut self) -> Result<(), SandboxError>;
    async fn unpause(&mut self) -> Result<(), SandboxError>;
    /// Kills the runtime; the sandbox cannot be started again.
    async fn stop(&mut self);
    /// Stops and frees everything the sandbox holds (dirs, cgroups, uid).
    async fn remove(&mut self);
    /// The tail of what the runtime wrote to stdout/stderr.
    fn logs(&self, max_bytes: usize) -> String;
    /// After the runtime died: why (exit status, killed by the memory limit).
    async fn exit_reason(&mut self) -> String;
    /// Whether this instance was forked from a zygote (`start=zygote`)
    /// rather than started as a new process.
    fn forked(&self) -> bool {
        false
    }
}

/// Creates sandboxes of one backend.
#[async_trait]
pub trait SandboxManager: Send + Sync {
    /// A new sandbox for `code` with `limits`, created but not started.
    async fn create(
        &self,
        code: &Arc<CodeVersion>,
        limits: Limits,
    ) -> Result<Box<dyn Sandbox>, SandboxError>;
    /// What isolation is in force, for the start-up log.
    fn describe(&self) -> String;
    /// Removes what the backend left behind at exit.
    async fn shutdown(&self);
}
