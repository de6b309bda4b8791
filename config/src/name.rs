//! The function-name rule, shared by worker and proxy.

/// Longest accepted function name.
pub const MAX_NAME_LEN: usize = 128;

/// Checks a function name: `^[A-Za-z0-9._-]+$`, at most 128 bytes, and not
/// `.` or `..` (names become directory names in code stores).
pub fn validate_function_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("function name is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "function name is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("function name {name:?} is reserved"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "function name {:?} contains {c:?}; names match ^[A-Za-z0-9._-]+$",
            truncate(name, 40)
        ));
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_good_and_rejects_bad_names() {
        for good in ["hello", "a.b-c_d", "X9", &"a".repeat(128)] {
            assert!(validate_function_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"a".repeat(129), "a\0"] {
            assert!(validate_function_name(bad).is_err(), "{bad:?}");
        }
    }
}
