//! The Streamable HTTP transport: `arbiter serve` proxies `/mcp/{name}` to
//! the server's configured `upstream`, POST, GET and DELETE, headers and
//! the `Mcp-Session-Id` included.
//!
//! A POST carries one message (or a batch without governed requests): it
//! goes through [`Gateway::from_client`]; a refused call is answered here,
//! as `application/json`, and the upstream never sees it. The upstream
//! answers with JSON, read whole (bounded) and passed through
//! [`Gateway::from_server`], or with an event stream, rewritten event by
//! event as it arrives, so notifications and server-to-client requests
//! reach the client at once. A GET stream is rewritten the same way (a
//! server may replay a response on it). When the upstream fails before
//! answering a request, or its stream ends or breaks first, the client
//! gets an error for that request (-32012) instead of waiting forever.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{Caller, FromClient, Gateway, Session, jsonrpc, sse};

/// Errors a streamed body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response the server sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// Sessions kept at most, over every proxied server.
pub const MAX_SESSIONS: usize = 10_000;

/// The header that names an MCP session.
pub const SESSION_HEADER: &str = "mcp-session-id";

/// The sessions of every proxied server and the connection pool to the
/// upstreams; one per server process.
pub struct Proxies {
    client: Client<HttpConnector, Full<Bytes>>,
    sessions: Mutex<HashMap<(String, String), Arc<Session>>>,
}

impl Default for Proxies {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Proxies {
            client: Client::builder(TokioExecutor::new()).build(connector),
            sessions: Mutex::new(HashMap::new()),
        }
    }
}

