//! Name and content inspection, pure: the function name from
//! `/run/<name>/...`, a gRPC call's service from its path, and routing keys
//! from a cookie, a header, a query parameter, a JSON body path or a field
//! of a gRPC message ([`protowire`]).
//!
//! Everything but the body keys borrows from the request header, so the
//! common case allocates nothing. A body is only read when the chosen
//! policy needs a key in it (the caller decides, and bounds its size).

use config::policy::KeySource;
use pingora::http::RequestHeader;

pub mod protowire;

/// What the path asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// `/run/<name>[/...]`: the name as written (not yet validated).
    Function(&'a str),
    /// Any other path.
    Other,
}

/// Splits `/run/<name>[/rest]`. The query is not part of `path`.
pub fn target(path: &str) -> Target<'_> {
    match path.strip_prefix("/run/") {
        Some(rest) => Target::Function(rest.split('/').next().unwrap_or("")),
        None if path == "/run" => Target::Function(""),
        None => Target::Other,
    }
}

/// The generic invoke service (`workers/proto/ol/lambda.proto`): its calls
/// route as the function `InvokeRequest.name` (field 1) names.
pub const INVOKE_SERVICE: &str = "ol.Lambda";

/// `content-type: application/grpc*` (not gRPC-Web).
pub fn is_call(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(config::wire::is_grpc_content_type)
}

/// `/<package>.<Service>/<Method>` -> the service.
pub fn service_of(path: &str) -> Option<&str> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    };
    (ok(service) && ok(method) && !method.contains('.')).then_some(service)
}

/// A key found in the request header (cookie, header or query), borrowed.
/// `None` for a JSON key (see [`json_key`]) or when absent.
pub fn header_key<'a>(req: &'a RequestHeader, src: &KeySource) -> Option<&'a [u8]> {
    match src {
        KeySource::Cookie(name) => req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .find_map(|v| cookie(v.as_bytes(), name.as_bytes())),
        KeySource::Header(name) => req
            .headers
            .get(name.as_str())
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty()),
        KeySource::Query(name) => req
            .uri
            .query()
            .and_then(|q| query(q.as_bytes(), name.as_bytes())),
        KeySource::Json(_) | KeySource::Protobuf(_) => None,
    }
}

/// `name=value` in a `Cookie` header value (`a=1; b=2`).
pub fn cookie<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        (trim(&pair[..eq]) == name)
            .then(|| trim(&pair[eq + 1..]))
            .filter(|v| !v.is_empty())
    })
}

/// `name=value` in a query string (`a=1&b=2`), undecoded.
pub fn query<'a>(q: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    q.split(|&b| b == b'&').find_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=').unwrap_or(pair.len());
        (&pair[..eq] == name)
            .then(|| pair.get(eq + 1..).unwrap_or(&[]))
            .filter(|v| !v.is_empty())
    })
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |e| e + 1);
    &b[s..e]
}

/// The value at a dotted path of a JSON object body, as bytes: strings as
/// they are, numbers and booleans as written. `None` when the body is not
/// JSON, the path is missing, or it names an object, array or null.
pub fn json_key(body: &[u8], path: &str) -> Option<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut cur = &v;
    for seg in path.split('.') {
        cur = match cur {
            serde_json::Value::Object(m) => m.get(seg)?,
            serde_json::Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match cur {
        serde_json::Value::String(s) => Some(s.as_bytes().to_vec()),
        serde_json::Value::Number(n) => Some(n.to_string().into_bytes()),
        serde_json::Value::Bool(b) => Some(b.to_string().into_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(target("/run/hello"), Target::Function("hello"));
        assert_eq!(target("/run/hello/a/b"), Target::Function("hello"));
        assert_eq!(target("/run/"), Target::Function(""));
        assert_eq!(target("/run"), Target::Function(""));
        assert_eq!(target("/status"), Target::Other);
        assert_eq!(target("/runner"), Target::Other);
    }

    #[test]
    fn grpc_services() {
        assert_eq!(
            service_of("/helloworld.Greeter/SayHello"),
            Some("helloworld.Greeter")
        );
        assert_eq!(service_of("/run/hello/x"), None);
    }

    #[test]
    fn cookies_and_queries() {
        assert_eq!(cookie(b"a=1; sid=xyz ;b=2", b"sid"), Some(&b"xyz"[..]));
        assert_eq!(cookie(b"a=1", b"sid"), None);
        assert_eq!(cookie(b"sid=", b"sid"), None);
        assert_eq!(query(b"x=1&db=7", b"db"), Some(&b"7"[..]));
        assert_eq!(query(b"db", b"db"), None);
    }

    #[test]
    fn header_keys() {
        let mut req = RequestHeader::build("GET", b"/run/f?shard=9", None).unwrap();
        req.insert_header("cookie", "sid=abc").unwrap();
        req.insert_header("x-db", "d1").unwrap();
        assert_eq!(
            header_key(&req, &KeySource::Cookie("sid".into())),
            Some(&b"abc"[..])
        );
        assert_eq!(
            header_key(&req, &KeySource::Header("X-DB".into())),
            Some(&b"d1"[..])
        );
        assert_eq!(
            header_key(&req, &KeySource::Query("shard".into())),
            Some(&b"9"[..])
        );
        assert_eq!(header_key(&req, &KeySource::Json("a".into())), None);
    }

    #[test]
    fn json_paths() {
        let b = br#"{"user":{"id":42,"db":"east"},"l":[{"k":"v"}]}"#;
        assert_eq!(json_key(b, "user.db"), Some(b"east".to_vec()));
        assert_eq!(json_key(b, "user.id"), Some(b"42".to_vec()));
        assert_eq!(json_key(b, "l.0.k"), Some(b"v".to_vec()));
        assert_eq!(json_key(b, "user"), None);
        assert_eq!(json_key(b"not json", "a"), None);
    }
}
