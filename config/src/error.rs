//! One error type for every config file, always naming where the problem is.

use std::fmt;
use std::path::{Path, PathBuf};

/// A config file that cannot be used. Displays as one line:
/// `<file>:<line>: <field>: <reason>` (line and field when known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// Dotted path of the offending field, e.g. `instances.max_per_function`.
    pub field: Option<String>,
    pub reason: String,
}

impl ConfigError {
    pub fn new(file: &Path, reason: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: None,
            field: None,
            reason: one_line(&reason.into()),
        }
    }

    /// An error about one field; its line is looked up in `text` (TOML).
    pub fn field(file: &Path, text: &str, field: &str, reason: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: crate::locate::toml_key_line(text, field),
            field: Some(field.to_string()),
            reason: one_line(&reason.into()),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// A validation failure before it is tied to a file: field path and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A message folded onto one line: the form of every error ol-edge writes
/// (a reply body, a log line, a gRPC message in a header). Each line is
/// trimmed and the lines joined with one space; blank lines and the `|`/`^`
/// marker lines of parser messages (toml, yaml) are dropped. Spaces inside
/// a line stay, so a quoted value is shown as it was.
pub fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.chars().all(|c| c == '|' || c == '^' || c.is_whitespace()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn one_line_folds_lines_markers_and_runs_of_space() {
        assert_eq!(one_line("a\n\n  b\r\n c  d\t"), "a b c  d");
        assert_eq!(
            one_line("bad value\n  |\n1 | x = \n  |     ^\n"),
            "bad value 1 | x ="
        );
        assert_eq!(one_line(""), "");
    }
}
