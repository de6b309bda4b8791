//! `chain`: policies tried in order; one that has no key for the request
//! (e.g. `session` without a session key) passes to the next. The first that
//! applies decides, e.g. session, then code-locality, then least-load.

use std::sync::Arc;

use crate::{Picks, Policy, PolicyKind, Request, View};

/// Members in order; see the module docs.
#[derive(Debug)]
pub struct Chain {
    members: Box<[Arc<dyn Policy>]>,
}

impl Chain {
    /// A chain of already built policies (built once, at set build time).
    pub fn new(members: Vec<Arc<dyn Policy>>) -> Self {
        Chain {
            members: members.into(),
        }
    }
}

impl Policy for Chain {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Chain
    }

    /// `None` only when no member applies.
    #[inline]
    fn pick(&self, req: &Request<'_>, view: &View<'_>) -> Option<Picks> {
        self.members.iter().find_map(|m| m.pick(req, view))
    }
}
