//! `code-locality`: consistent hashing with bounded loads over the function
//! name, or over its most expensive package when the package set is known
//! (`over = "package"`, after PASch: Aumala et al., "Beyond Load Balancing:
//! Package-Aware Scheduling for Serverless Platforms", CCGrid 2019).
//!
//! The same function keeps landing on the same few workers, so their warm
//! sandboxes and imported packages are reused; the load bound spills a hot
//! function to the next workers on the ring instead of overloading one.

use crate::ring::Ring;
use crate::{hash_str, LocalityKey, Picks, Policy, PolicyKind, Request, View};

/// A hash ring of the membership plus e and the key choice. Decision: one
/// hash (the package's, when hashing packages), a binary search and a walk
/// of a few ring points.
#[derive(Debug)]
pub struct CodeLocality {
    ring: Ring,
    one_plus_e: f64,
    over: LocalityKey,
}

impl CodeLocality {
    /// `keys`: the membership; `load_factor`: e; `vnodes`: points per worker.
    pub fn new(keys: &[&str], load_factor: f64, vnodes: u32, over: LocalityKey) -> Self {
        CodeLocality {
            ring: Ring::build(keys, vnodes),
            one_plus_e: 1.0 + load_factor,
            over,
        }
    }
}

impl Policy for CodeLocality {
    fn kind(&self) -> PolicyKind {
        PolicyKind::CodeLocality
    }

    #[inline]
    fn pick(&self, req: &Request<'_>, view: &View<'_>) -> Option<Picks> {
        let h = match (self.over, req.largest_package()) {
            (LocalityKey::Package, Some(p)) => hash_str(p.name),
            _ => req.function_hash(),
        };
        Some(
            self.ring
                .pick_bounded(h, view, self.one_plus_e, Some(req.function_hash())),
        )
    }
}
