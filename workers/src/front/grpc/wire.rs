//! gRPC on the wire, as the worker needs it without a generated service:
//! which requests are gRPC, method paths, `grpc-timeout`, the one
//! length-prefixed message of a unary call (read and checked the same way
//! for every service), the reply frame and trailers, proto3 JSON, and the
//! status of a failed call.

use std::convert::Infallible;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use config::wire::{Timing, X_OL_TIMING};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use prost_reflect::{DynamicMessage, MessageDescriptor, SerializeOptions};
use tonic::{Code, Status};

use crate::invoke::CallError;

/// The body of every gRPC response.
pub type Body = tonic::body::Body;

/// Whether the front should hand this request to `Grpc::handle`:
/// gRPC calls (`application/grpc`, `application/grpc+proto`, ...; not
/// gRPC-Web), and `GET /grpc/...`, the bindings and descriptors for
/// proxies (`describe`).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    is_grpc_call(req) || (req.method() == Method::GET && describe_path(req.uri().path()).is_some())
}

pub fn is_grpc_call<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(config::wire::is_grpc_content_type)
}

/// `/grpc/` -> `Some("")`; `/grpc/<service>` -> `Some(service)`.
pub fn describe_path(path: &str) -> Option<&str> {
    path.strip_prefix("/grpc/")
        .or((path == "/grpc").then_some(""))
}

/// `/<package>.<Service>/<Method>` -> (service, method).
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    };
    (ok(service) && ok(method) && !method.contains('.')).then_some((service, method))
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_timeout(h: &HeaderMap) -> Result<Option<Duration>, Status> {
    let Some(v) = h.get("grpc-timeout") else {
        return Ok(None);
    };
    let bad = || Status::invalid_argument(format!("malformed grpc-timeout {v:?}"));
    let s = v.to_str().map_err(|_| bad())?;
    if s.len() < 2 || s.len() > 9 {
        return Err(bad());
    }
    let (num, unit) = s.split_at(s.len() - 1);
    if !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    };
    Ok(Some(d))
}

/// How long a request message may take to arrive (without a
/// `grpc-timeout`, a client that never sends it must not hold a stream).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads the one length-prefixed message of a unary request (at most
/// `limit` bytes), without waiting for more once it is complete.
pub async fn read_message(body: Incoming, limit: usize) -> Result<Bytes, Status> {
    tokio::time::timeout(READ_TIMEOUT, read_message_inner(body, limit))
        .await
        .unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "the request message did not arrive within {} s",
                READ_TIMEOUT.as_secs()
            )))
        })
}

async fn read_message_inner(mut body: Incoming, limit: usize) -> Result<Bytes, Status> {
    let mut buf = BytesMut::new();
    loop {
        if buf.len() >= 5 {
            let flag = buf[0];
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if flag > 1 {
                return Err(Status::invalid_argument(format!(
                    "the request body is not gRPC: a message starts with a compression flag \
                     of 0 or 1 and a 4-byte length, not {flag:#04x}"
                )));
            }
            if flag == 1 {
                return Err(Status::unimplemented(
                    "compressed request messages are not supported; send them uncompressed",
                ));
            }
            if len > limit {
                return Err(Status::resource_exhausted(format!(
                    "the request message is {len} bytes; the limit is {limit}"
                )));
            }
            if buf.len() >= 5 + len {
                if buf.len() > 5 + len {
                    return Err(Status::invalid_argument(
                        "a unary call carries one message; the request has more data after it",
                    ));
                }
                return Ok(buf.split_off(5).freeze());
            }
        }
        match body.frame().await {
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                return Err(Status::cancelled(format!("cannot read the request: {e}")));
            }
            None if buf.is_empty() => {
                return Err(Status::invalid_argument(
                    "the request has no message: a unary call sends exactly one",
                ));
            }
            None if buf.len() < 5 => {
                return Err(Status::invalid_argument(format!(
                    "truncated gRPC frame: the request ended {} bytes into the 5-byte message header",
                    buf.len()
                )));
            }
            None => {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
                return Err(Status::invalid_argument(format!(
                    "truncated gRPC message: its header announces {len} bytes, the request ended after {}",
                    buf.len() - 5
                )));
            }
        }
    }
}

/// One length-prefixed, uncompressed message.
pub fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.extend_from_slice(msg);
    b.freeze()
}

