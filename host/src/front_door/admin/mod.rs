//! The admin plane's handlers, one file per subject. [`super::http`]
//! routes paths to them; each checks its own credential.

pub mod agents;
pub mod approvals;
pub mod mcp;
pub mod policies;
pub mod rollout;

use hyper::Request as HttpRequest;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;

use super::error::FrontDoorError;
use super::http::{Service, check_json, read_body};
use super::wire;

/// Checks the admin token and reads an admin body: `None` when empty.
pub(crate) async fn admin_body<T: serde::de::DeserializeOwned>(
    service: &Service,
    req: HttpRequest<Incoming>,
) -> Result<Option<T>, FrontDoorError> {
    service.tokens.check_admin(req.headers())?;
    let has_type = req.headers().contains_key(CONTENT_TYPE);
    if has_type {
        check_json(req.headers())?;
    }
    let bytes = read_body(req, &service.config.server).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(None)
    } else if has_type {
        wire::parse(&bytes)
            .map(Some)
            .map_err(FrontDoorError::BadRequest)
    } else {
        Err(FrontDoorError::UnsupportedMediaType(String::new()))
    }
}

/// A body an endpoint cannot do without.
pub(crate) fn required<T>(body: Option<T>, example: &'static str) -> Result<T, FrontDoorError> {
    body.ok_or_else(|| {
        FrontDoorError::BadRequest(wire::WireError {
            path: String::new(),
            message: format!("a body is required: {example}"),
            line: 1,
            column: 1,
        })
    })
}

/// A bad query, as a 400 naming what is wrong.
pub(crate) fn query_error(message: String) -> FrontDoorError {
    FrontDoorError::BadRequest(wire::WireError {
        path: String::new(),
        message,
        line: 1,
        column: 1,
    })
}

/// Decodes `%XX` escapes, and `+` as a space in a query value.
pub(crate) fn percent_decode(v: &str, plus_is_space: bool) -> Result<String, FrontDoorError> {
    let bad = || {
        FrontDoorError::BadRequest(wire::WireError {
            path: "agent".into(),
            message: "the query value is not valid percent-encoded UTF-8".into(),
            line: 1,
            column: 1,
        })
    };
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}
