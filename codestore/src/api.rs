//! The `/registry` API as both fronts serve it (the worker's port, the
//! proxy's admin listener): what a request asks for, read the same way on
//! both, and the messages they answer with. Each front then answers from
//! its own source (the registry, the function cache).
//!
//! | request                                   | [`Request`]  |
//! |-------------------------------------------|--------------|
//! | `GET /registry/`                          | `List`       |
//! | `GET`/`HEAD /registry/<name>[.tar.gz]`    | `Package`    |
//! | `GET /registry/<name>/config`             | `Config`     |
//! | `POST`/`PUT /registry/<name>`             | `Upload`     |
//! | `DELETE /registry/<name>`                 | `Delete`     |

/// What a `/registry` request asks for; each name is a valid one.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    List,
    Package(&'a str),
    Config(&'a str),
    Upload(&'a str),
    Delete(&'a str),
}

/// A request the API does not serve: its status and one-line reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

fn refuse(status: u16, reason: String) -> Refusal {
    Refusal { status, reason }
}

/// Reads `method` and `rest`, the path after `/registry`.
pub fn parse<'a>(method: &str, rest: &'a str) -> Result<Request<'a>, Refusal> {
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() {
        return match method {
            "GET" => Ok(Request::List),
            _ => Err(refuse(405, "the registry list only answers GET".into())),
        };
    }
    let (name, sub) = rest.split_once('/').unwrap_or((rest, ""));
    let get = matches!(method, "GET" | "HEAD");
    let name = match sub {
        "" if get => name.strip_suffix(".tar.gz").unwrap_or(name),
        _ => name,
    };
    config::validate_function_name(name).map_err(|e| refuse(400, e))?;
    match (method, sub) {
        ("GET" | "HEAD", "") => Ok(Request::Package(name)),
        ("GET", "config") => Ok(Request::Config(name)),
        ("POST" | "PUT", "") => Ok(Request::Upload(name)),
        ("DELETE", "") => Ok(Request::Delete(name)),
        (m, s) => {
            let slash = if s.is_empty() { "" } else { "/" };
            Err(refuse(
                405,
                format!("{m} /registry/{name}{slash}{s} is not supported"),
            ))
        }
    }
}

/// The answer to an upload that was stored.
pub fn installed(name: &str) -> String {
    format!("installed {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_the_same_on_both_fronts() {
        assert_eq!(parse("GET", ""), Ok(Request::List));
        assert_eq!(parse("GET", "/"), Ok(Request::List));
        assert_eq!(parse("POST", "/").unwrap_err().status, 405);
        assert_eq!(parse("GET", "/f.tar.gz"), Ok(Request::Package("f")));
        assert_eq!(parse("HEAD", "/f"), Ok(Request::Package("f")));
        assert_eq!(parse("GET", "/f/config"), Ok(Request::Config("f")));
        assert_eq!(parse("PUT", "/f"), Ok(Request::Upload("f")));
        assert_eq!(parse("DELETE", "/f"), Ok(Request::Delete("f")));
        assert_eq!(parse("GET", "/../x").unwrap_err().status, 400);
        let r = parse("PATCH", "/f/x").unwrap_err();
        assert_eq!(
            (r.status, r.reason.as_str()),
            (405, "PATCH /registry/f/x is not supported")
        );
    }
}
