//! Egress for the process backend, for the functions the operator lists
//! in `[egress] functions` (root worker): each such instance gets a network
//! namespace of its own with one veth link to the host, a /31 from
//! `egress.process_subnet` placed by the instance's uid (unique on the
//! host: workers claim disjoint uid ranges), a default route through it
//! and NAT out of the host. The host firewall (`sandbox::firewall`, the
//! same rules as the Docker backend's bridge) drops whatever comes in on
//! these links for the host itself (any of its addresses: the worker, the
//! proxy, its admin port) or for `egress.blocked` (private, loopback,
//! link-local and metadata ranges by default), before any instance uses
//! one. What an egress function reaches: public addresses, through the
//! host's own routes; DNS only if the host's resolver is outside the
//! blocked ranges. No IPv6 (the namespace has no IPv6 address).
//!
//! The namespace is made by a short-lived helper process and held by a
//! file descriptor until the instance has entered it (`setns` between
//! fork and exec); it, and the link with it, go when the instance's last
//! process does.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::process::Stdio;

use config::worker::EgressConfig;
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;

use crate::sandbox::firewall::{self, Rule};

/// Host-side link names: this prefix and the instance's uid.
const LINK_PREFIX: &str = "olv";

pub struct ProcessEgress {
    subnet: String,
    base: u32,
    /// /31 pairs in the subnet.
    pairs: u32,
    blocked: Vec<String>,
    rules: OnceCell<Result<(), String>>,
}

impl ProcessEgress {
    pub fn new(cfg: &EgressConfig) -> ProcessEgress {
        // Validated with the config.
        let (net, len) = config::worker::parse_cidr(&cfg.process_subnet)
            .unwrap_or((Ipv4Addr::new(10, 213, 0, 0), 16));
        ProcessEgress {
            subnet: cfg.process_subnet.clone(),
            base: u32::from(net),
            pairs: 1 << (31 - len as u32),
            blocked: cfg.blocked.clone(),
            rules: OnceCell::new(),
        }
    }

    /// The (host, instance) addresses of the link of `uid`.
    fn addresses(&self, uid: u32) -> (Ipv4Addr, Ipv4Addr) {
        let host = self.base + 2 * (uid % self.pairs);
        (Ipv4Addr::from(host), Ipv4Addr::from(host + 1))
    }

    /// The firewall and NAT rules, and forwarding, once per worker.
    async fn ensure_rules(&self) -> Result<(), String> {
        let r = self
            .rules
            .get_or_init(|| async {
                let links = format!("{LINK_PREFIX}+");
                let l = links.as_str();
                let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
                // Forwarded traffic of the links, in order: no instance
                // reaches another, nor a blocked range; out is allowed, in
                // only the replies (a FORWARD policy of DROP, as Docker
                // sets it, would stop all of it otherwise).
                let mut forward = vec![own(&["-i", l, "-o", l, "-j", "DROP"])];
                for net in &self.blocked {
                    forward.push(own(&["-i", l, "-d", net, "-j", "DROP"]));
                }
                forward.push(own(&["-i", l, "-j", "ACCEPT"]));
                forward.push(own(&[
                    "-o",
                    l,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "RELATED,ESTABLISHED",
                    "-j",
                    "ACCEPT",
                ]));
                forward.push(own(&["-o", l, "-j", "DROP"]));
                let chain = firewall::chain(&forward).await?;
                firewall::ensure(&[
                    // The host itself, on any of its addresses.
                    Rule::new("INPUT", &["-i", l, "-j", "DROP"]),
                    Rule::new("FORWARD", &["-i", l, "-j", &chain]),
                    Rule::new("FORWARD", &["-o", l, "-j", &chain]),
                    Rule::nat(
                        "POSTROUTING",
                        &["-s", &self.subnet, "!", "-o", l, "-j", "MASQUERADE"],
                    ),
                ])
                .await?;
                let forward = "/proc/sys/net/ipv4/ip_forward";
                if std::fs::read_to_string(forward).unwrap_or_default().trim() != "1" {
                    std::fs::write(forward, "1")
                        .map_err(|e| format!("cannot turn on IPv4 forwarding: {e}"))?;
                    tracing::warn!("turned on IPv4 forwarding for egress instances");
                }
                Ok(())
            })
            .await;
        r.clone()
    }

    /// A network namespace for the instance running as `uid`, its link
    /// up and routed, held by the returned descriptor.
    pub async fn namespace(&self, uid: u32) -> Result<OwnedFd, String> {
        self.ensure_rules().await?;
        // A holder process, only so that the namespace has a pid to name.
        let mut holder = {
            use std::os::unix::process::CommandExt;
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("30")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: one system call between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::unshare(libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            cmd.spawn().map_err(|e| format!("egress namespace: {e}"))?
        };
        let pid = holder.id();
        let res = self.configure(uid, pid).await;
        let _ = holder.kill();
        let _ = holder.wait();
        res
    }

    async fn configure(&self, uid: u32, pid: u32) -> Result<OwnedFd, String> {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
            .map_err(|e| format!("egress namespace: {e}"))?;
        let link = format!("{LINK_PREFIX}{uid}");
        let (host, inst) = self.addresses(uid);
        // A link left by an instance of this uid whose namespace lives on.
        let _ = ip(&[], &format!("link del {link}\n")).await;
        ip(
            &[],
            &format!(
                "link add {link} type veth peer name eth0 netns {pid}\naddr add {host}/31 dev {link}\nlink set {link} up\n"
            ),
        )
        .await?;
        ip(
            &["nsenter", &format!("--net=/proc/{pid}/ns/net")],
            &format!(
                "link set lo up\naddr add {inst}/31 dev eth0\nlink set eth0 up\nroute add default via {host}\n"
            ),
        )
        .await?;
        Ok(ns.into())
    }
}

/// Runs `ip -batch -` with `script` on stdin, behind `prefix` (nsenter).
async fn ip(prefix: &[&str], script: &str) -> Result<(), String> {
    let mut argv: Vec<&str> = prefix.to_vec();
    argv.extend(["ip", "-batch", "-"]);
    let mut child = tokio::process::Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| format!("ip: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip: {}",
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "; ")
        ))
    }
}
