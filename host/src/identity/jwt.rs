//! JWTs verified against an identity provider's JWKS.
//!
//! What a token must pass: a header algorithm in the configured list
//! (asymmetric only, so `alg: none` and HS256-signed-with-the-public-key
//! never verify), a key from the JWKS of that algorithm's family (by `kid`,
//! and matching the key's own `alg` when it states one), a valid
//! signature, `exp` in the future and `nbf` in the past (within the
//! configured skew), and the configured `iss` and `aud`.
//!
//! The JWKS is read from a file or fetched over HTTPS (Mozilla's roots,
//! plus a CA file if configured), kept, read again every `refresh_s`, and
//! read again at once, at most once a second, when a token names a key it
//! does not have: a rotation at the provider is picked up on the first
//! token signed with the new key. A failed refresh keeps the keys already
//! held.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::IdentityError;
use crate::config::JwtConfig;

/// The largest JWKS read, in bytes.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// The longest a JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The least time between two reads prompted by unknown keys.
const MIN_REREAD: Duration = Duration::from_secs(1);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Where the keys come from.
enum Source {
    File(PathBuf),
    Url {
        uri: hyper::Uri,
        client: Box<Result<HttpsClient, String>>,
    },
}

/// One usable key of the JWKS.
struct Key {
    kid: Option<String>,
    /// The algorithm the JWK says it is for, if it says.
    alg: Option<String>,
    key: DecodingKey,
}

#[derive(Default)]
struct Keys {
    keys: Arc<Vec<Key>>,
    read_at: Option<Instant>,
    tried_at: Option<Instant>,
    last_error: Option<String>,
}

