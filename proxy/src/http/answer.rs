//! Every response the proxy writes itself, in one place: refusals and
//! errors on the public port (a one-line text body, or a gRPC status for a
//! gRPC client), result-cache hits, the connection-cap refusal, and the
//! replies of the admin listener and the code store front.
//!
//! Why one chokepoint: a client must be able to tell the proxy's own
//! answers from a worker's (`x-ol-worker: none`), every error is one line,
//! and a new refusal cannot forget either. Functions here take values (the
//! status, the reason, the `x-ol-*` values), never the request context.

use bytes::Bytes;
use config::wire::{LEVEL_PROXY, X_OL_CACHE, X_OL_ERROR, X_OL_POLICY, X_OL_WORKER};
use http::{HeaderName, HeaderValue, Response};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

static NONE: HeaderValue = HeaderValue::from_static("none");

/// Who answered, as the `x-ol-worker` and `x-ol-policy` headers say it
/// (`none` for what is not known or not involved).
#[derive(Clone, Copy, Default)]
pub struct Served<'a> {
    pub worker: Option<&'a HeaderValue>,
    pub policy: Option<&'a HeaderValue>,
}

/// Adds `x-ol-worker` and `x-ol-policy` to a response head.
pub fn stamp(resp: &mut ResponseHeader, by: Served<'_>) -> Result<()> {
    resp.insert_header(X_OL_WORKER, by.worker.unwrap_or(&NONE).clone())?;
    resp.insert_header(X_OL_POLICY, by.policy.unwrap_or(&NONE).clone())?;
    Ok(())
}

/// Marks a worker's response to a cacheable call as a result-cache miss.
pub fn cache_miss(resp: &mut ResponseHeader) -> Result<()> {
    resp.insert_header(X_OL_CACHE, "miss")?;
    Ok(())
}

/// A one-line text answer on the public port, with `x-ol-error: proxy`
/// (it is always an error) and `Retry-After` when given (seconds). Without
/// `keepalive` the connection closes after it (the request body may be
/// unread).
pub async fn text(
    session: &mut Session,
    by: Served<'_>,
    status: u16,
    reason: &str,
    keepalive: bool,
    retry_after: Option<u32>,
) -> Result<()> {
    let body = Bytes::from(format!("{}\n", config::one_line(reason)));
    let mut resp = ResponseHeader::build(status, Some(6))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header(X_OL_ERROR, LEVEL_PROXY)?;
    if let Some(s) = retry_after {
        resp.insert_header(http::header::RETRY_AFTER, s.to_string())?;
    }
    stamp(&mut resp, by)?;
    if !keepalive {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// A gRPC client's answer: trailers-only, HTTP 200, `grpc-status` `code`
/// and a one-line, percent-encoded `grpc-message`.
pub async fn grpc(session: &mut Session, by: Served<'_>, code: u8, reason: &str) -> Result<()> {
    let msg: String = config::one_line(reason)
        .bytes()
        .map(|b| match b {
            b' '..=b'~' if b != b'%' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let mut resp = ResponseHeader::build(200, Some(4))?;
    resp.insert_header("content-type", "application/grpc")?;
    resp.insert_header("grpc-status", code.to_string())?;
    resp.insert_header("grpc-message", msg)?;
    resp.insert_header(X_OL_ERROR, LEVEL_PROXY)?;
    stamp(&mut resp, by)?;
    session.write_response_header(Box::new(resp), true).await?;
    Ok(())
}

/// A stored result-cache response, with `x-ol-cache: hit` (no worker).
pub async fn cache_hit(
    session: &mut Session,
    policy: Option<&HeaderValue>,
    status: u16,
    headers: &[(HeaderName, HeaderValue)],
    body: &Bytes,
) -> Result<()> {
    let mut h = ResponseHeader::build(status, Some(headers.len() + 4))?;
    for (k, v) in headers {
        h.append_header(k.clone(), v.clone())?;
    }
    h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    h.insert_header(X_OL_CACHE, "hit")?;
    stamp(
        &mut h,
        Served {
            worker: None,
            policy,
        },
    )?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(h), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(body.clone()), true)
            .await?;
    }
    Ok(())
}

/// The raw HTTP/1.1 answer to a connection over the cap, written before
/// pingora reads anything from it.
pub fn over_connection_cap(cap: usize) -> String {
    let body = format!("too many connections: limits.max_connections is {cap}\n");
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n{X_OL_ERROR}: {LEVEL_PROXY}\r\n{X_OL_WORKER}: none\r\n{X_OL_POLICY}: none\r\n\r\n{body}",
        body.len()
    )
}

/// How a reply of the admin listener or the code store front is marked.
#[derive(Clone, Copy, PartialEq)]
pub enum Listener {
    /// `/metrics`, `/admin/...`: plain.
    Admin,
    /// A page a browser may keep open: `cache-control: no-store`.
    Page,
    /// The code store front: the proxy's own answer, `x-ol-*: none`.
    CodeStore,
}

/// A whole reply on the admin listener (`content-length` unless 204).
pub fn reply(on: Listener, status: u16, ctype: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::builder()
        .status(status)
        .header("content-type", ctype);
    if status != 204 {
        r = r.header("content-length", body.len());
    }
    r = match on {
        Listener::Admin => r,
        Listener::Page => r.header("cache-control", "no-store"),
        Listener::CodeStore => r.header(X_OL_WORKER, "none").header(X_OL_POLICY, "none"),
    };
    if on == Listener::CodeStore && status >= 400 {
        r = r.header(X_OL_ERROR, LEVEL_PROXY);
    }
    r.body(body).expect("static parts")
}

/// A one-line text reply on the admin listener.
pub fn reply_line(on: Listener, status: u16, msg: &str) -> Response<Vec<u8>> {
    let mut body = config::one_line(msg).into_bytes();
    body.push(b'\n');
    reply(on, status, "text/plain", body)
}

/// Pretty JSON with a final newline.
pub fn reply_json(on: Listener, status: u16, v: &serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    reply(on, status, "application/json", body)
}

/// 401 with `www-authenticate: Bearer`.
pub fn unauthorized(on: Listener, msg: &str) -> Response<Vec<u8>> {
    let mut r = reply_line(on, 401, msg);
    r.headers_mut()
        .insert("www-authenticate", HeaderValue::from_static("Bearer"));
    r
}

/// 405 with the methods that are allowed.
pub fn not_allowed(on: Listener, allow: &'static str, msg: &str) -> Response<Vec<u8>> {
    let mut r = reply_line(on, 405, msg);
    r.headers_mut()
        .insert("allow", HeaderValue::from_static(allow));
    r
}
