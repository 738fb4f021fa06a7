//! Forms: signing in, and every post's checks (same origin, the CSRF
//! token, a bounded `application/x-www-form-urlencoded` body whose fields
//! are all known).

use std::collections::BTreeMap;

use askama::Template;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderMap, ORIGIN};
use hyper::{Request, StatusCode};

use super::session::{self, LOGIN_COOKIE, same_token};
use super::{Console, Ctx, Refusal, Reply, cookie, expired_cookie, html, redirect, set_cookie};
use crate::front_door::http::AppState;

/// The largest form the console takes: a reason is a few sentences.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// The fields of a posted form, CSRF token taken out.
#[derive(Debug, Default)]
pub(crate) struct Fields(BTreeMap<String, String>);

impl Fields {
    /// Refuses any field but `known`.
    pub(crate) fn only(&self, known: &[&str]) -> Result<(), Refusal> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown form field `{}`",
                    k.chars().take(60).collect::<String>()
                ),
            )),
            None => Ok(()),
        }
    }

    /// Field `name`, trimmed; `None` when absent or blank.
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        self.0
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// Field `name`, which must be there and not blank.
    pub(crate) fn required(&self, name: &str, what: &str) -> Result<String, Refusal> {
        self.get(name)
            .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, format!("{what} is required")))
    }
}

/// The sign-in page.
#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage<'a> {
    csrf: &'a str,
    message: Option<&'a str>,
    configured: bool,
}

/// The sign-in page, with a fresh token for its form in a cookie of its
/// own (there is no session yet to keep it in).
pub(super) fn login_page(state: &AppState, message: Option<&str>) -> Reply {
    login_page_status(state, StatusCode::OK, message)
}

fn login_page_status(state: &AppState, status: StatusCode, message: Option<&str>) -> Reply {
    let csrf =
        session::random_token().map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let configured = state.service.load().credentials.operators_configured();
    let page = LoginPage {
        csrf: &csrf,
        message,
        configured,
    };
    let mut r = html(status, &page)?;
    set_cookie(&mut r, &cookie(LOGIN_COOKIE, &csrf, 600));
    Ok(r)
}

/// `POST /console/login`: an operator credential for a session.
pub(super) async fn login(console: &Console, state: &AppState, req: Request<Incoming>) -> Reply {
    same_origin(req.headers())?;
    let expected = session::cookie(req.headers(), LOGIN_COOKIE)
        .unwrap_or_default()
        .to_owned();
    let mut fields = read(state, req).await?;
    let given = fields.0.remove("csrf").unwrap_or_default();
    if !same_token(&given, &expected) {
        return Err(csrf_refused());
    }
    fields.only(&["token"])?;
    let Some(token) = fields.get("token") else {
        return login_page_status(
            state,
            StatusCode::BAD_REQUEST,
            Some("Give your operator token."),
        );
    };
    let service = state.service.load_full();
    let op = match service.credentials.operator_of(&token).await {
        Ok(op) => op,
        Err(crate::front_door::error::FrontDoorError::Unauthorized(why)) => {
            tracing::warn!(reason = %why, "console sign-in refused");
            return login_page_status(
                state,
                StatusCode::UNAUTHORIZED,
                Some("That token names no operator."),
            );
        }
        Err(e) => return Err(e.into()),
    };
    let (id, _) = console
        .sessions
        .open(token, console.now_ms())
        .map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    tracing::info!(operator = %op.name, "console sign-in");
    let max_age = service.config.console.session_max_s;
    let mut r = redirect("/console");
    set_cookie(&mut r, &cookie(session::COOKIE, &id, max_age));
    set_cookie(&mut r, &expired_cookie(LOGIN_COOKIE));
    Ok(r)
}

/// A post's fields, once it is shown to come from the console itself.
pub(super) async fn posted(ctx: &Ctx<'_>, req: Request<Incoming>) -> Result<Fields, Refusal> {
    same_origin(req.headers())?;
    let mut fields = read(ctx.state, req).await?;
    let given = fields.0.remove("csrf").unwrap_or_default();
    if !same_token(&given, &ctx.csrf) {
        tracing::warn!(operator = %ctx.op.name, "console post without its CSRF token refused");
        return Err(csrf_refused());
    }
    Ok(fields)
}

fn csrf_refused() -> Refusal {
    Refusal::new(
        StatusCode::FORBIDDEN,
        "the form's CSRF token is missing or not this session's: reload the page and try again",
    )
}

/// Refuses a post a browser says came from another site. Browsers send
/// `Sec-Fetch-Site` and `Origin` with posts; a client that sends neither
/// still needs the CSRF token.
fn same_origin(headers: &HeaderMap) -> Result<(), Refusal> {
    let cross = |why: String| Refusal::new(StatusCode::FORBIDDEN, why);
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("");
        if site != "same-origin" && site != "none" {
            return Err(cross(format!(
                "a post from another site (`Sec-Fetch-Site: {}`) is refused",
                site.chars().take(40).collect::<String>()
            )));
        }
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let bare = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        if host.is_empty() || bare != host {
            return Err(cross(format!(
                "a post from origin `{}` is refused",
                origin.chars().take(100).collect::<String>()
            )));
        }
    }
    Ok(())
}

/// Reads a form body: the right type, within [`MAX_FORM_BYTES`], each
/// field once.
async fn read(state: &AppState, req: Request<Incoming>) -> Result<Fields, Refusal> {
    let kind = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if kind.split(';').next().map(str::trim) != Some("application/x-www-form-urlencoded") {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the console takes forms (application/x-www-form-urlencoded)",
        ));
    }
    let mut server = state.service.load().config.server.clone();
    server.max_body_bytes = server.max_body_bytes.min(MAX_FORM_BYTES);
    let bytes = crate::front_door::http::read_body(req, &server).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "the form is not UTF-8"))?;
    let mut fields = BTreeMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = crate::front_door::admin::percent_decode(k, true)?;
        let v = crate::front_door::admin::percent_decode(v, true)?;
        if fields.insert(k.clone(), v).is_some() {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "form field `{}` is given twice",
                    k.chars().take(60).collect::<String>()
                ),
            ));
        }
    }
    Ok(Fields(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, hyper::header::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn posts_from_another_site_are_refused() {
        assert!(same_origin(&headers(&[])).is_ok());
        assert!(
            same_origin(&headers(&[
                ("sec-fetch-site", "same-origin"),
                ("origin", "http://127.0.0.1:9"),
                ("host", "127.0.0.1:9"),
            ]))
            .is_ok()
        );
        assert!(same_origin(&headers(&[("sec-fetch-site", "cross-site")])).is_err());
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-site")])).is_err());
        assert!(
            same_origin(&headers(&[
                ("origin", "http://evil.example"),
                ("host", "127.0.0.1:9"),
            ]))
            .is_err()
        );
        assert!(same_origin(&headers(&[("origin", "null"), ("host", "127.0.0.1:9")])).is_err());
    }
}
