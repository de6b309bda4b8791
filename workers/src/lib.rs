//! ol-worker: an OpenLambda-compatible worker (workers/README.md; the
//! contract and the layers in ARCHITECTURE.md). Its modules, top down;
//! each imports only from the ones below it:
//!
//! - `front`: the port (HTTP/1.1 and h2c): `/run`, `/status`, `/stats`,
//!   `/registry`, gRPC; every response the worker writes itself.
//! - `invoke`: one call: resolve the version, queue, take or create an
//!   instance, run it, give it back; the reaper.
//! - `sandbox`: isolation only (the process and Docker backends); given a
//!   code version, never the registry.
//! - `code`: the registry (code store client, unpacked versions), gRPC
//!   protos, the package store; `runtime`: the protocol with
//!   `ol_runtime.py`.
//! - `stats`, `fsutil`: counters, file modes.
//!
//! Public: what `main.rs` wires together, and the generated gRPC clients
//! (`pb`) the tests and the load driver use.

mod code;
mod front;
mod fsutil;
mod invoke;
mod runtime;
mod sandbox;
mod stats;

pub use code::registry::Registry;
pub use front::grpc::pb;
pub use front::{serve, Front};
pub use invoke::HandlerSet;
pub use sandbox::docker::DockerManager;
pub use sandbox::guard;
pub use sandbox::process::ProcessManager;
pub use sandbox::SandboxManager;
