//! Envoy's gRPC external authorizer: `envoy.service.auth.v3.Authorization/Check`
//! on its own listener (`authorizer.grpc_listen`), served by tonic with
//! Envoy's published protos (the `envoy-types` crate).
//!
//! A `Check` is the same action as the HTTP authorizer's
//! ([`super::ext_authz`]): method, path and query from
//! `attributes.request.http`, its host, the configured headers; agent,
//! user, environment and session from the headers `[authorizer]` names. It
//! goes through the one decision path, and its answer is the HTTP
//! authorizer's: only allow lets the request on (`OK`, with
//! `x-arbiter-decision-id` added upstream); deny, require-approval and
//! modify are `PERMISSION_DENIED` with a 403, the decision id header and
//! the JSON body `/v1/authz` gives.
//!
//! The credential: the agent's `x-arbiter-token` in the original request's
//! headers, as over HTTP; when the original request carries none, the
//! call's own metadata (`authorization: Bearer …` or `x-arbiter-token`),
//! which Envoy adds with `initial_metadata`. A `Check` without
//! `attributes.request.http` is refused (`INVALID_ARGUMENT`), never
//! decided on a guess.

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue as HttpHeaderValue};
use tonic::{Code, Request, Response, Status};

use super::error::FrontDoorError;
use super::http::{AppState, authorizer_answer, decide_original};
use super::{auth, ext_authz};

/// The header naming the decision, on what Envoy forwards or answers.
const DECISION_ID: &str = "x-arbiter-decision-id";

/// The `Authorization` service over one server's state.
pub struct Authorizer {
    state: Arc<AppState>,
}

/// The gRPC service for `state`, with its message size bounded by
/// `max_bytes` (the decision plane's `server.max_body_bytes`).
pub fn service(state: Arc<AppState>, max_bytes: usize) -> AuthorizationServer<Authorizer> {
    AuthorizationServer::new(Authorizer { state })
        .max_decoding_message_size(max_bytes)
        .max_encoding_message_size(max_bytes)
}

#[tonic::async_trait]
impl Authorization for Authorizer {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = std::time::Instant::now();
        let answer = self.answer(request).await;
        let code = match &answer {
            Ok(r) => r.get_ref().status.as_ref().map_or(0, |s| s.code),
            Err(s) => s.code() as i32,
        };
        self.state
            .metrics
            .record_response("grpc_authz", grpc_status_as_http(code));
        tracing::debug!(micros = started.elapsed().as_micros() as u64, code, "Check");
        answer
    }
}

impl Authorizer {
    async fn answer(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let metadata = request.metadata().clone().into_headers();
        let check = request.into_inner();
        let http = check
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .ok_or_else(|| {
                Status::invalid_argument("the Check carries no attributes.request.http")
            })?;
        let headers = original_headers(&http)?;
        let service = self.state.service.load_full();
        // The agent's own token in its request, as over HTTP; else what
        // Envoy itself presents on the call.
        let who = if headers.contains_key(auth::TOKEN_HEADER) {
            service.credentials.caller(&headers, false).await
        } else {
            service.credentials.caller(&metadata, true).await
        }
        .map_err(status_of)?;
        let original = if http.query.is_empty() || http.path.contains('?') {
            http.path.clone()
        } else {
            format!("{}?{}", http.path, http.query)
        };
        let host = if http.host.is_empty() {
            headers
                .get("host")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        } else {
            http.host.as_str()
        };
        let mut original = ext_authz::request_for(
            &service.config.authorizer,
            &http.method,
            &original,
            host,
            &headers,
        );
        // Envoy's own span for the check, when it traces, is the closer
        // parent than the one the original request came in with.
        if let Some(trace) = metadata
            .get(crate::decision::traceparent::HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::decision::traceparent::TraceParent::parse)
        {
            original.request.trace = Some(trace);
        }
        let decision = decide_original(&self.state, original, who.as_ref())
            .await
            .map_err(status_of)?;
        let (allowed, body) = authorizer_answer(&decision);
        let id_header = HeaderValueOption {
            header: Some(HeaderValue {
                key: DECISION_ID.into(),
                value: decision.decision_id.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let response = if allowed {
            CheckResponse {
                status: Some(RpcStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![id_header],
                    ..Default::default()
                })),
                ..Default::default()
            }
        } else {
            let content_type = HeaderValueOption {
                header: Some(HeaderValue {
                    key: "content-type".into(),
                    value: "application/json".into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            CheckResponse {
                status: Some(RpcStatus {
                    code: Code::PermissionDenied as i32,
                    message: body["reason"].as_str().unwrap_or_default().to_owned(),
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: envoy_types::ext_authz::v3::pb::HttpStatusCode::Forbidden as i32,
                    }),
                    headers: vec![id_header, content_type],
                    body: body.to_string(),
                })),
                ..Default::default()
            }
        };
        Ok(Response::new(response))
    }
}

/// The original request's headers as Envoy sent them: `header_map` when
/// it sends raw values, else `headers`. A name or value that is not a
/// valid HTTP header is refused, not dropped: a policy must see what the
/// upstream will.
fn original_headers(
    http: &envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest,
) -> Result<HeaderMap, Status> {
    let bad = |name: &str| {
        Status::invalid_argument(format!(
            "the original request's header `{}` is not a valid HTTP header",
            name.chars().take(64).collect::<String>()
        ))
    };
    let mut headers = HeaderMap::new();
    let mut add = |name: &str, value: &[u8]| {
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad(name))?;
        let v = HttpHeaderValue::from_bytes(value).map_err(|_| bad(name))?;
        headers.append(n, v);
        Ok::<_, Status>(())
    };
    match &http.header_map {
        Some(map) => {
            for h in &map.headers {
                let value = if h.raw_value.is_empty() {
                    h.value.as_bytes()
                } else {
                    &h.raw_value
                };
                add(&h.key, value)?;
            }
        }
        None => {
            for (name, value) in &http.headers {
                add(name, value.as_bytes())?;
            }
        }
    }
    Ok(headers)
}

/// A front-door error as the gRPC status a client can act on.
fn status_of(e: FrontDoorError) -> Status {
    let status = e.status();
    let message = e.to_string();
    match status.as_u16() {
        401 => Status::unauthenticated(message),
        403 => Status::permission_denied(message),
        400 | 413 | 422 => Status::invalid_argument(message),
        429 | 503 => Status::unavailable(message),
        _ => Status::internal(message),
    }
}

/// The HTTP status a gRPC code stands for, for the response metrics.
fn grpc_status_as_http(code: i32) -> u16 {
    match code {
        0 => 200,
        3 => 400,
        7 => 403,
        16 => 401,
        14 => 503,
        _ => 500,
    }
}
