//! The engine: connecting to it, its errors as one line, the image tag,
//! and removing this worker's containers.

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use bollard::Docker;
use sha2::{Digest, Sha256};

/// The image build script; its text is part of the image tag.
pub const BUILD_SH: &str = include_str!("../../../image/build.sh");

/// Label naming the worker (its work dir) that owns a container.
pub const WORKER_LABEL: &str = "ol-edge.worker";
/// Label naming the worker process that owns a container ([`owner_id`]).
pub const OWNER_LABEL: &str = "ol-edge.owner";

/// The tag `workers/image/build.sh` gives the image for this worker's
/// runtime: `ol-edge/runtime:<12 hex of sha256(ol_runtime.py, build.sh)>`.
pub fn default_image() -> String {
    let mut h = Sha256::new();
    h.update(crate::runtime::RUNTIME_PY.as_bytes());
    h.update(BUILD_SH.as_bytes());
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("ol-edge/runtime:{}", &hex[..12])
}

/// One line out of a bollard error (the engine's message when it sent one).
pub fn one_line(e: &bollard::errors::Error) -> String {
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
    config::one_line(&s)
}

pub fn is_not_found(e: &bollard::errors::Error) -> bool {
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

/// Force-removes a container (killing it if it runs); a missing one is fine.
pub async fn remove_container(docker: &Docker, id: &str) {
    let opts = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    // Once more after a moment: a container its killed worker was still
    // creating or starting can refuse the first removal.
    for last in [false, true] {
        match docker.remove_container(id, Some(opts.clone())).await {
            Ok(()) => return,
            Err(e) if is_not_found(&e) => return,
            Err(e) if last => {
                tracing::warn!(container = id, error = %one_line(&e), "cannot remove container");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Removes every container carrying `label` (`key=value`, or a key
/// alone); returns how many.
pub async fn remove_labelled(docker: &Docker, label: &str) -> anyhow::Result<usize> {
    remove_where(docker, label, |_| true).await
}

/// Removes the containers whose owner (`OWNER_LABEL`) no longer runs, of
/// any worker on the host: what a worker and its guard both killed left.
pub async fn remove_orphans(docker: &Docker) -> anyhow::Result<usize> {
    remove_where(docker, OWNER_LABEL, |c| {
        let owner = c
            .labels
            .as_ref()
            .and_then(|l| l.get(OWNER_LABEL))
            .map(String::as_str)
            .unwrap_or_default();
        let pid = owner.split(':').next().and_then(|p| p.parse::<u32>().ok());
        // Alive only if the same process (pid and start time) still runs.
        pid.and_then(owner_id).as_deref() != Some(owner)
    })
    .await
}

async fn remove_where(
    docker: &Docker,
    label: &str,
    pick: impl Fn(&bollard::models::ContainerSummary) -> bool,
) -> anyhow::Result<usize> {
    let filters = HashMap::from([("label".to_string(), vec![label.to_string()])]);
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|e| anyhow::anyhow!("cannot list containers: {}", one_line(&e)))?;
    let picked: Vec<String> = list
        .iter()
        .filter(|c| pick(c))
        .filter_map(|c| c.id.clone())
        .collect();
    let n = picked.len();
    let removals = picked.into_iter().map(|id| {
        let docker = docker.clone();
        async move { remove_container(&docker, &id).await }
    });
    futures_util::future::join_all(removals).await;
    Ok(n)
}

/// `<pid>:<start time>` of a running process (`/proc/<pid>/stat`): names
/// it uniquely on the host, unlike a pid, which is reused.
pub fn owner_id(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's closing parenthesis, start time is field 22.
    let start = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?;
    Some(format!("{pid}:{start}"))
}
