//! The code a worker runs, below everything that runs it: the registry
//! (the code store client and the unpacked versions), the protos of
//! gRPC bindings (compiled when a version is loaded or uploaded) and the
//! package store (pinned `requirements.txt` packages).

pub mod packages;
pub mod protos;
pub mod registry;

/// What the sandbox backends know of code: one unpacked version (they
/// never see the registry that made it).
pub use registry::CodeVersion;
