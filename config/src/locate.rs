//! Finds the line of a dotted key in a TOML text, so that a validation error
//! found after parsing can still point at `file:line`.
//!
//! It understands what our config files use: `[table]`, `[[array]]` headers
//! and `key = value` lines. Array-of-table entries are addressed by index,
//! e.g. `workers.1.address` for the second `[[workers]]`.

/// The 1-based line of `dotted` (e.g. `instances.max_per_function`), or of
/// the closest enclosing table found, or `None`.
pub fn toml_key_line(text: &str, dotted: &str) -> Option<usize> {
    let want: Vec<&str> = dotted.split('.').collect();
    let mut best: Option<(usize, usize)> = None; // (matched parts, line)
    let mut table: Vec<String> = Vec::new();
    let mut array_counts: std::collections::HashMap<String, usize> = Default::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let path: Vec<String>;
        if let Some(h) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = h.trim().to_string();
            let n = array_counts.entry(name.clone()).or_insert(0);
            table = name.split('.').map(|s| s.trim().to_string()).collect();
            table.push(n.to_string());
            *n += 1;
            path = table.clone();
        } else if let Some(h) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = h.split('.').map(|s| s.trim().to_string()).collect();
            path = table.clone();
        } else if let Some((key, _)) = line.split_once('=') {
            let key = key.trim().trim_matches('"');
            let mut p = table.clone();
            p.extend(key.split('.').map(|s| s.trim().to_string()));
            path = p;
        } else {
            continue;
        }
        let matched = path
            .iter()
            .zip(want.iter())
            .take_while(|(a, b)| a.as_str() == **b)
            .count();
        if matched == path.len() && matched > best.map_or(0, |b| b.0) {
            best = Some((matched, i + 1));
        }
    }
    best.map(|b| b.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "listen = \"x\"\n\n[instances]\nmax = 3\n# c\nqueue = 0\n\n[[workers]]\naddress = \"a\"\n[[workers]]\naddress = \"b\"\n";

    #[test]
    fn finds_keys_tables_and_array_entries() {
        assert_eq!(toml_key_line(TEXT, "listen"), Some(1));
        assert_eq!(toml_key_line(TEXT, "instances.queue"), Some(6));
        assert_eq!(toml_key_line(TEXT, "instances.missing"), Some(3));
        assert_eq!(toml_key_line(TEXT, "workers.1.address"), Some(11));
        assert_eq!(toml_key_line(TEXT, "nothing"), None);
    }
}
