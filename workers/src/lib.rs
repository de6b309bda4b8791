//! ol-worker: an OpenLambda-compatible worker. It fetches functions from a
//! code store (`registry`), runs each call in a sandbox instance
//! (`sandbox`, pooled per function by `handler`), and serves the HTTP
//! contract of DESIGN.md (`server`).

mod fsutil;
pub mod grpc;
pub mod handler;
pub mod packages;
pub mod registry;
pub mod reply;
pub mod sandbox;
pub mod server;
pub mod stats;
