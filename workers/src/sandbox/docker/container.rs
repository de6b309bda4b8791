//! One container: how it is made (`Containers::make`: mounts, user,
//! limits, no capabilities), started (attach, then wait for the runtime's
//! first line) or handed a function (a pool container), and its life cycle.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountTypeEnum, ResourcesUlimits,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, InspectContainerOptions, KillContainerOptions,
    WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::engine::{one_line, remove_container, OWNER_LABEL, WORKER_LABEL};
use crate::code::CodeVersion;
use crate::fsutil;
use crate::runtime::{self, FirstLine, Loaded, RuntimeConn};
use crate::sandbox::{Exit, Limits, Sandbox, SandboxError, SandboxState, Uid, UidPool};

/// Where things live inside the container (see `workers/image/build.sh`).
const RUNTIME_IN_IMAGE: &str = "/opt/ol-edge/ol_runtime.py";
/// The variable carrying a function's `environment` into its container.
const FUNCTION_ENV: &str = "OL_FUNCTION_ENV";
const CODE_IN_CONTAINER: &str = "/code";
const SCRATCH_IN_CONTAINER: &str = "/run/ol";

/// Bytes of stderr kept per instance for `logs`.
const LOG_KEEP: usize = 64 * 1024;

/// What every container of this worker is made with.
pub struct Containers {
    pub docker: Docker,
    pub image: String,
    /// Value of `ol-edge.worker` on this worker's containers.
    pub label: String,
    /// Value of `ol-edge.owner`: this worker process (`engine::owner_id`).
    pub owner: String,
    /// Prefix of container names, unique per worker.
    pub prefix: String,
    pub instances_dir: PathBuf,
    /// Free sandbox uids when root; else every container runs as `own`.
    pub uids: Option<UidPool>,
    pub own: (u32, u32),
    /// Size of each container's scratch tmpfs (root only).
    pub scratch_mb: u64,
    pub next_id: AtomicU64,
    pub start_timeout: Duration,
}

impl Containers {
    /// A new container for `code` (`None`: a pool container that takes its
    /// function later), created but not started.
    pub async fn make(
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
            runs_as: user_uid,
            log: Arc::new(Mutex::new(Vec::new())),
            state: SandboxState::Created,
            init: None,
            pool_conn: None,
            staged_code: code
                .is_none()
                .then(|| self.instances_dir.join(format!("{id}.code"))),
        };
        let setup = || -> std::io::Result<()> {
            fs::create_dir_all(&sb.dir)?;
            fsutil::set_mode(&sb.dir, 0o700)?;
            if sb.uid.is_some() {
                // Root: the scratch dir is a bounded tmpfs, bound into the
                // container as it is (nothing lands on the host's disk).
                fsutil::mount_scratch(&sb.dir, self.scratch_mb, user_uid)?;
                fsutil::chown(&sb.dir, user_uid, user_gid)?;
            }
            if let Some(staged) = &sb.staged_code {
                fs::create_dir(staged)?;
                fsutil::set_mode(staged, 0o755)?;
            }
            Ok(())
        };
        if let Err(e) = setup() {
            let msg = format!("instance dir {}: {e}", sb.dir.display());
            sb.remove().await;
            return Err(SandboxError::Setup(msg));
        }

