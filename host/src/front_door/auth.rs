//! Who is at the door. On the decision plane: the agent a credential is
//! bound to (`[identity]`), or, without identity, the shared decide token.
//! On the admin plane: the named operator a credential belongs to, and
//! whether its roles allow what it asks.

use std::path::Path;

use hyper::HeaderMap;

use super::error::FrontDoorError;
use crate::config::{Config, Role};
use crate::decision::{Context, Principal};
use crate::identity::{self, AgentIdentity, IdentityError, Operator, constant_time_eq};

pub use crate::client::TOKEN_HEADER;

/// The credentials in force, swapped whole when the configuration reloads.
pub struct Credentials {
    /// The shared decide token, when there is no `[identity]`.
    decide: Option<String>,
    /// Agents' credentials, when `[identity]` configures any.
    agents: Option<identity::Agents>,
    /// Operators' credentials.
    operators: identity::Operators,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        f.debug_struct("Credentials")
            .field("decide", &self.decide.as_ref().map(|_| "<set>"))
            .field("identity", &self.agents.is_some())
            .field("operators", &self.operators.configured())
            .finish()
    }
}

impl Credentials {
    /// The credentials `config` configures; `base` resolves JWKS files.
    pub fn from_config(config: &Config, base: &Path) -> Self {
        Credentials {
            decide: config
                .auth
                .decide_token
                .as_ref()
                .map(|s| s.expose().to_owned()),
            agents: identity::Agents::new(&config.identity, base),
            operators: identity::Operators::new(&config.admin, &config.auth, base),
        }
    }

    /// Whether decisions come from verified credentials.
    pub fn identity(&self) -> bool {
        self.agents.is_some()
    }

    /// Whether the decision plane asks for any credential at all.
    pub fn decision_plane_open(&self) -> bool {
        self.agents.is_none() && self.decide.is_none()
    }

    /// The agent asking, from its credential: `Some` with `[identity]`,
    /// `None` when the shared decide token (or no token) is all there is.
    /// `use_authorization`: whether `Authorization` may carry it (not on
    /// the MCP gateway, where it belongs to the upstream server).
    ///
    /// # Errors
    /// 401 for a missing or bad credential, 503 when the identity
    /// provider's keys cannot be had.
    pub async fn caller(
        &self,
        headers: &HeaderMap,
        use_authorization: bool,
    ) -> Result<Option<AgentIdentity>, FrontDoorError> {
        let given = presented(headers, use_authorization);
        if let Some(agents) = &self.agents {
            return agents.authenticate(given).await.map(Some).map_err(refused);
        }
        let Some(decide) = &self.decide else {
            return Ok(None);
        };
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), decide.as_bytes()) => Ok(None),
            Some(_) => Err(FrontDoorError::Unauthorized(
                "the bearer token is not valid".into(),
            )),
            None => Err(FrontDoorError::Unauthorized(
                "a bearer token is required".into(),
            )),
        }
    }

    /// The operator at the admin plane. With no operator credential
    /// configured, the plane is open for reading only.
    ///
    /// # Errors
    /// 401 for a missing or bad credential, 503 when the identity
    /// provider's keys cannot be had.
    pub async fn operator(&self, headers: &HeaderMap) -> Result<Operator, FrontDoorError> {
        if !self.operators.configured() {
            return Ok(Operator::anonymous_reader());
        }
        self.operators
            .authenticate(presented(headers, true))
            .await
            .map_err(refused)
    }
}

impl Credentials {
    /// Whether any operator credential is configured: without one nobody
    /// can sign in to the console.
    pub fn operators_configured(&self) -> bool {
        self.operators.configured()
    }

    /// The operator `token` names now: its roles as configured at this
    /// moment, a JWT's expiry checked again. The console calls it on every
    /// request of a session.
    ///
    /// # Errors
    /// 401 for a token that names no operator (any more), 503 when the
    /// identity provider's keys cannot be had.
    pub async fn operator_of(&self, token: &str) -> Result<Operator, FrontDoorError> {
        if !self.operators.configured() {
            return Err(FrontDoorError::Unauthorized(
                "no operator credential is configured".into(),
            ));
        }
        self.operators
            .authenticate(Some(token))
            .await
            .map_err(refused)
    }
}

/// Refuses `op` unless it holds `role`.
///
/// # Errors
/// 403 naming the operator and the role.
pub fn require(op: &Operator, role: Role) -> Result<(), FrontDoorError> {
    if op.has(role) {
        return Ok(());
    }
    let why = if op.name == "anonymous" {
        "no operator credential is configured, so the admin plane only reads; configure `[[admin.operators]]` or `auth.admin_token`".to_owned()
    } else {
        format!(
            "operator `{}` does not hold the `{}` role",
            op.name,
            role.as_str()
        )
    };
    Err(FrontDoorError::Denied(why))
}

