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
use crate::sandbox::firewall::{self, iptables};
use crate::sandbox::SandboxError;

pub struct Egress {
    network: String,
    bridge: String,
    /// Ranges it may never reach (`[egress] blocked`).
    blocked: Vec<String>,
    /// Set up once, when the first egress function starts.
    ready: OnceCell<Result<(), String>>,
}

impl Egress {
    pub fn new(network: &str, bridge: &str, blocked: &[String]) -> Egress {
        Egress {
            network: network.to_string(),
            bridge: bridge.to_string(),
            blocked: blocked.to_vec(),
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
        let forward_chain = if iptables(&["-n", "-L", "DOCKER-USER"]).await.is_ok() {
            "DOCKER-USER"
        } else {
            "FORWARD"
        };
        firewall::ensure(&firewall::keep_off_host(
            bridge,
            forward_chain,
            &self.blocked,
        ))
        .await?;
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
