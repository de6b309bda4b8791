//! Every response the worker's HTTP front writes: its own (a line of text,
//! JSON, a call error: one line, then the detail where there is one), and
//! a function's reply, checked.
//!
//! What a function's reply may carry to clients (workers/README.md, "What
//! functions cannot forge"). The runtime shares its interpreter with the
//! function, so whatever it sends is checked here, once, before it becomes
//! the worker's response:
//!
//! - a status outside 200-599 (1xx and 101 included) is a 502 with a
//!   one-line reason naming it; the function's headers and body are dropped;
//! - `x-ol-*` headers (the platform's: `x-ol-cache`, `x-ol-timing`, ...) and
//!   hop-by-hop or framing headers (`connection`, `keep-alive`,
//!   `transfer-encoding`, `content-length`, `upgrade`, `te`, `trailer`,
//!   `proxy-*`) are stripped: the worker frames the reply itself;
//! - with `tracebacks = "log"`, the traceback after the first line of an
//!   error the runtime marked (`x-ol-traceback: 1`), and the detail (load
//!   traceback, runtime log) of the worker's own call errors, go to the
//!   worker's log; the client gets the one-line error.

use bytes::Bytes;
use config::wire::{
    is_platform, LEVEL_FUNCTION, LEVEL_WORKER, X_OL_ERROR, X_OL_REFUSED, X_OL_TRACEBACK,
};
use config::worker::Tracebacks;
use http::header::{HeaderName, HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::invoke::{CallError, Reply};

/// A response of the HTTP front.
pub type Resp = Response<Full<Bytes>>;

/// Headers the worker sets or frames itself, never taken from a function.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
    "te",
    "trailer",
];

/// Whether a header a function set may reach the client.
pub fn passes(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    !(is_platform(&n) || n.starts_with("proxy-") || HOP_BY_HOP.contains(&n.as_str()))
}

/// Checks the reply of function `name`: its status, its headers, and where
/// its traceback goes.
pub fn check(name: &str, mut reply: Reply, tracebacks: Tracebacks) -> Result<Reply, CallError> {
    if !(200..=599).contains(&reply.status) {
        return Err(CallError::new(
            502,
            format!(
                "function {name} answered status {}; the worker passes on only final statuses 200-599",
                reply.status
            ),
        )
        .by_function());
    }
    let marked = reply
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case(X_OL_TRACEBACK));
    reply.headers.retain(|(k, _)| passes(k));
    if marked && tracebacks == Tracebacks::Log {
        if let Some(end) = reply.body.iter().position(|&b| b == b'\n') {
            let rest = &reply.body[end + 1..];
            if !rest.is_empty() {
                let line = String::from_utf8_lossy(&reply.body[..end]);
                let traceback = String::from_utf8_lossy(rest);
                tracing::warn!(function = name, error = %line, traceback = ?traceback, "handler failed");
            }
            reply.body.truncate(end + 1);
        }
    }
    Ok(reply)
}

/// With `tracebacks = "log"`, moves the detail of a call error (a load
/// traceback, the runtime's log) to the worker's log.
pub fn hide_detail(name: &str, e: &mut CallError, tracebacks: Tracebacks) {
    if tracebacks == Tracebacks::Log && !e.detail.is_empty() {
        let detail = std::mem::take(&mut e.detail);
        tracing::warn!(function = name, error = %e.line, detail = ?detail, "call failed");
    }
}

/// A checked function reply as the response (`x-ol-error: function` when
/// its status is an error).
pub fn function(reply: Reply) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = resp.headers_mut();
    if reply.status >= 400 {
        h.insert(X_OL_ERROR, HeaderValue::from_static(LEVEL_FUNCTION));
    }
    for (k, v) in &reply.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::try_from(k.as_str()),
            HeaderValue::try_from(v.as_str()),
        ) {
            h.append(k, v);
        }
    }
    resp
}

/// A package (`.tar.gz`) as the response.
pub fn package(bytes: Vec<u8>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/gzip"));
    r
}

/// Encoded protobuf (a `FileDescriptorSet`) as the response.
pub fn protobuf(bytes: Vec<u8>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    r
}

/// 204, no body.
pub fn no_content() -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// A call error as a response: its status, its line, then its detail.
pub fn error_response(e: CallError) -> Resp {
    let mut body = e.line;
    body.push('\n');
    if !e.detail.is_empty() {
        body.push_str(&e.detail);
        if !body.ends_with('\n') {
            body.push('\n');
        }
    }
    let mut r = plain(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    );
    if let Some(allow) = e.allow.and_then(|a| HeaderValue::try_from(a).ok()) {
        r.headers_mut().insert(ALLOW, allow);
    }
    worker_error(r.headers_mut(), e.refused);
    r.headers_mut()
        .insert(X_OL_ERROR, HeaderValue::from_static(e.level));
    r
}

/// Marks one of the worker's own error answers: `x-ol-error: worker`, and
/// `x-ol-refused` when nothing of the function ran.
pub fn worker_error(h: &mut http::HeaderMap, refused: Option<&'static str>) {
    h.insert(X_OL_ERROR, HeaderValue::from_static(LEVEL_WORKER));
    if let Some(why) = refused {
        h.insert(X_OL_REFUSED, HeaderValue::from_static(why));
    }
}

/// `line` and a newline, as `text/plain`.
pub fn text(status: StatusCode, line: &str) -> Resp {
    plain(status, format!("{line}\n"))
}

fn plain(status: StatusCode, body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status.as_u16() >= 400 {
        worker_error(r.headers_mut(), None);
    }
    r
}

pub fn json(status: StatusCode, body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_and_framing_headers_do_not_pass() {
        for h in [
            "X-OL-Cache",
            "x-ol-timing",
            "x-ol-refused",
            "X-Ol-Error",
            "Connection",
            "Transfer-Encoding",
            "content-length",
            "Upgrade",
            "TE",
            "Trailer",
            "Keep-Alive",
            "Proxy-Authenticate",
        ] {
            assert!(!passes(h), "{h}");
        }
        for h in [
            "content-type",
            "x-olive",
            "set-cookie",
            "x-app",
            "trailers-x",
        ] {
            assert!(passes(h), "{h}");
        }
    }

    #[test]
    fn log_mode_keeps_the_first_line_only() {
        let reply = Reply {
            status: 500,
            headers: vec![(X_OL_TRACEBACK.into(), "1".into())],
            body: b"function f raised E: x\nTraceback ...\n".to_vec(),
        };
        let r = check("f", reply, Tracebacks::Log).unwrap();
        assert_eq!(r.body, b"function f raised E: x\n");
        assert!(r.headers.is_empty());
        let interim = Reply {
            status: 101,
            headers: vec![],
            body: vec![],
        };
        let Err(e) = check("f", interim, Tracebacks::Client) else {
            panic!("a 101 passed");
        };
        assert_eq!((e.status, e.line.contains("status 101")), (502, true));
    }
}
