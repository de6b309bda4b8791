//! Compiling a function's `.proto` files, at install and at load, without
//! `protoc`.
//!
//! `protox` parses and checks the files named by the function's `ol.yaml`
//! (`grpc.protos`); imports resolve inside the function directory only
//! (plus Google's well-known types), so a package cannot read the worker's
//! files through `import "../../..."`. The result is a `prost-reflect`
//! descriptor pool, which is all the worker needs to map messages to and
//! from JSON. Compiled services are cached per function, keyed by the
//! unpacked version's directory, so a new version is compiled once and the
//! old entry is replaced.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use config::function::GrpcBinding;
use config::FunctionConfig;
use miette::Diagnostic;
use prost_reflect::{DescriptorPool, ServiceDescriptor};
use protox::file::{File, FileResolver, GoogleFileResolver};

/// A function's bound service, compiled.
#[derive(Debug)]
pub struct Compiled {
    pub service: ServiceDescriptor,
}

impl Compiled {
    pub fn pool(&self) -> &DescriptorPool {
        self.service.parent_pool()
    }
}

/// Checks the `grpc` section of a function unpacked in `dir` (the upload
/// check): every proto compiles and defines the bound service. `Ok` for a
/// function without a `grpc` section.
pub fn check(dir: &Path, cfg: &FunctionConfig) -> Result<(), String> {
    match &cfg.grpc {
        Some(g) => compile(dir, g).map(|_| ()),
        None => Ok(()),
    }
}

/// The compiled service of function `name` whose version lives in `dir`,
/// from the cache or compiled now. `None` when it binds no service.
pub fn load(name: &str, dir: &Path, cfg: &FunctionConfig) -> Result<Option<Arc<Compiled>>, String> {
    let Some(g) = &cfg.grpc else {
        return Ok(None);
    };
    /// Function name -> (the version's directory, its compiled service).
    type Cache = Mutex<HashMap<String, (PathBuf, Arc<Compiled>)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some((d, c)) = cache.lock().unwrap().get(name) {
        if d == dir {
            return Ok(Some(c.clone()));
        }
    }
    let compiled = Arc::new(compile(dir, g)?);
    cache
        .lock()
        .unwrap()
        .insert(name.to_string(), (dir.to_path_buf(), compiled.clone()));
    Ok(Some(compiled))
}

/// Compiles `g.protos` from `dir` and finds `g.service` in them. The error
/// is one line: `file:line:col: what the compiler said`.
pub fn compile(dir: &Path, g: &GrpcBinding) -> Result<Compiled, String> {
    let mut compiler = protox::Compiler::with_file_resolver(InDir(dir.to_path_buf()));
    compiler.include_imports(true).include_source_info(false);
    for p in &g.protos {
        compiler.open_file(p).map_err(|e| describe(dir, p, &e))?;
    }
    let pool = compiler.descriptor_pool();
    let service = pool.get_service_by_name(&g.service).ok_or_else(|| {
        let defined: Vec<String> = pool.services().map(|s| s.full_name().to_string()).collect();
        format!(
            "grpc.service: {} is not defined in {} (defined: {})",
            g.service,
            g.protos.join(", "),
            if defined.is_empty() {
                "no service".to_string()
            } else {
                defined.join(", ")
            }
        )
    })?;
    Ok(Compiled { service })
}

/// `file:line:col: message` from a protox error, as far as it says.
fn describe(dir: &Path, opened: &str, e: &protox::Error) -> String {
    let file = e.file().unwrap_or(opened).to_string();
    let msg = config::one_line(&e.to_string());
    let offset = e
        .labels()
        .and_then(|mut l| l.next())
        .map(|l| l.offset())
        .or_else(|| {
            // A descriptor check error carries its span in a related diagnostic.
            e.related()
                .and_then(|mut r| r.next())
                .and_then(|d| d.labels())
                .and_then(|mut l| l.next())
                .map(|l| l.offset())
        });
    let pos = offset.and_then(|off| {
        let text = std::fs::read_to_string(dir.join(&file)).ok()?;
        let before = text.get(..off)?;
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        Some(format!(":{line}:{col}"))
    });
    format!("grpc.protos: {file}{}: {msg}", pos.unwrap_or_default())
}

/// The largest `.proto` file a function may have.
pub const MAX_PROTO_BYTES: u64 = 1 << 20;
/// The deepest nesting of `{`, `[`, `(` and `<` a `.proto` may have: the
/// compiler recurses once per level, and a few thousand levels overflow
/// the worker's stack.
pub const MAX_PROTO_NESTING: usize = 32;

