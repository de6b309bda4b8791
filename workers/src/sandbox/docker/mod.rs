//! The Docker backend: each instance is a container of the ol-edge runtime
//! image (`workers/image/build.sh`), driven through the Docker Engine API
//! (bollard), never the `docker` CLI.
//!
//! Why containers beside processes: a handler gets its own root filesystem,
//! PID, IPC, UTS and network namespaces, so it sees neither the worker's
//! files nor its network, which a process sandbox cannot promise.
//!
//! Each container runs with a read-only root filesystem, its function's
//! code mounted read-only at `/code`, a private writable directory mounted
//! at `/run/ol` (scratch space, `HOME`, `TMPDIR`, and the runtime's unix
//! socket, which the worker reaches through the same directory on the
//! host), a small `/tmp` tmpfs, no network (`none`) unless its `ol.yaml`
//! says `network: egress` (then a bridge that the firewall keeps away from
//! the host and private ranges, see `egress`), memory, pids and CPU limits
//! from `Limits`, every capability dropped, `no-new-privileges`, and a
//! non-root user: one uid per live instance from `sandbox_user` when the
//! worker runs as root (the worker's own uid otherwise).
//!
//! Start-up: the worker attaches to the container's output before starting
//! it and waits for the runtime's `ready` (or `error <why>`) line on
//! stdout; stderr (the handler's prints and tracebacks) is kept in memory
//! for `logs`. Pause is Docker's pause (the cgroup freezer).
//!
//! The pool: most of a cold start is the engine creating and starting a
//! container (~300 ms here) rather than Python loading a function (~10 ms),
//! so `pool_size` containers are kept started without a function (the
//! runtime without `--code`). A cold start with the default limits and no
//! network takes one, hard-links its code into the container's scratch dir
//! and sends the runtime an init frame (`hand_over`); the pool refills in
//! the background (`pool`).
//!
//! Every container carries the labels `ol-edge.worker=<work dir>` and
//! `ol-edge.owner=<pid>:<start time>` (this worker process): the worker
//! removes at start the leftovers of its work dir and those of any dead
//! worker on the host (an owner that no longer runs), and at shutdown its
//! own; its guard removes the owner's when the worker dies. If the worker
//! and its guard are both killed outright, running instances and idle pool
//! containers exit by themselves (each runtime ends when its connection
//! from the worker closes); paused instances stay frozen, and all of them
//! stay as containers until the next start of any worker on the host.
//!
//! Here: the manager; `engine`: connecting, errors, the image, clean-up;
//! `container`: one container; `pool`; `egress`.

mod container;
mod egress;
pub(super) mod engine;
mod pool;

use std::fs;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use config::function::Network;
use sha2::{Digest, Sha256};

use self::container::Containers;
use self::egress::Egress;
use self::engine::{connect, default_image, is_not_found, one_line};
use self::pool::Pool;
use crate::code::CodeVersion;
use crate::fsutil;
use crate::sandbox::{Limits, Sandbox, SandboxError, SandboxManager, UidPool};

/// Creates containers, from the pool when it can.
pub struct DockerManager {
    containers: Arc<Containers>,
    pool: Arc<Pool>,
    egress: Egress,
    /// The engine's version, for `describe`.
    engine: String,
}

impl DockerManager {
    /// Connects to the engine, checks the image, removes containers a
    /// previous run of this worker left behind, starts filling the pool.
    pub async fn new(cfg: &config::WorkerConfig) -> anyhow::Result<Self> {
        let docker = connect().await?;
        let image = if cfg.docker.image.is_empty() {
            default_image()
        } else {
            cfg.docker.image.clone()
        };
        match docker.inspect_image(&image).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => anyhow::bail!(
                "docker image {image} not found: build it with workers/image/build.sh (as root, needs debootstrap)"
            ),
            Err(e) => anyhow::bail!("cannot inspect docker image {image}: {}", one_line(&e)),
        }
        let version = docker
            .version()
            .await
            .ok()
            .and_then(|v| v.version)
            .unwrap_or_else(|| "?".into());