impl std::fmt::Debug for Proxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxies").finish_non_exhaustive()
    }
}

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON-RPC message (or batch) as an `application/json` response.
pub fn json_rpc_response(status: StatusCode, msg: &Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(msg).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

impl Proxies {
    /// The session a request names, and whether this process knew it.
    fn session(&self, server: &str, id: Option<&str>) -> (Arc<Session>, bool) {
        let Some(id) = id else {
            return (Arc::new(Session::new("")), false);
        };
        match super::lock(&self.sessions).get(&(server.to_owned(), id.to_owned())) {
            Some(s) => (Arc::clone(s), true),
            // Arbiter restarted, or a made-up id: kept only once the
            // upstream accepts it, so made-up ids cannot crowd out real ones.
            None => (Arc::new(Session::new(id)), false),
        }
    }

    /// Keeps `session`; past [`MAX_SESSIONS`], the one used longest ago
    /// is forgotten (a client that never sends DELETE cannot grow the map).
    fn keep(&self, key: (String, String), session: Arc<Session>) {
        let mut sessions = super::lock(&self.sessions);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used())
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(key, session);
    }

    /// Proxies one request for `gateway`'s server. Never fails: every
    /// problem is a response the client can read.
    pub async fn handle(
        &self,
        gateway: Gateway,
        caller: Caller,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let server = gateway.server().clone();
        let Some(upstream) = server
            .upstream
            .as_deref()
            .and_then(|u| u.parse::<Uri>().ok())
        else {
            return json_rpc_response(
                StatusCode::NOT_FOUND,
                &jsonrpc::error(
                    Value::Null,
                    jsonrpc::INVALID_REQUEST,
                    format!("MCP server `{}` has no `upstream` to proxy", server.name),
                    None,
                ),
            );
        };
        let max = server.max_message_bytes;
        let sid = header(req.headers(), SESSION_HEADER).map(str::to_owned);
        let (session, known) = self.session(&server.name, sid.as_deref());
        let method = req.method().clone();
        let (parts, body) = req.into_parts();
        // What an answer of the gateway's own to the upstream carries.
        let reply_headers = reply_headers(&parts.headers);

        // What goes up, and the requests it carries.
        let mut ids = Vec::new();
        let payload = if method == Method::POST {
            let bytes = match read_limited(body, &parts.headers, max).await {
                Ok(b) => b,
                Err(r) => {
                    gateway.count("client-invalid", 1);
                    return r;
                }
            };
            let msg: Value = match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    gateway.count("client-invalid", 1);
                    return json_rpc_response(
                        StatusCode::BAD_REQUEST,
                        &jsonrpc::error(
                            Value::Null,
                            jsonrpc::PARSE_ERROR,
                            format!("Arbiter: the body is not JSON: {e}"),
                            None,
                        ),
                    );
                }
            };
            match gateway.from_client(&session, &caller, msg).await {
                FromClient::Reply(m) => return json_rpc_response(StatusCode::OK, &m),
                FromClient::Forward(m) => {
                    ids = request_ids(&m);
                    Bytes::from(serde_json::to_vec(&m).unwrap_or_default())
                }
            }
        } else {
            Bytes::new()
        };

        let mut up = Request::builder()
            .method(method.clone())
            .uri(upstream.clone());
        if let Some(h) = up.headers_mut() {
            copy_headers(&parts.headers, h);
            // Arbiter reads every answer: ask for it uncompressed.
            h.remove(hyper::header::ACCEPT_ENCODING);
            if let Some(a) = upstream.authority()
                && let Ok(v) = HeaderValue::from_str(a.as_str())
            {
                h.insert(HOST, v);
            }
        }
        let Ok(up) = up.body(Full::new(payload)) else {
            return Self::failed(&gateway, &session, &ids, "the request could not be built");
        };
        let timeout = Duration::from_secs(server.upstream_timeout_s);
        let response = match tokio::time::timeout(timeout, self.client.request(up)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let problem = format!("cannot reach {upstream}: {}", source_chain(&e));
                return Self::failed(&gateway, &session, &ids, &problem);
            }
            Err(_) => {
                let problem = format!(
                    "no answer from {upstream} within {}s",
                    server.upstream_timeout_s
                );
                return Self::failed(&gateway, &session, &ids, &problem);
            }
        };
        let (mut parts, body) = response.into_parts();
        if let Some(new) = header(&parts.headers, SESSION_HEADER)
            && sid.as_deref() != Some(new)
        {
            session.set_id(new);
            self.keep((server.name.clone(), new.to_owned()), Arc::clone(&session));
        } else if let Some(s) = &sid
            && !known
            && parts.status.is_success()
            && method != Method::DELETE
        {
            self.keep((server.name.clone(), s.clone()), Arc::clone(&session));
        }
        if method == Method::DELETE
            && parts.status.is_success()
            && let Some(s) = &sid
        {
            super::lock(&self.sessions).remove(&(server.name.clone(), s.clone()));
        }
        if !parts.status.is_success() {
            // The upstream refused the request: nothing of it will come back.
            let _ = session.fail_pending(&server.name, "", Some(&ids));
        }
        let mut headers = HeaderMap::new();
        copy_headers(&parts.headers, &mut headers);
        let encoded = header(&parts.headers, hyper::header::CONTENT_ENCODING.as_str())
            .is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
        if encoded {
            return Self::failed(
                &gateway,
                &session,
                &ids,
                "it answered compressed although asked not to",
            );
        }
        let content_type = header(&parts.headers, CONTENT_TYPE.as_str())
            .map(|c| {
                c.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let replier = Replier {
            client: self.client.clone(),
            upstream: upstream.clone(),
            headers: reply_headers,
            session: Arc::clone(&session),
        };
        let body = match content_type.as_str() {
            "application/json" => {
                let bytes = match read_limited(body, &parts.headers, max).await {
                    Ok(b) => b,
                    Err(_) => {
                        return Self::failed(
                            &gateway,
                            &session,
                            &ids,
                            "its answer is over `max_message_bytes` or broke off",
                        );
                    }
                };
                let Ok(msg) = serde_json::from_slice::<Value>(&bytes) else {
                    return Self::failed(&gateway, &session, &ids, "its answer is not JSON");
                };
                let (out, replies) = gateway.from_server_all(&session, &caller, msg).await;
                replier.send(replies);
                headers.remove(CONTENT_LENGTH);
                match out {
                    Some(m) => full(serde_json::to_vec(&m).unwrap_or_default()),
                    // Everything in it was refused: what it answered is an
                    // error; what it did not answer never will be.
                    None if ids.iter().any(|id| session.is_pending(id)) => {
                        return Self::failed(
                            &gateway,
                            &session,
                            &ids,
                            "its answer held nothing the gateway lets through",
                        );
                    }
                    None => {
                        headers.remove(CONTENT_TYPE);
                        full(Bytes::new())
                    }
                }
            }
            "text/event-stream" => {
                headers.remove(CONTENT_LENGTH);
                stream_events(
                    gateway,
                    session,
                    caller,
                    replier,
                    body,
                    ids,
                    method == Method::POST,
                )
            }
            // No body (a 202 to a notification, a 204, a DELETE's answer):
            // nothing to account for.
            _ if body.is_end_stream() => body.map_err(|e| Box::new(e) as BoxError).boxed(),
            other => {
                let problem = format!(
                    "it answered with content type `{}`, which the gateway cannot read; refused",
                    other.chars().take(100).collect::<String>()
                );
                let mut r = Self::failed(&gateway, &session, &ids, &problem);
                // An error status (a session the server no longer knows)
                // still reaches the client, without the body.
                if !parts.status.is_success() {
                    *r.status_mut() = parts.status;
                }
                return r;
            }
        };
        let mut r = Response::new(body);
        *r.status_mut() = parts.status;
        std::mem::swap(r.headers_mut(), &mut headers);
        parts.headers.clear();
        r
    }

    /// The answer when the upstream cannot be asked or did not answer.
    fn failed(
        gateway: &Gateway,
        session: &Session,
        ids: &[Value],
        problem: &str,
    ) -> Response<Body> {
        let server = gateway.server().name.as_str();
        tracing::warn!(server, problem, "MCP upstream failed");
        gateway.count("upstream-failed", 1);
        let mut errors = session.fail_pending(server, problem, Some(ids));
        let msg = match errors.len() {
            0 => jsonrpc::upstream_failed(Value::Null, server, problem),
            1 => errors.remove(0),
            _ => Value::Array(errors),
        };
        json_rpc_response(StatusCode::BAD_GATEWAY, &msg)
    }
}

