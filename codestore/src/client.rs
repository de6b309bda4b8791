//! The code store as its callers see it: a directory ([`crate::dir`]) or
//! an http(s) URL serving the code store API (another worker's or a
//! proxy's `/registry`), behind one type, so the worker's registry and the
//! proxy's function cache fetch, list, upload and delete the same way.
//!
//! Blocking (files, `ureq`): call it from a blocking thread. Every error
//! is one line saying what failed (`GET <url>: <why>`, a path and its I/O
//! error). Function names are validated by the caller.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::dir;

/// A code store: where packages come from and uploads go.
#[derive(Debug)]
pub struct Store {
    kind: Kind,
    /// Sent as `Authorization: Bearer <token>` to an HTTP store; none when empty.
    token: String,
}

#[derive(Debug)]
enum Kind {
    Dir(PathBuf),
    /// The URL without a trailing `/`.
    Http(String),
}

/// Why a location is not a store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0:?} is neither a directory nor an http(s) URL")]
    NotAStore(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// What a store answered an upload or a delete: an HTTP store's status
/// and body as it sent them; a directory store answers as the worker's
/// `/registry` would (201 `installed <name>`, 204, 404 `no function ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub text: String,
    /// The request, for [`Answer::error_for_status`]: `POST <url>`.
    request: String,
}

impl Answer {
    /// `Err` for a 4xx or 5xx answer, worded as a refused request:
    /// `POST <url>: http status: 400`; else the answer itself.
    pub fn error_for_status(self) -> Result<Answer, String> {
        if self.status >= 400 {
            Err(format!(
                "{}: {}",
                self.request,
                ureq::Error::StatusCode(self.status)
            ))
        } else {
            Ok(self)
        }
    }
}

/// The text of a missing function, the same from every store and front.
pub fn not_found(name: &str) -> String {
    format!("no function named {name:?} in the code store")
}

impl Store {
    /// `location` is a directory (which must exist) or an http(s) URL.
    pub fn open(location: &str, token: &str) -> Result<Store, OpenError> {
        let kind = if location.starts_with("http://") || location.starts_with("https://") {
            Kind::Http(location.trim_end_matches('/').to_string())
        } else {
            let dir = PathBuf::from(location);
            if !dir.is_dir() {
                return Err(OpenError::NotAStore(location.to_string()));
            }
            Kind::Dir(dir.canonicalize()?)
        };
        Ok(Store {
            kind,
            token: token.to_string(),
        })
    }

