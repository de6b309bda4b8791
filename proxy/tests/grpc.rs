//! gRPC through the real ol-proxy to real ol-workers (h2c both sides): name
//! inspection maps `/helloworld.Greeter/SayHello` to the function bound to
//! the service (`examples/functions/greeter`), and a DB-affinity key read
//! from the request message keeps a name on one worker, whether the key is
//! by field number (`key = { protobuf = "1" }`) or by name
//! (`"helloworld.HelloRequest.name"`, resolved with the descriptors the
//! workers serve).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use tonic::transport::{Channel, Endpoint};

#[derive(Clone, PartialEq, prost::Message)]
struct HelloRequest {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HelloReply {
    #[prost(string, tag = "1")]
    message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct InvokeRequest {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(bytes = "vec", tag = "2")]
    payload: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct InvokeReply {
    #[prost(bytes = "vec", tag = "1")]
    payload: Vec<u8>,
}

async fn invoke(
    ch: Channel,
    name: &str,
    payload: &[u8],
) -> Result<tonic::Response<InvokeReply>, tonic::Status> {
    let mut g = tonic::client::Grpc::new(ch);
    g.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let req = InvokeRequest {
        name: name.into(),
        payload: payload.to_vec(),
    };
    g.unary(
        tonic::Request::new(req),
        http::uri::PathAndQuery::from_static("/ol.Lambda/Invoke"),
        tonic_prost::ProstCodec::<InvokeRequest, InvokeReply>::default(),
    )
    .await
}

async fn say_hello(ch: Channel, name: &str) -> Result<tonic::Response<HelloReply>, tonic::Status> {
    let mut g = tonic::client::Grpc::new(ch);
    g.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<HelloRequest, HelloReply>::default();
    g.unary(
        tonic::Request::new(HelloRequest { name: name.into() }),
        http::uri::PathAndQuery::from_static("/helloworld.Greeter/SayHello"),
        codec,
    )
    .await
}

fn worker_of<T>(r: &tonic::Response<T>) -> String {
    r.metadata()
        .get("x-ol-worker")
        .and_then(|v| v.to_str().ok())
        .expect("x-ol-worker")
        .to_string()
}

struct Setup {
    _workers: Vec<Proc>,
    _proxy: Proc,
    ch: Channel,
}

async fn setup(key: &str) -> Setup {
    let wports = [free_port(), free_port()];
    let workers: Vec<Proc> = wports.iter().map(|p| start_worker(*p)).collect();
    let ports = Ports::new();
    let extra = r#"h2c = true

[health]
interval_ms = 200

[routing]
default_policy = "round-robin"
[[routing.policies]]
name = "db"
kind = "db-affinity"
key = { protobuf = "KEY" }
[[routing.routes]]
functions = ["greeter"]
policy = "db"
"#
    .replace("KEY", key);
    let proxy = start_proxy(&config(&ports, &wports, &extra), &ports);
    wait_healthy(ports.admin, "", 2);
    let ch = Endpoint::from_shared(format!("http://127.0.0.1:{}", ports.listen))
        .unwrap()
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("h2c to the proxy");
    Setup {
        _workers: workers,
        _proxy: proxy,
        ch,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn say_hello_through_the_proxy() {
    let s = setup("1").await;
    let r = say_hello(s.ch.clone(), "Ada").await.unwrap();
    assert!(!worker_of(&r).is_empty());
    assert_eq!(
        r.metadata()
            .get("x-ol-policy")
            .and_then(|v| v.to_str().ok()),
        Some("db")
    );
    assert_eq!(r.into_inner().message, "Hello Ada");
    // Many calls multiplexed over the one h2c connection.
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let ch = s.ch.clone();
            tokio::spawn(async move { say_hello(ch, &format!("n{i}")).await })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        let r = c.await.unwrap().unwrap();
        assert_eq!(r.into_inner().message, format!("Hello n{i}"));
    }
    // An unbound service is the worker's UNIMPLEMENTED, passed through.
    let mut g = tonic::client::Grpc::new(s.ch.clone());
    g.ready().await.unwrap();
    let e = g
        .unary::<HelloRequest, HelloReply, _>(
            tonic::Request::new(HelloRequest { name: "x".into() }),
            http::uri::PathAndQuery::from_static("/nope.Nothing/Call"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert!(
        e.code() == tonic::Code::Unimplemented && e.message().contains("nope.Nothing"),
        "{e:?}"
    );
}

/// Same names, same worker; 30 names over both workers. Without a key
/// the route falls to round-robin, so a key that is not read fails this.
async fn names_keep_their_worker(ch: &Channel) {
    for name in ["alice", "bob"] {
        let mut seen = HashSet::new();
        for _ in 0..15 {
            let r = say_hello(ch.clone(), name).await.unwrap();
            seen.insert(worker_of(&r));
            assert_eq!(r.into_inner().message, format!("Hello {name}"));
        }
        assert_eq!(seen.len(), 1, "{name} went to {seen:?}");
    }
    let mut all = HashSet::new();
    for i in 0..30 {
        let r = say_hello(ch.clone(), &format!("user{i}")).await.unwrap();
        all.insert(worker_of(&r));
    }
    assert_eq!(all.len(), 2, "30 names all on {all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_affinity_on_a_field_number_keeps_a_name_on_one_worker() {
    let s = setup("1").await;
    names_keep_their_worker(&s.ch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_affinity_on_a_field_name_keeps_a_name_on_one_worker() {
    let s = setup("helloworld.HelloRequest.name").await;
    names_keep_their_worker(&s.ch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_naming_a_missing_field_gives_no_key_but_calls_still_work() {
    // HelloRequest has no `nickname`: the key never resolves, the proxy
    // says why in its log, and calls go the least-load fallback.
    let s = setup("helloworld.HelloRequest.nickname").await;
    for _ in 0..5 {
        let r = say_hello(s.ch.clone(), "alice").await.unwrap();
        assert_eq!(r.into_inner().message, "Hello alice");
    }
    let log = s._proxy.log_text();
    assert!(
        log.contains(r#"helloworld.HelloRequest has no field "nickname""#),
        "{log}"
    );
}

/// A proxy whose health checks are gRPC `Health/Check` of `service`.
fn grpc_health_proxy(wports: &[u16], service: &str) -> (Ports, Proc) {
    let ports = Ports::new();
    let extra = format!(
        "h2c = true\n\n[health]\nprotocol = \"grpc\"\ngrpc_service = \"{service}\"\ninterval_ms = 100\nrise = 1\nfall = 1\n"
    );
    let p = start_proxy(&config(&ports, wports, &extra), &ports);
    (ports, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_take_workers_in_and_out() {
    let wports = [free_port(), free_port()];
    let mut workers: Vec<Proc> = wports.iter().map(|p| start_worker(*p)).collect();
    // A bound service is SERVING on both workers.
    let (ports, _p) = grpc_health_proxy(&wports, "helloworld.Greeter");
    wait_healthy(ports.admin, "", 2);
    let ch = Endpoint::from_shared(format!("http://127.0.0.1:{}", ports.listen))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(
        say_hello(ch, "Ada").await.unwrap().into_inner().message,
        "Hello Ada"
    );
    // A service nothing binds is NOT_FOUND: no worker is healthy.
    let (bad, _bp) = grpc_health_proxy(&wports, "nope.Nothing");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(healthy_count(bad.admin, ""), 0);
    // A worker that stops answering leaves.
    drop(workers.pop());
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while healthy_count(ports.admin, "") != 1 {
        assert!(
            std::time::Instant::now() < end,
            "the stopped worker stayed healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_through_the_proxy_routes_as_the_named_function() {
    let s = setup("1").await;
    let r = invoke(s.ch.clone(), "hello", br#"{"name": "Ada"}"#)
        .await
        .unwrap();
    assert!(!worker_of(&r).is_empty());
    let policy = |m: &tonic::metadata::MetadataMap| {
        m.get("x-ol-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(policy(r.metadata()), "round-robin", "hello's route");
    assert_eq!(r.into_inner().payload, br#""Hello, Ada!""#);
    // greeter has its own route (db-affinity): Invoke of greeter takes it.
    let r = invoke(s.ch.clone(), "greeter", br#"{"name": "Bo"}"#)
        .await
        .unwrap();
    assert_eq!(policy(r.metadata()), "db", "greeter's route");
    let v: serde_json::Value = serde_json::from_slice(&r.into_inner().payload).unwrap();
    assert_eq!(v["message"], "Hello Bo", "{v}");
    // A bad name is refused by the proxy, before any worker.
    let e = invoke(s.ch.clone(), "bad/name", b"{}").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("InvokeRequest.name"), "{e:?}");
    // A function not in the store: the worker's NOT_FOUND, passed through.
    let e = invoke(s.ch.clone(), "nothere", b"{}").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
}