/// Verifies JWTs for one `[identity.jwt]` or `[admin.jwt]`.
pub struct JwtVerifier {
    config: JwtConfig,
    algorithms: Vec<Algorithm>,
    source: Source,
    keys: RwLock<Keys>,
    /// One read of the JWKS at a time.
    reading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("jwks", &self.config.jwks)
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// A verifier for `config`; a relative JWKS file is under `base`.
    /// Nothing is read yet: the first token reads the keys.
    pub fn new(config: JwtConfig, base: &Path) -> Self {
        // `Config::parse` allowed only names of asymmetric algorithms.
        let algorithms = config
            .algorithms
            .iter()
            .filter_map(|a| a.parse::<Algorithm>().ok())
            .collect();
        let source = if config.jwks.starts_with("https://") {
            Source::Url {
                uri: config
                    .jwks
                    .parse()
                    .unwrap_or_else(|_| hyper::Uri::from_static("https://invalid.invalid/")),
                client: Box::new(https_client(
                    config.jwks_ca.as_deref().map(|p| base.join(p)),
                )),
            }
        } else {
            Source::File(base.join(&config.jwks))
        };
        JwtVerifier {
            config,
            algorithms,
            source,
            keys: RwLock::new(Keys::default()),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    /// The claims of `token`, once it has passed every check.
    ///
    /// # Errors
    /// [`IdentityError::Invalid`] saying which check failed, or
    /// [`IdentityError::Keys`] when no key can be had.
    pub async fn verify(&self, token: &str) -> Result<Map<String, Value>, IdentityError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            IdentityError::Invalid(format!("not a JWT with a known algorithm: {e}"))
        })?;
        if !self.algorithms.contains(&header.alg) {
            return Err(IdentityError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let refresh = Duration::from_secs(self.config.refresh_s);
        let stale = self.read().read_at.is_none_or(|t| t.elapsed() >= refresh);
        if stale {
            self.reread(false).await;
        }
        let keys = match self.matching(&header) {
            Some(k) => k,
            None => {
                // Perhaps the provider rotated: read again, at most once a second.
                self.reread(true).await;
                self.matching(&header).ok_or_else(|| self.no_key(&header))?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.config.leeway_s;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut last = None;
        for key in keys.iter().filter(|k| fits(k, &header)) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = Some(e),
            }
        }
        Err(IdentityError::Invalid(last.map_or_else(
            || "no key fits it".to_owned(),
            |e| reason(&e),
        )))
    }

    /// The keys held now, if one fits `header`.
    fn matching(&self, header: &jsonwebtoken::Header) -> Option<Arc<Vec<Key>>> {
        let keys = Arc::clone(&self.read().keys);
        keys.iter().any(|k| fits(k, header)).then_some(keys)
    }

    fn no_key(&self, header: &jsonwebtoken::Header) -> IdentityError {
        let held = self.read();
        match (&held.last_error, held.keys.is_empty()) {
            (Some(e), true) => IdentityError::Keys(e.clone()),
            _ => IdentityError::Invalid(format!(
                "no key of the JWKS fits it (kid {:?}, algorithm {:?})",
                header.kid, header.alg
            )),
        }
    }

    /// Reads the JWKS again; `prompted` (by an unknown key) reads only if
    /// the last read was over a second ago. A failed read keeps the keys.
    async fn reread(&self, prompted: bool) {
        let _one = self.reading.lock().await;
        {
            let held = self.read();
            let recent = |t: Option<Instant>, d| t.is_some_and(|t: Instant| t.elapsed() < d);
            // Another task read while this one waited.
            if !prompted && recent(held.read_at, Duration::from_secs(self.config.refresh_s)) {
                return;
            }
            if prompted && recent(held.tried_at, MIN_REREAD) {
                return;
            }
        }
        let fetched = self.fetch().await;
        let mut held = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.tried_at = Some(Instant::now());
        match fetched.and_then(|bytes| parse(&bytes)) {
            Ok(keys) => {
                tracing::debug!(jwks = %self.config.jwks, keys = keys.len(), "JWKS read");
                held.keys = Arc::new(keys);
                held.read_at = Some(Instant::now());
                held.last_error = None;
            }
            Err(e) => {
                tracing::warn!(jwks = %self.config.jwks, error = %e, "cannot read the JWKS; keeping the keys held");
                held.last_error = Some(e);
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<u8>, String> {
        match &self.source {
            Source::File(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
                if bytes.len() > MAX_JWKS_BYTES {
                    return Err(format!(
                        "`{}` is over {MAX_JWKS_BYTES} bytes",
                        path.display()
                    ));
                }
                Ok(bytes)
            }
            Source::Url { uri, client } => {
                let client = client.as_ref().as_ref().map_err(Clone::clone)?;
                let get = async {
                    let response = client
                        .get(uri.clone())
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                    if !response.status().is_success() {
                        return Err(format!("answered {}", response.status()));
                    }
                    Limited::new(response.into_body(), MAX_JWKS_BYTES)
                        .collect()
                        .await
                        .map(|b| b.to_bytes().to_vec())
                        .map_err(|e| e.to_string())
                };
                tokio::time::timeout(FETCH_TIMEOUT, get)
                    .await
                    .map_err(|_| format!("no answer within {}s", FETCH_TIMEOUT.as_secs()))?
                    .map_err(|e| format!("GET {uri}: {e}"))
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether `key` may check a token with `header`: the same `kid` when the
/// token names one, the algorithm's family, and the JWK's own `alg`.
fn fits(key: &Key, header: &jsonwebtoken::Header) -> bool {
    if header.kid.is_some() && key.kid != header.kid {
        return false;
    }
    if key
        .alg
        .as_ref()
        .is_some_and(|a| *a != format!("{:?}", header.alg))
    {
        return false;
    }
    key.key.family() == header.alg.family()
}

/// The public keys of a JWKS; symmetric (`oct`) keys are never used.
fn parse(bytes: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet =
        serde_json::from_slice(bytes).map_err(|e| format!("the JWKS does not parse: {e}"))?;
    let keys: Vec<Key> = set
        .keys
        .iter()
        .filter(|jwk| !matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)))
        .filter_map(|jwk| {
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some(Key {
                kid: jwk.common.key_id.clone(),
                alg: jwk.common.key_algorithm.map(|a| format!("{a:?}")),
                key,
            })
        })
        .collect();
    if keys.is_empty() {
        return Err("the JWKS has no usable public key".into());
    }
    Ok(keys)
}

/// A refusal's reason in words an operator can act on.
fn reason(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "it has expired".into(),
        ErrorKind::ImmatureSignature => "it is not valid yet (nbf)".into(),
        ErrorKind::InvalidAudience => "it is for another audience".into(),
        ErrorKind::InvalidIssuer => "it is from another issuer".into(),
        ErrorKind::InvalidSignature => "its signature does not verify".into(),
        ErrorKind::InvalidAlgorithm => "its algorithm does not fit the key".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("claim `{c}` is missing"),
        other => format!("{other:?}"),
    }
}

/// An HTTPS-only client trusting Mozilla's roots and `ca`, if given.
fn https_client(ca: Option<PathBuf>) -> Result<HttpsClient, String> {
    let tls = crate::tls::client_config(ca.as_deref())?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}
