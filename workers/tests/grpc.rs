//! gRPC on the worker (workers/GRPC.md), end to end: the real `ol-worker`
//! binary, real Python handlers, a real tonic client (and a raw h2 client
//! for the malformed requests a tonic client cannot send) on 127.0.0.1.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{snapshot, tar_gz, Options, Worker};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use workers::pb::helloworld::greeter_client::GreeterClient;
use workers::pb::helloworld::HelloRequest;
use workers::pb::ol::lambda_client::LambdaClient;
use workers::pb::ol::InvokeRequest;

fn start(toml: &str) -> Worker {
    Worker::start(Options {
        toml,
        ..Default::default()
    })
}

async fn channel(w: &Worker) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{}", w.port))
        .unwrap()
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .expect("connect to the worker over h2c")
}

fn hello(name: &str) -> HelloRequest {
    HelloRequest { name: name.into() }
}

fn invoke(name: &str, payload: &str) -> InvokeRequest {
    InvokeRequest {
        name: name.into(),
        payload: payload.as_bytes().to_vec(),
    }
}

/// A gRPC answer seen from the wire: HTTP status, then the gRPC status
/// (from the trailers, or the headers of a trailers-only answer).
struct Raw {
    http: u16,
    code: Code,
    message: String,
    body: Bytes,
}

/// One request over a fresh h2c connection, with whatever body we like.
async fn raw(port: u16, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Raw {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::post(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), send.send_request(req))
        .await
        .expect("the worker answers, not hangs")
        .unwrap();
    let http = resp.status().as_u16();
    let headers = resp.headers().clone();
    let collected = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .expect("the body ends")
        .unwrap();
    let trailers = collected.trailers().cloned();
    let body = collected.to_bytes();
    let status = trailers
        .as_ref()
        .and_then(tonic::Status::from_header_map)
        .or_else(|| tonic::Status::from_header_map(&headers))
        .expect("a grpc-status");
    Raw {
        http,
        code: status.code(),
        message: status.message().to_string(),
        body,
    }
}

