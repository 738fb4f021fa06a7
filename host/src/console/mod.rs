//! The operator console: approvals, agents, policies, decisions and an
//! overview in a browser, served on the admin listener under `/console`.
//!
//! Pages are rendered on the server (askama templates, escaped by default)
//! and work without JavaScript; a small script of our own makes the
//! approvals inbox live (server-sent events) and counts time down. Every
//! change goes through the admin plane's own functions
//! ([`crate::front_door::admin`]), as the signed-in operator, so the API,
//! the CLI and the console cannot disagree on who may do what, and the log
//! names the same actor whichever was used.
//!
//! What guards it, in the order a request meets them:
//! - the `Host` header must name loopback, the listener's own address or
//!   a configured `console.hosts` name (a page that rebinds its own name to
//!   this address is refused);
//! - every page but sign-in needs a session ([`session`]); the operator is
//!   authenticated again from the session's credential on each request;
//! - every form post must be same-origin (`Sec-Fetch-Site`, `Origin`) and
//!   carry the session's CSRF token;
//! - each change checks the operator's role on the server, whatever the
//!   page showed;
//! - every response carries a strict `Content-Security-Policy` (no inline
//!   script or style), `X-Frame-Options: DENY`, `no-store` and `nosniff`.

mod agents;
mod approvals;
mod assets;
mod decisions;
mod events;
mod form;
mod overview;
mod policies;
pub mod samples;
pub mod session;
mod view;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use askama::Template;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{
    CACHE_CONTROL, CONTENT_TYPE, HOST, HeaderName, HeaderValue, LOCATION, SET_COOKIE,
};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::{Semaphore, watch};

use crate::front_door::error::FrontDoorError;
use crate::front_door::http::AppState;
use crate::identity::Operator;
use crate::mcp::http::Body;
use crate::time::{Clock, SystemClock};
use session::{Flash, Sessions};

/// The strictest policy the pages work under: our own script and style
/// only, nothing inline, no frames, forms posting only here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console of one server.
pub struct Console {
    sessions: Arc<Sessions>,
    samples: Arc<samples::Samples>,
    streams: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
    /// The admin listener's own address, a name a browser may use.
    listen: Option<SocketAddr>,
    /// Whether the admin listener speaks TLS.
    tls: bool,
    /// The last verification of the decision log, for the decisions page.
    verified: Mutex<Option<decisions::Verification>>,
    clock: SystemClock,
}

impl Console {
    /// A console for a server configured by `config`, listening (over TCP)
    /// at `listen`, with TLS when `tls`, drawing its overview from
    /// `samples`, ending its event streams when `stop` turns true.
    pub fn new(
        config: &crate::config::ConsoleConfig,
        listen: Option<SocketAddr>,
        tls: bool,
        samples: Arc<samples::Samples>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Console {
            sessions: Arc::new(Sessions::new(session::Limits {
                idle_ms: config.session_idle_s.saturating_mul(1000),
                max_ms: config.session_max_s.saturating_mul(1000),
                max: config.max_sessions,
            })),
            samples,
            streams: Arc::new(Semaphore::new(config.max_streams)),
            stop,
            listen,
            tls,
            verified: Mutex::new(None),
            clock: SystemClock,
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}

/// Whether `path` is the console's.
pub fn is_console_path(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

/// Why a console request was refused: shown as a page with its status.
#[derive(Debug)]
pub(crate) struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

impl From<FrontDoorError> for Refusal {
    fn from(e: FrontDoorError) -> Self {
        Refusal::new(e.status(), e.to_string())
    }
}

impl From<askama::Error> for Refusal {
    fn from(e: askama::Error) -> Self {
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the page could not be drawn: {e}"),
        )
    }
}

type Reply = Result<Response<Body>, Refusal>;

/// What a page handler has: who asks, in which session.
pub(crate) struct Ctx<'a> {
    console: &'a Console,
    state: &'a AppState,
    op: Operator,
    session: String,
    csrf: String,
    flash: Option<Flash>,
}

impl Ctx<'_> {
    /// The frame every page is drawn in.
    fn frame(&self, title: &str, section: &'static str) -> view::Frame {
        view::Frame {
            title: title.to_owned(),
            section,
            operator: self.op.name.clone(),
            roles: self
                .op
                .roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            csrf: self.csrf.clone(),
            flash: self.flash.clone(),
        }
    }

