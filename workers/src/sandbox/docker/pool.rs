//! The pool: containers started without a function, so that a cold start
//! skips the engine's create and start (most of its time). One is taken
//! for a function that runs with the pool's limits and no network; the
//! pool refills in the background.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use config::function::Network;

use super::container::{Containers, DockerSandbox, PendingInit};
use crate::code::CodeVersion;
use crate::sandbox::{Limits, Sandbox};

pub struct Pool {
    /// Started containers, each holding its runtime's first connection.
    ready: Mutex<Vec<DockerSandbox>>,
    size: usize,
    /// The limits pooled containers run under: the worker's defaults.
    limits: Limits,
    /// Pool containers being started.
    filling: AtomicUsize,
    closing: AtomicBool,
}

impl Pool {
    pub fn new(size: usize, limits: Limits) -> Pool {
        Pool {
            ready: Mutex::new(Vec::new()),
            size,
            limits,
            filling: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// A pre-started container for `code`, when its instances run with the
    /// pool's limits and no network; `start` then hands it the function.
    pub fn take(&self, code: &CodeVersion, limits: Limits) -> Option<DockerSandbox> {
        if self.size == 0 || limits != self.limits || code.config.network != Network::None {
            return None;
        }
        loop {
            let mut sb = self.ready.lock().unwrap().pop()?;
            // A pool container whose runtime died meanwhile has closed the
            // connection: drop it and try the next rather than fail the call.
            let alive = sb.pool_conn.as_ref().is_some_and(|c| {
                matches!(c.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            });
            let conn = match (alive, sb.pool_conn.take()) {
                (true, Some(c)) => c,
                _ => {
                    tracing::warn!(id = %sb.id, "pool container gone; removing it");
                    tokio::spawn(async move { sb.remove().await });
                    continue;
                }
            };
            sb.id = format!("{}-{}", code.name, sb.id);
            sb.name = code.name.clone();
            sb.init = Some(PendingInit {
                code_dir: code.dir.clone(),
                env: code.config.environment.clone().into_iter().collect(),
                conn,
            });
            return Some(sb);
        }
    }

    /// Starts pool containers in the background until `pool_size` are
    /// ready or starting.
    pub fn refill(self: &Arc<Self>, containers: &Arc<Containers>) {
        loop {
            if self.closing.load(Ordering::Relaxed) {
                return;
            }
            let have = self.ready.lock().unwrap().len() + self.filling.load(Ordering::Relaxed);
            if have >= self.size {
                return;
            }
            self.filling.fetch_add(1, Ordering::Relaxed);
            let me = self.clone();
            let containers = containers.clone();
            tokio::spawn(async move {
                match containers.make(None, me.limits, "none".into()).await {
                    Ok(mut sb) => match sb.start().await {
                        Ok(()) if !me.closing.load(Ordering::Relaxed) => {
                            // Hold the runtime's first connection from now
                            // on: if the worker dies, the runtime sees it
                            // close and the container exits.
                            match crate::runtime::connect_own(&sb.socket, sb.runs_as).await {
                                Ok(c) => {
                                    sb.pool_conn = Some(c);
                                    me.ready.lock().unwrap().push(sb);
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "cannot reach a pool container");
                                    sb.remove().await;
                                }
                            }
                        }
                        Ok(()) => sb.remove().await,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot start a pool container");
                            sb.remove().await;
                        }
                    },
                    Err(e) => tracing::warn!(error = %e, "cannot create a pool container"),
                }
                me.filling.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    /// Stops refilling and removes every pooled container (at shutdown).
    pub async fn drain(&self) {
        self.closing.store(true, Ordering::Relaxed);
        // Pool containers being started are removed by their filler.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.filling.load(Ordering::Relaxed) > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pooled: Vec<DockerSandbox> = self.ready.lock().unwrap().drain(..).collect();
        futures_util::future::join_all(
            pooled
                .into_iter()
                .map(|mut sb| async move { sb.remove().await }),
        )
        .await;
    }
}