/// The ids of the requests in `msg` (one message or a batch).
fn request_ids(msg: &Value) -> Vec<Value> {
    let one = |m: &Value| match jsonrpc::kind(m) {
        jsonrpc::Kind::Request { id, .. } => Some(id.clone()),
        _ => None,
    };
    match msg {
        Value::Array(ms) => ms.iter().filter_map(one).collect(),
        m => one(m).into_iter().collect(),
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Headers that belong to one hop, or to Arbiter, and are not passed on.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | crate::client::TOKEN_HEADER
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !hop_by_hop(k) {
            to.append(k.clone(), v.clone());
        }
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Reads a body of at most `max` bytes; a bigger one is refused with a
/// JSON-RPC error naming the limit.
async fn read_limited(
    body: Incoming,
    headers: &HeaderMap,
    max: usize,
) -> Result<Bytes, Response<Body>> {
    let too_big = || {
        json_rpc_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &jsonrpc::error(
                Value::Null,
                jsonrpc::INVALID_REQUEST,
                format!(
                    "Arbiter: the message is over the limit of {max} bytes (`max_message_bytes`)"
                ),
                None,
            ),
        )
    };
    if header(headers, CONTENT_LENGTH.as_str())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > max as u64)
    {
        return Err(too_big());
    }
    match tokio::time::timeout(Duration::from_secs(30), Limited::new(body, max).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_big()),
        Ok(Err(e)) => Err(json_rpc_response(
            StatusCode::BAD_REQUEST,
            &jsonrpc::error(
                Value::Null,
                jsonrpc::INVALID_REQUEST,
                format!("Arbiter: the body broke off: {e}"),
                None,
            ),
        )),
        Err(_) => Err(json_rpc_response(
            StatusCode::REQUEST_TIMEOUT,
            &jsonrpc::error(
                Value::Null,
                jsonrpc::INVALID_REQUEST,
                "Arbiter: the body took over 30 s",
                None,
            ),
        )),
    }
}

