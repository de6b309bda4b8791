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
//! the background.
//!
//! Every container carries the label `ol-edge.worker=<work dir>`: the
//! worker removes leftovers with its label at start and all of its own at
//! shutdown. If the worker is killed outright, running instances and idle
//! pool containers exit by themselves (each runtime ends when its
//! connection from the worker closes); paused instances stay frozen, and
//! all of them stay as containers until the next start with the same work
//! dir.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountTypeEnum,
    NetworkCreateRequest, ResourcesUlimits,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, InspectContainerOptions, InspectNetworkOptions,
    KillContainerOptions, ListContainersOptions, RemoveContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, OnceCell};

use super::{Limits, Sandbox, SandboxError, SandboxManager, SandboxState, Uid, UidPool};
use crate::fsutil;
use crate::registry::{CodeVersion, Registry, RegistryError};
use config::function::Network;

/// The image build script; its text is part of the image tag.
pub const BUILD_SH: &str = include_str!("../../image/build.sh");

/// Label naming the worker that owns a container.
pub const WORKER_LABEL: &str = "ol-edge.worker";

/// Where things live inside the container (see `workers/image/build.sh`).
const RUNTIME_IN_IMAGE: &str = "/opt/ol-edge/ol_runtime.py";
const CODE_IN_CONTAINER: &str = "/code";
const SCRATCH_IN_CONTAINER: &str = "/run/ol";

/// Bytes of stderr kept per instance for `logs`.
const LOG_KEEP: usize = 64 * 1024;

/// Destinations an egress container may never reach (forwarded traffic);
/// traffic to the host itself is dropped whatever its address.
const PRIVATE_RANGES: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "224.0.0.0/4",
];

/// The tag `workers/image/build.sh` gives the image for this worker's
/// runtime: `ol-edge/runtime:<12 hex of sha256(ol_runtime.py, build.sh)>`.
pub fn default_image() -> String {
    let mut h = Sha256::new();
    h.update(super::process::RUNTIME_PY.as_bytes());
    h.update(BUILD_SH.as_bytes());
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("ol-edge/runtime:{}", &hex[..12])
}

/// One line out of a bollard error (the engine's message when it sent one).
fn one_line(e: &bollard::errors::Error) -> String {
    let mut s = match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    };
    // Transport errors say what failed only in their sources.
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s = format!("{s}: {c}");
        }
        src = cause.source();
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Connects to the local engine (`DOCKER_HOST=unix://...` or the default
/// socket) and checks that it answers. Errors are one line.
pub async fn connect() -> anyhow::Result<Docker> {
    if let Ok(h) = std::env::var("DOCKER_HOST") {
        if !h.is_empty() && !h.starts_with("unix://") {
            anyhow::bail!(
                "DOCKER_HOST={h} is not a unix:// socket: the docker sandbox shares directories and sockets with its containers, so the engine must run on this host"
            );
        }
    }
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .map(|h| h.trim_start_matches("unix://").to_string())
        .unwrap_or_else(|| "/var/run/docker.sock".into());
    let docker = Docker::connect_with_unix_defaults().map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the Docker engine at {socket}: {}; start it (e.g. `dockerd &`) or use --sandbox process",
            one_line(&e)
        )
    })?;
    let docker = match tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
        .await
    {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => anyhow::bail!(
            "cannot reach the Docker engine at {socket}: {}; start it (e.g. `dockerd &`) or use --sandbox process",
            one_line(&e)
        ),
        Err(_) => anyhow::bail!(
            "cannot reach the Docker engine at {socket}: no answer within 10 s; check that dockerd is running or use --sandbox process"
        ),
    };
    Ok(docker)
}

/// Creates containers; shared with the pool's background fillers.
pub struct DockerManager {
    inner: Arc<Inner>,
}

struct Inner {
    docker: Docker,
    registry: Arc<Registry>,
    image: String,
    engine: String,
    /// Value of `ol-edge.worker` on this worker's containers.
    label: String,
    /// Prefix of container names, unique per worker.
    prefix: String,
    instances_dir: PathBuf,
    /// Free sandbox uids when root; else every container runs as `own`.
    uids: Option<UidPool>,
    own: (u32, u32),
    next_id: AtomicU64,
    start_timeout: Duration,
    egress_network: String,
    egress_bridge: String,
    /// Set up once, when the first egress function starts.
    egress: OnceCell<Result<(), String>>,
    /// Pre-started containers without a function (see `take_pooled`).
    pool: Mutex<Vec<DockerSandbox>>,
    pool_size: usize,
    /// The limits pooled containers run under: the worker's defaults.
    pool_limits: Limits,
    /// Pool containers being started.
    filling: AtomicUsize,
    closing: AtomicBool,
}

