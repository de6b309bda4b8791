//! `ol-worker`'s configuration file (TOML). Every field has a default, so an
//! empty file (or none) is a working config; command-line flags override it.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Invalid;

/// The largest frame of the worker's protocol with its runtime: no
/// `max_reply_bytes` may exceed it.
pub const MAX_REPLY_FRAME: usize = 256 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Address for HTTP/1.1 and h2c.
    pub listen: SocketAddr,
    /// Code store: a directory, or an http(s) URL serving `<name>.tar.gz`.
    pub registry: String,
    /// How long fetched code is trusted before the store is asked again.
    pub registry_cache_ms: u64,
    /// The code store's bearer token: sent to an http(s) `registry` (an
    /// ol-proxy's `code_store.token`), and, when set, required on every
    /// `/registry` request to this worker. Without it, `GET
    /// /registry/<name>/config` never shows `environment` values. The
    /// environment variable `OL_REGISTRY_TOKEN` overrides it.
    pub registry_token: String,
    /// `process` (a Python process per instance) or `docker`.
    pub sandbox: SandboxKind,
    /// Where the worker keeps unpacked code, scratch dirs and sockets.
    /// Default: `<temp dir>/ol-worker-<listen port>`, so that several
    /// workers on one host do not share one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<PathBuf>,
    /// Python interpreter for the process sandbox.
    pub python: PathBuf,
    /// Largest request body for `/run` (bytes).
    pub max_body_bytes: usize,
    /// Largest `.tar.gz` accepted by `POST /registry/<name>` (bytes), and the
    /// largest it may unpack to (10x).
    pub max_upload_bytes: usize,
    /// Largest reply body a function may send (bytes): the worker holds a
    /// reply whole, outside every sandbox's memory limit, so a larger one
    /// is refused with 502 as it arrives. At most [`MAX_REPLY_FRAME`].
    pub max_reply_bytes: usize,
    /// After SIGTERM the worker drains: `/status` answers 503 `draining`,
    /// each new call is refused (503, `x-ol-refused: draining`) for a
    /// proxy to send elsewhere, open calls finish. It keeps its port
    /// answering for at least this long (ms), so that proxies across a
    /// network learn it is draining before the port goes dark; set it to
    /// a proxy's `health.interval_ms` or more there. 0: it exits as soon
    /// as its open calls are done.
    pub drain_ms: u64,
    pub instances: InstancesConfig,
    pub limits: LimitsConfig,
    pub sandbox_user: SandboxUserConfig,
    /// The Docker backend (`sandbox = "docker"`); ignored by `process`.
    pub docker: DockerConfig,
    /// Packages of functions' `requirements.txt` (process backend).
    pub packages: PackagesConfig,
    /// Zygotes: Python processes that fork new instances (process backend).
    pub zygotes: ZygotesConfig,
    /// Where a handler's traceback goes: `client` (in the error body, with
    /// paths relative to the function's directory) or `log` (the worker's
    /// log only; the client gets the one-line error).
    pub tracebacks: Tracebacks,
    /// Which functions may have `network: egress` (the operator's choice,
    /// never the function's own).
    pub egress: EgressConfig,
}

/// `[egress]`: the functions whose `ol.yaml` may ask for `network: egress`,
/// and what egress never reaches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// Names or globs (`*`, `?`); empty: no function gets egress.
    pub functions: Vec<String>,
    /// IPv4 ranges (CIDR) an egress sandbox may never reach, in both
    /// backends; the host's own addresses are refused whatever this says.
    pub blocked: Vec<String>,
    /// Process backend: the IPv4 range its egress instances' links take
    /// addresses from (a /31 each, placed by the instance's uid).
    pub process_subnet: String,
}

/// Loopback, private, shared (CGNAT), link-local (cloud metadata),
/// multicast and reserved ranges.
pub const DEFAULT_BLOCKED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            functions: Vec::new(),
            blocked: DEFAULT_BLOCKED.iter().map(|s| s.to_string()).collect(),
            process_subnet: "10.213.0.0/16".into(),
        }
    }
}

