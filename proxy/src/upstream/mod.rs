//! The proxy as a client of its workers, off the request path: health
//! checks, the `/stats` poll and DNS ([`health`], a background service),
//! what workers say about gRPC services ([`grpc_meta`]), the probes behind
//! them ([`client`]), and the quickstart's local workers ([`local`]).

pub mod client;
pub mod grpc_meta;
pub mod health;
pub mod local;