impl DockerManager {
    /// Connects to the engine, checks the image, removes containers a
    /// previous run of this worker left behind, starts filling the pool.
    pub async fn new(cfg: &config::WorkerConfig, registry: Arc<Registry>) -> anyhow::Result<Self> {
        let inner = Arc::new(Inner::new(cfg, registry).await?);
        inner.refill();
        Ok(DockerManager { inner })
    }
}

impl Inner {
    async fn new(cfg: &config::WorkerConfig, registry: Arc<Registry>) -> anyhow::Result<Self> {
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
        let engine = docker
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
        let uids = root.then(|| UidPool::new(&cfg.sandbox_user));
        let own = unsafe { (libc::geteuid(), libc::getegid()) };
        let m = Inner {
            docker,
            registry,
            image,
            engine,
            label,
            prefix,
            instances_dir,
            uids,
            own,
            next_id: AtomicU64::new(1),
            start_timeout: Duration::from_millis(cfg.docker.start_timeout_ms),
            egress_network: cfg.docker.egress_network.clone(),
            egress_bridge: cfg.docker.egress_bridge.clone(),
            egress: OnceCell::new(),
            pool: Mutex::new(Vec::new()),
            pool_size: cfg.docker.pool_size,
            pool_limits: Limits::for_function(&cfg.limits, &Default::default())
                .expect("the worker's defaults are within its ceilings (validated)"),
            filling: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
        };
        let left = m.remove_labelled().await?;
        if left > 0 {
            tracing::info!(
                containers = left,
                "removed containers left by a previous run"
            );
        }
        Ok(m)
    }

    /// Removes every container carrying this worker's label; returns how many.
    async fn remove_labelled(&self) -> anyhow::Result<usize> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{WORKER_LABEL}={}", self.label)],
        )]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| anyhow::anyhow!("cannot list containers: {}", one_line(&e)))?;
        let removals = list.iter().filter_map(|c| c.id.clone()).map(|id| {
            let docker = self.docker.clone();
            async move { remove_container(&docker, &id).await }
        });
        let n = list.len();
        futures_util::future::join_all(removals).await;
        Ok(n)
    }

    /// Creates the egress network and its firewall rules (once per worker;
    /// idempotent across workers).
    async fn ensure_egress(&self) -> Result<(), SandboxError> {
        let r = self
            .egress
            .get_or_init(|| async {
                self.setup_egress()
                    .await
                    .map_err(|e| format!("egress network {}: {e}", self.egress_network))
            })
            .await;
        r.clone().map_err(SandboxError::Setup)
    }

    async fn setup_egress(&self) -> Result<(), String> {
        // Firewall first: no container may use the bridge before its rules.
        let bridge = &self.egress_bridge;
        let mut rules: Vec<Vec<String>> = vec![
            // Nothing from the bridge to the host itself (any of its
            // addresses, so neither the worker nor the proxy).
            vec![
                "INPUT".into(),
                "-i".into(),
                bridge.clone(),
                "-j".into(),
                "DROP".into(),
            ],
        ];
        let forward_chain = if iptables(&["-n", "-L", "DOCKER-USER"]).await.is_ok() {
            "DOCKER-USER"
        } else {
            "FORWARD"
        };
        for net in PRIVATE_RANGES {
            rules.push(vec![
                forward_chain.into(),
                "-i".into(),
                bridge.clone(),
                "-d".into(),
                net.to_string(),
                "-j".into(),
                "DROP".into(),
            ]);
        }
        for rule in &rules {
            let spec: Vec<&str> = rule.iter().map(String::as_str).collect();
            let mut check = vec!["-C"];
            check.extend(&spec);
            if iptables(&check).await.is_err() {
                let mut insert = vec!["-I"];
                insert.extend(&spec);
                iptables(&insert).await?;
            }
        }
        match self
            .docker
            .inspect_network(&self.egress_network, None::<InspectNetworkOptions>)
            .await
        {
            Ok(n) => {
                let opts = n.options.unwrap_or_default();
                let name = opts.get("com.docker.network.bridge.name");
                let icc = opts.get("com.docker.network.bridge.enable_icc");
                if name != Some(bridge) || icc.map(String::as_str) != Some("false") {
                    return Err(format!(
                        "exists but is not the bridge {bridge} with inter-container traffic disabled; remove it (docker network rm {})",
                        self.egress_network
                    ));
                }
                Ok(())
            }
            Err(e) if is_not_found(&e) => {
                let req = NetworkCreateRequest {
                    name: self.egress_network.clone(),
                    driver: Some("bridge".into()),
                    options: Some(HashMap::from([
                        ("com.docker.network.bridge.name".into(), bridge.clone()),
                        (
                            "com.docker.network.bridge.enable_icc".into(),
                            "false".into(),
                        ),
                    ])),
                    labels: Some(HashMap::from([("ol-edge.egress".into(), "1".into())])),
                    ..Default::default()
                };
                match self.docker.create_network(req).await {
                    Ok(_) => Ok(()),
                    // Another worker created it meanwhile.
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 409,
                        ..
                    }) => Ok(()),
                    Err(e) => Err(one_line(&e)),
                }
            }
            Err(e) => Err(one_line(&e)),
        }
    }
}