        let work = cfg.work_dir();
        let instances_dir = work.join("instances");
        fs::create_dir_all(&instances_dir)?;
        fsutil::set_mode(&work, 0o711)?;
        fsutil::set_mode(&instances_dir, 0o711)?;
        if work.join("code").exists() {
            fsutil::set_mode(&work.join("code"), 0o755)?;
        }
        let work = fs::canonicalize(&work)?;
        let label = work.display().to_string();
        let prefix = {
            let h = Sha256::digest(label.as_bytes());
            format!("ol-edge-{:02x}{:02x}{:02x}", h[0], h[1], h[2])
        };
        let root = unsafe { libc::geteuid() } == 0;
        let uids = root
            .then(|| UidPool::claim(&cfg.sandbox_user))
            .transpose()
            .map_err(|e| anyhow::anyhow!("sandbox uids: {e}"))?;
        let own = unsafe { (libc::geteuid(), libc::getegid()) };
        // This work dir's leftovers, and any dead worker's on the host.
        let own_left = format!("{}={label}", engine::WORKER_LABEL);
        let left = engine::remove_labelled(&docker, &own_left).await?
            + engine::remove_orphans(&docker).await?;
        let owner = engine::owner_id(std::process::id())
            .ok_or_else(|| anyhow::anyhow!("cannot read this worker's /proc/self/stat"))?;
        if left > 0 {
            tracing::info!(
                containers = left,
                "removed containers left by a previous run"
            );
        }
        // Their scratch mounts and dirs go after them.
        fsutil::clear_instances(&instances_dir);
        let containers = Arc::new(Containers {
            docker,
            image,
            label,
            owner,
            prefix,
            instances_dir,
            uids,
            own,
            scratch_mb: cfg.instances.scratch_mb,
            next_id: AtomicU64::new(1),
            start_timeout: Duration::from_millis(cfg.docker.start_timeout_ms),
        });
        let pool_limits = Limits::for_function(&cfg.limits, &Default::default())
            .expect("the worker's defaults are within its ceilings (validated)");
        let m = DockerManager {
            containers,
            pool: Arc::new(Pool::new(cfg.docker.pool_size, pool_limits)),
            egress: Egress::new(
                &cfg.docker.egress_network,
                &cfg.docker.egress_bridge,
                &cfg.egress.blocked,
            ),
            engine: version,
        };
        m.pool.refill(&m.containers);
        Ok(m)
    }
}

#[async_trait]
impl SandboxManager for DockerManager {
    async fn create(
        &self,
        code: &Arc<CodeVersion>,
        limits: Limits,
    ) -> Result<Box<dyn Sandbox>, SandboxError> {
        if let Some(sb) = self.pool.take(code, limits) {
            self.pool.refill(&self.containers);
            return Ok(Box::new(sb));
        }
        let network = match code.config.network {
            Network::None => "none".to_string(),
            Network::Egress => {
                self.egress.ensure(&self.containers.docker).await?;
                self.egress.network().to_string()
            }
        };
        let sb = self.containers.make(Some(code), limits, network).await?;
        self.pool.refill(&self.containers);
        Ok(Box::new(sb))
    }

    fn describe(&self) -> String {
        let users = match &self.containers.uids {
            Some(u) => u.describe(self.containers.scratch_mb),
            None => "the worker's own uid".to_string(),
        };
        format!(
            "docker sandboxes (engine {}, image {}, {} pre-started): read-only root and code, no network unless the operator grants egress, all capabilities dropped, no-new-privileges, handlers run as {users}",
            self.engine, self.containers.image, self.pool.size()
        )
    }

    fn leftovers(&self) -> crate::sandbox::Leftovers {
        crate::sandbox::Leftovers {
            cgroups: Vec::new(),
            // This run's, not the work dir's: a worker restarted on the
            // same dir keeps its containers when the old guard acts late.
            docker_label: Some(format!("{}={}", engine::OWNER_LABEL, self.containers.owner)),
            instances: Some(self.containers.instances_dir.clone()),
        }
    }

    async fn shutdown(&self) {
        self.pool.drain().await;
        let c = &self.containers;
        let own = format!("{}={}", engine::OWNER_LABEL, c.owner);
        match engine::remove_labelled(&c.docker, &own).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(containers = n, "removed remaining containers"),
            Err(e) => tracing::warn!(error = %e, "cannot remove containers at shutdown"),
        }
    }
}