        let mut env: Vec<String> = runtime::base_env(SCRATCH_IN_CONTAINER)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        // The function's own environment reaches the runtime as one JSON
        // value it applies after its seccomp filter: set as the container's
        // environment, LD_PRELOAD and the like would run code before it.
        if let Some(code) = code {
            let own: HashMap<&String, &String> = code.config.environment.iter().collect();
            let json = serde_json::to_string(&own).unwrap_or_else(|_| "{}".into());
            env.push(format!("{FUNCTION_ENV}={json}"));
        }
        let mem = (limits.memory_mb * 1024 * 1024) as i64;
        let bind = |src: &Path, dst: &str, ro: bool| Mount {
            source: Some(src.display().to_string()),
            target: Some(dst.to_string()),
            typ: Some(MountTypeEnum::BIND),
            read_only: Some(ro),
            ..Default::default()
        };
        // The engine's profile may allow io_uring (Docker before 25): the
        // runtime stacks `sandbox::seccomp`'s filter on it before any code.
        let socket = format!("{SCRATCH_IN_CONTAINER}/rt.sock");
        let args = runtime::Args {
            channel: runtime::Channel::Socket(&socket),
            code: code.map(|c| (CODE_IN_CONTAINER, c.name.as_str())),
            limit_ms: code.map(|_| limits.runtime.as_millis()),
            packages: None,
            block_io_uring: true,
        };
        let mut cmd: Vec<String> = ["/usr/bin/python3", "-I", "-S", RUNTIME_IN_IMAGE]
            .map(String::from)
            .to_vec();
        cmd.extend(args.to_vec());
        let mut mounts = vec![bind(&sb.dir, SCRATCH_IN_CONTAINER, false)];
        let mut labels = HashMap::from([
            (WORKER_LABEL.to_string(), self.label.clone()),
            (OWNER_LABEL.to_string(), self.owner.clone()),
        ]);
        match code {
            Some(code) => {
                mounts.push(bind(&code.dir, CODE_IN_CONTAINER, true));
                labels.insert("ol-edge.function".into(), code.name.clone());
            }
            None => {
                if let Some(staged) = &sb.staged_code {
                    mounts.push(bind(staged, CODE_IN_CONTAINER, true));
                }
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
}

pub struct DockerSandbox {
    docker: Docker,
    pub(super) id: String,
    pub(super) name: String,
    /// The engine's container id (empty until created).
    container: String,
    dir: PathBuf,
    pub(super) socket: PathBuf,
    limits: Limits,
    start_timeout: Duration,
    /// The container's own uid (root worker only), back to the pool on drop.
    uid: Option<Uid>,
    /// The uid its processes run as (its own, or the worker's).
    pub(super) runs_as: u32,
    /// The tail of the runtime's stderr.
    log: Arc<Mutex<Vec<u8>>>,
    state: SandboxState,
    /// A pool container's function, handed over by `start`.
    pub(super) init: Option<PendingInit>,
    /// A pool container's code dir on the host (beside its scratch, on the
    /// code store's file system, bound read-only at `/code`): the handed
    /// over code is hard-linked there, never copied into the scratch tmpfs.
    staged_code: Option<PathBuf>,
    /// A pool container's connection to its waiting runtime.
    pub(super) pool_conn: Option<tokio::net::UnixStream>,
}

pub(super) struct PendingInit {
    pub(super) code_dir: PathBuf,
    pub(super) env: Vec<(String, String)>,
    /// Connected when taken from the pool (the runtime accepts it first).
    pub(super) conn: tokio::net::UnixStream,
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
                        } else if stdout.len() as u64 > runtime::MAX_STATUS_LINE {
                            // No status line: the function's code wrote first.
                            let _ = tx.take().unwrap().send(None);
                        }
                        if tx.is_none() {
                            stdout = Vec::new();
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
        let Some(staged) = &self.staged_code else {
            return Err(SandboxError::Setup(format!(
                "{} is not a pool container",
                self.name
            )));
        };
        let dest = staged.clone();
        let src = init.code_dir.clone();
        let linked = tokio::task::spawn_blocking(move || link_entries(&src, &dest))
            .await
            .map_err(|e| SandboxError::Setup(format!("code link: {e}")))?;
        linked.map_err(|e| {
            SandboxError::Setup(format!("cannot link the code of {}: {e}", self.name))
        })?;
        let env: HashMap<_, _> = init.env.into_iter().collect();
        // At /code, as in a container made for its function.
        let code = CODE_IN_CONTAINER.to_string();
        let mut conn = RuntimeConn::new(init.conn);
        let loaded = tokio::time::timeout(
            self.start_timeout,
            conn.init(&code, &self.name, &env, self.limits.runtime),
        )
        .await;
        match loaded {
            Ok(Ok(Loaded::Ready)) => Ok(()),
            Ok(Ok(Loaded::Failed { reason, log })) => {
                self.stop().await;
                Err(SandboxError::Load {
                    name: self.name.clone(),
                    reason,
                    log,
                })
            }
            Ok(Err(_)) => {
                let why = self.exit_reason().await;
                Err(SandboxError::died_at_start(&self.name, &why))
            }
            Err(_) => {
                self.stop().await;
                let within = format!("{} ms", self.start_timeout.as_millis());
                Err(SandboxError::not_ready(&self.name, "load", &within))
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

    async fn connect(&mut self) -> std::io::Result<tokio::net::UnixStream> {
        crate::runtime::connect_own(&self.socket, self.runs_as).await
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
        let ready = tokio::time::timeout(self.start_timeout, ready).await;
        match ready.map(|r| r.map(|l| l.map(|l| runtime::first_line(&l)))) {
            Ok(Ok(Some(FirstLine::Ready))) => {
                tracing::debug!(
                    id = %self.id,
                    attach_ms = attached.as_millis() as u64,
                    start_ms = (started - attached).as_millis() as u64,
                    ready_ms = (t0.elapsed() - started).as_millis() as u64,
                    "container ready"
                );
                Ok(())
            }
            Ok(Ok(Some(FirstLine::Error(reason)))) => {
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
                Err(SandboxError::died_at_start(&self.name, &why))
            }
            Err(_) => {
                self.stop().await;
                let within = format!("{} ms", self.start_timeout.as_millis());
                Err(SandboxError::not_ready(&self.name, "start", &within))
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
        fsutil::unmount(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
        if let Some(staged) = &self.staged_code {
            let _ = fs::remove_dir_all(staged);
        }
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
            return Exit::Unknown.to_string();
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
                return Exit::Unknown.to_string();
            };
            let plain_kill = st.exit_code == Some(137) && st.oom_killed != Some(true);
            asked += 1;
            if !plain_kill || asked == 10 {
                break st;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let exit = if st.oom_killed == Some(true) {
            Exit::OutOfMemory(self.limits.memory_mb)
        } else if st.running == Some(true) {
            Exit::Unknown
        } else {
            // The engine reports a signal as 128 + its number.
            match st.exit_code.unwrap_or(-1) {
                c if c > 128 => Exit::Signal((c - 128) as i32),
                c => Exit::Status(c as i32),
            }
        };
        exit.to_string()
    }
}

impl Drop for DockerSandbox {
    /// A sandbox dropped without `remove` (a cancelled call) must not leave
    /// its container behind.
    fn drop(&mut self) {
        if self.state == SandboxState::Removed {
            return;
        }
        fsutil::unmount(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
        if let Some(staged) = &self.staged_code {
            let _ = fs::remove_dir_all(staged);
        }
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
    link_entries(src, dst)
}

/// [`link_tree`] into the existing directory `dst`.
fn link_entries(src: &Path, dst: &Path) -> std::io::Result<()> {
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