    /// The package of `name` as `.tar.gz` bytes (an HTTP store's body read
    /// up to `limit` bytes, no further), or `None` if the store has no such
    /// function.
    pub fn fetch(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>, String> {
        match &self.kind {
            Kind::Dir(root) => dir::fetch(root, name).map_err(|e| e.to_string()),
            Kind::Http(base) => {
                let url = format!("{base}/{name}.tar.gz");
                match self.authorized(ureq::get(&url)).call() {
                    Ok(mut resp) => resp
                        .body_mut()
                        .with_config()
                        .limit(limit)
                        .read_to_vec()
                        .map(Some)
                        .map_err(|e| format!("GET {url}: {e}")),
                    Err(ureq::Error::StatusCode(404)) => Ok(None),
                    Err(e) => Err(format!("GET {url}: {e}")),
                }
            }
        }
    }

    /// The names of all functions in the store, sorted.
    pub fn list(&self) -> Result<Vec<String>, String> {
        match &self.kind {
            Kind::Dir(root) => dir::list(root).map_err(|e| e.to_string()),
            Kind::Http(base) => {
                let url = format!("{base}/");
                let text = self
                    .authorized(ureq::get(&url))
                    .call()
                    .and_then(|mut r| r.body_mut().read_to_string())
                    .map_err(|e| format!("GET {url}: {e}"))?;
                serde_json::from_str(&text).map_err(|e| format!("GET {url}: {e}"))
            }
        }
    }

    /// Stores `bytes` as the package of `name` (a directory store: by
    /// atomic rename, [`dir::install`]). The caller has checked it. `Err`
    /// only when the store could not be asked; a refusal is an [`Answer`].
    pub fn upload(&self, name: &str, bytes: &[u8]) -> Result<Answer, String> {
        match &self.kind {
            Kind::Dir(root) => {
                dir::install(root, name, bytes).map_err(|e| e.to_string())?;
                Ok(local(201, crate::api::installed(name)))
            }
            Kind::Http(base) => {
                let url = format!("{base}/{name}");
                let sent = self
                    .authorized(ureq::post(&url))
                    .config()
                    .http_status_as_error(false)
                    .build()
                    .send(bytes);
                answer(sent, format!("POST {url}"))
            }
        }
    }

    /// Removes `name` in every form the store holds it; 404 when it had none.
    pub fn delete(&self, name: &str) -> Result<Answer, String> {
        match &self.kind {
            Kind::Dir(root) => match dir::delete(root, name) {
                Ok(true) => Ok(local(204, String::new())),
                Ok(false) => Ok(local(404, not_found(name))),
                Err(e) => Err(e.to_string()),
            },
            Kind::Http(base) => {
                let url = format!("{base}/{name}");
                let sent = self
                    .authorized(ureq::delete(&url))
                    .config()
                    .http_status_as_error(false)
                    .build()
                    .call();
                answer(sent, format!("DELETE {url}"))
            }
        }
    }

    fn authorized<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        if self.token.is_empty() {
            req
        } else {
            req.header("authorization", format!("Bearer {}", self.token))
        }
    }
}

impl fmt::Display for Store {
    /// The location, as given to [`Store::open`] (a directory canonicalized).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Dir(root) => write!(f, "{}", root.display()),
            Kind::Http(base) => f.write_str(base),
        }
    }
}

fn local(status: u16, text: String) -> Answer {
    Answer {
        status,
        text,
        request: String::new(),
    }
}

/// An HTTP store's answer, whatever its status; `Err` when none came.
fn answer(
    sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    request: String,
) -> Result<Answer, String> {
    let mut resp = sent.map_err(|e| format!("{request}: {e}"))?;
    Ok(Answer {
        status: resp.status().as_u16(),
        text: resp.body_mut().read_to_string().unwrap_or_default(),
        request,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_store_answers_like_a_registry() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().to_str().unwrap(), "").unwrap();
        assert_eq!(store.fetch("f", 10).unwrap(), None);
        let up = store.upload("f", b"\x1f\x8bpkg").unwrap();
        assert_eq!((up.status, up.text.as_str()), (201, "installed f"));
        assert_eq!(store.fetch("f", 10).unwrap().unwrap(), b"\x1f\x8bpkg");
        assert_eq!(store.list().unwrap(), vec!["f"]);
        assert_eq!(store.delete("f").unwrap().status, 204);
        let gone = store.delete("f").unwrap();
        assert_eq!(gone.status, 404);
        assert_eq!(gone.text, not_found("f"));
        assert!(gone.error_for_status().is_err());
    }

    #[test]
    fn only_directories_and_urls_are_stores() {
        let e = Store::open("/no/such/dir", "").unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"/no/such/dir\" is neither a directory nor an http(s) URL"
        );
        let s = Store::open("http://127.0.0.1:1/registry/", "t").unwrap();
        assert_eq!(s.to_string(), "http://127.0.0.1:1/registry");
        // Nothing listens on port 1: one line naming the request.
        let e = s.fetch("f", 10).unwrap_err();
        assert!(
            e.starts_with("GET http://127.0.0.1:1/registry/f.tar.gz: "),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let e = s.upload("f", b"x").unwrap_err();
        assert!(e.starts_with("POST http://127.0.0.1:1/registry/f: "), "{e}");
    }
}