/// Parses an IPv4 CIDR (`a.b.c.d/n`): the network address and prefix.
pub fn parse_cidr(s: &str) -> Option<(std::net::Ipv4Addr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - len.min(32))
    };
    (len <= 32 && u32::from(addr) & !mask == 0).then_some((addr, len))
}

impl EgressConfig {
    /// Whether function `name` may have egress.
    pub fn allows(&self, name: &str) -> bool {
        self.functions
            .iter()
            .any(|p| crate::policy::glob_match(p.as_bytes(), name.as_bytes()))
    }

    /// `Err` (one line) when `name`'s `ol.yaml` asks for a network the
    /// operator does not give it.
    pub fn check(&self, name: &str, f: &crate::FunctionConfig) -> Result<(), String> {
        if f.network == crate::function::Network::Egress && !self.allows(name) {
            return Err(format!(
                "ol.yaml: network: egress is not allowed for {name}: the worker's egress.functions does not name it"
            ));
        }
        Ok(())
    }
}

/// `tracebacks`: who sees a handler's traceback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tracebacks {
    /// The caller, in the error body (no host paths).
    #[default]
    Client,
    /// The worker's log only.
    Log,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxKind {
    Process,
    Docker,
}

impl std::str::FromStr for SandboxKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "process" => Ok(SandboxKind::Process),
            "docker" => Ok(SandboxKind::Docker),
            _ => Err(format!("unknown sandbox {s:?}: expected process or docker")),
        }
    }
}

/// How each function's pool of instances grows, waits, pauses and shrinks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstancesConfig {
    /// Most instances (sandboxes) of one function at once.
    pub max_per_function: usize,
    /// Requests that may wait for an instance; one more gets 429.
    pub queue_per_function: usize,
    /// An idle instance is paused after this long.
    pub pause_after_ms: u64,
    /// A paused instance is removed after this long idle.
    pub evict_after_ms: u64,
    /// Sum of instance memory limits kept alive; beyond it the least
    /// recently used idle instances are removed.
    pub memory_budget_mb: u64,
    /// Each instance's scratch dir (its `HOME` and `TMPDIR`) is a tmpfs of
    /// this size (root worker): a write past it fails with ENOSPC inside
    /// the sandbox, its pages count against the instance's memory limit,
    /// and nothing reaches the host's disk.
    pub scratch_mb: u64,
    /// Process backend, root worker: each instance in its own mount
    /// namespace (read-only root, its own code, `/tmp` and `/dev/shm`).
    /// `false` lets functions see the host's files: for measuring its cost
    /// only (the worker says so loudly at start).
    pub mount_namespace: bool,
}

/// Default per-instance limits; a function's `ol.yaml` may lower or raise
/// each, up to its ceiling in `[limits.max]`, never past it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub memory_mb: u64,
    pub procs: u64,
    pub runtime_ms: u64,
    /// Percent of one CPU (100 = one core).
    pub cpu_percent: u64,
    /// Open files per instance (RLIMIT_NOFILE).
    pub open_files: u64,
    /// The most a function may ask for: set by the operator only.
    pub max: LimitCeilings,
}

/// `[limits.max]`: ceilings on what a function's `ol.yaml` may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitCeilings {
    pub memory_mb: u64,
    pub procs: u64,
    pub runtime_ms: u64,
    pub cpu_percent: u64,
    pub open_files: u64,
}

/// One instance's limits once a function's asks are applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceLimits {
    pub memory_mb: u64,
    pub procs: u64,
    pub runtime_ms: u64,
    pub cpu_percent: u64,
    pub open_files: u64,
}