/// 200, one message, `grpc-status: 0` in the trailers.
pub fn ok_response(msg: &[u8]) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames: [Result<Frame<Bytes>, Infallible>; 2] =
        [Ok(Frame::data(frame(msg))), Ok(Frame::trailers(trailers))];
    let body = Body::new(StreamBody::new(futures_util::stream::iter(frames)));
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    r
}

pub fn add_timing(h: &mut HeaderMap, t: &Timing) {
    if let Ok(v) = HeaderValue::try_from(t.to_header()) {
        h.insert(X_OL_TIMING, v);
    }
}

/// Client metadata a WSGI handler may see: text headers, minus gRPC's own.
pub fn forwarded_headers(h: &HeaderMap) -> Vec<(&str, &str)> {
    h.iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            !(k.starts_with("grpc-") || k.ends_with("-bin") || k == "te" || k == "content-type")
        })
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
        .collect()
}

/// The proto3 JSON mapping, with default values written out so that a
/// handler can index every field.
pub fn to_json(m: &DynamicMessage) -> Result<Vec<u8>, Status> {
    let opts = SerializeOptions::new().skip_default_fields(false);
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    m.serialize_with_options(&mut ser, &opts)
        .map_err(|e| Status::internal(format!("cannot map the request to JSON: {e}")))?;
    Ok(out)
}

pub fn from_json(
    name: &str,
    desc: MessageDescriptor,
    json: &[u8],
) -> Result<DynamicMessage, Status> {
    let full = desc.full_name().to_string();
    let mut de = serde_json::Deserializer::from_slice(json);
    DynamicMessage::deserialize(desc, &mut de)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| {
            let shown = String::from_utf8_lossy(&json[..json.len().min(200)]).into_owned();
            Status::internal(format!(
                "function {name} returned {}, which is not a {full}: {e}",
                config::one_line(&shown)
            ))
        })
}

/// The gRPC status of a failed call, from its HTTP status (workers/GRPC.md),
/// with `x-ol-error: <level>` (and `x-ol-refused`) in its metadata.
pub fn status_of(e: CallError, level: &'static str) -> Status {
    let code = match e.status {
        400 => Code::InvalidArgument,
        404 => Code::NotFound,
        405 | 501 => Code::Unimplemented,
        413 | 429 => Code::ResourceExhausted,
        500 => Code::Internal,
        502 | 503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Unknown,
    };
    let mut meta = tonic::metadata::MetadataMap::new();
    meta.insert(
        config::wire::X_OL_ERROR,
        tonic::metadata::MetadataValue::from_static(level),
    );
    if let Some(why) = e.refused {
        meta.insert(
            config::wire::X_OL_REFUSED,
            tonic::metadata::MetadataValue::from_static(why),
        );
    }
    Status::with_metadata(code, e.line, meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_timeouts() {
        assert_eq!(
            split_path("/helloworld.Greeter/SayHello"),
            Some(("helloworld.Greeter", "SayHello"))
        );
        assert_eq!(split_path("/run/hello"), Some(("run", "hello")));
        assert_eq!(split_path("/x"), None);
        assert_eq!(split_path("/a/b/c"), None);
        let mut h = HeaderMap::new();
        assert_eq!(parse_timeout(&h).unwrap(), None);
        for (v, d) in [
            ("100m", Duration::from_millis(100)),
            ("2S", Duration::from_secs(2)),
            ("1H", Duration::from_secs(3600)),
            ("5u", Duration::from_micros(5)),
        ] {
            h.insert("grpc-timeout", HeaderValue::from_static(v));
            assert_eq!(parse_timeout(&h).unwrap(), Some(d));
        }
        for v in ["", "m", "123456789S", "1x", "-1S"] {
            h.insert("grpc-timeout", HeaderValue::from_static(v));
            assert_eq!(
                parse_timeout(&h).unwrap_err().code(),
                Code::InvalidArgument,
                "{v}"
            );
        }
    }

    #[test]
    fn call_errors_map_to_grpc_codes() {
        for (http, code) in [
            (404, Code::NotFound),
            (429, Code::ResourceExhausted),
            (500, Code::Internal),
            (504, Code::DeadlineExceeded),
            (502, Code::Unavailable),
        ] {
            assert_eq!(status_of(CallError::new(http, "x"), "worker").code(), code);
        }
    }
}
