//! The JSON-RPC 2.0 that MCP speaks: which message is which, and the
//! errors the gateway answers with.
//!
//! Error codes of the gateway's own, in the range JSON-RPC leaves to
//! servers (`data` always carries what a program needs):
//!
//! | code | meaning | `data` |
//! |---|---|---|
//! | -32010 | Arbiter denied the call | `decision_id`, `rule`, `reason`, `risk`, `outcome` |
//! | -32011 | the call needs a person's approval | as above, and `approval` (`id`, `status`, `expires_at`) |
//! | -32012 | the upstream server failed or went away | `server`, `problem` |
//! | -32013 | Arbiter withheld the tool's result | as -32010 |
//!
//! and the standard ones for what a peer sent: -32700 (not JSON), -32600
//! (not a JSON-RPC message, over the size limit, an id already in flight,
//! a decided method without an id), -32601 (a method the gateway does not
//! let through), -32602 (a `tools/call` without a tool name or with
//! arguments that are not an object), -32603 (the gateway could not do
//! its part).

use serde_json::{Value, json};

use crate::decision::Decision;

/// Arbiter denied the call.
pub const DENIED: i64 = -32010;
/// The call needs approval.
pub const APPROVAL_REQUIRED: i64 = -32011;
/// The upstream server failed or went away.
pub const UPSTREAM_FAILED: i64 = -32012;
/// The tool's result was withheld.
pub const RESULT_WITHHELD: i64 = -32013;
/// Not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// Not a JSON-RPC message, or too big.
pub const INVALID_REQUEST: i64 = -32600;
/// A method the gateway does not let through.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Params of the wrong shape.
pub const INVALID_PARAMS: i64 = -32602;
/// The gateway failed.
pub const INTERNAL_ERROR: i64 = -32603;

/// What one message is, by its members.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind<'a> {
    /// A request: method and id.
    Request {
        /// The method.
        method: &'a str,
        /// The id.
        id: &'a Value,
    },
    /// A notification: method, no id.
    Notification,
    /// A response: id, result or error.
    Response {
        /// The id.
        id: &'a Value,
    },
    /// None of those.
    Invalid(&'static str),
}

/// Classifies `msg`.
pub fn kind(msg: &Value) -> Kind<'_> {
    let Some(o) = msg.as_object() else {
        return Kind::Invalid("a JSON-RPC message must be an object (or a batch of them)");
    };
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Kind::Invalid("`jsonrpc` must be \"2.0\"");
    }
    let id = o.get("id").filter(|id| valid_id(id));
    if o.get("id").is_some() && id.is_none() {
        return Kind::Invalid("`id` must be a string or a number");
    }
    match (o.get("method"), id) {
        (Some(Value::String(method)), Some(id)) => Kind::Request { method, id },
        (Some(Value::String(_)), None) => Kind::Notification,
        (Some(_), _) => Kind::Invalid("`method` must be a string"),
        (None, Some(id)) if o.contains_key("result") || o.contains_key("error") => {
            Kind::Response { id }
        }
        (None, _) => Kind::Invalid("a message needs `method`, or `id` with `result` or `error`"),
    }
}

fn valid_id(id: &Value) -> bool {
    matches!(id, Value::String(_) | Value::Number(_))
}

/// The key a message's id is tracked under: ids equal as JSON values
/// have one key, so `1`, `1.0` and `1e0` are one id (and `"1"` another).
pub fn id_key(id: &Value) -> String {
    match id {
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            // Integral and exactly representable: the integer's spelling.
            Some(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
                format!("{}", f as i64)
            }
            _ => id.to_string(),
        },
        _ => id.to_string(),
    }
}

