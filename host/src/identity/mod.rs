//! Who is asking: credentials turned into principals.
//!
//! Two tables, never mixed. [`Agents`] turns a decision credential into
//! the agent it is bound to (and the user, where it names one); the front
//! door then decides as that agent whatever the request body says.
//! [`Operators`] turns an admin credential into a named operator with
//! roles; the actor of every admin action is that name.
//!
//! Each table takes static tokens, stored as SHA-256 digests and compared
//! in constant time against every entry, and JWTs verified against a JWKS
//! ([`jwt`]). The configuration refuses a token listed on both sides, and
//! an `[admin.jwt]` that would accept the agents' tokens.

pub mod jwt;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{AdminConfig, AuthConfig, IdentityConfig, Role};
use crate::decision::Principal;
use jwt::JwtVerifier;

/// Why a credential was not accepted; every variant is a refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// No credential was presented.
    #[error("a bearer token is required")]
    Missing,
    /// The credential matches no token and is not a valid JWT.
    #[error("the credential is not valid: {0}")]
    Invalid(String),
    /// The identity provider's keys cannot be had, so no JWT can be checked.
    #[error("the identity provider's keys are unavailable: {0}")]
    Keys(String),
}

/// The agent a verified credential names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    /// The agent, with the roles the credential gives it.
    pub agent: Principal,
    /// The user it acts for, when the credential names one.
    pub user: Option<String>,
}

/// An authenticated operator of the admin plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operator {
    /// Its name: the actor recorded for everything it does.
    pub name: String,
    /// What it may do.
    pub roles: BTreeSet<Role>,
    /// As an approver, the policies (globs) it may answer for.
    pub policies: Vec<String>,
    /// As an approver, the rules (globs) it may answer for.
    pub rules: Vec<String>,
}

impl Operator {
    /// Whether it holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// The operator of an open admin plane (no credential configured):
    /// it may read, nothing more.
    pub fn anonymous_reader() -> Self {
        Operator {
            name: "anonymous".into(),
            roles: BTreeSet::from([Role::Auditor]),
            policies: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// A table of static tokens, by digest.
#[derive(Debug)]
struct Tokens<T>(Vec<([u8; 32], T)>);

impl<T> Tokens<T> {
    /// The entry of `token`. Every entry is compared, in constant time,
    /// so timing tells nothing about which digest came close.
    fn find(&self, token: &str) -> Option<&T> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (d, entry) in &self.0 {
            if constant_time_eq(d, &digest) {
                found = Some(entry);
            }
        }
        found
    }
}

/// The SHA-256 of a token, as configured (`sha256 = "..."`).
pub fn token_digest(token: &str) -> String {
    crate::hex::encode(&Sha256::digest(token.as_bytes()))
}

/// A configured digest; `Config::parse` checked its 64 hex digits, and
/// anything else could match no token's SHA-256 by chance.
fn parse_digest(hex: &str) -> [u8; 32] {
    crate::hex::decode::<32>(hex).unwrap_or([0; 32])
}

/// Agents' credentials: `[identity]`.
#[derive(Debug)]
pub struct Agents {
    tokens: Tokens<AgentIdentity>,
    jwt: Option<Arc<JwtVerifier>>,
}

impl Agents {
    /// The agent credentials `config` configures, `None` when there are
    /// none (callers then name themselves, as before identity existed).
    /// `base` resolves a relative JWKS file.
    pub fn new(config: &IdentityConfig, base: &Path) -> Option<Self> {
        if !config.enabled() {
            return None;
        }
        let tokens = config
            .tokens
            .iter()
            .map(|t| {
                (
                    parse_digest(&t.sha256),
                    AgentIdentity {
                        agent: Principal {
                            id: t.agent.clone(),
                            roles: t.roles.clone(),
                        },
                        user: t.user.clone(),
                    },
                )
            })
            .collect();
        Some(Agents {
            tokens: Tokens(tokens),
            jwt: config
                .jwt
                .as_ref()
                .map(|j| Arc::new(JwtVerifier::new(j.clone(), base))),
        })
    }

    /// The agent `token` names.
    ///
    /// # Errors
    /// [`IdentityError`] when it names none.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<AgentIdentity, IdentityError> {
        let token = token.ok_or(IdentityError::Missing)?;
        if let Some(found) = self.tokens.find(token) {
            return Ok(found.clone());
        }
        let Some(jwt) = &self.jwt else {
            return Err(IdentityError::Invalid("it matches no agent token".into()));
        };
        let claims = jwt.verify(token).await?;
        let c = jwt.config();
        let id = claim_string(&claims, &c.subject_claim)?;
        let user = match &c.user_claim {
            Some(u) => Some(claim_string(&claims, u)?),
            None => None,
        };
        Ok(AgentIdentity {
            agent: Principal {
                id,
                roles: claim_list(&claims, &c.roles_claim),
            },
            user,
        })
    }
}

/// Operators' credentials: `[admin]`, and the single-user `auth.admin_token`.
#[derive(Debug)]
pub struct Operators {
    tokens: Tokens<Operator>,
    jwt: Option<Arc<JwtVerifier>>,
}

/// The name the single-user admin token acts under.
pub const ADMIN_TOKEN_NAME: &str = "admin";

impl Operators {
    /// The operator credentials of `admin` and `auth`.
    pub fn new(admin: &AdminConfig, auth: &AuthConfig, base: &Path) -> Self {
        let mut tokens: Vec<([u8; 32], Operator)> = admin
            .operators
            .iter()
            .map(|o| {
                (
                    parse_digest(&o.sha256),
                    Operator {
                        name: o.name.clone(),
                        roles: o.roles.iter().copied().collect(),
                        policies: o.policies.clone(),
                        rules: o.rules.clone(),
                    },
                )
            })
            .collect();
        if let Some(t) = &auth.admin_token {
            tokens.push((
                Sha256::digest(t.expose().as_bytes()).into(),
                Operator {
                    name: ADMIN_TOKEN_NAME.into(),
                    roles: BTreeSet::from([Role::Approver, Role::Operator, Role::Auditor]),
                    policies: vec!["*".into()],
                    rules: vec!["*".into()],
                },
            ));
        }
        Operators {
            tokens: Tokens(tokens),
            jwt: admin
                .jwt
                .as_ref()
                .map(|j| Arc::new(JwtVerifier::new(j.clone(), base))),
        }
    }

