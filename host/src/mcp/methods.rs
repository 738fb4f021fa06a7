//! Which MCP methods the gateway knows, in which direction, and which of
//! them are decided: every message it cannot account for is refused.
//!
//! Decided, as actions of kind `mcp` (`params`: the message's `params`
//! without `_meta`, except for `tools/call`):
//!
//! | method | direction | `name` | `target` | `params` |
//! |---|---|---|---|---|
//! | `tools/call` | client → server | the tool | the server | the call's `arguments` |
//! | `resources/read` | client → server | `resources/read` | the resource's URI | `{"uri"}` |
//! | `prompts/get` | client → server | `prompts/get` | the server | `{"name", "arguments"}` |
//! | `sampling/createMessage` | server → client | `sampling/createMessage` | the server | the request's params |
//! | `elicitation/create` | server → client | `elicitation/create` | the server | the request's params |
//!
//! Passed undecided: the lifecycle, listings, subscriptions, completion,
//! logging, pings, roots and the notifications of the 2025 revisions.
//! Anything else (`tasks/*`, a vendor's extension) is refused unless the
//! server's `pass_methods` names it.

use crate::config::McpServerConfig;

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the server.
    ToServer,
    /// From the server to the client.
    ToClient,
}

/// What the gateway does with a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// Decided by the policies before it goes on.
    Decided,
    /// Known, passed undecided.
    Passed,
    /// Unknown: refused.
    Refused,
}

/// The methods a client sends that are decided.
pub const DECIDED_TO_SERVER: [&str; 3] = ["tools/call", "resources/read", "prompts/get"];
/// The methods a server sends that are decided.
pub const DECIDED_TO_CLIENT: [&str; 2] = ["sampling/createMessage", "elicitation/create"];

const PASSED_TO_SERVER: [&str; 14] = [
    "initialize",
    "ping",
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "completion/complete",
    "logging/setLevel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
];

const PASSED_TO_CLIENT: [&str; 10] = [
    "ping",
    "roots/list",
    "notifications/message",
    "notifications/progress",
    "notifications/cancelled",
    "notifications/resources/updated",
    "notifications/resources/list_changed",
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
    "notifications/elicitation/complete",
];

/// What to do with `method` travelling `direction` for `server`.
pub fn treatment(server: &McpServerConfig, direction: Direction, method: &str) -> Treatment {
    let (decided, passed): (&[&str], &[&str]) = match direction {
        Direction::ToServer => (&DECIDED_TO_SERVER, &PASSED_TO_SERVER),
        Direction::ToClient => (&DECIDED_TO_CLIENT, &PASSED_TO_CLIENT),
    };
    if decided.contains(&method) {
        Treatment::Decided
    } else if passed.contains(&method)
        || server
            .pass_methods
            .iter()
            .any(|p| crate::glob::glob(p, method))
    {
        Treatment::Passed
    } else {
        Treatment::Refused
    }
}

/// Whether `name` is a method the gateway decides under its own name: a
/// tool may not be called that, or its calls would pass for the method's.
pub fn is_decided_method(name: &str) -> bool {
    DECIDED_TO_SERVER[1..].contains(&name) || DECIDED_TO_CLIENT.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decided_methods_are_decided_whatever_pass_methods_says() {
        let server = McpServerConfig {
            pass_methods: vec!["*".into()],
            ..McpServerConfig::default()
        };
        for m in DECIDED_TO_SERVER {
            assert_eq!(
                treatment(&server, Direction::ToServer, m),
                Treatment::Decided
            );
        }
        assert_eq!(
            treatment(&server, Direction::ToServer, "tasks/result"),
            Treatment::Passed
        );
        let strict = McpServerConfig::default();
        for m in [
            "tasks/result",
            "tasks/get",
            "x/vendor",
            "sampling/createMessage",
        ] {
            assert_eq!(
                treatment(&strict, Direction::ToServer, m),
                Treatment::Refused,
                "{m}"
            );
        }
        assert_eq!(
            treatment(&strict, Direction::ToClient, "sampling/createMessage"),
            Treatment::Decided
        );
        assert!(is_decided_method("resources/read"));
        assert!(!is_decided_method("tools/call"));
    }
}
