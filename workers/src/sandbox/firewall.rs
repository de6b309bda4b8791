//! The host firewall rules that keep egress sandboxes (both backends) off
//! the host and the blocked ranges (`[egress] blocked`), through iptables.
//! Rules are checked before they are inserted, so several workers on one
//! host (and restarts) share one copy of each; an ordered set of rules
//! lives in a chain named by its content ([`chain`]), so that a changed
//! set never interleaves with an old one.

/// Runs `iptables ARGS` (waiting for the xtables lock); the error is one line.
pub async fn iptables(args: &[&str]) -> Result<(), String> {
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

/// One rule: optional table, chain, then the match and target.
pub struct Rule {
    pub table: Option<&'static str>,
    pub chain: String,
    pub spec: Vec<String>,
}

impl Rule {
    pub fn new(chain: &str, spec: &[&str]) -> Rule {
        Rule {
            table: None,
            chain: chain.to_string(),
            spec: spec.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn nat(chain: &str, spec: &[&str]) -> Rule {
        Rule {
            table: Some("nat"),
            ..Rule::new(chain, spec)
        }
    }

    pub fn raw(chain: &str, spec: &[&str]) -> Rule {
        Rule {
            table: Some("raw"),
            ..Rule::new(chain, spec)
        }
    }

    fn args<'a>(&'a self, op: &'a str) -> Vec<&'a str> {
        let mut a = Vec::new();
        if let Some(t) = self.table {
            a.extend(["-t", t]);
        }
        a.extend([op, self.chain.as_str()]);
        a.extend(self.spec.iter().map(String::as_str));
        a
    }
}

/// Inserts each missing rule at the top of its chain, last first, so that
/// they end up in the order given, ahead of anything already there.
pub async fn ensure(rules: &[Rule]) -> Result<(), String> {
    for rule in rules.iter().rev() {
        if iptables(&rule.args("-C")).await.is_err() {
            iptables(&rule.args("-I")).await?;
        }
    }
    Ok(())
}

/// Appends each missing rule at the end of its chain (accepts that must
/// come after every chain of drops).
pub async fn ensure_appended(rules: &[Rule]) -> Result<(), String> {
    for rule in rules {
        if iptables(&rule.args("-C")).await.is_err() {
            iptables(&rule.args("-A")).await?;
        }
    }
    Ok(())
}

/// Drops IPv6 that comes in on `iface` for the host (best effort: a host
/// without ip6tables or IPv6 has nothing to drop; the links have IPv6 off
/// anyway).
pub async fn ip6_drop_input(iface: &str) {
    let run = |op: &'static str| {
        let iface = iface.to_string();
        async move {
            tokio::process::Command::new("ip6tables")
                .args(["-w", op, "INPUT", "-i", &iface, "-j", "DROP"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success())
        }
    };
    if !run("-C").await && !run("-I").await {
        tracing::warn!("ip6tables: cannot drop IPv6 from egress links (IPv6 is off on them)");
    }
}

/// Rules that drop what comes in on `iface` (a name or an iptables
/// wildcard like `olv+`) for the host itself (INPUT: any of its
/// addresses) and for `blocked` (forwarded), in `forward_chain`.
pub fn keep_off_host(iface: &str, forward_chain: &str, blocked: &[String]) -> Vec<Rule> {
    let mut rules = vec![Rule::new("INPUT", &["-i", iface, "-j", "DROP"])];
    for net in blocked {
        rules.push(Rule::new(
            forward_chain,
            &["-i", iface, "-d", net, "-j", "DROP"],
        ));
    }
    rules
}

/// Makes (once per content) a chain holding `rules` in order, each given
/// as its match and target, and returns its name (`OLE-<hash>`). Made in
/// full before anything jumps to it, and never changed after, so traffic
/// never sees it half-filled; a set that changes gets a new chain.
pub async fn chain(rules: &[Vec<String>]) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    let text: Vec<String> = rules.iter().map(|r| r.join(" ")).collect();
    let hash = Sha256::digest(text.join("\n").as_bytes());
    let name = format!("OLE-{}", &format!("{hash:x}")[..12]);
    if iptables(&["-n", "-L", &name]).await.is_ok() {
        return Ok(name);
    }
    // Another worker may be making the same chain: start from a private
    // name and rename it into place (a lost race leaves the winner's).
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().rotate_left(16);
    let tmp = format!("OLT-{}-{nonce:08x}", &format!("{hash:x}")[..8]);
    let _ = iptables(&["-F", &tmp]).await;
    let _ = iptables(&["-X", &tmp]).await;
    iptables(&["-N", &tmp]).await?;
    for r in rules {
        let mut args = vec!["-A", tmp.as_str()];
        args.extend(r.iter().map(String::as_str));
        iptables(&args).await?;
    }
    if iptables(&["-E", &tmp, &name]).await.is_err() {
        let _ = iptables(&["-F", &tmp]).await;
        let _ = iptables(&["-X", &tmp]).await;
        iptables(&["-n", "-L", &name]).await?;
    }
    Ok(name)
}