/// The id of `msg`, if it has a usable one (for an error answer).
pub fn id_of(msg: &Value) -> Value {
    msg.get("id")
        .filter(|id| valid_id(id))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The id of a message too big to parse, from its first and last bytes,
/// where JSON-RPC libraries put it (`{"jsonrpc":"2.0","id":7,...` or
/// `...,"jsonrpc":"2.0","id":7}`); `None` when neither end says.
pub fn id_hint(head: &[u8], tail: &[u8]) -> Option<Value> {
    let head = String::from_utf8_lossy(head);
    let tail = String::from_utf8_lossy(tail);
    let compact = |s: &str| s.split_whitespace().collect::<String>();
    let (head, tail) = (compact(&head), compact(&tail));
    let from_head = ["{\"jsonrpc\":\"2.0\",\"id\":", "{\"id\":"]
        .iter()
        .find_map(|p| head.strip_prefix(p))
        .and_then(leading_id);
    from_head.or_else(|| {
        let body = tail.strip_suffix('}')?;
        let at = body.rfind("\"id\":")?;
        let v: Value = serde_json::from_str(&body[at + 5..]).ok()?;
        valid_id(&v).then_some(v)
    })
}

/// A JSON string or number at the start of `s`.
fn leading_id(s: &str) -> Option<Value> {
    let mut stream = serde_json::Deserializer::from_str(s).into_iter::<Value>();
    match stream.next() {
        Some(Ok(v)) if valid_id(&v) => Some(v),
        // A number runs on into `,`: the stream reports the trailing text.
        _ => {
            let end = s.find(',')?;
            let v: Value = serde_json::from_str(&s[..end]).ok()?;
            valid_id(&v).then_some(v)
        }
    }
}

/// An error response.
pub fn error(id: Value, code: i64, message: impl Into<String>, data: Option<Value>) -> Value {
    let mut error = json!({"code": code, "message": message.into()});
    if let Some(d) = data {
        error["data"] = d;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

/// The error a client gets for a call (or result) Arbiter did not let
/// through: denied, needing approval, or withheld.
pub fn refused(id: Value, tool: &str, d: &Decision, code: i64) -> Value {
    let what = match code {
        APPROVAL_REQUIRED => "needs approval",
        RESULT_WITHHELD => "result withheld",
        _ => "denied",
    };
    let mut message = format!("Arbiter: `{tool}` {what}: {} (rule {})", d.reason, d.rule);
    if let Some(a) = &d.approval {
        message.push_str(&format!("; approval {} is {}", a.id, a.status.as_str()));
    }
    let mut data = json!({
        "decision_id": d.decision_id,
        "outcome": d.outcome,
        "rule": d.rule,
        "reason": d.reason,
        "risk": d.risk,
    });
    if let Some(a) = &d.approval {
        data["approval"] = json!(a);
    }
    error(id, code, message, Some(data))
}

/// The error for a request the upstream server will not answer.
pub fn upstream_failed(id: Value, server: &str, problem: &str) -> Value {
    error(
        id,
        UPSTREAM_FAILED,
        format!("MCP server `{server}` failed: {problem}"),
        Some(json!({"server": server, "problem": problem})),
    )
}

/// An MCP logging notification, for what the client must hear about but
/// that answers no request (a message from the server the gateway
/// dropped).
pub fn log_notification(server: &str, message: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "method": "notifications/message",
        "params": {"level": "error", "logger": "arbiter", "data": format!("MCP server `{server}`: {message}")},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_told_apart_and_hostile_ones_named() {
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call"});
        assert!(matches!(
            kind(&req),
            Kind::Request {
                method: "tools/call",
                ..
            }
        ));
        assert_eq!(
            kind(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})),
            Kind::Notification
        );
        assert!(matches!(
            kind(&json!({"jsonrpc": "2.0", "id": "a", "result": {}})),
            Kind::Response { .. }
        ));
        for bad in [
            json!([1]),
            json!("x"),
            json!({"id": 1, "method": "m"}),
            json!({"jsonrpc": "1.0", "id": 1, "method": "m"}),
            json!({"jsonrpc": "2.0", "id": {"x": 1}, "method": "m"}),
            json!({"jsonrpc": "2.0", "id": 1, "method": 7}),
            json!({"jsonrpc": "2.0", "id": 1}),
        ] {
            assert!(matches!(kind(&bad), Kind::Invalid(_)), "{bad}");
        }
        assert_eq!(id_key(&json!(1)), "1");
        assert_ne!(id_key(&json!(1)), id_key(&json!("1")));
        let spelled: Value = serde_json::from_str("1.0").expect("json");
        assert_eq!(id_key(&spelled), id_key(&json!(1)));
        let spelled: Value = serde_json::from_str("1e0").expect("json");
        assert_eq!(id_key(&spelled), "1");
        assert_eq!(id_key(&json!(-3.0)), "-3");
        assert_eq!(id_key(&json!(1.5)), "1.5");
        assert_eq!(id_key(&json!(u64::MAX)), u64::MAX.to_string());
        assert_eq!(id_of(&json!({"id": [1]})), Value::Null);
    }

    #[test]
    fn the_id_of_a_message_too_big_to_read_is_found_at_either_end() {
        let hint = |h: &str, t: &str| id_hint(h.as_bytes(), t.as_bytes());
        assert_eq!(
            hint(r#"{"jsonrpc":"2.0","id":17,"result":{"con"#, "xx\"}]}}"),
            Some(json!(17))
        );
        assert_eq!(
            hint(r#"{"jsonrpc": "2.0", "id": "a-1", "res"#, ""),
            Some(json!("a-1"))
        );
        assert_eq!(
            hint(
                r#"{"result":{"content":[{"te"#,
                r#"xt"}]},"jsonrpc":"2.0","id":5}"#
            ),
            Some(json!(5))
        );
        assert_eq!(hint(r#"{"result":{"id":3,"x"#, r#"aaaa"}]}}"#), None);
        assert_eq!(hint("garbage", "garbage"), None);
    }
}
