//! The pingora edge proxy (see issue: Proxy).
