//! `ol-proxy`: ol-edge's edge proxy, on pingora 0.9.
//!
//! A request comes in over HTTP/1.1 or h2c; `request/` reads what it calls
//! (`/run/<name>/...`, a gRPC service, a `[[paths]]` prefix), a routing
//! policy orders the healthy workers, the proxy forwards to the first and
//! fails over to the next on a connect failure; the response comes back
//! unchanged plus `x-ol-worker` and `x-ol-policy`.
//!
//! The modules, from the top down (imports only point down; the code map
//! with each folder's rules is ARCHITECTURE.md):
//! `app` composes; `request` (the hooks) and `admin` (the admin listener)
//! serve; `reload`, `caches`, `upstream` and `conns` do the work; `state`
//! holds the live config; `inspect` and `http` are pure helpers at the
//! bottom.

mod admin;
mod app;
mod caches;
mod conns;
mod http;
mod inspect;
mod reload;
mod request;
mod state;
mod upstream;

pub use app::{run, Plan};
pub use reload::{check_has_workers, init as init_reload, Reloader};
pub use state::config_hash;
pub use upstream::local;
