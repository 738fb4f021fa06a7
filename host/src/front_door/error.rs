//! Every way a request can be refused, mapped to an HTTP status and a JSON
//! body in one place.

use hyper::StatusCode;
use serde_json::json;

use super::wire::WireError;

/// A refused request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrontDoorError {
    /// The body does not fit the wire format.
    #[error("{0}")]
    BadRequest(WireError),
    /// A field the wire format leaves optional but the service needs.
    #[error("`{0}` is missing or empty: every decision must name its agent")]
    Required(&'static str),
    /// A field longer than the host accepts.
    #[error("`{0}` is longer than {1} bytes")]
    TooLong(&'static str, usize),
    /// A field a caller may not set.
    #[error("`{0}` is filled by the host; a caller may not set it")]
    Forbidden(&'static str),
    /// Missing or wrong credential.
    #[error("{0}")]
    Unauthorized(String),
    /// The credential is good but may not do this.
    #[error("{0}")]
    Denied(String),
    /// The body is not JSON.
    #[error("content type must be application/json, got `{0}`")]
    UnsupportedMediaType(String),
    /// The body is over the limit.
    #[error("the body is over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The client did not send the body in time.
    #[error("the request body did not arrive within {0} ms")]
    Timeout(u64),
    /// The body could not be read.
    #[error("cannot read the request body: {0}")]
    Body(String),
    /// No such endpoint.
    #[error("no endpoint `{0}`")]
    NotFound(String),
    /// The endpoint exists; the method does not.
    #[error("method not allowed; use {allow}")]
    MethodNotAllowed {
        /// The methods it takes.
        allow: &'static str,
    },
    /// Too many decisions in flight.
    #[error("saturated: {0} decisions are already running or waiting; retry shortly")]
    Saturated(usize),
    /// Policies are still loading.
    #[error("not ready: policies are still loading")]
    NotReady,
    /// The request names a policy that is not configured.
    #[error("{0}")]
    UnknownPolicy(String),
    /// The request names an approval this server does not have.
    #[error("{0}")]
    UnknownApproval(String),
    /// The request names an MCP tool that is not pinned.
    #[error("{0}")]
    UnknownTool(String),
    /// A result names no allowed call awaiting one.
    #[error("{0}")]
    UnknownCall(String),
    /// The request cannot be carried out in the current state.
    #[error("{0}")]
    Conflict(String),
    /// The caller already holds as many of something as one may.
    #[error("{0}")]
    TooMany(String),
    /// Something the request needs is failing; retry once it is back.
    #[error("{0}")]
    Unavailable(String),
}

impl FrontDoorError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            FrontDoorError::BadRequest(_)
            | FrontDoorError::Required(_)
            | FrontDoorError::Forbidden(_)
            | FrontDoorError::TooLong(..) => StatusCode::BAD_REQUEST,
            FrontDoorError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            FrontDoorError::Denied(_) => StatusCode::FORBIDDEN,
            FrontDoorError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            FrontDoorError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            FrontDoorError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            FrontDoorError::Body(_) => StatusCode::BAD_REQUEST,
            FrontDoorError::NotFound(_)
            | FrontDoorError::UnknownPolicy(_)
            | FrontDoorError::UnknownApproval(_)
            | FrontDoorError::UnknownTool(_)
            | FrontDoorError::UnknownCall(_) => StatusCode::NOT_FOUND,
            FrontDoorError::Conflict(_) => StatusCode::CONFLICT,
            FrontDoorError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            FrontDoorError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            FrontDoorError::Saturated(_)
            | FrontDoorError::NotReady
            | FrontDoorError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            FrontDoorError::BadRequest(_) => "bad_request",
            FrontDoorError::Required(_) => "missing_field",
            FrontDoorError::Forbidden(_) => "field_not_allowed",
            FrontDoorError::TooLong(..) => "field_too_long",
            FrontDoorError::Unauthorized(_) => "unauthorized",
            FrontDoorError::Denied(_) => "forbidden",
            FrontDoorError::UnsupportedMediaType(_) => "unsupported_media_type",
            FrontDoorError::PayloadTooLarge { .. } => "payload_too_large",
            FrontDoorError::Timeout(_) => "timeout",
            FrontDoorError::Body(_) => "bad_body",
            FrontDoorError::NotFound(_) => "not_found",
            FrontDoorError::MethodNotAllowed { .. } => "method_not_allowed",
            FrontDoorError::Saturated(_) => "saturated",
            FrontDoorError::NotReady => "not_ready",
            FrontDoorError::UnknownPolicy(_) => "unknown_policy",
            FrontDoorError::UnknownApproval(_) => "unknown_approval",
            FrontDoorError::UnknownTool(_) => "unknown_tool",
            FrontDoorError::UnknownCall(_) => "unknown_call",
            FrontDoorError::Conflict(_) => "conflict",
            FrontDoorError::TooMany(_) => "too_many",
            FrontDoorError::Unavailable(_) => "unavailable",
        }
    }

    /// The JSON body: `{"error": {"code", "message", ...}}`, with the field
    /// path, line and column for a bad body.
    pub fn body(&self) -> serde_json::Value {
        let mut error = json!({"code": self.code(), "message": self.to_string()});
        match self {
            FrontDoorError::BadRequest(w) => {
                error["path"] = json!(w.path);
                error["line"] = json!(w.line);
                error["column"] = json!(w.column);
            }
            FrontDoorError::Required(path)
            | FrontDoorError::Forbidden(path)
            | FrontDoorError::TooLong(path, _) => {
                error["path"] = json!(path);
            }
            _ => {}
        }
        json!({ "error": error })
    }

    /// Extra headers the status calls for.
    pub fn headers(&self) -> Vec<(&'static str, &'static str)> {
        match self {
            FrontDoorError::Unauthorized(_) => vec![("www-authenticate", "Bearer")],
            FrontDoorError::MethodNotAllowed { allow } => vec![("allow", allow)],
            FrontDoorError::Saturated(_)
            | FrontDoorError::NotReady
            | FrontDoorError::TooMany(_) => {
                vec![("retry-after", "1")]
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_not_found_names_its_subject() {
        for (e, code) in [
            (FrontDoorError::UnknownPolicy("p".into()), "unknown_policy"),
            (
                FrontDoorError::UnknownApproval("a".into()),
                "unknown_approval",
            ),
            (FrontDoorError::UnknownTool("t".into()), "unknown_tool"),
            (FrontDoorError::NotFound("/x".into()), "not_found"),
        ] {
            assert_eq!(e.status(), StatusCode::NOT_FOUND, "{e}");
            assert_eq!(e.code(), code);
            assert_eq!(e.body()["error"]["code"], code);
        }
    }

    #[test]
    fn saturation_and_loading_are_503() {
        assert_eq!(
            FrontDoorError::Saturated(4).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            FrontDoorError::NotReady.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