impl LimitsConfig {
    /// The worker's defaults with what a function asks for, each checked
    /// against its ceiling: the error names the field, e.g. `limits.memory_mb:
    /// 1000000 is above this worker's ceiling of 1024 (limits.max.memory_mb)`.
    pub fn for_function(
        &self,
        f: &crate::function::FunctionLimits,
    ) -> Result<InstanceLimits, String> {
        let m = &self.max;
        let pick = |field: &str, asked: Option<u64>, default: u64, max: u64| match asked {
            Some(v) if v > max => Err(format!(
                "limits.{field}: {v} is above this worker's ceiling of {max} (limits.max.{field})"
            )),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        Ok(InstanceLimits {
            memory_mb: pick("memory_mb", f.memory_mb, self.memory_mb, m.memory_mb)?,
            procs: pick("procs", f.procs, self.procs, m.procs)?,
            runtime_ms: pick("runtime_ms", f.runtime_ms, self.runtime_ms, m.runtime_ms)?,
            cpu_percent: pick(
                "cpu_percent",
                f.cpu_percent,
                self.cpu_percent,
                m.cpu_percent,
            )?,
            open_files: pick("open_files", f.open_files, self.open_files, m.open_files)?,
        })
    }
}

/// The unprivileged uids handlers run as (one per live instance), when the
/// worker runs as root. No passwd entries are needed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxUserConfig {
    pub uid_base: u32,
    pub uid_count: u32,
}

/// The Docker sandbox: one container per instance (see workers/DOCKER.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// Image to run. Empty: `ol-edge/runtime:<hash>` of the runtime this
    /// worker embeds, as built by `workers/image/build.sh`.
    pub image: String,
    /// Docker network for functions whose `ol.yaml` asks for
    /// `network: egress` (created when first needed).
    pub egress_network: String,
    /// Linux name of that network's bridge, used by its firewall rules
    /// (at most 15 characters).
    pub egress_bridge: String,
    /// How long a container may take to start and load its function.
    pub start_timeout_ms: u64,
    /// Containers kept started without a function, handed to the next
    /// cold start of a function with default limits and no network
    /// (0: every cold start creates a container).
    pub pool_size: usize,
}

/// The worker's package store (`<work_dir>/packages/<name>-<version>`):
/// each pinned package of a function's `requirements.txt` is installed
/// there once, by `python -m pip` outside any sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PackagesConfig {
    /// Longest one `pip install` may take before it is killed.
    pub install_timeout_ms: u64,
    /// A failed install is reported again, without running pip, for this
    /// long; the next call after it tries again.
    pub retry_after_ms: u64,
}

impl Default for PackagesConfig {
    fn default() -> Self {
        PackagesConfig {
            install_timeout_ms: 300_000,
            retry_after_ms: 10_000,
        }
    }
}

/// Zygotes (process backend): Python processes that have imported the
/// runtime and a package set, and fork new instances instead of starting
/// an interpreter (workers/src/sandbox/zygote.rs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZygotesConfig {
    /// Fork cold starts from zygotes (on by default; the process backend
    /// only). A forked start reports `start=zygote`; one that could not
    /// fork (no zygote yet, `network: egress`) reports `start=cold`.
    pub enabled: bool,
    /// Package sets that get a zygote at start, each a list of
    /// `name==version` pins, e.g. `[["six==1.16.0"]]`.
    pub preload: Vec<Vec<String>>,
    /// A package set used by this many cold starts gets a zygote (0: only
    /// preloaded sets do).
    pub popular_after: u32,
    /// Most zygotes alive at once, the root zygote included.
    pub max: usize,
    /// Memory limit of each zygote (its instances have their own).
    pub memory_mb: u64,
}

impl Default for ZygotesConfig {
    fn default() -> Self {
        ZygotesConfig {
            enabled: true,
            preload: Vec::new(),
            popular_after: 2,
            max: 8,
            memory_mb: 256,
        }
    }
}

