//! The console's stylesheet and script, embedded in the binary and served
//! with a digest for an `ETag`.

use hyper::StatusCode;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderValue};

use super::{Refusal, Reply, full};

const CSS: &str = include_str!("../../templates/console/console.css");
const JS: &str = include_str!("../../templates/console/console.js");

pub(super) fn serve(name: &str) -> Reply {
    let (body, kind) = match name {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return Err(Refusal::new(StatusCode::NOT_FOUND, "no such asset")),
    };
    let mut r = hyper::Response::new(full(body));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let digest = crate::evidence::record::value_sha256(&serde_json::Value::String(body.into()));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", view_tag(&digest))) {
        h.insert(ETAG, v);
    }
    Ok(r)
}

fn view_tag(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}