    /// Reports `result` of a change on the next page: a redirect to `to`
    /// on success; the refusal itself, with its status, otherwise.
    fn done(&self, result: Result<String, Refusal>, to: &str) -> Reply {
        let message = result?;
        self.console
            .sessions
            .flash(&self.session, Flash { ok: true, message });
        Ok(redirect(to))
    }
}

/// Handles one request under `/console`. Never fails: every problem is a
/// page.
pub async fn serve(
    console: Arc<Console>,
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let response = match handle(&console, &state, req).await {
        Ok(r) => r,
        Err(refusal) => refused(&refusal),
    };
    state
        .metrics
        .record_response("console", response.status().as_u16());
    let secure = console.tls || state.service.load().config.console.secure_cookie;
    Ok(secured(response, secure))
}

async fn handle(console: &Console, state: &AppState, req: Request<Incoming>) -> Reply {
    host_allowed(console, state, req.headers())?;
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, p) if p.starts_with("/console/assets/") => {
            return assets::serve(&p["/console/assets/".len()..]);
        }
        (&Method::GET, "/console/login") => return form::login_page(state, None),
        (&Method::POST, "/console/login") => return form::login(console, state, req).await,
        _ => {}
    }
    let Some(id) = session::cookie(req.headers(), session::COOKIE).map(str::to_owned) else {
        return not_signed_in(&method);
    };
    let Some(found) = console.sessions.find(&id, console.now_ms()) else {
        return not_signed_in(&method);
    };
    let service = state.service.load_full();
    let op = match service.credentials.operator_of(&found.credential).await {
        Ok(op) => op,
        Err(FrontDoorError::Unauthorized(_)) => {
            // The credential was revoked or expired since sign-in.
            console.sessions.close(&id);
            return not_signed_in(&method);
        }
        Err(e) => return Err(e.into()),
    };
    let mut ctx = Ctx {
        console,
        state,
        op,
        session: id,
        csrf: found.csrf,
        flash: found.flash,
    };
    if method == Method::POST {
        let fields = form::posted(&ctx, req).await?;
        return post(&mut ctx, &path, fields).await;
    }
    if method != Method::GET && method != Method::HEAD {
        return Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "the console takes GET and POST only",
        ));
    }
    let query = req.uri().query().unwrap_or("").to_owned();
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
    match parts.as_slice() {
        [] => overview::page(&ctx),
        ["approvals"] => approvals::page(&ctx, &query),
        ["events"] => events::stream(&ctx),
        ["agents"] => agents::page(&ctx, &query),
        ["policies"] => policies::page(&ctx),
        ["policies", name, "mode"] => policies::confirm_mode(&ctx, &view::decode(name)?, &query),
        ["decisions"] => decisions::page(&ctx, &query).await,
        ["decisions", id] => decisions::record(&ctx, &view::decode(id)?).await,
        _ => Err(not_found(&path)),
    }
}

