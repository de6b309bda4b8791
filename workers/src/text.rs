//! One line of text: the form of every error message the worker writes
//! where a newline would break it (a gRPC status travels in a header, a
//! compiler or engine message goes into a one-line error body).

/// `s` with every run of white space, newlines included, as one space.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