/// Splits one pinned requirement, `name==version`, into its normalized
/// name (PEP 503: lower case, runs of `-_.` as one `-`) and its version.
/// Anything else (ranges, URLs, extras, options) is refused: a pin names
/// exactly one version, so the store can be keyed and shared by it.
pub fn parse_pin(line: &str) -> Result<(String, String), String> {
    let s = line.trim();
    let Some((name, version)) = s.split_once("==") else {
        return Err(format!("{s:?} is not pinned: write name==version"));
    };
    let (name, version) = (name.trim(), version.trim());
    let name_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    let version_ok = version
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+!-".contains(&b));
    if !name_ok || !version_ok || version.contains("..") {
        return Err(format!(
            "{s:?} is not a plain pin: write name==version (no ranges, extras, markers or URLs)"
        ));
    }
    let mut norm = String::with_capacity(name.len());
    for c in name.chars() {
        if "-_.".contains(c) {
            if !norm.ends_with('-') {
                norm.push('-');
            }
        } else {
            norm.push(c.to_ascii_lowercase());
        }
    }
    Ok((norm, version.to_string()))
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            image: String::new(),
            egress_network: "ol-edge-egress".into(),
            egress_bridge: "oledge0".into(),
            start_timeout_ms: 10_000,
            pool_size: 2,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            listen: "127.0.0.1:5000".parse().unwrap(),
            registry: "examples/functions".into(),
            registry_cache_ms: 5000,
            registry_token: String::new(),
            sandbox: SandboxKind::Process,
            work_dir: None,
            python: "/usr/bin/python3".into(),
            max_body_bytes: 6 * 1024 * 1024,
            // AWS Lambda's limit for a synchronous response.
            max_reply_bytes: 6 * 1024 * 1024,
            drain_ms: 0,
            max_upload_bytes: 50 * 1024 * 1024,
            instances: InstancesConfig::default(),
            limits: LimitsConfig::default(),
            sandbox_user: SandboxUserConfig::default(),
            docker: DockerConfig::default(),
            packages: PackagesConfig::default(),
            zygotes: ZygotesConfig::default(),
            tracebacks: Tracebacks::Client,
            egress: EgressConfig::default(),
        }
    }
}

impl Default for InstancesConfig {
    fn default() -> Self {
        InstancesConfig {
            max_per_function: 16,
            queue_per_function: 256,
            pause_after_ms: 500,
            evict_after_ms: 120_000,
            memory_budget_mb: 4096,
            scratch_mb: 64,
            mount_namespace: true,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            memory_mb: 256,
            procs: 64,
            runtime_ms: 30_000,
            cpu_percent: 100,
            open_files: 1024,
            max: LimitCeilings::default(),
        }
    }
}

impl Default for LimitCeilings {
    fn default() -> Self {
        LimitCeilings {
            memory_mb: 1024,
            procs: 256,
            runtime_ms: 300_000,
            cpu_percent: 200,
            open_files: 4096,
        }
    }
}

impl Default for SandboxUserConfig {
    fn default() -> Self {
        SandboxUserConfig {
            uid_base: 200_000,
            uid_count: 4096,
        }
    }
}

