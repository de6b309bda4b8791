//! Routing policies (see issue: Policies). Pure code: no I/O, no async.
