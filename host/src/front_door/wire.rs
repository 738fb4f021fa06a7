//! The wire format of `shared/DESIGN.md` ⇄ the domain types, with errors
//! that say what is wrong and where.

use serde::de::DeserializeOwned;

use crate::decision::Request;

/// A document that does not fit the wire format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message} (line {line}, column {column})", path_prefix(.path))]
pub struct WireError {
    /// The JSON path of the problem, e.g. `action.kind`; empty at the top.
    pub path: String,
    /// What is wrong there.
    pub message: String,
    /// 1-based line of the problem.
    pub line: usize,
    /// 1-based column of the problem.
    pub column: usize,
}

fn path_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("at `{path}`: ")
    }
}

/// Parses a decision request.
///
/// # Errors
/// A [`WireError`] naming the field and position of the first problem:
/// malformed JSON, a missing required field, an unknown field or a value of
/// the wrong type.
pub fn parse_request(bytes: &[u8]) -> Result<Request, WireError> {
    parse(bytes)
}

/// Parses any wire document into `T`, with the same error reporting.
///
/// # Errors
/// As [`parse_request`].
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    // Tracking the path costs on every field; only a refused document
    // needs it, so parse again to explain one.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        WireError {
            path: if path == "." || path == "?" {
                String::new()
            } else {
                path
            },
            line: inner.line(),
            column: inner.column(),
            message: strip_position(&inner.to_string()),
        }
    })?;
    Ok(value)
}

/// serde_json appends " at line L column C"; we report those separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_request_parses_with_defaults() {
        let r = parse_request(br#"{"action": {"kind": "tool", "name": "x"}}"#).expect("parses");
        assert_eq!(r.action.params, serde_json::json!({}));
        assert_eq!(r.context.agent.id, "");
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&[u8], &str)] = &[
            (
                br#"{"action": {"name": "x"}}"#,
                "at `action`: missing field `kind` (line 1, column 24)",
            ),
            (
                br#"{"action": {"kind": 1, "name": "x"}}"#,
                "at `action.kind`: invalid type: integer `1`, expected a string (line 1, column 21)",
            ),
            (
                br#"{"action": {"kind": "a", "name": "x"}, "contxt": {}}"#,
                "at `contxt`: unknown field `contxt`, expected one of `action`, `context`, `history`, `approval_id` (line 1, column 47)",
            ),
            (
                b"{\"action\": ",
                "at `action`: EOF while parsing a value (line 1, column 11)",
            ),
            (
                br#"{"action": {"kind": "a", "name": "x"}, "context": {"attributes": {"k": 1}}}"#,
                "at `context.attributes.k`: invalid type: integer `1`, expected a string (line 1, column 72)",
            ),
        ];
        for (input, want) in cases {
            let e = parse_request(input).expect_err("refused");
            assert_eq!(e.to_string(), *want);
        }
    }
}
