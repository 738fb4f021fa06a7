//! Who decides for a gateway: the [`Arbiter`] in this process, or a
//! running `arbiter serve` asked over HTTP, so that many stdio gateways
//! (one per server a desktop agent launches) share one decision service,
//! its policies, log, approvals and tool pins.
//!
//! A remote decider fails closed: a decision service that cannot be
//! reached, or answers something else than a decision, is a deny
//! (`failure.decider`) naming the problem; a listing it cannot pin is
//! withheld.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{Value, json};

use crate::arbiter::Arbiter;
use crate::client::{ServerAddress, error_message};
use crate::decision::{Decision, Request};
use crate::enrich::pins::Seen;

/// The rule of a decision the remote service could not give.
pub const UNREACHABLE_RULE: &str = "failure.decider";

/// The decision point behind a gateway.
#[derive(Clone)]
pub enum Decider {
    /// This process's own.
    Local(Arbiter),
    /// A running decision service.
    Remote(Arc<ServerAddress>),
}

impl Decider {
    /// Decides `request`. Never fails: every problem is a deny.
    pub async fn decide(&self, request: Request) -> Decision {
        let server = match self {
            Decider::Local(a) => return a.decide_async(request).await,
            Decider::Remote(s) => s,
        };
        let start = Instant::now();
        let body = json!({
            "action": request.action,
            "context": request.context,
            "approval_id": request.approval_id,
        });
        let problem = match server.call(Method::POST, "/v1/decide", Some(&body)).await {
            Ok((200, v)) => match serde_json::from_value::<Decision>(v) {
                Ok(d) => return d,
                Err(e) => format!("its answer is not a decision: {e}"),
            },
            Ok((status, v)) => format!("it answered {status}: {}", error_message(&v)),
            Err(e) => format!("{e:#}"),
        };
        // The service keeps the log: this deny is only in Arbiter's own log
        // output.
        tracing::error!(action = %request.action.name, problem = %problem, "the decision service could not decide; denied");
        Decision::host_deny(
            UNREACHABLE_RULE,
            format!("The decision service could not decide: {problem}; failing closed."),
            start,
        )
    }

    /// Pins the tools of a listing from `server`; returns what each was
    /// (pinned, same, changed) and the definitions the client is shown.
    ///
    /// # Errors
    /// Why the pins could not be kept; the listing is then withheld.
    pub async fn observe(
        &self,
        server: &str,
        tools: &[Value],
    ) -> Result<Vec<(Seen, Value)>, String> {
        let remote = match self {
            Decider::Local(a) => {
                return match a.pins() {
                    Some(p) => p.observe(server, tools).map_err(|e| e.to_string()),
                    None => Ok(tools.iter().map(|t| (Seen::Same, t.clone())).collect()),
                };
            }
            Decider::Remote(s) => s,
        };
        let path = format!(
            "/v1/mcp/tools/{}/observe",
            crate::client::percent_encode(server)
        );
        match remote
            .call(Method::POST, &path, Some(&json!({ "tools": tools })))
            .await
        {
            Ok((200, v)) => {
                let shown = v["tools"].as_array().cloned().unwrap_or_default();
                let seen = v["seen"].as_array().cloned().unwrap_or_default();
                if shown.len() != tools.len() || seen.len() != tools.len() {
                    return Err("the decision service answered another number of tools".into());
                }
                seen.iter()
                    .zip(shown)
                    .map(|(s, t)| {
                        let s = s.as_str().and_then(Seen::parse).ok_or_else(|| {
                            format!("the decision service answered an unknown pin state {s}")
                        })?;
                        Ok((s, t))
                    })
                    .collect()
            }
            Ok((status, v)) => Err(format!(
                "the decision service answered {status}: {}",
                error_message(&v)
            )),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    /// Whether approvals are kept, so that a call can be held for one.
    pub fn keeps_approvals(&self) -> bool {
        match self {
            Decider::Local(a) => a.approvals().is_some(),
            Decider::Remote(_) => true,
        }
    }

    /// Waits until approval `id` changes or `wait` passes.
    pub async fn wait(&self, id: &str, wait: Duration) {
        let remote = match self {
            Decider::Local(a) => {
                if let Some(approvals) = a.approvals()
                    && let Err(e) = approvals.wait(id, wait).await
                {
                    // Not held: the call is refused as still needing approval.
                    tracing::warn!(approval = %id, error = %e, "not holding the call");
                }
                return;
            }
            Decider::Remote(s) => s,
        };
        // The service bounds one wait (`approvals.max_wait_s`): ask again
        // until the approval is answered or the hold is over.
        let until = Instant::now() + wait;
        let path = |secs: u64| {
            format!(
                "/v1/approvals/{}?wait={secs}s",
                crate::client::percent_encode(id)
            )
        };
        loop {
            let left = until.saturating_duration_since(Instant::now()).as_secs();
            if left == 0 {
                return;
            }
            match remote.call(Method::GET, &path(left.min(60)), None).await {
                Ok((200, a)) if a["status"] == "pending" => {}
                Ok((400, _)) if left > 1 => {
                    // A service allowing shorter waits: poll each second.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                _ => return,
            }
        }
    }

    /// The local arbiter, when there is one.
    pub fn local(&self) -> Option<&Arbiter> {
        match self {
            Decider::Local(a) => Some(a),
            Decider::Remote(_) => None,
        }
    }
}