impl WorkerConfig {
    /// The work dir in force: the configured one or the per-port default.
    pub fn work_dir(&self) -> PathBuf {
        self.work_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("ol-worker-{}", self.listen.port()))
        })
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        if self.registry.is_empty() {
            return Err(Invalid::new(
                "registry",
                "must name a directory or an http(s) URL",
            ));
        }
        let positive = [
            ("max_body_bytes", self.max_body_bytes as u64),
            ("max_upload_bytes", self.max_upload_bytes as u64),
            ("max_reply_bytes", self.max_reply_bytes as u64),
            (
                "instances.max_per_function",
                self.instances.max_per_function as u64,
            ),
            (
                "instances.memory_budget_mb",
                self.instances.memory_budget_mb,
            ),
            ("instances.scratch_mb", self.instances.scratch_mb),
            ("limits.memory_mb", self.limits.memory_mb),
            ("limits.procs", self.limits.procs),
            ("limits.runtime_ms", self.limits.runtime_ms),
            ("limits.cpu_percent", self.limits.cpu_percent),
            ("limits.open_files", self.limits.open_files),
            ("sandbox_user.uid_base", self.sandbox_user.uid_base as u64),
            ("sandbox_user.uid_count", self.sandbox_user.uid_count as u64),
            ("docker.start_timeout_ms", self.docker.start_timeout_ms),
            (
                "packages.install_timeout_ms",
                self.packages.install_timeout_ms,
            ),
            ("zygotes.max", self.zygotes.max as u64),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(Invalid::new(field, "must be greater than 0"));
            }
        }
        let (l, m) = (&self.limits, &self.limits.max);
        for (field, default, max) in [
            ("memory_mb", l.memory_mb, m.memory_mb),
            ("procs", l.procs, m.procs),
            ("runtime_ms", l.runtime_ms, m.runtime_ms),
            ("cpu_percent", l.cpu_percent, m.cpu_percent),
            ("open_files", l.open_files, m.open_files),
        ] {
            if default > max {
                return Err(Invalid::new(
                    format!("limits.{field}"),
                    format!("{default} is above its ceiling limits.max.{field} = {max}"),
                ));
            }
        }
        if self.max_reply_bytes > MAX_REPLY_FRAME {
            return Err(Invalid::new(
                "max_reply_bytes",
                format!("must be at most {MAX_REPLY_FRAME} (256 MiB, the runtime protocol's frame limit)"),
            ));
        }
        if self.limits.memory_mb < 16 {
            return Err(Invalid::new(
                "limits.memory_mb",
                "below 16 MiB Python cannot start",
            ));
        }
        if self.zygotes.memory_mb < 16 {
            return Err(Invalid::new(
                "zygotes.memory_mb",
                "below 16 MiB Python cannot start",
            ));
        }
        for set in &self.zygotes.preload {
            for pin in set {
                parse_pin(pin).map_err(|e| Invalid::new("zygotes.preload", e))?;
            }
        }
        if self.instances.evict_after_ms < self.instances.pause_after_ms {
            return Err(Invalid::new(
                "instances.evict_after_ms",
                "must not be shorter than instances.pause_after_ms",
            ));
        }
        let bridge = &self.docker.egress_bridge;
        if bridge.is_empty()
            || bridge.len() > 15
            || !bridge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Invalid::new(
                "docker.egress_bridge",
                "must be 1 to 15 letters, digits, '-' or '_' (a Linux interface name)",
            ));
        }
        if self.docker.egress_network.is_empty() {
            return Err(Invalid::new("docker.egress_network", "must not be empty"));
        }
        for b in &self.egress.blocked {
            if parse_cidr(b).is_none() {
                return Err(Invalid::new(
                    "egress.blocked",
                    format!("{b:?} is not an IPv4 network like 10.0.0.0/8"),
                ));
            }
        }
        if !parse_cidr(&self.egress.process_subnet).is_some_and(|(_, n)| (8..=24).contains(&n)) {
            return Err(Invalid::new(
                "egress.process_subnet",
                "must be an IPv4 network of /8 to /24, like 10.213.0.0/16",
            ));
        }
        if (self.sandbox_user.uid_base as u64) + (self.sandbox_user.uid_count as u64)
            > u32::MAX as u64
        {
            return Err(Invalid::new(
                "sandbox_user.uid_count",
                "uid range overflows",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_ranges_must_be_networks() {
        let parse = |text: &str| {
            crate::parse_toml::<WorkerConfig>(std::path::Path::new("w.toml"), text)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let e = parse("[egress]\nblocked = [\"10.0.0.1/8\"]\n").unwrap_err();
        assert!(
            e.contains("egress.blocked") && e.contains("10.0.0.1/8"),
            "{e}"
        );
        let e = parse("[egress]\nprocess_subnet = \"10.9.9.0/30\"\n").unwrap_err();
        assert!(e.contains("egress.process_subnet"), "{e}");
        parse("[egress]\nblocked = [\"10.0.0.0/8\"]\nprocess_subnet = \"198.18.0.0/15\"\n")
            .unwrap();
        assert_eq!(
            parse_cidr("0.0.0.0/0"),
            Some((std::net::Ipv4Addr::UNSPECIFIED, 0))
        );
        assert_eq!(parse_cidr("1.2.3.4/33"), None);
    }

    #[test]
    fn zygote_preload_takes_pins_only() {
        let text = "[zygotes]\nenabled = true\npreload = [[\"six==1.16.0\"], [\"requests\"]]\n";
        let e = crate::parse_toml::<WorkerConfig>(std::path::Path::new("w.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("w.toml:3: zygotes.preload: \"requests\" is not pinned"),
            "{e}"
        );
        assert_eq!(
            parse_pin("Zope.Interface == 6.0"),
            Ok(("zope-interface".into(), "6.0".into()))
        );
    }
}
