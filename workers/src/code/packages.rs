//! The package store: pinned packages of functions' `requirements.txt`,
//! installed once per version and shared read-only by every sandbox.
//!
//! Layout: `<work_dir>/packages/<name>-<version>/` holds one package as
//! `pip install --target` lays it out; the directory goes on the function's
//! `sys.path`. Rules, and why:
//! - Only pins (`name==version` lines; blank lines and `#` comments are
//!   allowed): a pin names one version, so the store is keyed by it and
//!   shared between functions. Anything else is refused with one line that
//!   names the offending line (500: the function's package is broken).
//! - `--no-deps`: every dependency must be pinned in `requirements.txt`
//!   too (a lock file, as `pip freeze` writes it). Each package is then one
//!   directory that any package set can combine with any other, which is
//!   what zygotes' package sets are made of. A missing dependency shows up
//!   as an `ImportError` when the function loads (500 with the traceback).
//! - `--only-binary=:all:`: wheels only. Installing a wheel runs no code of
//!   the package, so pip can run as the worker (root) without running
//!   untrusted code as root. An sdist-only package is refused by pip.
//! - Atomic: pip installs into `packages/.tmp/<key>-<n>`, which is made
//!   world-readable and renamed into place only when pip succeeded, so a
//!   half-installed package is never on anyone's path. Leftovers of a
//!   killed worker in `.tmp` are removed at start.
//! - Serialized per package version (a lock per key), outside any sandbox,
//!   bounded by `install_timeout_ms` (pip is killed after it). A failure
//!   (502: the worker could not prepare the sandbox; pip cannot tell "no
//!   such version" from "index unreachable", and the call never reached the
//!   handler) carries pip's `ERROR:` lines and is remembered for
//!   `retry_after_ms`: calls in that window get the same error at once,
//!   the first call after it runs pip again.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config::worker::PackagesConfig;

use crate::fsutil;
use crate::stats::BACKEND;

pub use codestore::{parse_requirements, Pin};

/// Why a function's packages are not available.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PackageError {
    /// `requirements.txt` is not a list of pins (the function's fault: 500).
    #[error("{0}")]
    Requirements(String),
    /// pip failed or timed out (502).
    #[error("{0}")]
    Install(String),
}

pub struct PackageStore {
    root: PathBuf,
    tmp: PathBuf,
    python: PathBuf,
    timeout: Duration,
    retry_after: Duration,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    failures: Mutex<HashMap<String, (Instant, String)>>,
}

impl PackageStore {
    pub fn new(work_dir: &Path, python: &Path, cfg: &PackagesConfig) -> std::io::Result<Self> {
        let root = work_dir.join("packages");
        let tmp = root.join(".tmp");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        // Sandboxes may reach a package they know the path of, not list them.
        fsutil::set_mode(&root, 0o711)?;
        fsutil::set_mode(&tmp, 0o700)?;
        Ok(PackageStore {
            root,
            tmp,
            python: python.to_path_buf(),
            timeout: Duration::from_millis(cfg.install_timeout_ms),
            retry_after: Duration::from_millis(cfg.retry_after_ms),
            locks: Mutex::default(),
            failures: Mutex::default(),
        })
    }

    /// The pins of the function in `code_dir` (none without `requirements.txt`).
    pub fn requirements(code_dir: &Path) -> Result<Vec<Pin>, PackageError> {
        match fs::read_to_string(code_dir.join("requirements.txt")) {
            Ok(text) => parse_requirements(&text).map_err(PackageError::Requirements),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(PackageError::Requirements(format!("requirements.txt: {e}"))),
        }
    }

    pub fn dir(&self, pin: &Pin) -> PathBuf {
        self.root.join(pin.key())
    }

    /// Installs what is missing of `pins` (each at most once at a time)
    /// and returns their directories, in order.
    pub async fn ensure(self: &Arc<Self>, pins: &[Pin]) -> Result<Vec<PathBuf>, PackageError> {
        let mut dirs = Vec::with_capacity(pins.len());
        for pin in pins {
            let dir = self.dir(pin);
            if !dir.is_dir() {
                self.install(pin).await?;
            }
            dirs.push(dir);
        }
        Ok(dirs)
    }

