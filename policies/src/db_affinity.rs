//! `db-affinity`: requests on the same DB shard key (from a header, query
//! parameter, JSON body path or protobuf field: the proxy extracts it) go to
//! the same worker, so its connections and caches for that shard are reused.
//! Consistent hashing with bounded loads. Without a key it does not apply.

use crate::ring::Ring;
use crate::{hash_str, Picks, Policy, PolicyKind, Request, View};

/// A hash ring of the membership and e; a decision hashes the DB key,
/// binary-searches the ring and walks a few points.
#[derive(Debug)]
pub struct DbAffinity {
    ring: Ring,
    one_plus_e: f64,
}

impl DbAffinity {
    /// Builds the ring for `keys` (at set build). `load_factor` is e.
    pub fn new(keys: &[&str], load_factor: f64, vnodes: u32) -> Self {
        DbAffinity {
            ring: Ring::build(keys, vnodes),
            one_plus_e: 1.0 + load_factor,
        }
    }
}

impl Policy for DbAffinity {
    fn kind(&self) -> PolicyKind {
        PolicyKind::DbAffinity
    }

    /// `None` without a DB key.
    #[inline]
    fn pick(&self, req: &Request<'_>, view: &View<'_>) -> Option<Picks> {
        let key = req.db()?;
        Some(
            self.ring
                .pick_bounded(hash_str(key), view, self.one_plus_e, None),
        )
    }
}
