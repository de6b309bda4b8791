//! `session`: requests with the same session key (a cookie or header the
//! proxy extracts) go to the same worker, so per-session state stays warm.
//! Consistent hashing with bounded loads: an unhealthy or overloaded home
//! passes to the next worker on the ring. Without a key it does not apply.

use crate::ring::Ring;
use crate::{hash_str, Picks, Policy, PolicyKind, Request, View};

/// A hash ring of the membership and e; a decision hashes the session
/// key, binary-searches the ring and walks a few points.
#[derive(Debug)]
pub struct Session {
    ring: Ring,
    one_plus_e: f64,
}

impl Session {
    /// Builds the ring for `keys` (at set build). `load_factor` is e.
    pub fn new(keys: &[&str], load_factor: f64, vnodes: u32) -> Self {
        Session {
            ring: Ring::build(keys, vnodes),
            one_plus_e: 1.0 + load_factor,
        }
    }
}

impl Policy for Session {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Session
    }

    /// `None` without a session key.
    #[inline]
    fn pick(&self, req: &Request<'_>, view: &View<'_>) -> Option<Picks> {
        let key = req.session_key()?;
        Some(
            self.ring
                .pick_bounded(hash_str(key), view, self.one_plus_e, None),
        )
    }
}
