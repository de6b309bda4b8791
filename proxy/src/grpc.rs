//! gRPC name and content inspection (workers/GRPC.md has the worker side).
//!
//! Name: a gRPC call names a service (`/<package>.<Service>/<Method>`), not
//! a function. Workers publish which function binds which service at
//! `GET /grpc/` (a JSON object); the proxy asks a healthy worker and caches
//! the answer for `TTL`, asking again on a miss at most once per
//! `MISS_RETRY`, so a newly uploaded binding is routed within a second.
//! The call is then routed exactly like `/run/<function>` (same route,
//! policy and facts); the bytes go to the worker unchanged over h2c.
//!
//! Content: a policy key `{ protobuf = "1.3" }` is read from the first
//! message of the call by field numbers, straight from the wire format, so
//! no descriptors are needed on the request path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use pingora::http::RequestHeader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::snapshot::Snapshot;

const TTL: Duration = Duration::from_secs(5);
const MISS_RETRY: Duration = Duration::from_secs(1);
const FETCH_TIMEOUT: Duration = Duration::from_millis(1000);

/// `content-type: application/grpc*` (not gRPC-Web).
pub fn is_call(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct == "application/grpc"
                || ct.starts_with("application/grpc+")
                || ct.starts_with("application/grpc;")
        })
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

struct Cache {
    map: HashMap<String, String>,
    fetched: Option<Instant>,
}

fn cache() -> &'static Mutex<Cache> {
    static C: OnceLock<Mutex<Cache>> = OnceLock::new();
    C.get_or_init(|| {
        Mutex::new(Cache {
            map: HashMap::new(),
            fetched: None,
        })
    })
}

/// The function bound to `service`, from the cache or the workers.
pub async fn function_for(service: &str, snap: &Snapshot) -> Option<String> {
    let stale = {
        let c = cache().lock().unwrap();
        let age = c.fetched.map(|t| t.elapsed());
        match c.map.get(service) {
            Some(f) if age.is_some_and(|a| a < TTL) => return Some(f.clone()),
            Some(_) => true,
            None => age.is_none_or(|a| a >= MISS_RETRY),
        }
    };
    if stale {
        let addrs: Vec<SocketAddr> = snap
            .workers
            .iter()
            .filter(|w| w.healthy())
            .chain(snap.workers.iter())
            .map(|w| w.addr)
            .collect();
        for addr in addrs {
            if let Some(map) = fetch_bindings(addr).await {
                let mut c = cache().lock().unwrap();
                c.map = map;
                c.fetched = Some(Instant::now());
                break;
            }
        }
    }
    cache().lock().unwrap().map.get(service).cloned()
}

/// `GET /grpc/` from one worker (a hand-written HTTP/1.1 request, like the
/// health probe: independent of the proxy's upstream pool).
async fn fetch_bindings(addr: SocketAddr) -> Option<HashMap<String, String>> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "GET /grpc/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: ol-proxy-grpc\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.take(1 << 20).read_to_end(&mut buf).await.ok()?;
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&buf[..end]).ok()?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        serde_json::from_slice(&buf[end + 4..]).ok()
    };
    match tokio::time::timeout(FETCH_TIMEOUT, fut).await {
        Ok(Some(m)) => Some(m),
        _ => {
            log::warn!("cannot read gRPC bindings from worker {addr} (GET /grpc/)");
            None
        }
    }
}

/// The key at dotted field numbers (`"1"`, `"2.1"`) of the first message
/// of a gRPC request body (5-byte frame header, uncompressed). Strings and
/// bytes as they are, integers in decimal; the last occurrence wins, as in
/// protobuf. `None` when absent or malformed.
pub fn protobuf_key(body: &[u8], path: &str) -> Option<Vec<u8>> {
    if body.len() < 5 || body[0] != 0 {
        return None;
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let mut msg = body.get(5..5 + len)?;
    let fields: Vec<u64> = path
        .split('.')
        .map(|s| s.parse().ok())
        .collect::<Option<_>>()?;
    let (last, parents) = fields.split_last()?;
    for f in parents {
        match find(msg, *f)? {
            Value::Len(sub) => msg = sub,
            _ => return None,
        }
    }
    Some(match find(msg, *last)? {
        Value::Len(b) => b.to_vec(),
        Value::Varint(v) => v.to_string().into_bytes(),
        Value::Fixed64(v) => v.to_string().into_bytes(),
        Value::Fixed32(v) => v.to_string().into_bytes(),
    })
}

enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

/// The last value of field `field` in one message.
fn find(mut b: &[u8], field: u64) -> Option<Value<'_>> {
    let mut found = None;
    while !b.is_empty() {
        let tag = varint(&mut b)?;
        let (num, wire) = (tag >> 3, tag & 7);
        let v = match wire {
            0 => Value::Varint(varint(&mut b)?),
            1 => {
                let (x, rest) = b.split_first_chunk::<8>()?;
                b = rest;
                Value::Fixed64(u64::from_le_bytes(*x))
            }
            2 => {
                let n = usize::try_from(varint(&mut b)?).ok()?;
                let (x, rest) = (b.get(..n)?, b.get(n..)?);
                b = rest;
                Value::Len(x)
            }
            5 => {
                let (x, rest) = b.split_first_chunk::<4>()?;
                b = rest;
                Value::Fixed32(u32::from_le_bytes(*x))
            }
            _ => return None,
        };
        if num == field {
            found = Some(v);
        }
    }
    found
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(msg: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        v.extend_from_slice(msg);
        v
    }

    #[test]
    fn services_and_keys() {
        assert_eq!(
            service_of("/helloworld.Greeter/SayHello"),
            Some("helloworld.Greeter")
        );
        assert_eq!(service_of("/run/hello/x"), None);
        // HelloRequest { name: "Ada" }
        let b = frame(&[0x0a, 3, b'A', b'd', b'a']);
        assert_eq!(protobuf_key(&b, "1"), Some(b"Ada".to_vec()));
        assert_eq!(protobuf_key(&b, "2"), None);
        // { 2: 300 (varint), 3: { 1: "x" }, 2: 7 } -> last 2 wins.
        let b = frame(&[0x10, 0xac, 0x02, 0x1a, 3, 0x0a, 1, b'x', 0x10, 7]);
        assert_eq!(protobuf_key(&b, "2"), Some(b"7".to_vec()));
        assert_eq!(protobuf_key(&b, "3.1"), Some(b"x".to_vec()));
        // Malformed: truncated, compressed, not a number path.
        assert_eq!(protobuf_key(&frame(&[0x0a, 9, b'A']), "1"), None);
        let mut c = frame(&[0x0a, 1, b'A']);
        c[0] = 1;
        assert_eq!(protobuf_key(&c, "1"), None);
        assert_eq!(protobuf_key(&frame(&[0x0a, 1, b'A']), "name"), None);
    }
}
