//! A request that failed for good: the status and one-line reason the
//! client gets for a pingora error (`0`: the client went away, nothing to
//! answer).

use config::proxy::TimeoutsConfig;
use pingora::{Error, ErrorSource, ErrorType};

/// `worker`: who was tried, as the reason names it.
pub(super) fn status_and_reason(
    e: &Error,
    worker: &str,
    t: Option<&TimeoutsConfig>,
) -> (u16, String) {
    match (e.etype(), e.esource()) {
        (ErrorType::HTTPStatus(c), _) => (*c, e.to_string()),
        (ErrorType::ConnectTimedout, _) => (
            502,
            format!(
                "cannot connect to {worker}: no answer within {} ms",
                t.map_or(0, |t| t.connect_ms)
            ),
        ),
        (
            ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::BindError
            | ErrorType::SocketError,
            _,
        ) => (
            502,
            format!("cannot connect to {worker}: {}", e.etype().as_str()),
        ),
        (ErrorType::ReadTimedout | ErrorType::WriteTimedout, ErrorSource::Upstream)
        | (ErrorType::ReadTimedout, ErrorSource::Internal | ErrorSource::Unset) => (
            504,
            format!(
                "{worker} did not answer in time (read {} ms, total {} ms)",
                t.map_or(0, |t| t.read_ms),
                t.map_or(0, |t| t.total_ms)
            ),
        ),
        (_, ErrorSource::Upstream) => (
            502,
            format!(
                "{worker} failed before a complete response: {}",
                e.etype().as_str()
            ),
        ),
        (
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
            ErrorSource::Downstream,
        ) => (0, String::new()),
        (_, ErrorSource::Downstream) => (400, format!("bad request: {}", e.etype().as_str())),
        _ => (500, format!("proxy error: {}", e.etype().as_str())),
    }
}
