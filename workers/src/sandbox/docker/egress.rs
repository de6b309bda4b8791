//! The egress network: a bridge for functions with `network: egress`,
//! with inter-container traffic off and firewall rules (set before any
//! container may use it) that keep it away from the host and private
//! ranges.

use std::collections::HashMap;

use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::InspectNetworkOptions;
use bollard::Docker;
use tokio::sync::OnceCell;

use super::engine::{is_not_found, one_line};
use crate::sandbox::SandboxError;

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

pub struct Egress {
    network: String,
    bridge: String,
    /// Set up once, when the first egress function starts.
    ready: OnceCell<Result<(), String>>,
}

impl Egress {
    pub fn new(network: &str, bridge: &str) -> Egress {
        Egress {
            network: network.to_string(),
            bridge: bridge.to_string(),
            ready: OnceCell::new(),
        }
    }

    /// The Docker network egress containers join.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// Creates the egress network and its firewall rules (once per worker;
    /// idempotent across workers).
    pub async fn ensure(&self, docker: &Docker) -> Result<(), SandboxError> {
        let r = self
            .ready
            .get_or_init(|| async {
                self.setup(docker)
                    .await
                    .map_err(|e| format!("egress network {}: {e}", self.network))
            })
            .await;
        r.clone().map_err(SandboxError::Setup)
    }

    async fn setup(&self, docker: &Docker) -> Result<(), String> {
        // Firewall first: no container may use the bridge before its rules.
        let bridge = &self.bridge;
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
        match docker
            .inspect_network(&self.network, None::<InspectNetworkOptions>)
            .await
        {
            Ok(n) => {
                let opts = n.options.unwrap_or_default();
                let name = opts.get("com.docker.network.bridge.name");
                let icc = opts.get("com.docker.network.bridge.enable_icc");
                if name != Some(bridge) || icc.map(String::as_str) != Some("false") {
                    return Err(format!(
                        "exists but is not the bridge {bridge} with inter-container traffic disabled; remove it (docker network rm {})",
                        self.network
                    ));
                }
                Ok(())
            }
            Err(e) if is_not_found(&e) => {
                let req = NetworkCreateRequest {
                    name: self.network.clone(),
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
                match docker.create_network(req).await {
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
