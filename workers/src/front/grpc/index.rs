//! Which function binds which gRPC service.
//!
//! A call names a service (`/helloworld.Greeter/SayHello`), not a function,
//! so the worker keeps an index built from the code store: the function
//! list and each function's `ol.yaml`. It follows the registry's own rule
//! (`registry_cache_ms`): a hit is used at once (the caller re-checks the
//! function's current config, which the registry keeps fresh); a miss
//! rebuilds the index when it is older than `registry_cache_ms` or when
//! this worker's store changed since (an upload or delete through it), so
//! an upload that binds a new service is served on the next call.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tonic::Status;

use crate::code::registry::Registry;

struct Snapshot {
    services: HashMap<String, String>,
    built: Option<Instant>,
    changes: u64,
}

pub struct Index {
    registry: Arc<Registry>,
    snap: RwLock<Snapshot>,
    /// One rebuild at a time; callers that waited use its result.
    rebuilding: tokio::sync::Mutex<()>,
}

impl Index {
    pub fn new(registry: Arc<Registry>) -> Self {
        Index {
            registry,
            snap: RwLock::new(Snapshot {
                services: HashMap::new(),
                built: None,
                changes: 0,
            }),
            rebuilding: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self, s: &Snapshot) -> bool {
        s.built
            .is_some_and(|b| b.elapsed() < self.registry.recheck())
            && s.changes == self.registry.changes()
    }

    /// The function bound to `service`, if any.
    pub async fn lookup(&self, service: &str) -> Result<Option<String>, Status> {
        {
            let s = self.snap.read().unwrap();
            if let Some(f) = s.services.get(service) {
                return Ok(Some(f.clone()));
            }
            if self.fresh(&s) {
                return Ok(None);
            }
        }
        self.rebuild(false).await?;
        Ok(self.snap.read().unwrap().services.get(service).cloned())
    }

    /// Like `lookup`, but rebuilds first unless the index is fresh: for a
    /// hit that turned out stale (the function no longer binds it).
    pub async fn lookup_fresh(&self, service: &str) -> Result<Option<String>, Status> {
        self.rebuild(true).await?;
        Ok(self.snap.read().unwrap().services.get(service).cloned())
    }

    /// Every binding, service -> function, sorted (rebuilt first unless fresh).
    pub async fn all(&self) -> Result<std::collections::BTreeMap<String, String>, Status> {
        self.rebuild(false).await?;
        let s = self.snap.read().unwrap();
        Ok(s.services
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn rebuild(&self, force: bool) -> Result<(), Status> {
        let started = Instant::now();
        let _one = self.rebuilding.lock().await;
        {
            let s = self.snap.read().unwrap();
            // Someone rebuilt while we waited, or it is fresh enough.
            if s.built.is_some_and(|b| b >= started) || (!force && self.fresh(&s)) {
                return Ok(());
            }
        }
        let changes = self.registry.changes();
        let names = self
            .registry
            .list()
            .await
            .map_err(|e| Status::unavailable(format!("cannot list the code store: {e}")))?;
        let mut services: HashMap<String, String> = HashMap::new();
        for name in names {
            let code = match self.registry.resolve(&name).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(function = %name, %e, "skipped by the gRPC index");
                    continue;
                }
            };
            let Some(g) = &code.config.grpc else { continue };
            match services.get(&g.service) {
                Some(other) => tracing::warn!(
                    service = %g.service,
                    kept = %other,
                    ignored = %name,
                    "two functions bind the same gRPC service; the first by name wins"
                ),
                None => {
                    services.insert(g.service.clone(), name);
                }
            }
        }
        tracing::debug!(services = services.len(), "gRPC service index rebuilt");
        *self.snap.write().unwrap() = Snapshot {
            services,
            built: Some(Instant::now()),
            changes,
        };
        Ok(())
    }
}