    async fn install(self: &Arc<Self>, pin: &Pin) -> Result<(), PackageError> {
        let key = pin.key();
        let lock = self
            .locks
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        let _held = lock.lock().await;
        if self.dir(pin).is_dir() {
            return Ok(()); // installed while we waited
        }
        if let Some((at, err)) = self.failures.lock().unwrap().get(&key) {
            if at.elapsed() < self.retry_after {
                return Err(PackageError::Install(err.clone()));
            }
        }
        let this = self.clone();
        let p = pin.clone();
        let res = tokio::task::spawn_blocking(move || this.pip(&p))
            .await
            .unwrap_or_else(|e| Err(format!("install task failed: {e}")));
        match res {
            Ok(()) => {
                self.failures.lock().unwrap().remove(&key);
                BACKEND.packages_installed.fetch_add(1, Relaxed);
                tracing::info!(package = %pin.spec(), "package installed");
                Ok(())
            }
            Err(why) => {
                let line = format!("cannot install {}: {why}", pin.spec());
                tracing::warn!(package = %pin.spec(), %why, "package install failed");
                BACKEND.packages_failed.fetch_add(1, Relaxed);
                self.failures
                    .lock()
                    .unwrap()
                    .insert(key, (Instant::now(), line.clone()));
                Err(PackageError::Install(line))
            }
        }
    }

    /// Runs pip into a temporary directory and renames it into place.
    fn pip(&self, pin: &Pin) -> Result<(), String> {
        static N: AtomicU64 = AtomicU64::new(0);
        let tmp = self
            .tmp
            .join(format!("{}-{}", pin.key(), N.fetch_add(1, Relaxed)));
        let res = self.pip_into(pin, &tmp).and_then(|()| {
            make_readable(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
            fs::rename(&tmp, self.dir(pin)).map_err(|e| format!("rename into the store: {e}"))
        });
        let _ = fs::remove_dir_all(&tmp);
        res
    }

    fn pip_into(&self, pin: &Pin, tmp: &Path) -> Result<(), String> {
        let out_path = self.tmp.join(format!(
            "{}.out",
            tmp.file_name().unwrap().to_string_lossy()
        ));
        let out = fs::File::create(&out_path).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut child = std::process::Command::new(&self.python)
            .args(["-m", "pip", "install", "--no-deps", "--only-binary=:all:"])
            .args(["--no-input", "--disable-pip-version-check"])
            .args(["--no-warn-script-location", "--progress-bar", "off"])
            .arg("--target")
            .arg(tmp)
            .arg(pin.spec())
            .env("PIP_ROOT_USER_ACTION", "ignore")
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run {} -m pip: {e}", self.python.display()))?;
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let text = fs::read_to_string(&out_path).unwrap_or_default();
        let _ = fs::remove_file(&out_path);
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(format!("pip exited with {s}: {}", pip_errors(&text))),
            None => Err(format!(
                "pip did not finish within {} ms and was killed",
                self.timeout.as_millis()
            )),
        }
    }
}

/// pip's `ERROR:` lines on one line (else its last line), for the error body.
fn pip_errors(text: &str) -> String {
    let errors: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("ERROR:"))
        .collect();
    let s = if errors.is_empty() {
        text.lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no output")
            .to_string()
    } else {
        errors.join(" ")
    };
    s.chars().take(1000).collect()
}

/// Directories 0755, files 0644 (0755 if executable): readable by every
/// sandbox uid, writable by none.
fn make_readable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fsutil::set_mode(dir, 0o755)?;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            make_readable(&e.path())?;
        } else if t.is_file() {
            let exec = e.metadata()?.permissions().mode() & 0o111 != 0;
            fsutil::set_mode(&e.path(), if exec { 0o755 } else { 0o644 })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pip_errors_are_one_line() {
        let t = "Looking in links: x\nERROR: Could not find a version\nERROR: No matching distribution found for zz==1\n";
        assert_eq!(
            pip_errors(t),
            "ERROR: Could not find a version ERROR: No matching distribution found for zz==1"
        );
    }
}