    /// Whether any operator credential is configured; without one, the
    /// admin plane is read-only.
    pub fn configured(&self) -> bool {
        !self.tokens.0.is_empty() || self.jwt.is_some()
    }

    /// The operator `token` names.
    ///
    /// # Errors
    /// [`IdentityError`] when it names none.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Operator, IdentityError> {
        let token = token.ok_or(IdentityError::Missing)?;
        if let Some(found) = self.tokens.find(token) {
            return Ok(found.clone());
        }
        let Some(jwt) = &self.jwt else {
            return Err(IdentityError::Invalid(
                "it matches no operator token".into(),
            ));
        };
        let claims = jwt.verify(token).await?;
        let c = jwt.config();
        let name = claim_string(&claims, &c.subject_claim)?;
        let roles: BTreeSet<Role> = claim_list(&claims, &c.roles_claim)
            .iter()
            .filter_map(|r| Role::from_name(r))
            .collect();
        if roles.is_empty() {
            return Err(IdentityError::Invalid(format!(
                "claim `{}` names none of Arbiter's roles (approver, operator, auditor)",
                c.roles_claim
            )));
        }
        Ok(Operator {
            name,
            roles,
            policies: vec!["*".into()],
            rules: vec!["*".into()],
        })
    }
}

fn claim_string(
    claims: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<String, IdentityError> {
    match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Ok(s.clone()),
        _ => Err(IdentityError::Invalid(format!(
            "claim `{name}` is missing, empty or not a short string"
        ))),
    }
}

