//! A small closed-loop gRPC load driver (tonic), for bench/grpc.sh: keeps
//! `--concurrency` unary calls in flight over `--connections` h2c
//! connections for `--secs`, after a warm-up, and prints one Markdown table
//! row: throughput and latency percentiles. Measures; asserts nothing.
//!
//! ```sh
//! cargo run --release -p workers --example grpc_load -- \
//!     --target http://127.0.0.1:5000 --call say-hello --concurrency 8
//! ```

use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tonic::transport::{Channel, Endpoint};
use workers::pb::helloworld::greeter_client::GreeterClient;
use workers::pb::helloworld::HelloRequest;
use workers::pb::ol::lambda_client::LambdaClient;
use workers::pb::ol::InvokeRequest;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CallKind {
    /// helloworld.Greeter/SayHello (the `greeter` function).
    SayHello,
    /// ol.Lambda/Invoke of `hello`.
    Invoke,
}

#[derive(Parser, Debug)]
struct Cli {
    /// Worker (or proxy) base URL, h2c.
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    target: String,
    #[arg(long, value_enum, default_value = "say-hello")]
    call: CallKind,
    /// HTTP/2 connections; calls are spread over them.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    secs: u64,
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Label for the first column of the printed row.
    #[arg(long, default_value = "worker")]
    label: String,
}

async fn one(kind: CallKind, ch: Channel, i: u64) -> Result<(), tonic::Status> {
    match kind {
        CallKind::SayHello => {
            let r = GreeterClient::new(ch)
                .say_hello(HelloRequest {
                    name: format!("n{}", i % 1000),
                })
                .await?;
            if !r.get_ref().message.starts_with("Hello ") {
                return Err(tonic::Status::internal("unexpected reply"));
            }
        }
        CallKind::Invoke => {
            LambdaClient::new(ch)
                .invoke(InvokeRequest {
                    name: "hello".into(),
                    payload: br#"{"name": "Ada"}"#.to_vec(),
                })
                .await?;
        }
    }
    Ok(())
}

/// Runs the closed loop for `d`; latencies in microseconds, error count.
async fn run(cli: &Cli, channels: &[Channel], d: Duration) -> (Vec<u32>, u64, Duration) {
    let started = Instant::now();
    let deadline = started + d;
    let tasks: Vec<_> = (0..cli.concurrency)
        .map(|t| {
            let ch = channels[t % channels.len()].clone();
            let kind = cli.call;
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut i = t as u64;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    match one(kind, ch.clone(), i).await {
                        Ok(()) => lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32),
                        Err(e) => {
                            if errors == 0 {
                                eprintln!("grpc_load: {e}");
                            }
                            errors += 1;
                        }
                    }
                    i += 1;
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("load task");
        all.extend(l);
        errors += e;
    }
    (all, errors, started.elapsed())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let mut channels = Vec::new();
    for _ in 0..cli.connections.max(1) {
        let ch = Endpoint::from_shared(cli.target.clone())
            .expect("target URL")
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", cli.target));
        channels.push(ch);
    }
    run(&cli, &channels, Duration::from_secs(cli.warmup_secs)).await;
    let (mut lat, errors, took) = run(&cli, &channels, Duration::from_secs(cli.secs)).await;
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    let rps = lat.len() as f64 / took.as_secs_f64();
    println!(
        "| {} | {:?} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
        cli.label,
        cli.call,
        cli.connections,
        cli.concurrency,
        rps,
        pct(0.50),
        pct(0.99),
        pct(1.0),
        errors
    );
}
