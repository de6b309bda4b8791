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
//! blocked ranges. No IPv6: it is off in the namespace and on the host's
//! side of the link before the link is up (a link-local address would
//! reach the host's IPv6 services), and ip6tables drops any that comes in.
//! The rules are checked again before each namespace; the host must
//! already forward IPv4 (the worker never turns it on by itself).
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
    /// The first sandbox uid of the host's claims: a uid's pair is its
    /// offset from here (unique on the host, as the uid is).
    uid_base: u32,
    blocked: Vec<String>,
    /// The chain of `blocked` drops, made once.
    chain: OnceCell<Result<String, String>>,
}

impl ProcessEgress {
    pub fn new(cfg: &EgressConfig, uid_base: u32) -> ProcessEgress {
        // Validated with the config.
        let (net, len) = config::worker::parse_cidr(&cfg.process_subnet)
            .unwrap_or((Ipv4Addr::new(10, 213, 0, 0), 16));
        ProcessEgress {
            subnet: cfg.process_subnet.clone(),
            base: u32::from(net),
            pairs: 1 << (31 - len as u32),
            uid_base,
            blocked: cfg.blocked.clone(),
            chain: OnceCell::new(),
        }
    }

    /// The (host, instance) addresses of the link of `uid`; none when the
    /// subnet has no pair of its own for it (never a shared one).
    fn addresses(&self, uid: u32) -> Result<(Ipv4Addr, Ipv4Addr), String> {
        let offset = uid.wrapping_sub(self.uid_base);
        if offset >= self.pairs {
            return Err(format!(
                "egress.process_subnet {} has {} links, too few for sandbox uid {uid}: give it a larger range",
                self.subnet, self.pairs
            ));
        }
        let host = self.base + 2 * offset;
        Ok((Ipv4Addr::from(host), Ipv4Addr::from(host + 1)))
    }

    /// The firewall, checked again before every namespace (a firewall
    /// reload or a restarted Docker may have removed or passed it).
    /// Drops live in a chain per `blocked` set that ends in RETURN, so
    /// the chains of workers with different sets all apply; the accepts
    /// come after all of them, at the end of FORWARD.
    async fn ensure_rules(&self) -> Result<(), String> {
        let links = format!("{LINK_PREFIX}+");
        let l = links.as_str();
        let chain = self
            .chain
            .get_or_init(|| async {
                let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
                // No instance reaches another, nor a blocked range; nothing
                // new comes in.
                let mut drops = vec![own(&["-i", l, "-o", l, "-j", "DROP"])];
                for net in &self.blocked {
                    drops.push(own(&["-i", l, "-d", net, "-j", "DROP"]));
                }
                drops.push(own(&[
                    "-o",
                    l,
                    "-m",
                    "conntrack",
                    "!",
                    "--ctstate",
                    "RELATED,ESTABLISHED",
                    "-j",
                    "DROP",
                ]));
                drops.push(own(&["-j", "RETURN"]));
                firewall::chain(&drops).await
            })
            .await
            .clone()?;
        if std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap_or_default()
            .trim()
            != "1"
        {
            return Err(
                "IPv4 forwarding is off on this host: egress instances need it (sysctl net.ipv4.ip_forward=1; Docker turns it on)"
                    .into(),
            );
        }
        firewall::ensure(&[
            // The host itself, any of its addresses, before any DNAT (a
            // port Docker publishes would otherwise be forwarded).
            Rule::raw(
                "PREROUTING",
                &[
                    "-i",
                    l,
                    "-m",
                    "addrtype",
                    "--dst-type",
                    "LOCAL",
                    "-j",
                    "DROP",
                ],
            ),
            Rule::new("INPUT", &["-i", l, "-j", "DROP"]),
            Rule::new("FORWARD", &["-i", l, "-j", &chain]),
            Rule::new("FORWARD", &["-o", l, "-j", &chain]),
            Rule::nat(
                "POSTROUTING",
                &["-s", &self.subnet, "!", "-o", l, "-j", "MASQUERADE"],
            ),
        ])
        .await?;
        // What passes, after every chain (a FORWARD policy of DROP, as
        // Docker sets it, would stop it otherwise).
        firewall::ensure_appended(&[
            Rule::new("FORWARD", &["-i", l, "-j", "ACCEPT"]),
            Rule::new("FORWARD", &["-o", l, "-j", "ACCEPT"]),
        ])
        .await?;
        // No IPv6 at all: the links have none (see `namespace`), and the
        // host refuses any that comes in on them.
        firewall::ip6_drop_input(l).await;
        Ok(())
    }

    /// A network namespace for the instance running as `uid`, its link
    /// up and routed, held by the returned descriptor.
    pub async fn namespace(&self, uid: u32) -> Result<OwnedFd, String> {
        self.addresses(uid)?;
        self.ensure_rules().await?;
        // A holder process, only so that the namespace has a pid to name;
        // IPv6 is off in the namespace before any link exists (a link-local
        // address would reach the host's IPv6 services).
        let mut holder = {
            use std::os::unix::process::CommandExt;
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("30")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: system calls on static strings between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::unshare(libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    for f in [
                        c"/proc/sys/net/ipv6/conf/all/disable_ipv6",
                        c"/proc/sys/net/ipv6/conf/default/disable_ipv6",
                    ] {
                        let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                        if fd >= 0 {
                            libc::write(fd, b"1".as_ptr().cast(), 1);
                            libc::close(fd);
                        }
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
        let (host, inst) = self.addresses(uid)?;
        // A link left by an instance of this uid whose namespace lives on.
        let _ = ip(&[], &format!("link del {link}\n")).await;
        ip(
            &[],
            &format!("link add {link} type veth peer name eth0 netns {pid}\n"),
        )
        .await?;
        // No IPv6 on the host's side either, before the link is up.
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6"), "1")
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()), // no IPv6 on this host
                _ => Err(e),
            })
            .map_err(|e| format!("egress link {link}: IPv6 off: {e}"))?;
        ip(
            &[],
            &format!("addr add {host}/31 dev {link}\nlink set {link} up\n"),
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
            config::one_line(&String::from_utf8_lossy(&out.stderr))
        ))
    }
}
