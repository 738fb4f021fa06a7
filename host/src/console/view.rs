//! What every page shares: the frame (navigation, the operator, the CSRF
//! token, the message left by the last change), the error page, and the
//! small conversions the templates need.

use askama::Template;
use hyper::StatusCode;
use serde_json::Value;

use super::Refusal;
use super::session::Flash;

/// The frame every page is drawn in.
pub(crate) struct Frame {
    pub title: String,
    /// Which navigation entry is current.
    pub section: &'static str,
    pub operator: String,
    pub roles: String,
    pub csrf: String,
    pub flash: Option<Flash>,
}

/// The navigation: path and label.
pub(crate) const SECTIONS: &[(&str, &str, &str)] = &[
    ("overview", "/console", "Overview"),
    ("approvals", "/console/approvals", "Approvals"),
    ("agents", "/console/agents", "Agents"),
    ("policies", "/console/policies", "Policies"),
    ("decisions", "/console/decisions", "Decisions"),
];

/// A refusal, as a page of its own.
#[derive(Template)]
#[template(path = "console/error.html")]
pub(crate) struct ErrorPage<'a> {
    pub status: u16,
    pub reason: &'a str,
    pub message: &'a str,
}

/// A path segment as it came, `%XX` decoded.
pub(crate) fn decode(segment: &str) -> Result<String, Refusal> {
    crate::front_door::admin::percent_decode(segment, false).map_err(Refusal::from)
}

/// `s` safe as one path segment or query value.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Longest string value shown whole in folded JSON.
const FOLD_AT: usize = 160;

/// `value` pretty-printed with long strings cut to [`FOLD_AT`] characters,
/// and whether anything was cut (then the page offers the whole).
pub(crate) fn folded_json(value: &Value) -> (String, bool) {
    fn fold(v: &Value, cut: &mut bool) -> Value {
        match v {
            Value::String(s) if s.chars().count() > FOLD_AT => {
                *cut = true;
                let kept: String = s.chars().take(FOLD_AT).collect();
                let more = s.chars().count() - FOLD_AT;
                Value::String(format!("{kept}… ({more} more characters)"))
            }
            Value::Array(a) => Value::Array(a.iter().map(|x| fold(x, cut)).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, x)| (k.clone(), fold(x, cut))).collect())
            }
            other => other.clone(),
        }
    }
    let mut cut = false;
    let folded = fold(value, &mut cut);
    (pretty(&folded), cut)
}

/// `value` pretty-printed.
pub(crate) fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("(not printable: {e})"))
}

/// `ms` as people read a span: `4m 12s`, `2h 5m`, `3d 1h`.
pub(crate) fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A timestamp to the second, as the pages show it.
pub(crate) fn when(ms: u64) -> String {
    let t = crate::time::ms_time(ms);
    // 2026-12-05T10:30:12.123456Z → 2026-12-05 10:30:12Z
    match (t.get(..10), t.get(11..19)) {
        (Some(day), Some(time)) => format!("{day} {time}Z"),
        _ => t,
    }
}

/// The start of a `sha256:` digest, enough to tell versions apart.
pub(crate) fn short(version: &str) -> String {
    let hex = version.strip_prefix("sha256:").unwrap_or(version);
    hex.chars().take(12).collect()
}

/// A query string's pairs, decoded; an unknown key is refused.
pub(crate) fn query_pairs(query: &str, known: &[&str]) -> Result<Vec<(String, String)>, Refusal> {
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !known.contains(&k) {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown query parameter `{}`; known: {}",
                    k.chars().take(60).collect::<String>(),
                    known.join(", ")
                ),
            ));
        }
        out.push((
            k.to_owned(),
            crate::front_door::admin::percent_decode(v, true)?,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_folded_and_segments_round_trip() {
        let long = "x".repeat(500);
        let (text, cut) = folded_json(&serde_json::json!({"a": 1, "b": [long]}));
        assert!(cut);
        assert!(text.contains("(340 more characters)"), "{text}");
        assert!(!folded_json(&serde_json::json!({"a": "short"})).1);
        let odd = "a b/c%d<é>";
        assert_eq!(decode(&encode(odd)).expect("decodes"), odd);
        assert_eq!(span(252_000), "4m 12s");
        assert_eq!(when(0), "1970-01-01 00:00:00Z");
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
        assert!(query_pairs("q=a+b&evil=1", &["q"]).is_err());
        assert_eq!(
            query_pairs("q=a+b", &["q"]).expect("parses"),
            [("q".to_owned(), "a b".to_owned())]
        );
    }
}