async fn post(ctx: &mut Ctx<'_>, path: &str, fields: form::Fields) -> Reply {
    let parts: Vec<&str> = path.split('/').skip(2).collect();
    match parts.as_slice() {
        ["logout"] => {
            fields.only(&[])?;
            ctx.console.sessions.close(&ctx.session);
            let mut r = redirect("/console/login");
            set_cookie(&mut r, &expired_cookie(session::COOKIE));
            Ok(r)
        }
        ["approvals", id, verb @ ("approve" | "decline")] => {
            approvals::answer(ctx, view::decode(id)?, *verb == "approve", fields).await
        }
        ["agents", id, verb @ ("suspend" | "resume")] => {
            agents::change(ctx, view::decode(id)?, *verb == "suspend", fields).await
        }
        ["policies", name, verb @ ("mode" | "rollback" | "promote")] => {
            policies::change(ctx, view::decode(name)?, verb, fields).await
        }
        ["decisions", "verify"] => decisions::verify(ctx, fields).await,
        _ => Err(not_found(path)),
    }
}

/// Refuses a `Host` the console does not answer to: loopback's names, the
/// listener's own address, and `console.hosts`.
fn host_allowed(
    console: &Console,
    state: &AppState,
    headers: &hyper::HeaderMap,
) -> Result<(), Refusal> {
    let refuse = |what: &str| {
        Refusal::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "the console does not answer to host `{what}`; add it to `console.hosts` if it is this server's name"
            ),
        )
    };
    let Some(host) = headers.get(HOST).and_then(|h| h.to_str().ok()) else {
        return Err(refuse(""));
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    let name = name.to_ascii_lowercase();
    let ok = matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1")
        || console.listen.is_some_and(|a| a.ip().to_string() == name)
        || state
            .service
            .load()
            .config
            .console
            .hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&name));
    if ok {
        Ok(())
    } else {
        Err(refuse(&host.chars().take(100).collect::<String>()))
    }
}

fn not_signed_in(method: &Method) -> Reply {
    if method == Method::GET || method == Method::HEAD {
        Ok(redirect("/console/login"))
    } else {
        Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "not signed in, or the session ended: sign in again",
        ))
    }
}

fn not_found(path: &str) -> Refusal {
    Refusal::new(
        StatusCode::NOT_FOUND,
        format!(
            "no console page `{}`",
            path.chars().take(200).collect::<String>()
        ),
    )
}

/// A 303 to one of the console's own pages (never a place the request
/// named, so no open redirect).
fn redirect(to: &str) -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

/// A rendered page.
fn html(status: StatusCode, page: &impl Template) -> Reply {
    let text = page.render()?;
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    Ok(r)
}

fn refused(refusal: &Refusal) -> Response<Body> {
    let page = view::ErrorPage {
        status: refusal.status.as_u16(),
        reason: refusal.status.canonical_reason().unwrap_or(""),
        message: &refusal.message,
    };
    html(refusal.status, &page).unwrap_or_else(|r| {
        let mut resp = Response::new(full(r.message));
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        resp
    })
}

/// Adds the headers every console response carries; over TLS (or behind
/// a proxy that terminates it, `console.secure_cookie`), its cookies are
/// `Secure` and browsers are told to keep to HTTPS.
fn secured(mut r: Response<Body>, secure: bool) -> Response<Body> {
    let h = r.headers_mut();
    if secure {
        let cookies: Vec<HeaderValue> = h
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| HeaderValue::from_str(&format!("{v}; Secure")).ok())
            .collect();
        h.remove(SET_COOKIE);
        for c in cookies {
            h.append(SET_COOKIE, c);
        }
        h.insert(
            HeaderName::from_static("strict-transport-security"),
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    for (k, v) in [
        ("content-security-policy", CSP),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        // Not `no-referrer`: with it, browsers send `Origin: null` on the
        // console's own form posts, which then look cross-site.
        ("referrer-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// A cookie of the console's: `HttpOnly`, `SameSite=Strict`, only for
/// `/console` (and `Secure` over TLS, added by [`secured`]).
fn cookie(name: &str, value: &str, max_age_s: u64) -> String {
    format!("{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age_s}")
}

fn expired_cookie(name: &str) -> String {
    cookie(name, "", 0)
}

fn set_cookie(r: &mut Response<Body>, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(SET_COOKIE, v);
    }
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

fn empty() -> Body {
    full(Bytes::new())
}