/// An array of strings, or one string of space-separated names.
fn claim_list(claims: &serde_json::Map<String, Value>, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// Equal bytes, in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentToken, OperatorToken};

    #[tokio::test]
    async fn tokens_name_their_agent_and_operator_and_never_each_other() {
        let identity = IdentityConfig {
            tokens: vec![AgentToken {
                sha256: token_digest("agent-a"),
                agent: "a".into(),
                roles: vec!["buyer".into()],
                user: Some("u1".into()),
            }],
            jwt: None,
        };
        let agents = Agents::new(&identity, Path::new(".")).expect("enabled");
        let who = agents.authenticate(Some("agent-a")).await.expect("known");
        assert_eq!(who.agent.id, "a");
        assert_eq!(who.user.as_deref(), Some("u1"));
        assert_eq!(
            agents.authenticate(Some("agent-b")).await,
            Err(IdentityError::Invalid("it matches no agent token".into()))
        );
        assert_eq!(agents.authenticate(None).await, Err(IdentityError::Missing));

        let admin = AdminConfig {
            operators: vec![OperatorToken {
                name: "alice".into(),
                sha256: token_digest("op-alice"),
                roles: vec![Role::Approver],
                policies: vec!["*".into()],
                rules: vec!["*".into()],
            }],
            ..AdminConfig::default()
        };
        let ops = Operators::new(&admin, &AuthConfig::default(), Path::new("."));
        let alice = ops.authenticate(Some("op-alice")).await.expect("alice");
        assert_eq!(alice.name, "alice");
        assert!(alice.has(Role::Approver) && !alice.has(Role::Operator));
        assert!(ops.authenticate(Some("agent-a")).await.is_err());
        assert!(agents.authenticate(Some("op-alice")).await.is_err());
    }

    /// An EdDSA JWT of `claims` under key id `kid`, and the JWK to verify it.
    fn ed_jwt(seed: [u8; 32], kid: &str, claims: &Value) -> (String, Value) {
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&seed);
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(kid.into());
        let token = jsonwebtoken::encode(
            &header,
            claims,
            &jsonwebtoken::EncodingKey::from_ed_der(&der),
        )
        .expect("sign");
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(
            &jsonwebtoken::EncodingKey::from_ed_der(&der),
            jsonwebtoken::Algorithm::EdDSA,
        )
        .map(|j| serde_json::to_value(j).expect("jwk"))
        .expect("jwk");
        jwk["kid"] = Value::from(kid);
        (token, jwk)
    }

    #[tokio::test]
    async fn an_operators_jwt_names_them_and_only_arbiters_roles_count() {
        let dir = tempfile::tempdir().expect("dir");
        let exp = crate::time::Clock::now_ms(&crate::time::SystemClock) / 1000 + 600;
        let claims = |roles: Value| serde_json::json!({"sub": "olga", "iss": "https://idp", "aud": "arbiter-admin", "exp": exp, "roles": roles});
        let (good, jwk) = ed_jwt(
            [3; 32],
            "op-1",
            &claims(serde_json::json!(["operator", "wizard"])),
        );
        let (none, _) = ed_jwt([3; 32], "op-1", &claims(serde_json::json!("wizard admin")));
        std::fs::write(
            dir.path().join("jwks.json"),
            serde_json::json!({"keys": [jwk]}).to_string(),
        )
        .expect("jwks");
        let admin = AdminConfig {
            jwt: Some(crate::config::JwtConfig {
                jwks: "jwks.json".into(),
                jwks_ca: None,
                issuer: "https://idp".into(),
                audience: "arbiter-admin".into(),
                algorithms: vec!["EdDSA".into()],
                leeway_s: 5,
                refresh_s: 300,
                subject_claim: "sub".into(),
                roles_claim: "roles".into(),
                user_claim: None,
            }),
            ..AdminConfig::default()
        };
        let ops = Operators::new(&admin, &AuthConfig::default(), dir.path());
        let olga = ops.authenticate(Some(&good)).await.expect("olga");
        assert_eq!(olga.name, "olga");
        assert_eq!(olga.roles, BTreeSet::from([Role::Operator]));
        assert!(matches!(
            ops.authenticate(Some(&none)).await,
            Err(IdentityError::Invalid(m)) if m.contains("none of Arbiter's roles")
        ));
    }

    #[test]
    fn no_identity_configured_is_none() {
        assert!(Agents::new(&IdentityConfig::default(), Path::new(".")).is_none());
        let ops = Operators::new(
            &AdminConfig::default(),
            &AuthConfig::default(),
            Path::new("."),
        );
        assert!(!ops.configured());
    }
}
