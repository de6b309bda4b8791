//! What the proxy learns from workers about gRPC services, for routing
//! (workers/GRPC.md has the worker side).
//!
//! Name: a gRPC call names a service (`/<package>.<Service>/<Method>`), not
//! a function. Workers publish which function binds which service at
//! `GET /grpc/` (a JSON object); the proxy asks a healthy worker and caches
//! the answer for `TTL`, asking again on a miss at most once per
//! `MISS_RETRY`, so a newly uploaded binding is routed within a second.
//! The call is then routed exactly like `/run/<function>` (same route,
//! policy and facts); the bytes go to the worker unchanged over h2c.
//!
//! Content: a policy key `{ protobuf = ... }` is read from the first
//! message of the call straight from the wire format, by field numbers.
//! A key by number (`"1.3"`) is used as it is. A key by name
//! (`"helloworld.HelloRequest.name"`) is resolved to numbers once per
//! (method, key) with the service's descriptors, which a worker serves at
//! `GET /grpc/<service>` (an encoded `FileDescriptorSet`), and cached for
//! `TTL`: the request path itself never decodes descriptors. A key that
//! names another message than the method's input gives no key (the call
//! falls to the next policy, as any request without one); a key that names
//! the input but a field it lacks is logged once per resolution.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prost_reflect::{DescriptorPool, Kind};

use super::client::http_get;
use crate::inspect::service_of;
use crate::state::Snapshot;