/// Puts the verified agent (and user) into `context`. A request that
/// names another agent, or another user than the credential's, is refused.
///
/// # Errors
/// 403 saying whose the credential is and what the request named.
pub fn bind(context: &mut Context, who: &AgentIdentity) -> Result<(), FrontDoorError> {
    let named = &context.agent.id;
    if !named.is_empty() && *named != who.agent.id {
        return Err(FrontDoorError::Denied(format!(
            "the credential is agent `{}`'s, but the request names agent `{}`",
            who.agent.id,
            short(named)
        )));
    }
    context.agent = who.agent.clone();
    if let Some(user) = &who.user {
        match &context.user {
            Some(u) if u.id != *user => {
                return Err(FrontDoorError::Denied(format!(
                    "the credential acts for user `{user}`, but the request names user `{}`",
                    short(&u.id)
                )));
            }
            Some(_) => {}
            None => {
                context.user = Some(Principal {
                    id: user.clone(),
                    roles: Vec::new(),
                });
            }
        }
    }
    Ok(())
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

fn refused(e: IdentityError) -> FrontDoorError {
    match e {
        IdentityError::Keys(_) => FrontDoorError::Unavailable(e.to_string()),
        IdentityError::Missing | IdentityError::Invalid(_) => {
            FrontDoorError::Unauthorized(e.to_string())
        }
    }
}

fn presented(headers: &HeaderMap, use_authorization: bool) -> Option<&str> {
    if let Some(t) = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) {
        return Some(t.trim());
    }
    if !use_authorization {
        return None;
    }
    let value = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header"));
        }
        h
    }

    #[tokio::test]
    async fn the_decide_token_guards_the_decision_plane_and_the_admin_token_names_an_operator() {
        let mut config = Config::default();
        config.auth.decide_token = Some(Secret::try_from("d".to_owned()).expect("secret"));
        config.auth.admin_token = Some(Secret::try_from("a".to_owned()).expect("secret"));
        let c = Credentials::from_config(&config, Path::new("."));
        assert!(
            c.caller(&headers(&[("authorization", "Bearer d")]), true)
                .await
                .is_ok()
        );
        assert!(
            c.caller(&headers(&[("x-arbiter-token", "d")]), false)
                .await
                .is_ok()
        );
        // The authorizer does not take `Authorization`: it is the original request's.
        assert!(
            c.caller(&headers(&[("authorization", "Bearer d")]), false)
                .await
                .is_err()
        );
        // The admin token is an operator's, not a way to decide.
        assert!(
            c.caller(&headers(&[("authorization", "Bearer a")]), true)
                .await
                .is_err()
        );
        assert!(c.caller(&headers(&[]), true).await.is_err());
        let op = c
            .operator(&headers(&[("authorization", "Bearer a")]))
            .await
            .expect("admin");
        assert_eq!(op.name, identity::ADMIN_TOKEN_NAME);
        assert!(
            c.operator(&headers(&[("authorization", "Bearer d")]))
                .await
                .is_err()
        );
        let open = Credentials::from_config(&Config::default(), Path::new("."));
        let reader = open.operator(&headers(&[])).await.expect("open reads");
        assert!(require(&reader, Role::Auditor).is_ok());
        assert!(require(&reader, Role::Operator).is_err());
        assert_eq!(
            format!("{c:?}"),
            "Credentials { decide: Some(\"<set>\"), identity: false, operators: true }"
        );
    }

    #[test]
    fn a_credential_binds_its_agent_and_refuses_another() {
        let who = AgentIdentity {
            agent: Principal {
                id: "a".into(),
                roles: vec!["buyer".into()],
            },
            user: Some("u".into()),
        };
        let mut named_none = Context::default();
        bind(&mut named_none, &who).expect("filled in");
        assert_eq!(named_none.agent.id, "a");
        assert_eq!(named_none.agent.roles, vec!["buyer".to_owned()]);
        assert_eq!(named_none.user.as_ref().map(|u| u.id.as_str()), Some("u"));
        let mut other = Context::default();
        other.agent.id = "b".into();
        let e = bind(&mut other, &who).expect_err("another agent");
        assert_eq!(e.status(), hyper::StatusCode::FORBIDDEN);
        let mut other_user = Context {
            user: Some(Principal {
                id: "v".into(),
                roles: vec![],
            }),
            ..Context::default()
        };
        assert!(bind(&mut other_user, &who).is_err());
    }
}
