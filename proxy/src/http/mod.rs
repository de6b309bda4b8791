//! The proxy's own HTTP: every response it writes itself ([`answer`]) and
//! the one bounded request-body read ([`body`]). Below every other module
//! of the crate: it takes values, never the request context.

pub mod answer;
pub mod body;
