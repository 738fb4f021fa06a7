//! `[identity]` and `[admin]`: who may ask for decisions, as which agent,
//! and who may change what Arbiter does, as which operator.
//!
//! Tokens are configured by their SHA-256 (`arbiter token` makes a token
//! and prints the line to paste), so the file holds nothing a reader could
//! present. JWTs are verified against a JWKS, from a file or an HTTPS URL.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[identity]`: credentials that name the agent asking. When any is
/// configured, `context.agent` (and `user`, where the credential names
/// one) comes from the verified credential on every door.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Static bearer tokens, each bound to one agent (`[[identity.tokens]]`).
    pub tokens: Vec<AgentToken>,
    /// JWTs from an identity provider (`[identity.jwt]`).
    pub jwt: Option<JwtConfig>,
}

impl IdentityConfig {
    /// Whether any agent credential is configured.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty() || self.jwt.is_some()
    }
}

/// One agent's static token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentToken {
    /// SHA-256 of the token, 64 hex digits.
    pub sha256: String,
    /// The agent id every request with this token decides as.
    pub agent: String,
    /// The agent's roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The user the agent always acts for, when it is one.
    #[serde(default)]
    pub user: Option<String>,
}

/// JWT verification: where the keys are, and what a token must say.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The JWKS: a file (relative to the configuration file) or an
    /// `https://` URL.
    pub jwks: String,
    /// A PEM file of CA certificates to trust for the JWKS URL, besides
    /// the public roots (an identity provider on a private CA).
    #[serde(default)]
    pub jwks_ca: Option<PathBuf>,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry.
    pub audience: String,
    /// Signature algorithms accepted: asymmetric only (`RS256`, `RS384`,
    /// `RS512`, `PS256`, `PS384`, `PS512`, `ES256`, `ES384`, `EdDSA`).
    /// Default: `["RS256", "ES256"]`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds. Default: 30.
    #[serde(default = "default_leeway")]
    pub leeway_s: u64,
    /// How often the JWKS is read again, in seconds; a token naming an
    /// unknown key also rereads it, at most once a second. Default: 300.
    #[serde(default = "default_refresh")]
    pub refresh_s: u64,
    /// The claim naming the agent (for `[identity.jwt]`) or the operator
    /// (for `[admin.jwt]`). Default: `sub`.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// The claim with the roles, an array of strings or one string of
    /// space-separated names. Default: `roles`.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// The claim naming the user an agent acts for, if any.
    #[serde(default)]
    pub user_claim: Option<String>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_leeway() -> u64 {
    30
}
fn default_refresh() -> u64 {
    300
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_roles_claim() -> String {
    "roles".into()
}

/// `[admin]`: the admin plane's listener and its operators.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin plane listens: `unix:PATH` (a socket created mode
    /// 0600) or `HOST:PORT`. Default: `unix:` `admin.sock` in the state
    /// directory.
    pub listen: Option<AdminListen>,
    /// Named operators with static tokens (`[[admin.operators]]`).
    pub operators: Vec<OperatorToken>,
    /// Operators from an identity provider's JWTs (`[admin.jwt]`); their
    /// roles claim names Arbiter's roles.
    pub jwt: Option<JwtConfig>,
    /// TLS on a TCP admin listener (`[admin.tls]`), so operator tokens
    /// and console cookies never cross the network in the clear.
    pub tls: Option<ServerTls>,
}

/// A listener's TLS: its certificate chain and private key, PEM files
/// relative to the configuration file. Read at start; a change needs a
/// restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

impl AdminConfig {
    /// Whether any named operator credential is configured.
    pub fn has_operators(&self) -> bool {
        !self.operators.is_empty() || self.jwt.is_some()
    }
}

/// Where the admin plane listens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum AdminListen {
    /// A Unix socket at this path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl TryFrom<String> for AdminListen {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        value.parse()
    }
}

impl std::str::FromStr for AdminListen {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        if let Some(path) = value.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a path".into());
            }
            return Ok(AdminListen::Unix(PathBuf::from(path)));
        }
        value.parse().map(AdminListen::Tcp).map_err(|_| {
            format!("`{value}` is neither `unix:PATH` nor an address such as 127.0.0.1:9090")
        })
    }
}

impl std::fmt::Display for AdminListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminListen::Unix(p) => write!(f, "unix:{}", p.display()),
            AdminListen::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// What an operator may do on the admin plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Answers approvals (within its `policies` and `rules`).
    Approver,
    /// Modes, rollback, promote, the kill switch, tool pins, reload.
    Operator,
    /// Reads everything, changes nothing.
    Auditor,
}

impl Role {
    /// The name used in configuration and claims.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Approver => "approver",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }

    /// The role a claim names, if it is one of Arbiter's.
    pub fn from_name(name: &str) -> Option<Role> {
        match name {
            "approver" => Some(Role::Approver),
            "operator" => Some(Role::Operator),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }
}

/// One named operator's static token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorToken {
    /// The operator's name: the actor of everything it does.
    pub name: String,
    /// SHA-256 of the token, 64 hex digits.
    pub sha256: String,
    /// Its roles.
    pub roles: Vec<Role>,
    /// As an approver, the policies (globs) whose approvals it may answer.
    /// Default: all.
    #[serde(default = "everything")]
    pub policies: Vec<String>,
    /// As an approver, the rules (globs) whose approvals it may answer.
    /// Default: all.
    #[serde(default = "everything")]
    pub rules: Vec<String>,
}

fn everything() -> Vec<String> {
    vec!["*".into()]
}

/// `[[approvals.rules]]`: how many distinct approvers an approval needs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    /// A glob on the asking rule. Default: every rule.
    #[serde(default = "any_rule")]
    pub rule: String,
    /// Applies only when the asking policy's risk is at least this.
    /// Default: 0.
    #[serde(default)]
    pub min_risk: u8,
    /// Distinct approvers needed: 1, or 2 for four eyes.
    pub required: u8,
}

fn any_rule() -> String {
    "*".into()
}

/// Checks `[identity]`, `[admin]` and the approval rules.
pub(super) fn check(
    identity: &IdentityConfig,
    admin: &AdminConfig,
    rules: &[ApprovalRule],
) -> Result<(), String> {
    let mut hashes = std::collections::BTreeSet::new();
    for t in &identity.tokens {
        check_hash("identity.tokens", &t.sha256)?;
        if t.agent.is_empty() {
            return Err("`identity.tokens`: a token has an empty `agent`".into());
        }
        if !hashes.insert(t.sha256.to_ascii_lowercase()) {
            return Err(format!(
                "`identity.tokens`: the token of agent `{}` is listed twice",
                t.agent
            ));
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for o in &admin.operators {
        check_hash("admin.operators", &o.sha256)?;
        if o.name.is_empty() || o.roles.is_empty() {
            return Err("`admin.operators`: each needs a `name` and at least one role".into());
        }
        if !names.insert(o.name.as_str()) {
            return Err(format!("`admin.operators`: `{}` is listed twice", o.name));
        }
        // One credential, one side: an agent's token never opens the
        // admin plane, and an operator's never decides as an agent.
        if !hashes.insert(o.sha256.to_ascii_lowercase()) {
            return Err(format!(
                "`admin.operators` `{}`: this token is also another operator's or an agent's; give each its own",
                o.name
            ));
        }
    }
    if admin.tls.is_some() && !matches!(admin.listen, Some(AdminListen::Tcp(_))) {
        return Err("`admin.tls` needs `admin.listen` to be HOST:PORT: a Unix socket is reached only on this machine, with its file's permissions".into());
    }
    for (key, jwt) in [("identity.jwt", &identity.jwt), ("admin.jwt", &admin.jwt)] {
        let Some(j) = jwt else { continue };
        if j.issuer.is_empty() || j.audience.is_empty() {
            return Err(format!("`{key}`: `issuer` and `audience` are required"));
        }
        if j.algorithms.is_empty() {
            return Err(format!("`{key}`: `algorithms` is empty"));
        }
        for a in &j.algorithms {
            if !ASYMMETRIC.contains(&a.as_str()) {
                return Err(format!(
                    "`{key}`: algorithm `{a}` is not accepted; use one of {} (shared-secret HS* algorithms are refused: anyone who can verify could forge)",
                    ASYMMETRIC.join(", ")
                ));
            }
        }
        if j.refresh_s == 0 {
            return Err(format!("`{key}`: `refresh_s` must be at least 1"));
        }
        if j.jwks.starts_with("http://") {
            return Err(format!(
                "`{key}`: the JWKS `{}` must be fetched over https://",
                j.jwks
            ));
        }
    }
    if let (Some(a), Some(b)) = (&identity.jwt, &admin.jwt)
        && a.issuer == b.issuer
        && a.audience == b.audience
    {
        return Err("`identity.jwt` and `admin.jwt` have the same issuer and audience, so an agent's token would open the admin plane; give the admin plane its own audience".into());
    }
    for r in rules {
        if !(1..=2).contains(&r.required) {
            return Err(format!(
                "`approvals.rules` `{}`: `required` must be 1 or 2",
                r.rule
            ));
        }
    }
    Ok(())
}

/// The JWT algorithms Arbiter accepts.
pub const ASYMMETRIC: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

fn check_hash(key: &str, hash: &str) -> Result<(), String> {
    if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!(
            "`{key}`: `sha256` must be 64 hex digits (the token's SHA-256; `arbiter token` prints one)"
        ))
    }
}