/// The upstream's event stream, rewritten event by event on a task of its
/// own. For a POST, the requests it carried that the stream ends without
/// answering are answered with an error event. A stream the gateway cannot
/// read (an event not JSON, not UTF-8, over the bound) ends there.
fn stream_events(
    gateway: Gateway,
    session: Arc<Session>,
    caller: Caller,
    replier: Replier,
    mut body: Incoming,
    ids: Vec<Value>,
    answers_post: bool,
) -> Body {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let name = gateway.server().name.clone();
    let max = gateway.server().max_message_bytes;
    tokio::spawn(async move {
        let mut reader = sse::Reader::new(max);
        let problem = 'stream: loop {
            let chunk = match body.frame().await {
                None => break "its event stream ended before the answer".to_owned(),
                Some(Err(e)) => break format!("its event stream broke off: {}", source_chain(&e)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
            };
            let events = match reader.push(&chunk) {
                Ok(e) => e,
                Err(e) => {
                    gateway.count("server-invalid", 1);
                    break format!("it sent {e}; its stream is refused");
                }
            };
            for event in events {
                let out = match rewrite(&gateway, &session, &caller, &replier, event).await {
                    Ok(out) => out,
                    Err(problem) => {
                        tracing::error!(server = %name, %problem, "the MCP server's event stream is refused");
                        gateway.count("server-invalid", 1);
                        break 'stream problem;
                    }
                };
                if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                    // The client left; the upstream stream is dropped with us.
                    return;
                }
            }
        };
        if answers_post {
            let unanswered = session.fail_pending(&name, &problem, Some(&ids));
            gateway.count("upstream-failed", unanswered.len());
            for m in unanswered {
                let event = sse::Event::default().encode(Some(&m.to_string()));
                let _ = tx.send(Bytes::from(event)).await;
            }
        }
    });
    ChannelBody(rx).boxed()
}

/// One event, its JSON-RPC message passed through the gateway; empty when
/// nothing of it goes on.
///
/// # Errors
/// Why the stream cannot be read on: the event is not JSON.
async fn rewrite(
    gateway: &Gateway,
    session: &Session,
    caller: &Caller,
    replier: &Replier,
    event: sse::Event,
) -> Result<Vec<u8>, String> {
    let Some(data) = event.data.as_deref().filter(|d| !d.trim().is_empty()) else {
        // Priming events and keep-alives carry no message.
        return Ok(event.encode(event.data.as_deref()));
    };
    let msg = serde_json::from_str::<Value>(data)
        .map_err(|e| format!("it sent an event that is not JSON ({e})"))?;
    let (out, replies) = gateway.from_server_all(session, caller, msg).await;
    replier.send(replies);
    Ok(match out {
        Some(m) => event.encode(Some(&m.to_string())),
        None => Vec::new(),
    })
}

/// Answers the upstream for the client, when the gateway refused a
/// request the upstream sent it: a POST of its own, in the same session.
#[derive(Clone)]
struct Replier {
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: Uri,
    headers: HeaderMap,
    session: Arc<Session>,
}

impl Replier {
    fn send(&self, replies: Vec<Value>) {
        for reply in replies {
            let mut request = Request::builder()
                .method(Method::POST)
                .uri(self.upstream.clone());
            if let Some(h) = request.headers_mut() {
                h.clone_from(&self.headers);
                if let Some(a) = self.upstream.authority()
                    && let Ok(v) = HeaderValue::from_str(a.as_str())
                {
                    h.insert(HOST, v);
                }
                let sid = self.session.id();
                if !sid.is_empty()
                    && let Ok(v) = HeaderValue::from_str(&sid)
                {
                    h.insert(SESSION_HEADER, v);
                }
            }
            let body = Full::new(Bytes::from(serde_json::to_vec(&reply).unwrap_or_default()));
            let Ok(request) = request.body(body) else {
                continue;
            };
            let client = self.client.clone();
            tokio::spawn(async move {
                // The upstream's 202 carries nothing; a failure only means
                // its request stays unanswered, as it would have anyway.
                if let Ok(Ok(r)) =
                    tokio::time::timeout(Duration::from_secs(30), client.request(request)).await
                {
                    let _ = r.into_body().collect().await;
                }
            });
        }
    }
}

/// The headers of the client's request that an answer to the upstream
/// carries too (its credentials for the upstream, the protocol version).
fn reply_headers(from: &HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::new();
    copy_headers(from, &mut h);
    for drop in [CONTENT_TYPE, CONTENT_LENGTH, hyper::header::ACCEPT_ENCODING] {
        h.remove(drop);
    }
    h.remove(SESSION_HEADER);
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        hyper::header::ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    h
}

/// A body fed by a channel, for event streams: it ends when the sender
/// is dropped.
pub(crate) struct ChannelBody(pub(crate) mpsc::Receiver<Bytes>);

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}
