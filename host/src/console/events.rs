//! `GET /console/events`: a server-sent event each time an approval
//! changes, so the inbox updates without a reload. Streams are bounded
//! (`console.max_streams`), end when the session does, and end at
//! shutdown so the server's drain does not wait on them.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::StatusCode;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use tokio::sync::mpsc;

use super::{Ctx, Refusal, Reply};
use crate::front_door::admin::approvals::approvals_of;
use crate::mcp::http::ChannelBody;
use crate::time::{Clock, SystemClock};

/// A comment line this often keeps proxies from closing an idle stream,
/// and checks the session is still live.
const KEEPALIVE: Duration = Duration::from_secs(15);

pub(super) fn stream(ctx: &Ctx<'_>) -> Reply {
    let permit = std::sync::Arc::clone(&ctx.console.streams)
        .try_acquire_owned()
        .map_err(|_| {
            Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many live views are open; close one, or reload by hand",
            )
        })?;
    let mut changed = approvals_of(ctx.state)?.subscribe();
    let mut stop = ctx.console.stop.clone();
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let sessions = std::sync::Arc::clone(&ctx.console.sessions);
    let session = ctx.session.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut ticks = tokio::time::interval(KEEPALIVE);
        ticks.tick().await;
        if tx.send(Bytes::from_static(b": live\n\n")).await.is_err() {
            return;
        }
        loop {
            let line = tokio::select! {
                c = changed.changed() => match c {
                    Ok(()) => {
                        let n = *changed.borrow_and_update();
                        Bytes::from(format!("event: approvals\ndata: {n}\n\n"))
                    }
                    Err(_) => return,
                },
                _ = ticks.tick() => {
                    if !sessions.alive(&session, SystemClock.now_ms()) {
                        return;
                    }
                    Bytes::from_static(b": keepalive\n\n")
                }
                _ = stop.wait_for(|s| *s) => return,
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    let mut r = hyper::Response::new(ChannelBody(rx).boxed());
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}