fn frame(msg: &[u8]) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    v.extend_from_slice(msg);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn say_hello_on_a_real_worker() {
    let w = start("");
    let mut c = GreeterClient::new(channel(&w).await);
    let r = c.say_hello(hello("Ada")).await.unwrap();
    assert!(r.metadata().get("x-ol-timing").is_some());
    assert_eq!(r.into_inner().message, "Hello Ada");
    // A default message (no name) is still a message: {"name": ""}.
    let r = c.say_hello(hello("")).await.unwrap();
    assert_eq!(r.into_inner().message, "Hello ");
    let s = w.stats();
    assert_eq!(s["handler-run.cnt"], 2, "{s}");
    assert_eq!(s["status.2xx"], 2, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_runs_any_function_by_name() {
    let w = start("");
    let mut c = LambdaClient::new(channel(&w).await);
    let r = c
        .invoke(invoke("hello", r#"{"name": "Ada"}"#))
        .await
        .unwrap();
    assert_eq!(r.into_inner().payload, &b"\"Hello, Ada!\""[..]);
    let r = c.invoke(invoke("hello", "")).await.unwrap();
    assert_eq!(r.into_inner().payload, &b"\"Hello, world!\""[..]);

    let e = c.invoke(invoke("nope", "")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("nope"), "{e:?}");
    let e = c.invoke(invoke("../x", "")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = c.invoke(invoke("fail", "")).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(
        e.message()
            .contains("raised ValueError: this function always fails"),
        "{e:?}"
    );
    let e = c.invoke(invoke("hello", "{not json")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("malformed JSON"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_answers() {
    let w = start("");
    let mut c = HealthClient::new(channel(&w).await);
    for service in ["", "ol.Lambda", "helloworld.Greeter"] {
        let r = c
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(
            r.into_inner().status,
            ServingStatus::Serving as i32,
            "{service}"
        );
    }
    let e = c
        .check(HealthCheckRequest {
            service: "nope.Nothing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_services_and_methods_are_unimplemented() {
    let w = start("");
    let ch = channel(&w).await;
    for path in [
        "/nope.Service/Call",
        "/helloworld.Greeter/SayGoodbye",
        "/ol.Lambda/Nope",
        "/not-a-grpc-path",
    ] {
        let r = raw(w.port, path, &[], frame(b"")).await;
        assert_eq!(r.http, 200);
        assert_eq!(r.code, Code::Unimplemented, "{path}: {}", r.message);
        assert!(!r.message.is_empty(), "{path}");
    }
    let r = raw(w.port, "/nope.Service/Call", &[], frame(b"")).await;
    assert!(r.message.contains("nope.Service"), "{}", r.message);
    // And through tonic: the same status.
    let e = LambdaClient::new(ch)
        .invoke(invoke("hello", ""))
        .await
        .map(|_| ());
    assert!(e.is_ok(), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_clear_status() {
    let w = start("max_body_bytes = 1024\n");
    let p = "/helloworld.Greeter/SayHello";
    // Not gRPC at all (JSON with a gRPC content type).
    let r = raw(w.port, p, &[], br#"{"name": "Ada"}"#.to_vec()).await;
    assert_eq!(r.code, Code::InvalidArgument, "{}", r.message);
    assert!(r.message.contains("not gRPC"), "{}", r.message);
    // Truncated: the header announces 100 bytes, 10 follow.
    let mut b = vec![0, 0, 0, 0, 100];
    b.extend_from_slice(&[b'x'; 10]);
    let r = raw(w.port, p, &[], b).await;
    assert_eq!(r.code, Code::InvalidArgument, "{}", r.message);
    assert!(r.message.contains("truncated"), "{}", r.message);
    let r = raw(w.port, p, &[], vec![0, 0]).await;
    assert_eq!(r.code, Code::InvalidArgument, "{}", r.message);
    assert!(r.message.contains("truncated"), "{}", r.message);
    let r = raw(w.port, p, &[], vec![]).await;
    assert_eq!(r.code, Code::InvalidArgument, "{}", r.message);
    // Oversized (over max_body_bytes), both raw and from tonic.
    let r = raw(w.port, p, &[], frame(&[b'a'; 4096])).await;
    assert_eq!(r.code, Code::ResourceExhausted, "{}", r.message);
    assert!(r.message.contains("1024"), "{}", r.message);
    let e = GreeterClient::new(channel(&w).await)
        .say_hello(hello(&"a".repeat(4096)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let e = LambdaClient::new(channel(&w).await)
        .invoke(invoke("hello", &"a".repeat(4096)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // Compressed messages.
    let mut b = frame(b"");
    b[0] = 1;
    let r = raw(w.port, p, &[("grpc-encoding", "gzip")], b).await;
    assert_eq!(r.code, Code::Unimplemented, "{}", r.message);
    // Not a HelloRequest: field 1 as a varint, then a string that is not UTF-8.
    for msg in [
        &[0x08, 0x01][..],
        &[0x0a, 0x02, 0xff, 0xfe][..],
        &[0x0a, 0x05][..],
    ] {
        let r = raw(w.port, p, &[], frame(msg)).await;
        assert_eq!(r.code, Code::InvalidArgument, "{msg:?}: {}", r.message);
        assert!(
            r.message.contains("helloworld.HelloRequest"),
            "{}",
            r.message
        );
    }
    let r = raw(w.port, "/ol.Lambda/Invoke", &[], frame(&[0x08, 0x01])).await;
    assert!(
        matches!(r.code, Code::InvalidArgument | Code::Internal),
        "{:?} {}",
        r.code,
        r.message
    );
    // Bad grpc-timeout.
    let r = raw(w.port, p, &[("grpc-timeout", "soon")], frame(b"")).await;
    assert_eq!(r.code, Code::InvalidArgument, "{}", r.message);
    // The worker is fine after all that.
    let r = raw(w.port, p, &[], frame(&[0x0a, 0x03, b'B', b'o', b'b'])).await;
    assert_eq!(r.code, Code::Ok, "{}", r.message);
    assert_eq!(
        &r.body[5..],
        &[0x0a, 0x09, b'H', b'e', b'l', b'l', b'o', b' ', b'B', b'o', b'b'][..]
    );
    assert_eq!(w.get("/status").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_handler_errors_and_queue_full_map_to_statuses() {
    let w = start("[instances]\nmax_per_function = 1\nqueue_per_function = 0\n");
    let ch = channel(&w).await;
    let mut c = LambdaClient::new(ch.clone());
    // Warm it first, so the deadline is spent running, not starting.
    c.invoke(invoke("sleep", r#"{"ms": 1}"#)).await.unwrap();
    // A tonic client enforces its deadline itself too, so send the header
    // raw to see the worker's own answer.
    let msg = prost::Message::encode_to_vec(&invoke("sleep", r#"{"ms": 5000}"#));
    let t = Instant::now();
    let r = raw(
        w.port,
        "/ol.Lambda/Invoke",
        &[("grpc-timeout", "300m")],
        frame(&msg),
    )
    .await;
    assert_eq!(r.code, Code::DeadlineExceeded, "{}", r.message);
    assert!(
        r.message.contains("grpc-timeout of 300 ms"),
        "{}",
        r.message
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(w.stats()["errors.timeout"], 1);
    // The instance cut short was killed, not reused: the next call works.
    c.invoke(invoke("sleep", r#"{"ms": 1}"#)).await.unwrap();

    // One instance, no queue: a second call while one runs is refused.
    let mut c2 = c.clone();
    let long = tokio::spawn(async move { c2.invoke(invoke("sleep", r#"{"ms": 1500}"#)).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let e = c.invoke(invoke("sleep", r#"{"ms": 1}"#)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(long.await.unwrap().is_ok());

    // The function's own runtime limit (loop: 2 s) is DEADLINE_EXCEEDED too.
    let e = c.invoke(invoke("loop", "")).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    // A runtime that dies is UNAVAILABLE.
    let e = c.invoke(invoke("crash", "")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}

const BAD_PROTO: &str = "syntax = \"proto3\";\npackage t;\nmessage Req {\n  string x = 1\n}\n";
const T_PROTO: &str = "syntax = \"proto3\";\npackage t;\n\
    service Svc { rpc Do (Req) returns (Rep) {} rpc Stream (Req) returns (stream Rep) {} }\n\
    message Req { string x = 1; int32 n = 2; }\nmessage Rep { string y = 1; }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_compile_protos_and_new_bindings_are_served() {
    let w = start("registry_cache_ms = 60000\n");
    let yaml = "grpc:\n  service: t.Svc\n  protos: [t.proto]\n";
    // A proto that does not compile: 400 with the compiler's message; the
    // store is unchanged.
    let before = snapshot(&w.registry);
    let pkg = tar_gz(&[
        ("f.py", "def f(e): return {}\n"),
        ("ol.yaml", yaml),
        ("t.proto", BAD_PROTO),
    ]);
    let r = w.post("/registry/tsvc", &pkg);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("t.proto:5:1: expected"), "{}", r.body);
    assert_eq!(r.body.lines().count(), 1, "{}", r.body);
    assert!(
        snapshot(&w.registry) == before,
        "a refused upload changed the store"
    );
    // A binding to a service the protos do not define.
    let pkg = tar_gz(&[
        ("f.py", "def f(e): return {}\n"),
        ("ol.yaml", "grpc: {service: t.Other, protos: [t.proto]}\n"),
        ("t.proto", T_PROTO),
    ]);
    let r = w.post("/registry/tsvc", &pkg);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("t.Svc"), "{}", r.body);

    // Unknown before the upload...
    let p = "/t.Svc/Do";
    let r = raw(w.port, p, &[], frame(b"")).await;
    assert_eq!(r.code, Code::Unimplemented, "{}", r.message);
    // ... served right after it, although registry_cache_ms is a minute.
    let f = "def f(e):\n    return {'y': e['x'] + '/' + str(e['n'])}\n";
    let pkg = tar_gz(&[("f.py", f), ("ol.yaml", yaml), ("t.proto", T_PROTO)]);
    let r = w.post("/registry/tsvc", &pkg);
    assert_eq!(r.status, 201, "{}", r.body);
    let r = raw(w.port, p, &[], frame(&[0x0a, 0x01, b'a', 0x10, 0x07])).await;
    assert_eq!(r.code, Code::Ok, "{}", r.message);
    assert_eq!(&r.body[5..], &[0x0a, 0x03, b'a', b'/', b'7'][..]);
    // Default values reach the handler too.
    let r = raw(w.port, p, &[], frame(b"")).await;
    assert_eq!(r.code, Code::Ok, "{}", r.message);
    // Streaming methods are not served.
    let r = raw(w.port, "/t.Svc/Stream", &[], frame(b"")).await;
    assert_eq!(r.code, Code::Unimplemented, "{}", r.message);

    // A reply that is not the reply message: INTERNAL, saying why.
    let f = "def f(e):\n    return 'just a string'\n";
    let pkg = tar_gz(&[("f.py", f), ("ol.yaml", yaml), ("t.proto", T_PROTO)]);
    assert_eq!(w.post("/registry/tsvc", &pkg).status, 201);
    let r = raw(w.port, p, &[], frame(b"")).await;
    assert_eq!(r.code, Code::Internal, "{}", r.message);
    assert!(r.message.contains("t.Rep"), "{}", r.message);
    // A handler exception: INTERNAL with its message.
    let f = "def f(e):\n    raise KeyError('nothing here')\n";
    let pkg = tar_gz(&[("f.py", f), ("ol.yaml", yaml), ("t.proto", T_PROTO)]);
    assert_eq!(w.post("/registry/tsvc", &pkg).status, 201);
    let r = raw(w.port, p, &[], frame(b"")).await;
    assert_eq!(r.code, Code::Internal, "{}", r.message);
    assert!(r.message.contains("KeyError"), "{}", r.message);

    // Deleted: the service is gone.
    let r = w.call("DELETE", "/registry/tsvc", None, &[]);
    assert_eq!(r.status, 204);
    let r = raw(w.port, p, &[], frame(b"")).await;
    assert_eq!(r.code, Code::Unimplemented, "{}", r.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_calls_share_one_connection() {
    let w = start("");
    let ch = channel(&w).await;
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let mut c = GreeterClient::new(ch.clone());
            tokio::spawn(async move {
                let name = format!("n{i}");
                let r = c.say_hello(hello(&name)).await.unwrap();
                assert_eq!(r.into_inner().message, format!("Hello {name}"));
            })
        })
        .collect();
    for c in calls {
        c.await.unwrap();
    }
    let s = w.stats();
    assert_eq!(s["handler-run.cnt"], 50, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_completes_does_not_hang_the_call() {
    let w = start("");
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", w.port))
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    // Half a frame, and the stream stays open (the sender is kept).
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(1);
    tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(&[
        0, 0, 0, 0, 10, b'x',
    ]))))
    .await
    .unwrap();
    let body = http_body_util::StreamBody::new(tokio_stream_from(rx));
    let req = http::Request::post(format!(
        "http://127.0.0.1:{}/helloworld.Greeter/SayHello",
        w.port
    ))
    .header("content-type", "application/grpc")
    .header("grpc-timeout", "500m")
    .body(body)
    .unwrap();
    let t = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("answered before the client gave up")
        .unwrap();
    let s = tonic::Status::from_header_map(resp.headers()).expect("trailers-only status");
    assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop(tx);
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[test]
fn bindings_and_descriptors_for_proxies() {
    let w = start("");
    let r = w.get("/grpc/");
    assert_eq!(r.status, 200, "{}", r.body);
    let map: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(map, serde_json::json!({"helloworld.Greeter": "greeter"}));
    let r = common::request("GET", &w.url("/grpc/helloworld.Greeter"), None, &[]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ol-function"), Some("greeter"));
    assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
    // The body is binary: fetch it raw to decode it.
    let mut resp = ureq::get(&w.url("/grpc/helloworld.Greeter"))
        .call()
        .unwrap();
    let bytes = resp.body_mut().read_to_vec().unwrap();
    let pool = prost_reflect::DescriptorPool::decode(&bytes[..]).unwrap();
    let m = pool.get_message_by_name("helloworld.HelloRequest").unwrap();
    assert_eq!(m.get_field_by_name("name").unwrap().number(), 1);
    assert!(pool.get_service_by_name("helloworld.Greeter").is_some());
    let r = w.get("/grpc/nope.Nothing");
    assert_eq!(r.status, 404);
    assert_eq!(r.body.lines().count(), 1, "{}", r.body);
}
