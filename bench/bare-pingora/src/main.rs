//! The baseline for `bench/proxy.sh`: a bare pingora proxy with a
//! round-robin `LoadBalancer` and nothing else, so that the benchmark can
//! show what ol-proxy's own work (name inspection, policies, metrics,
//! headers) costs on top of pingora. Same allocator (mimalloc), same server
//! settings (threads, h2c, keep-alive pool) as ol-proxy.

use std::sync::Arc;

use async_trait::async_trait;
use clap::Parser;
use pingora::apps::HttpServerOptions;
use pingora::lb::{selection::RoundRobin, LoadBalancer};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, ProxyServiceBuilder, Session};
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Cli {
    #[arg(long)]
    listen: String,
    /// Upstream `ip:port`, repeatable.
    #[arg(long, required = true)]
    upstream: Vec<String>,
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

struct Bare(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        let b = self
            .0
            .select(b"", 256)
            .ok_or_else(|| Error::new(ErrorType::ConnectNoRoute))?;
        Ok(Box::new(HttpPeer::new(b, false, String::new())))
    }
}

fn main() {
    let cli = Cli::parse();
    let lb = LoadBalancer::try_from_iter(cli.upstream.iter().map(String::as_str))
        .expect("upstream addresses");
    let conf = ServerConf {
        threads: cli.threads,
        work_stealing: false, // as ol-proxy
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let conf = server.configuration.clone();
    let mut opts = HttpServerOptions::default();
    opts.h2c = true;
    let mut svc = ProxyServiceBuilder::new(&conf, Bare(Arc::new(lb)))
        .name("bare-pingora")
        .server_options(opts)
        .build();
    svc.add_tcp(&cli.listen);
    server.add_service(svc);
    server.run_forever();
}
