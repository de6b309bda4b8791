//! The bounded read of a request body (calls and uploads).

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::StatusCode;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::reply::{text, Resp};

/// Reads a body up to `limit` bytes; 413 beyond it.
pub async fn read(body: Incoming, headers: &http::HeaderMap, limit: usize) -> Result<Bytes, Resp> {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(text(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the request body: {e}"),
        )),
    }
}
