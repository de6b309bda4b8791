//! The proxy as a client of its workers, outside the request path: the
//! health checks (one [`HealthCheck`] trait, an HTTP and a gRPC
//! implementation, as pingora-load-balancing's `health_check.rs`) and the
//! one plain `GET` that the `/stats` poll and the gRPC lookups use.
//!
//! Every call opens a fresh connection: independent of the proxy's
//! connection pool, where a pooled connection could hide a worker that
//! stopped accepting.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use config::proxy::{HealthConfig, HealthProtocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::inspect::protowire::{frame, protobuf_key, put_varint};

/// What a health check found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Probe {
    Healthy,
    /// No answer, or not a healthy one.
    Unhealthy,
    /// The worker says it is draining (`/status`: 503 `draining`; gRPC:
    /// `NOT_SERVING`): out of rotation at once, not after `fall` checks.
    Draining,
}

/// One way to ask a worker whether it can take calls.
#[async_trait]
pub trait HealthCheck: Send + Sync {
    /// How the worker at `addr` answered within `timeout`.
    async fn check(&self, addr: SocketAddr, timeout: Duration) -> Probe;
}

/// `GET <health.path>`: 200 with a body starting `ready`.
pub struct HttpCheck {
    pub path: String,
}

/// `grpc.health.v1.Health/Check` of one service: `SERVING`.
pub struct GrpcCheck {
    pub service: String,
}

#[async_trait]
impl HealthCheck for HttpCheck {
    async fn check(&self, addr: SocketAddr, timeout: Duration) -> Probe {
        http_probe(addr, &self.path, timeout).await
    }
}

#[async_trait]
impl HealthCheck for GrpcCheck {
    async fn check(&self, addr: SocketAddr, timeout: Duration) -> Probe {
        grpc_health_check(addr, &self.service, timeout).await
    }
}

/// The check `[health]` configures.
pub fn health_check(h: &HealthConfig) -> Box<dyn HealthCheck> {
    match h.protocol {
        HealthProtocol::Grpc => Box::new(GrpcCheck {
            service: h.grpc_service.clone(),
        }),
        HealthProtocol::Http => Box::new(HttpCheck {
            path: h.path.clone(),
        }),
    }
}

/// `GET <path>` on a fresh connection to a worker (a hand-written
/// HTTP/1.1 request, `Connection: close`): the status and the body (at
/// most `limit` bytes), or `None` on any failure or after `timeout`. The
/// HTTP health check, the `/stats` poll and the gRPC lookups
/// (`grpc_meta.rs`) use it.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    limit: u64,
) -> Option<(u16, Vec<u8>)> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: ol-proxy\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::with_capacity(512);
        s.take(limit + 4096).read_to_end(&mut buf).await.ok()?;
        Some(buf)
    };
    let mut buf = tokio::time::timeout(timeout, fut).await.ok()??;
    if !buf.starts_with(b"HTTP/1.") {
        return None;
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()?;
    buf.drain(..end + 4);
    buf.truncate(limit as usize);
    Some((status, buf))
}

/// One HTTP probe: healthy when the worker answered 200 and `ready`,
/// draining on 503 and `draining`.
async fn http_probe(addr: SocketAddr, path: &str, timeout: Duration) -> Probe {
    // A chunked body starts with its size line; accept the word in the
    // first few bytes either way.
    let starts = |b: &[u8], word: &[u8]| {
        b.starts_with(word) || b.windows(word.len()).take(16).any(|w| w == word)
    };
    match http_get(addr, path, timeout, 8192).await {
        Some((200, b)) if starts(&b, b"ready") => Probe::Healthy,
        Some((503, b)) if starts(&b, b"draining") => Probe::Draining,
        _ => Probe::Unhealthy,
    }
}

/// The standard gRPC health check of one worker: `grpc.health.v1.Health/
/// Check` of `service` ("" is the whole server) on a fresh h2c connection
/// (prior knowledge, like the proxy's upstream h2c). True when the call
/// succeeds (`grpc-status: 0`) and the reply's `status` (field 1) is
/// `SERVING` (1); draining when it is `NOT_SERVING` (2).
async fn grpc_health_check(addr: SocketAddr, service: &str, timeout: Duration) -> Probe {
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (client, conn) = h2::client::handshake(tcp).await.ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.ok()?;
        let req = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header(http::header::USER_AGENT, "ol-proxy-health")
            .body(())
            .ok()?;
        let (resp, mut send) = client.send_request(req, false).ok()?;
        // HealthCheckRequest { string service = 1; }, in one gRPC frame.
        let mut msg = Vec::with_capacity(3 + service.len());
        if !service.is_empty() {
            msg.push(0x0a);
            put_varint(&mut msg, service.len() as u64);
            msg.extend_from_slice(service.as_bytes());
        }
        send.send_data(bytes::Bytes::from(frame(&msg)), true).ok()?;
        let resp = resp.await.ok()?;
        if resp.status() != http::StatusCode::OK {
            return Some(Probe::Unhealthy);
        }
        let trailers_only = resp.headers().get("grpc-status").cloned();
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.ok()?;
            let _ = body.flow_control().release_capacity(chunk.len());
            buf.extend_from_slice(&chunk);
            if buf.len() > 4096 {
                return Some(Probe::Unhealthy);
            }
        }
        let trailers = body.trailers().await.ok()?;
        let status = trailers_only.or_else(|| trailers?.get("grpc-status").cloned())?;
        if status != "0" {
            return Some(Probe::Unhealthy);
        }
        Some(match protobuf_key(&buf, &[1]).as_deref() {
            Some(b"1") => Probe::Healthy,
            Some(b"2") => Probe::Draining,
            _ => Probe::Unhealthy,
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .ok()
        .flatten()
        .unwrap_or(Probe::Unhealthy)
}