/// Runs `iptables ARGS` (waiting for the xtables lock); the error is one line.
async fn iptables(args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Force-removes a container (killing it if it runs); a missing one is fine.
async fn remove_container(docker: &Docker, id: &str) {
    let opts = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    if let Err(e) = docker.remove_container(id, Some(opts)).await {
        if !is_not_found(&e) {
            tracing::warn!(container = id, error = %one_line(&e), "cannot remove container");
        }
    }
}

impl Inner {
    /// A new container for `code` (`None`: a pool container that takes its
    /// function later), created but not started.
    async fn make(
        &self,
        code: Option<&CodeVersion>,
        limits: Limits,
        network: String,
    ) -> Result<DockerSandbox, SandboxError> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let fname = code.map(|c| c.name.as_str()).unwrap_or("pool");
        let id = format!("{fname}-{n}");
        let uid = self.uids.as_ref().map(UidPool::take).transpose()?;
        let (user_uid, user_gid) = uid.as_ref().map(|u| (u.get(), u.get())).unwrap_or(self.own);
        let dir = self.instances_dir.join(&id);
        let mut sb = DockerSandbox {
            docker: self.docker.clone(),
            id: id.clone(),
            name: fname.to_string(),
            container: String::new(),
            socket: dir.join("rt.sock"),
            dir,
            limits,
            start_timeout: self.start_timeout,
            uid,
            log: Arc::new(Mutex::new(Vec::new())),
            state: SandboxState::Created,
            init: None,
            pool_conn: None,
        };
        let setup = || -> std::io::Result<()> {
            fs::create_dir_all(&sb.dir)?;
            fsutil::set_mode(&sb.dir, 0o700)?;
            if sb.uid.is_some() {
                fsutil::chown(&sb.dir, user_uid, user_gid)?;
            }
            Ok(())
        };
        if let Err(e) = setup() {
            let msg = format!("instance dir {}: {e}", sb.dir.display());
            sb.remove().await;
            return Err(SandboxError::Setup(msg));
        }

        let mut env = vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
            format!("HOME={SCRATCH_IN_CONTAINER}"),
            format!("TMPDIR={SCRATCH_IN_CONTAINER}"),
            "PYTHONDONTWRITEBYTECODE=1".into(),
            "LANG=C.UTF-8".into(),
        ];
        if let Some(code) = code {
            env.extend(
                code.config
                    .environment
                    .iter()
                    .map(|(k, v)| format!("{k}={v}")),
            );
        }
        let mem = (limits.memory_mb * 1024 * 1024) as i64;
        let bind = |src: &Path, dst: &str, ro: bool| Mount {
            source: Some(src.display().to_string()),
            target: Some(dst.to_string()),
            typ: Some(MountTypeEnum::BIND),
            read_only: Some(ro),
            ..Default::default()
        };
        let mut cmd: Vec<String> = ["/usr/bin/python3", "-I", "-S", RUNTIME_IN_IMAGE]
            .map(String::from)
            .to_vec();
        cmd.extend(["--socket".into(), format!("{SCRATCH_IN_CONTAINER}/rt.sock")]);
        let mut mounts = vec![bind(&sb.dir, SCRATCH_IN_CONTAINER, false)];
        let mut labels = HashMap::from([(WORKER_LABEL.to_string(), self.label.clone())]);
        match code {
            Some(code) => {
                cmd.extend(["--code".into(), CODE_IN_CONTAINER.into()]);
                cmd.extend(["--name".into(), code.name.clone()]);
                mounts.push(bind(&code.dir, CODE_IN_CONTAINER, true));
                labels.insert("ol-edge.function".into(), code.name.clone());
            }
            None => {
                labels.insert("ol-edge.pool".into(), "1".into());
            }
        }
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            user: Some(format!("{user_uid}:{user_gid}")),
            cmd: Some(cmd),
            entrypoint: Some(vec![]),
            env: Some(env),
            working_dir: Some(SCRATCH_IN_CONTAINER.into()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            attach_stdin: Some(false),
            open_stdin: Some(false),
            tty: Some(false),
            labels: Some(labels),
            host_config: Some(HostConfig {
                mounts: Some(mounts),
                tmpfs: Some(HashMap::from([(
                    "/tmp".to_string(),
                    "rw,nosuid,nodev,noexec,size=16m,mode=1777".to_string(),
                )])),
                readonly_rootfs: Some(true),
                network_mode: Some(network),
                memory: Some(mem),
                memory_swap: Some(mem),
                pids_limit: Some(limits.procs as i64),
                nano_cpus: Some(limits.cpu_percent as i64 * 10_000_000),
                ulimits: Some(vec![ResourcesUlimits {
                    name: Some("nofile".into()),
                    soft: Some(limits.open_files as i64),
                    hard: Some(limits.open_files as i64),
                }]),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                privileged: Some(false),
                ipc_mode: Some("private".into()),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("none".into()),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = format!("{}-{id}", self.prefix);
        let opts = CreateContainerOptions {
            name: Some(name),
            ..Default::default()
        };
        let t = std::time::Instant::now();
        let created = self.docker.create_container(Some(opts), body).await;
        tracing::debug!(id = %id, create_ms = t.elapsed().as_millis() as u64, "container created");
        match created {
            Ok(r) => {
                sb.container = r.id;
                Ok(sb)
            }
            Err(e) => {
                sb.remove().await;
                Err(SandboxError::Setup(format!(
                    "cannot create a container for {fname}: {}",
                    one_line(&e)
                )))
            }
        }
    }

    /// A pre-started container for `code`, when its instances run with the
    /// pool's limits and no network; `start` then hands it the function.
    fn take_pooled(&self, code: &CodeVersion, limits: Limits) -> Option<DockerSandbox> {
        if self.pool_size == 0 || limits != self.pool_limits || code.config.network != Network::None
        {
            return None;
        }
        loop {
            let mut sb = self.pool.lock().unwrap().pop()?;
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
    fn refill(self: &Arc<Self>) {
        loop {
            if self.closing.load(Ordering::Relaxed) {
                return;
            }
            let have = self.pool.lock().unwrap().len() + self.filling.load(Ordering::Relaxed);
            if have >= self.pool_size {
                return;
            }
            self.filling.fetch_add(1, Ordering::Relaxed);
            let me = self.clone();
            tokio::spawn(async move {
                match me.make(None, me.pool_limits, "none".into()).await {
                    Ok(mut sb) => match sb.start().await {
                        Ok(()) if !me.closing.load(Ordering::Relaxed) => {
                            // Hold the runtime's first connection from now
                            // on: if the worker dies, the runtime sees it
                            // close and the container exits.
                            match tokio::net::UnixStream::connect(&sb.socket).await {
                                Ok(c) => {
                                    sb.pool_conn = Some(c);
                                    me.pool.lock().unwrap().push(sb);
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
}

#[async_trait]
impl SandboxManager for DockerManager {
    async fn create(
        &self,
        code: &Arc<CodeVersion>,
        limits: Limits,
    ) -> Result<Box<dyn Sandbox>, SandboxError> {
        let inner = &self.inner;
        if let Some(sb) = inner.take_pooled(code, limits) {
            inner.refill();
            return Ok(Box::new(sb));
        }
        let network = match code.config.network {
            Network::None => "none".to_string(),
            Network::Egress => {
                inner.ensure_egress().await?;
                inner.egress_network.clone()
            }
        };
        let sb = inner.make(Some(code), limits, network).await?;
        inner.refill();
        Ok(Box::new(sb))
    }

    async fn pull(&self, name: &str) -> Result<Arc<CodeVersion>, RegistryError> {
        self.inner.registry.resolve(name).await
    }

    fn describe(&self) -> String {
        let inner = &self.inner;
        let users = if inner.uids.is_some() {
            "one unprivileged uid per instance"
        } else {
            "the worker's own uid"
        };
        format!(
            "docker sandboxes (engine {}, image {}, {} pre-started): read-only root and code, no network unless ol.yaml asks for egress, all capabilities dropped, no-new-privileges, handlers run as {users}",
            inner.engine, inner.image, inner.pool_size
        )
    }

    async fn shutdown(&self) {
        let inner = &self.inner;
        inner.closing.store(true, Ordering::Relaxed);
        // Pool containers being started are removed by their filler.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while inner.filling.load(Ordering::Relaxed) > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pooled: Vec<DockerSandbox> = inner.pool.lock().unwrap().drain(..).collect();
        futures_util::future::join_all(
            pooled
                .into_iter()
                .map(|mut sb| async move { sb.remove().await }),
        )
        .await;
        match inner.remove_labelled().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(containers = n, "removed remaining containers"),
            Err(e) => tracing::warn!(error = %e, "cannot remove containers at shutdown"),
        }
    }
}

pub struct DockerSandbox {
    docker: Docker,
    id: String,
    name: String,
    /// The engine's container id (empty until created).
    container: String,
    dir: PathBuf,
    socket: PathBuf,
    limits: Limits,
    start_timeout: Duration,
    /// The container's own uid (root worker only), back to the pool on drop.
    uid: Option<Uid>,
    /// The tail of the runtime's stderr.
    log: Arc<Mutex<Vec<u8>>>,
    state: SandboxState,
    /// A pool container's function, handed over by `start`.
    init: Option<PendingInit>,
    /// A pool container's connection to its waiting runtime.
    pool_conn: Option<tokio::net::UnixStream>,
}

struct PendingInit {
    code_dir: PathBuf,
    env: Vec<(String, String)>,
    /// Connected when taken from the pool (the runtime accepts it first).
    conn: tokio::net::UnixStream,
}

impl DockerSandbox {
    /// Attaches to stdout/stderr: the first stdout line goes to the returned
    /// channel (`None`: output ended first), stderr to `self.log`.
    async fn attach(&self) -> Result<oneshot::Receiver<Option<String>>, SandboxError> {
        let opts = AttachContainerOptions {
            stream: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let attached = self
            .docker
            .attach_container(&self.container, Some(opts))
            .await
            .map_err(|e| {
                SandboxError::Setup(format!("cannot attach to {}: {}", self.id, one_line(&e)))
            })?;
        let (tx, rx) = oneshot::channel();
        let log = self.log.clone();
        let mut output = attached.output;
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut stdout = Vec::new();
            while let Some(Ok(item)) = output.next().await {
                match item {
                    // Only the first line matters: the runtime sends
                    // everything after `ready` to stderr.
                    bollard::container::LogOutput::StdOut { message } if tx.is_some() => {
                        stdout.extend_from_slice(&message);
                        if let Some(i) = stdout.iter().position(|&b| b == b'\n') {
                            let line = String::from_utf8_lossy(&stdout[..=i]).into_owned();
                            let _ = tx.take().unwrap().send(Some(line));
                        }
                    }
                    bollard::container::LogOutput::StdErr { message } => {
                        let mut log = log.lock().unwrap();
                        log.extend_from_slice(&message);
                        if log.len() > LOG_KEEP * 2 {
                            let cut = log.len() - LOG_KEEP;
                            log.drain(..cut);
                        }
                    }
                    _ => {}
                }
            }
            if let Some(tx) = tx {
                let _ = tx.send(None);
            }
        });
        Ok(rx)
    }

    /// Waits (up to `limit`) until the container is no longer running.
    async fn wait_exit(&self, limit: Duration) {
        let mut wait = self.docker.wait_container(
            &self.container,
            Some(WaitContainerOptions {
                condition: "not-running".into(),
            }),
        );
        let _ = tokio::time::timeout(limit, wait.next()).await;
    }

    /// Gives a running pool container its function: links the code into
    /// its scratch dir (read-only for the instance's user: files and dirs
    /// stay root's) and sends the runtime the init frame.
    async fn hand_over(&mut self, init: PendingInit) -> Result<(), SandboxError> {
        let dest = self.dir.join("code");
        let src = init.code_dir.clone();
        let linked = tokio::task::spawn_blocking(move || link_tree(&src, &dest))
            .await
            .map_err(|e| SandboxError::Setup(format!("code link: {e}")))?;
        linked.map_err(|e| {
            SandboxError::Setup(format!("cannot link the code of {}: {e}", self.name))
        })?;
        let env: HashMap<_, _> = init.env.into_iter().collect();
        let head = serde_json::json!({"init": {
            "code": format!("{SCRATCH_IN_CONTAINER}/code"),
            "name": self.name,
            "env": env,
        }});
        let mut s = init.conn;
        let exchange = async {
            let head = serde_json::to_vec(&head)?;
            let mut out = Vec::with_capacity(head.len() + 8);
            out.extend_from_slice(&(head.len() as u32).to_be_bytes());
            out.extend_from_slice(&head);
            out.extend_from_slice(&0u32.to_be_bytes());
            s.write_all(&out).await?;
            let reply = read_frame(&mut s).await?;
            let body = read_frame(&mut s).await?;
            Ok::<_, std::io::Error>((reply, body))
        };
        match tokio::time::timeout(self.start_timeout, exchange).await {
            Ok(Ok((reply, body))) => {
                let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_default();
                if reply["status"] == 200 {
                    return Ok(());
                }
                let reason = reply["error"]
                    .as_str()
                    .unwrap_or("unknown error")
                    .to_string();
                self.stop().await;
                Err(SandboxError::Load {
                    name: self.name.clone(),
                    reason,
                    log: String::from_utf8_lossy(&body).into_owned(),
                })
            }
            Ok(Err(_)) => {
                let why = self.exit_reason().await;
                Err(SandboxError::Crashed(format!(
                    "runtime of {} died at start: {why}",
                    self.name
                )))
            }
            Err(_) => {
                self.stop().await;
                Err(SandboxError::Crashed(format!(
                    "runtime of {} did not load within {} ms",
                    self.name,
                    self.start_timeout.as_millis()
                )))
            }
        }
    }
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn state(&self) -> SandboxState {
        self.state
    }

    fn address(&self) -> &Path {
        &self.socket
    }

    async fn start(&mut self) -> Result<(), SandboxError> {
        if let Some(init) = self.init.take() {
            return self.hand_over(init).await;
        }
        let t0 = std::time::Instant::now();
        let ready = self.attach().await?;
        let attached = t0.elapsed();
        self.docker
            .start_container(
                &self.container,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| {
                SandboxError::Setup(format!(
                    "cannot start the container of {}: {}",
                    self.name,
                    one_line(&e)
                ))
            })?;
        self.state = SandboxState::Running;
        let started = t0.elapsed();
        match tokio::time::timeout(self.start_timeout, ready).await {
            Ok(Ok(Some(line))) if line == "ready\n" => {
                tracing::debug!(
                    id = %self.id,
                    attach_ms = attached.as_millis() as u64,
                    start_ms = (started - attached).as_millis() as u64,
                    ready_ms = (t0.elapsed() - started).as_millis() as u64,
                    "container ready"
                );
                Ok(())
            }
            Ok(Ok(Some(line))) if line.starts_with("error ") => {
                let reason = line["error ".len()..].trim().to_string();
                // The traceback may still be on its way.
                self.wait_exit(Duration::from_millis(500)).await;
                let log = self.logs(4096);
                self.stop().await;
                Err(SandboxError::Load {
                    name: self.name.clone(),
                    reason,
                    log,
                })
            }
            Ok(_) => {
                let why = self.exit_reason().await;
                Err(SandboxError::Crashed(format!(
                    "runtime of {} died at start: {why}",
                    self.name
                )))
            }
            Err(_) => {
                self.stop().await;
                Err(SandboxError::Crashed(format!(
                    "runtime of {} did not start within {} ms",
                    self.name,
                    self.start_timeout.as_millis()
                )))
            }
        }
    }

    async fn pause(&mut self) -> Result<(), SandboxError> {
        self.docker
            .pause_container(&self.container)
            .await
            .map_err(|e| SandboxError::Setup(format!("pause {}: {}", self.id, one_line(&e))))?;
        self.state = SandboxState::Paused;
        Ok(())
    }

    async fn unpause(&mut self) -> Result<(), SandboxError> {
        self.docker
            .unpause_container(&self.container)
            .await
            .map_err(|e| SandboxError::Setup(format!("unpause {}: {}", self.id, one_line(&e))))?;
        self.state = SandboxState::Running;
        Ok(())
    }

    async fn stop(&mut self) {
        if !self.container.is_empty() {
            let opts = KillContainerOptions {
                signal: "SIGKILL".into(),
            };
            if self.state == SandboxState::Paused {
                // A frozen container gets the signal once thawed.
                let _ = self.docker.unpause_container(&self.container).await;
            }
            let _ = self
                .docker
                .kill_container(&self.container, Some(opts))
                .await;
        }
        self.state = SandboxState::Stopped;
    }

    async fn remove(&mut self) {
        if !self.container.is_empty() {
            remove_container(&self.docker, &self.container).await;
        }
        let _ = fs::remove_dir_all(&self.dir);
        self.uid = None; // back to the pool
        self.state = SandboxState::Removed;
    }

    fn logs(&self, max_bytes: usize) -> String {
        let data = self.log.lock().unwrap();
        let start = data.len().saturating_sub(max_bytes);
        String::from_utf8_lossy(&data[start..]).into_owned()
    }

    async fn exit_reason(&mut self) -> String {
        if self.container.is_empty() {
            return "runtime stopped answering".into();
        }
        // The socket closes as the process dies; the engine notes the exit
        // a moment later.
        self.wait_exit(Duration::from_secs(1)).await;
        // The engine hears of the exit and of the OOM kill by two separate
        // events, in either order: a SIGKILL without the OOM flag is asked
        // about again for a moment before it is reported as a plain kill.
        let mut asked = 0;
        let st = loop {
            let info = match self
                .docker
                .inspect_container(&self.container, None::<InspectContainerOptions>)
                .await
            {
                Ok(i) => i,
                Err(e) => return format!("container gone ({})", one_line(&e)),
            };
            let Some(st) = info.state else {
                return "runtime stopped answering".into();
            };
            let plain_kill = st.exit_code == Some(137) && st.oom_killed != Some(true);
            asked += 1;
            if !plain_kill || asked == 10 {
                break st;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if st.oom_killed == Some(true) {
            return format!(
                "killed by its memory limit of {} MiB",
                self.limits.memory_mb
            );
        }
        if st.running == Some(true) {
            return "runtime stopped answering".into();
        }
        match st.exit_code.unwrap_or(-1) {
            137 => "killed (SIGKILL)".into(),
            c if c > 128 => format!("killed by signal {}", c - 128),
            c => format!("runtime exited with status {c}"),
        }
    }
}

impl Drop for DockerSandbox {
    /// A sandbox dropped without `remove` (a cancelled call) must not leave
    /// its container behind.
    fn drop(&mut self) {
        if self.state == SandboxState::Removed {
            return;
        }
        let _ = fs::remove_dir_all(&self.dir);
        self.uid = None; // back to the pool
        if !self.container.is_empty() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let docker = self.docker.clone();
                let id = std::mem::take(&mut self.container);
                rt.spawn(async move { remove_container(&docker, &id).await });
            }
        }
    }
}

/// Recreates the tree `src` at `dst` with hard links (copies across file
/// systems); directories are new, mode 0755, owned by the worker.
fn link_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    fs::create_dir(dst)?;
    fsutil::set_mode(dst, 0o755)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            link_tree(&from, &to)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
        } else if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to)?;
        }
    }
    Ok(())
}

/// One frame of the runtime's wire format (see `rpc`), at most 1 MiB.
async fn read_frame(s: &mut tokio::net::UnixStream) -> std::io::Result<Vec<u8>> {
    let n = s.read_u32().await? as usize;
    if n > 1 << 20 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "oversized init reply",
        ));
    }
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}
