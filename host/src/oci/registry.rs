//! The registry client: resolve a tag, pull an artifact into the store,
//! push one. On `oci-client`, over rustls (ring), one client per registry
//! so a private CA configured for one registry vouches for no other.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::artifact::{self, Artifact, Descriptor, MANIFEST_MEDIA_TYPE, digest_of};
use super::store::{Store, Stored};
use super::{OciConfig, OciError, RegistryConfig};

/// A client for the registry one reference names, with its settings.
pub struct RegistryClient {
    client: Client,
    auth: RegistryAuth,
    reference: Reference,
    text: String,
    timeout: Duration,
    max_component: u64,
}

/// What a pull brought: the artifact's digest and where it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The manifest's digest.
    pub digest: String,
    /// The stored artifact.
    pub stored: Stored,
    /// Whether it was already in the store (only the tag was asked).
    pub cached: bool,
}

impl RegistryClient {
    /// A client for `reference` (e.g. `registry.example/policies/p:1.4`
    /// or `…@sha256:…`), with the settings `config` has for its registry.
    ///
    /// # Errors
    /// [`OciError::Reference`] for a reference that does not parse;
    /// [`OciError::Settings`] for a CA or password that cannot be read.
    pub fn new(config: &OciConfig, reference: &str) -> Result<Self, OciError> {
        let parsed: Reference = reference.parse().map_err(|e| OciError::Reference {
            reference: reference.to_owned(),
            problem: format!("{e}"),
        })?;
        let registry = config.registry(parsed.registry());
        let settings = |problem: String| OciError::Settings {
            host: registry.host.clone(),
            problem,
        };
        // reqwest is built without a crypto provider of its own: it uses
        // the process default, which is ring as for the rest of Arbiter.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut client_config = ClientConfig {
            protocol: if registry.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            read_timeout: Some(Duration::from_secs(config.timeout_s)),
            connect_timeout: Some(Duration::from_secs(config.timeout_s)),
            max_concurrent_download: 2,
            max_concurrent_upload: 2,
            ..ClientConfig::default()
        };
        if let Some(ca) = &registry.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| settings(format!("cannot read `{}`: {e}", ca.display())))?;
            client_config.extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem,
            });
        }
        let client = Client::try_from(client_config)
            .map_err(|e| settings(format!("cannot build a client: {e}")))?;
        Ok(RegistryClient {
            client,
            auth: auth(&registry).map_err(settings)?,
            reference: parsed,
            text: reference.to_owned(),
            timeout: Duration::from_secs(config.timeout_s),
            max_component: config.max_component_bytes,
        })
    }

    /// The reference as given.
    pub fn reference(&self) -> &str {
        &self.text
    }

    /// Whether the reference names a digest, and so can never move.
    pub fn is_pinned(&self) -> bool {
        self.reference.digest().is_some()
    }

    async fn within<T>(
        &self,
        work: impl Future<Output = Result<T, OciDistributionError>>,
    ) -> Result<T, OciError> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(v)) => Ok(v),
            // A digest that does not match is what was sent, not a
            // failure to reach the registry: the artifact is refused.
            Ok(Err(OciDistributionError::DigestError(e))) => {
                Err(self.refused(format!("{e}: altered in the registry or on the way")))
            }
            Ok(Err(e)) => Err(self.registry_error(with_causes(&e))),
            Err(_) => Err(OciError::Timeout {
                reference: self.text.clone(),
                seconds: self.timeout.as_secs(),
            }),
        }
    }

    fn registry_error(&self, problem: String) -> OciError {
        OciError::Registry {
            reference: self.text.clone(),
            problem,
        }
    }

    fn refused(&self, problem: String) -> OciError {
        OciError::Artifact {
            reference: self.text.clone(),
            problem,
        }
    }

    /// The digest the reference names now: its own digest, or what the
    /// registry says its tag points to.
    ///
    /// # Errors
    /// [`OciError`] when the registry cannot be asked.
    pub async fn resolve(&self) -> Result<String, OciError> {
        if let Some(d) = self.reference.digest() {
            return Ok(d.to_owned());
        }
        let digest = self
            .within(
                self.client
                    .fetch_manifest_digest(&self.reference, &self.auth),
            )
            .await?;
        if !artifact::is_sha256_digest(&digest) {
            return Err(self.refused(format!(
                "the registry named digest `{digest}`, not a sha256"
            )));
        }
        Ok(digest)
    }

    /// Resolves the reference and brings its artifact into `store`,
    /// checking the manifest against its digest, its shape, and each blob
    /// against its size limit and digest. Nothing is stored unless all of
    /// it holds.
    ///
    /// # Errors
    /// [`OciError`] naming what failed or what was refused.
    pub async fn pull(&self, store: &Store) -> Result<Pulled, OciError> {
        let digest = self.resolve().await?;
        self.pull_digest(store, &digest).await
    }

    /// Brings the artifact `digest` of this reference's repository into
    /// `store`, as [`RegistryClient::pull`] does.
    ///
    /// # Errors
    /// [`OciError`] naming what failed or what was refused.
    pub async fn pull_digest(&self, store: &Store, digest: &str) -> Result<Pulled, OciError> {
        if !artifact::is_sha256_digest(digest) {
            return Err(self.refused(format!("`{digest}` is not a sha256 digest")));
        }
        if let Some(stored) = store.get(digest, self.max_component)? {
            return Ok(Pulled {
                digest: digest.to_owned(),
                stored,
                cached: true,
            });
        }
        let by_digest = self.reference.clone_with_digest(digest.to_owned());
        let (manifest, _) = self
            .within(
                self.client
                    .pull_manifest_raw(&by_digest, &self.auth, &[MANIFEST_MEDIA_TYPE]),
            )
            .await?;
        // The registry's word for the digest is not taken: the bytes must
        // hash to the digest asked for.
        let actual = digest_of(&manifest);
        if actual != digest {
            return Err(self.refused(format!(
                "the manifest served for {digest} hashes to {actual}: altered in the registry or on the way"
            )));
        }
        let layers =
            artifact::layers(&manifest, self.max_component).map_err(|p| self.refused(p))?;
        let component = self.blob(&by_digest, &layers.component).await?;
        let signature = match &layers.signature {
            Some(l) => Some(self.blob(&by_digest, l).await?),
            None => None,
        };
        let artifact = Artifact {
            component,
            signature,
        };
        let stored = store.put(digest, &manifest, &artifact, self.max_component)?;
        Ok(Pulled {
            digest: digest.to_owned(),
            stored,
            cached: false,
        })
    }

    /// One blob, at most its descriptor's size, checked against its digest.
    async fn blob(&self, image: &Reference, layer: &Descriptor) -> Result<Vec<u8>, OciError> {
        let descriptor = oci_client::manifest::OciDescriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: i64::try_from(layer.size).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let mut out = Capped {
            bytes: Vec::new(),
            limit: usize::try_from(layer.size).unwrap_or(usize::MAX),
            overflowed: false,
        };
        let pulled = self
            .within(self.client.pull_blob(image, &descriptor, &mut out))
            .await;
        if out.overflowed {
            return Err(self.refused(format!(
                "blob {} is longer than the {} bytes its manifest announced",
                layer.digest, layer.size
            )));
        }
        pulled?;
        // pull_blob checked the digest; checked again here so the
        // guarantee does not rest on a dependency's internals.
        let actual = digest_of(&out.bytes);
        if actual != layer.digest || out.bytes.len() as u64 != layer.size {
            return Err(self.refused(format!(
                "blob {} arrived as {actual} ({} bytes, {} announced): altered in the registry or on the way",
                layer.digest,
                out.bytes.len(),
                layer.size
            )));
        }
        Ok(out.bytes)
    }

    /// Publishes `artifact` at the reference, with `name` and `version` as
    /// annotations, and returns the manifest's digest.
    ///
    /// # Errors
    /// [`OciError`] when the registry refuses or cannot be reached.
    pub async fn push(
        &self,
        artifact: &Artifact,
        name: &str,
        version: &str,
    ) -> Result<String, OciError> {
        self.within(
            self.client
                .auth(&self.reference, &self.auth, RegistryOperation::Push),
        )
        .await?;
        let mut blobs = vec![artifact::EMPTY_CONFIG.to_vec(), artifact.component.clone()];
        blobs.extend(artifact.signature.clone());
        for blob in blobs {
            let digest = digest_of(&blob);
            if !self
                .within(self.client.blob_exists(&self.reference, &digest))
                .await?
            {
                self.within(self.client.push_blob(&self.reference, blob, &digest))
                    .await?;
            }
        }
        let manifest = artifact.manifest(name, version);
        let digest = digest_of(&manifest);
        let content_type = hyper::header::HeaderValue::from_static(MANIFEST_MEDIA_TYPE);
        self.within(
            self.client
                .push_manifest_raw(&self.reference, manifest, content_type),
        )
        .await?;
        Ok(digest)
    }
}

/// `e` and each error under it, as `e: cause: cause`: reqwest says only
/// "error sending request" on top, and the reason (a certificate from an
/// unknown issuer, a refused connection) underneath.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// The credentials a registry's settings give.
fn auth(registry: &RegistryConfig) -> Result<RegistryAuth, String> {
    let Some(user) = &registry.username else {
        return Ok(RegistryAuth::Anonymous);
    };
    let password = match (&registry.password_env, &registry.password_file) {
        (Some(var), _) => std::env::var(var)
            .map_err(|_| format!("`password_env` names `{var}`, which is not set"))?,
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read `{}`: {e}", file.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        (None, None) => return Err("`username` without a password".into()),
    };
    Ok(RegistryAuth::Basic(user.clone(), password))
}

/// A writer that refuses to grow past `limit`: a registry cannot make a
/// pull hold more than the manifest announced.
struct Capped {
    bytes: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.bytes.len() + buf.len() > self.limit {
            self.overflowed = true;
            return Poll::Ready(Err(std::io::Error::other(format!(
                "the blob is longer than the {} bytes its manifest announced",
                self.limit
            ))));
        }
        self.bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