const TTL: Duration = Duration::from_secs(5);
const MISS_RETRY: Duration = Duration::from_secs(1);
/// Workers compile a function's protos when their service index is
/// rebuilt, which a loaded machine can take a while to do.
const FETCH_TIMEOUT: Duration = Duration::from_millis(3000);

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
        for addr in workers_to_ask(snap) {
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

/// `GET /grpc/` from one worker: the bindings.
async fn fetch_bindings(addr: SocketAddr) -> Option<HashMap<String, String>> {
    let body = fetch(addr, "/grpc/").await?;
    serde_json::from_slice(&body).ok()
}

/// A `200` body of `GET <path>` from one worker; `None`, logged, otherwise.
async fn fetch(addr: SocketAddr, path: &str) -> Option<Vec<u8>> {
    match http_get(addr, path, FETCH_TIMEOUT, 8 << 20).await {
        Some((200, body)) => Some(body),
        other => {
            let why = other.map_or("no answer".to_string(), |(s, _)| format!("status {s}"));
            tracing::warn!("cannot read {path} from worker {addr}: {why}");
            None
        }
    }
}

/// Field numbers of a resolved key, shared by every call of one method.
pub type FieldNumbers = Arc<[u64]>;

/// A key resolved for one method, and until when it holds.
struct Resolved {
    grpc_path: String,
    key: String,
    until: Instant,
    fields: Option<FieldNumbers>,
}

/// Most methods x keys remembered; the method comes from the client, so
/// the table is emptied rather than allowed to grow past this.
const MAX_RESOLVED: usize = 4096;

/// Resolutions by a hash of (method path, key); the entry holds both to
/// check, so a lookup allocates nothing.
fn resolved() -> &'static Mutex<HashMap<u64, Resolved>> {
    static C: OnceLock<Mutex<HashMap<u64, Resolved>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

/// The field numbers of the policy key `key` for a call to `grpc_path`
/// (`/<package>.<Service>/<Method>`): parsed when `key` is by number,
/// resolved with the service's descriptors when it is by name; either way
/// cached per (method, key) for `TTL`.
pub async fn field_numbers(key: &str, grpc_path: &str, snap: &Snapshot) -> Option<FieldNumbers> {
    let id = policies::hash_str(grpc_path) ^ policies::hash_str(key).rotate_left(17);
    if let Some(r) = resolved().lock().unwrap().get(&id) {
        if r.grpc_path == grpc_path && r.key == key && Instant::now() < r.until {
            return r.fields.clone();
        }
    }
    let (until, fields) = if config::policy::protobuf_numbers(key) {
        let n: Option<Vec<u64>> = key.split('.').map(|n| n.parse().ok()).collect();
        (Instant::now() + TTL, n.map(Arc::from))
    } else {
        let (hold, fields) = resolve_by_name(key, grpc_path, snap).await;
        (Instant::now() + hold, fields)
    };
    let mut map = resolved().lock().unwrap();
    if map.len() >= MAX_RESOLVED {
        map.clear();
    }
    let entry = Resolved {
        grpc_path: grpc_path.to_string(),
        key: key.to_string(),
        until,
        fields: fields.clone(),
    };
    map.insert(id, entry);
    fields
}

/// A key by name as field numbers, from the first worker that serves the
/// service's descriptors, and how long that answer holds.
async fn resolve_by_name(
    key: &str,
    grpc_path: &str,
    snap: &Snapshot,
) -> (Duration, Option<FieldNumbers>) {
    let (Some(service), Some(method)) = (service_of(grpc_path), grpc_path.rsplit('/').next())
    else {
        return (TTL, None);
    };
    // No worker answered: ask again after MISS_RETRY rather than TTL, so
    // a passing hiccup does not drop the key for long.
    let mut hold = MISS_RETRY;
    let mut result = None;
    for addr in workers_to_ask(snap) {
        let Some(body) = fetch(addr, &format!("/grpc/{service}")).await else {
            continue;
        };
        result = match DescriptorPool::decode(body.as_slice()) {
            // A worker answered: the outcome, key or not, holds for TTL.
            Ok(pool) => match resolve(&pool, service, method, key) {
                Ok(r) => {
                    hold = TTL;
                    r.map(Arc::from)
                }
                Err(e) => {
                    hold = TTL;
                    tracing::warn!("policy key {{ protobuf = {key:?} }} for {grpc_path}: {e}");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(
                    "worker {addr} served descriptors for {service} that do not decode: {e}"
                );
                continue;
            }
        };
        break;
    }
    (hold, result)
}

/// Healthy workers first, then the rest.
fn workers_to_ask(snap: &Snapshot) -> Vec<SocketAddr> {
    snap.workers
        .iter()
        .filter(|w| w.healthy())
        .chain(snap.workers.iter().filter(|w| !w.healthy()))
        .map(|w| w.addr)
        .collect()
}

/// `key` (`<message full name>.<field>[.<field>...]`) as field numbers for
/// `service`/`method`. `Ok(None)` when the key is for another message than
/// the method's input; `Err` when it names the input but cannot be read.
fn resolve(
    pool: &DescriptorPool,
    service: &str,
    method: &str,
    key: &str,
) -> Result<Option<Vec<u64>>, String> {
    let svc = pool
        .get_service_by_name(service)
        .ok_or_else(|| format!("the descriptors do not define service {service}"))?;
    let m = svc
        .methods()
        .find(|m| m.name() == method)
        .ok_or_else(|| format!("{service} has no method {method}"))?;
    let mut msg = m.input();
    let Some(fields) = key
        .strip_prefix(msg.full_name())
        .and_then(|r| r.strip_prefix('.'))
    else {
        return Ok(None);
    };
    let mut numbers = Vec::new();
    let mut names = fields.split('.').peekable();
    while let Some(name) = names.next() {
        let f = msg
            .get_field_by_name(name)
            .or_else(|| msg.get_field_by_json_name(name))
            .ok_or_else(|| format!("{} has no field {name:?}", msg.full_name()))?;
        if f.is_list() || f.is_map() {
            return Err(format!("{}.{name} is repeated", msg.full_name()));
        }
        numbers.push(u64::from(f.number()));
        match (f.kind(), names.peek()) {
            (Kind::Message(sub), Some(_)) => msg = sub,
            (_, Some(_)) => {
                return Err(format!("{}.{name} is not a message", msg.full_name()));
            }
            (_, None) => {}
        }
    }
    Ok(Some(numbers))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `package t; message Inner { string id = 4; }
    /// message Req { string name = 1; Inner inner = 3; repeated string tags = 5; }
    /// service S { rpc Call (Req) returns (Req); }`
    fn pool() -> DescriptorPool {
        use prost_reflect::prost_types::{
            field_descriptor_proto::{Label, Type},
            DescriptorProto, FieldDescriptorProto, FileDescriptorProto, MethodDescriptorProto,
            ServiceDescriptorProto,
        };
        let field = |name: &str, n: i32, ty: Type, label: Label, type_name: Option<&str>| {
            FieldDescriptorProto {
                name: Some(name.into()),
                number: Some(n),
                r#type: Some(ty as i32),
                label: Some(label as i32),
                type_name: type_name.map(Into::into),
                json_name: None,
                ..Default::default()
            }
        };
        let file = FileDescriptorProto {
            name: Some("t.proto".into()),
            package: Some("t".into()),
            syntax: Some("proto3".into()),
            message_type: vec![
                DescriptorProto {
                    name: Some("Inner".into()),
                    field: vec![field("id", 4, Type::String, Label::Optional, None)],
                    ..Default::default()
                },
                DescriptorProto {
                    name: Some("Req".into()),
                    field: vec![
                        field("name", 1, Type::String, Label::Optional, None),
                        field("inner", 3, Type::Message, Label::Optional, Some(".t.Inner")),
                        field("tags", 5, Type::String, Label::Repeated, None),
                    ],
                    ..Default::default()
                },
            ],
            service: vec![ServiceDescriptorProto {
                name: Some("S".into()),
                method: vec![MethodDescriptorProto {
                    name: Some("Call".into()),
                    input_type: Some(".t.Req".into()),
                    output_type: Some(".t.Req".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut pool = DescriptorPool::new();
        pool.add_file_descriptor_proto(file).unwrap();
        pool
    }

    #[test]
    fn keys_by_name_resolve_to_field_numbers() {
        let p = pool();
        let r = |key: &str| resolve(&p, "t.S", "Call", key);
        assert_eq!(r("t.Req.name"), Ok(Some(vec![1])));
        assert_eq!(r("t.Req.inner.id"), Ok(Some(vec![3, 4])));
        // Another message than the method's input: no key, no error.
        assert_eq!(r("t.Inner.id"), Ok(None));
        assert_eq!(r("helloworld.HelloRequest.name"), Ok(None));
        assert!(r("t.Req.nickname")
            .unwrap_err()
            .contains("no field \"nickname\""));
        assert!(r("t.Req.tags").unwrap_err().contains("repeated"));
        assert!(r("t.Req.name.x").unwrap_err().contains("not a message"));
        assert!(resolve(&p, "t.S", "Nope", "t.Req.name")
            .unwrap_err()
            .contains("no method"));
        assert!(resolve(&p, "t.T", "Call", "t.Req.name")
            .unwrap_err()
            .contains("service t.T"));
    }
}
