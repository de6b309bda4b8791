//! The one bounded read of a request body, for the three places that need
//! a whole body before a worker does: a routing key in the body (JSON or a
//! gRPC message), a result-cache key, and an upload to the code store.

use bytes::{Bytes, BytesMut};
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;

pub enum BodyRead {
    Whole(Bytes),
    /// Content-Length says it is over the limit; nothing was read.
    TooLarge,
    /// Over the limit after part of it was read: it cannot be forwarded.
    Cut,
}

/// Reads a request body up to `limit` bytes. With `replay`, pingora's
/// retry buffer keeps what was read for the worker, so a body read to be
/// inspected is still forwarded whole.
pub async fn read(session: &mut ServerSession, limit: usize, replay: bool) -> Result<BodyRead> {
    let len = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if len == Some(0) || (len.is_none() && session.is_body_empty()) {
        return Ok(BodyRead::Whole(Bytes::new()));
    }
    if len.is_some_and(|l| l > limit) {
        return Ok(BodyRead::TooLarge);
    }
    if replay {
        session.enable_retry_buffering();
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        if buf.len() + chunk.len() > limit {
            return Ok(BodyRead::Cut);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(BodyRead::Whole(buf.freeze()))
}
