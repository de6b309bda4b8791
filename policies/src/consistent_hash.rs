//! `consistent-hash`: plain consistent hashing of the function name (Karger
//! et al., 1997) with no load bound: a baseline that shows what the bound in
//! `code-locality` buys. A hot function overloads its home worker.

use crate::ring::Ring;
use crate::{Picks, Policy, PolicyKind, Request, View};

/// A hash ring of the membership; a decision is a binary search and a walk
/// to the first healthy owners.
#[derive(Debug)]
pub struct ConsistentHash {
    ring: Ring,
}

impl ConsistentHash {
    /// Builds the ring for `keys` with `vnodes` points each (at set build).
    pub fn new(keys: &[&str], vnodes: u32) -> Self {
        ConsistentHash {
            ring: Ring::build(keys, vnodes),
        }
    }
}

impl Policy for ConsistentHash {
    fn kind(&self) -> PolicyKind {
        PolicyKind::ConsistentHash
    }

    #[inline]
    fn pick(&self, req: &Request<'_>, view: &View<'_>) -> Option<Picks> {
        Some(self.ring.pick_plain(req.function_hash(), view))
    }
}