/// Refuses a proto nested deeper than [`MAX_PROTO_NESTING`], counting
/// brackets outside comments and string literals.
fn check_nesting(text: &str) -> Result<(), String> {
    let b = text.as_bytes();
    let (mut i, mut depth, mut line) = (0, 0usize, 1usize);
    while i < b.len() {
        match b[i] {
            b'\n' => line += 1,
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    line += usize::from(b[i] == b'\n');
                    i += 1;
                }
                i += 2;
                continue;
            }
            q @ (b'"' | b'\'') => {
                i += 1;
                // A string ends at its line's end, escaped or not (as the
                // compiler's lexer ends it), so a `\` cannot hide a line.
                while i < b.len() && b[i] != q && b[i] != b'\n' {
                    i += if b[i] == b'\\' && b.get(i + 1) != Some(&b'\n') {
                        2
                    } else {
                        1
                    };
                }
                if b.get(i) == Some(&b'\n') {
                    continue; // counted as a line by the next round
                }
            }
            b'{' | b'[' | b'(' | b'<' => {
                depth += 1;
                if depth > MAX_PROTO_NESTING {
                    return Err(format!(
                        "line {line}: nested more than {MAX_PROTO_NESTING} levels deep"
                    ));
                }
            }
            b'}' | b']' | b')' | b'>' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Resolves imports inside the function directory only (and Google's
/// well-known types).
struct InDir(PathBuf);

impl FileResolver for InDir {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name.starts_with("google/protobuf/") {
            if let Ok(f) = GoogleFileResolver::new().open_file(name) {
                return Ok(f);
            }
        }
        let plain = Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(protox::Error::new(format!(
                "import {name:?} leaves the function directory"
            )));
        }
        let path = self.0.join(name);
        // No symlinks out of the package (archive::unpack refuses them, but
        // a directory store is not unpacked).
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => Err(protox::Error::new(format!(
                "{name} is a symbolic link; protos must be plain files"
            ))),
            Ok(m) if m.len() > MAX_PROTO_BYTES => Err(protox::Error::new(format!(
                "{name} is {} bytes; a proto may have at most {MAX_PROTO_BYTES}",
                m.len()
            ))),
            Ok(_) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| protox::Error::new(format!("{name}: {e}")))?;
                // The compiler recurses per nesting level: bound it first.
                check_nesting(&text).map_err(|e| protox::Error::new(format!("{name}: {e}")))?;
                File::from_source(name, &text)
            }
            Err(_) => Err(protox::Error::file_not_found(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(service: &str, protos: &[&str]) -> GrpcBinding {
        GrpcBinding {
            service: service.into(),
            protos: protos.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn compiles_the_greeter_and_reports_errors_with_lines() {
        let dir = tempfile::tempdir().unwrap();
        let greeter = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/functions/greeter/greeter.proto");
        std::fs::copy(greeter, dir.path().join("g.proto")).unwrap();
        let c = compile(dir.path(), &binding("helloworld.Greeter", &["g.proto"])).unwrap();
        assert_eq!(c.service.methods().next().unwrap().name(), "SayHello");

        let e = compile(dir.path(), &binding("helloworld.Nope", &["g.proto"])).unwrap_err();
        assert!(e.contains("helloworld.Greeter"), "{e}");

        std::fs::write(
            dir.path().join("bad.proto"),
            "syntax = \"proto3\";\nmessage A {\n  string x = 1\n}\n",
        )
        .unwrap();
        let e = compile(dir.path(), &binding("a.B", &["bad.proto"])).unwrap_err();
        assert!(e.starts_with("grpc.protos: bad.proto:"), "{e}");
        assert!(!e.contains('\n'), "{e}");

        std::fs::write(
            dir.path().join("up.proto"),
            "syntax = \"proto3\";\nimport \"../x.proto\";\n",
        )
        .unwrap();
        // Refused by the parser already; the resolver refuses it as well.
        assert!(compile(dir.path(), &binding("a.B", &["up.proto"])).is_err());
        let e = InDir(dir.path().to_path_buf())
            .open_file("../x.proto")
            .unwrap_err();
        assert!(
            e.to_string().contains("leaves the function directory"),
            "{e}"
        );

        let e = compile(dir.path(), &binding("a.B", &["missing.proto"])).unwrap_err();
        assert!(e.contains("missing.proto"), "{e}");
    }

    #[test]
    fn refuses_deep_nesting_before_compiling() {
        let dir = tempfile::tempdir().unwrap();
        // 3,000 nested messages overflowed the worker's stack in the compiler.
        let n = 3000;
        let mut text = String::from("syntax = \"proto3\";\npackage a;\n");
        for i in 0..n {
            text.push_str(&format!("message M{i} {{\n"));
        }
        text.push_str(&"}\n".repeat(n));
        std::fs::write(dir.path().join("deep.proto"), &text).unwrap();
        let e = compile(dir.path(), &binding("a.S", &["deep.proto"])).unwrap_err();
        assert!(e.contains("nested more than 32 levels"), "{e}");
        // Brackets in comments and strings do not count; 32 levels are fine.
        assert!(check_nesting("// {{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{\n/* [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ */ option x = \"((((((((((((((((((((((((((((((((((((\";").is_ok());
        assert!(check_nesting(&("{".repeat(32) + &"}".repeat(32))).is_ok());
        // An unterminated string ending in `\` does not hide the next line.
        let hidden = format!("\"\\\n{}{}", "message a{".repeat(40), "}".repeat(40));
        assert!(check_nesting(&hidden).is_err());
        std::fs::write(
            dir.path().join("big.proto"),
            vec![b' '; (MAX_PROTO_BYTES + 1) as usize],
        )
        .unwrap();
        let e = compile(dir.path(), &binding("a.S", &["big.proto"])).unwrap_err();
        assert!(e.contains("at most"), "{e}");
    }
}
