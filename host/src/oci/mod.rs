//! Policies from an OCI registry: the artifact a policy travels as, the
//! registry client that pushes and pulls it, and the store that keeps what
//! was pulled on disk by digest.
//!
//! A pull never serves anything by itself. It checks what the registry
//! sent (manifest digest, media types, sizes, each blob's digest), writes
//! the component and its signature into the [`Store`] under the manifest's
//! digest, and hands the load pipeline a file there: the verify stage, the
//! compile cache and rollback apply exactly as for a file on disk.

mod artifact;
mod registry;
mod store;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use artifact::{
    ARTIFACT_TYPE, Artifact, COMPONENT_MEDIA_TYPE, CONFIG_MEDIA_TYPE, SIGNATURE_MEDIA_TYPE,
};
pub use registry::{Pulled, RegistryClient};
pub use store::{PinKind, Store, Stored};

/// `[oci]`: where pulled policies are kept, how often tags are checked,
/// and how to reach each registry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OciConfig {
    /// The store of pulled artifacts. Default: [`Store::default_dir`].
    pub store: Option<PathBuf>,
    /// Seconds between checks of a tag for a new digest. Default: 60.
    pub poll_s: u64,
    /// Seconds a pull (or a tag check) may take. Default: 30.
    pub timeout_s: u64,
    /// The largest component accepted, in bytes. Default: 64 MiB.
    pub max_component_bytes: u64,
    /// Credentials and TLS per registry host (`[[oci.registries]]`).
    pub registries: Vec<RegistryConfig>,
}

impl Default for OciConfig {
    fn default() -> Self {
        OciConfig {
            store: None,
            poll_s: 60,
            timeout_s: 30,
            max_component_bytes: 64 << 20,
            registries: Vec::new(),
        }
    }
}

impl OciConfig {
    /// The settings for registry `host` (as in a reference: `name[:port]`);
    /// anonymous over TLS when it is not configured.
    pub fn registry(&self, host: &str) -> RegistryConfig {
        self.registries
            .iter()
            .find(|r| r.host == host)
            .cloned()
            .unwrap_or_else(|| RegistryConfig::anonymous(host))
    }

    /// The store's directory: `store` relative to `base` (the
    /// configuration's directory), else [`Store::default_dir`].
    pub fn store_dir(&self, base: &Path) -> Option<PathBuf> {
        match &self.store {
            Some(dir) => Some(base.join(dir)),
            None => Store::default_dir(),
        }
    }

    /// The store, opened.
    ///
    /// # Errors
    /// [`OciError::Store`] when there is no directory for it or it cannot
    /// be created.
    pub fn open_store(&self, base: &Path) -> Result<Store, OciError> {
        let dir = self.store_dir(base).ok_or_else(|| OciError::Store {
            dir: PathBuf::new(),
            problem: "no directory for it: set `oci.store`, $ARBITER_OCI_DIR or $HOME".into(),
        })?;
        Store::open(&dir)
    }

    /// Checks the values a parse cannot.
    ///
    /// # Errors
    /// What is wrong, naming the key.
    pub fn check(&self) -> Result<(), String> {
        if self.poll_s == 0 || self.timeout_s == 0 || self.max_component_bytes == 0 {
            return Err(
                "`oci.poll_s`, `oci.timeout_s` and `oci.max_component_bytes` must be at least 1"
                    .into(),
            );
        }
        let mut hosts = std::collections::BTreeSet::new();
        for r in &self.registries {
            if r.host.is_empty() || r.host.contains('/') {
                return Err(format!(
                    "`oci.registries` host `{}` must be a registry host (name[:port])",
                    r.host
                ));
            }
            if !hosts.insert(r.host.as_str()) {
                return Err(format!("registry `{}` is configured twice", r.host));
            }
            if r.password_env.is_some() && r.password_file.is_some() {
                return Err(format!(
                    "registry `{}`: give at most one of `password_env` and `password_file`",
                    r.host
                ));
            }
            let has_password = r.password_env.is_some() || r.password_file.is_some();
            if r.username.is_some() != has_password {
                return Err(format!(
                    "registry `{}`: `username` goes with one of `password_env` or `password_file`",
                    r.host
                ));
            }
        }
        Ok(())
    }

    /// The settings with their relative paths (the store, CA and password
    /// files) made relative to `base`, the configuration file's directory.
    pub fn resolved(&self, base: &Path) -> OciConfig {
        let mut resolved = self.clone();
        if let Some(s) = &mut resolved.store {
            *s = base.join(&*s);
        }
        for r in &mut resolved.registries {
            if let Some(f) = &mut r.ca_file {
                *f = base.join(&*f);
            }
            if let Some(f) = &mut r.password_file {
                *f = base.join(&*f);
            }
        }
        resolved
    }
}

/// One `[[oci.registries]]` entry: how to reach and sign in to a registry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// The registry as references name it: `name[:port]`.
    pub host: String,
    /// The user for basic auth, or for the registry's token service.
    #[serde(default)]
    pub username: Option<String>,
    /// The environment variable holding the password or token.
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file holding the password or token (trailing newline ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Speak plain HTTP: for a registry on loopback only, never across a
    /// network, since the password and the artifacts would travel in clear.
    #[serde(default)]
    pub plain_http: bool,
}

impl RegistryConfig {
    /// No credentials, TLS with the system's roots.
    pub fn anonymous(host: &str) -> Self {
        RegistryConfig {
            host: host.to_owned(),
            username: None,
            password_env: None,
            password_file: None,
            ca_file: None,
            plain_http: false,
        }
    }
}

/// What can go wrong with an OCI reference, a registry or the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OciError {
    /// The reference does not parse.
    #[error("`{reference}` is not an OCI reference: {problem}")]
    Reference {
        /// The text given.
        reference: String,
        /// Why.
        problem: String,
    },
    /// The registry's settings cannot be used (CA file, password).
    #[error("registry `{host}`: {problem}")]
    Settings {
        /// The registry.
        host: String,
        /// Why.
        problem: String,
    },
    /// The registry could not be reached or refused the request.
    #[error("registry request for `{reference}` failed: {problem}")]
    Registry {
        /// The reference.
        reference: String,
        /// Why.
        problem: String,
    },
    /// The registry took longer than `oci.timeout_s`.
    #[error("registry request for `{reference}` took longer than {seconds} s")]
    Timeout {
        /// The reference.
        reference: String,
        /// The limit.
        seconds: u64,
    },
    /// What the registry sent is not an Arbiter policy artifact, or not
    /// the one its digest names.
    #[error("`{reference}` is refused: {problem}")]
    Artifact {
        /// The reference.
        reference: String,
        /// Why.
        problem: String,
    },
    /// The store could not be read or written.
    #[error("the OCI store `{}`: {problem}", dir.display())]
    Store {
        /// The store's directory.
        dir: PathBuf,
        /// Why.
        problem: String,
    },
}
