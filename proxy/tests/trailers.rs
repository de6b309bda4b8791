//! Trailers pass through when both sides speak HTTP/2: an h2c client, and
//! `workers.h2c = true` towards an h2c upstream (a small hyper server here;
//! pingora drops HTTP/1.1 trailers, see proxy/README.md).

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use hyper::body::{Body, Frame, Incoming};

use common::*;

/// A body of one data frame and, optionally, trailers.
struct Trailed {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Trailed {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let Some(t) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        Poll::Ready(None)
    }
}

async fn serve(req: Request<Incoming>) -> Result<Response<Trailed>, Infallible> {
    if req.uri().path() == "/status" {
        return Ok(Response::new(Trailed {
            data: Some(Bytes::from_static(b"ready\n")),
            trailers: None,
        }));
    }
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("0"));
    t.insert("x-checksum", HeaderValue::from_static("abc123"));
    Ok(Response::builder()
        .status(200)
        .header("x-up", "h2")
        .body(Trailed {
            data: Some(Bytes::from_static(b"hello")),
            trailers: Some(t),
        })
        .unwrap())
}

/// An upstream speaking HTTP/1.1 and h2c on one port.
fn spawn_upstream() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(s),
                        hyper::service::service_fn(serve),
                    )
                    .await;
                });
            }
        });
    });
    port
}

#[test]
fn h2_trailers_pass_through() {
    let up = spawn_upstream();
    let ports = Ports::new();
    let text = config(
        &ports,
        &[up],
        "[health]\ninterval_ms = 100\nrise = 1\nfall = 1\n",
    )
    .replace("[workers]\n", "[workers]\nh2c = true\n");
    let _p = start_proxy(&text, &ports);
    wait_healthy(ports.admin, "", 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use http_body_util::{BodyExt, Full};
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http::<Full<Bytes>>();
        let req = Request::post(format!("http://127.0.0.1:{}/run/grpcish", ports.listen))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
            .await
            .expect("in time")
            .expect("h2c request");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-up"], "h2");
        assert!(resp.headers().contains_key("x-ol-worker"));
        let collected = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .expect("body in time")
            .unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["x-checksum"], "abc123");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"hello"));
    });
}
