//! The verify stage: the component's detached signature (`FILE.sig`, or
//! the signature layer of an OCI artifact, stored beside its component)
//! against the configured trust ([`TrustConfig`]).
//!
//! With `require_signatures`, a component without a valid signature by a
//! trusted, unrevoked key scoped to its name never gets past this stage.
//! Without it, unsigned components pass, but a signature that is present
//! is checked all the same: a bad one is evidence of tampering, never
//! something to ignore.

use serde::Serialize;

use super::{LoadProblem, Source};
use crate::config::TrustConfig;
use crate::glob::glob;
use crate::signing::{PublicKey, SignatureFile, SigningError, signature_path};

/// Who signed a loaded policy, and as what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signer {
    /// The signing key's id.
    pub key_id: String,
    /// The version the signer gave it.
    pub version: String,
    /// When it was signed.
    pub signed_at: String,
    /// The signature itself, kept so a rollback checks it again against
    /// the trust in force then.
    #[serde(skip)]
    pub(crate) file: SignatureFile,
}

/// Why a signature was refused: each reason its own variant, so a test
/// and an operator can tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureProblem {
    /// Signatures are required and there is none.
    #[error("it is unsigned: {0}")]
    Unsigned(String),
    /// The signature file cannot be read or parsed.
    #[error("{0}")]
    File(SigningError),
    /// The key is revoked.
    #[error("it is signed by key `{0}`, which is revoked")]
    RevokedKey(String),
    /// The key is not trusted.
    #[error("it is signed by key `{0}`, which is not trusted")]
    UnknownKey(String),
    /// The signature is not the key's over the payload.
    #[error(
        "the signature does not verify with key `{0}`: the signature file was altered or signed by another key"
    )]
    BadSignature(String),
    /// The bytes are not the ones signed.
    #[error(
        "its bytes do not match the signed digest (signed sha256:{signed}, file sha256:{actual}): the component was altered after signing"
    )]
    DigestMismatch {
        /// The digest in the signature.
        signed: String,
        /// The digest of the bytes read.
        actual: String,
    },
    /// It was signed as another policy.
    #[error("it was signed as policy `{signed}` but is configured as `{configured}`")]
    NameMismatch {
        /// The name signed.
        signed: String,
        /// The name configured.
        configured: String,
    },
    /// It is older than the policy's `min_signed_version`.
    #[error(
        "it is signed as version {signed}, below the policy's `min_signed_version` {floor}: a downgrade"
    )]
    Downgrade {
        /// The signed version.
        signed: String,
        /// The floor.
        floor: String,
    },
    /// The key may not sign this policy.
    #[error("key `{key}` may sign only {patterns}, not `{policy}`")]
    OutOfScope {
        /// The key.
        key: String,
        /// Its scope.
        patterns: String,
        /// The policy.
        policy: String,
    },
}

/// Checks `bytes` (whose SHA-256 is `digest`, hex), loaded from `source`
/// as policy `policy`, against `trust`. `Ok(None)`: unsigned, and allowed.
pub(super) fn verify(
    trust: &TrustConfig,
    policy: &str,
    source: &Source,
    digest: &str,
) -> Result<Option<Signer>, LoadProblem> {
    let (file, missing) = match source {
        Source::File(path)
        | Source::Oci {
            component: path, ..
        } => {
            let sig = signature_path(path);
            match SignatureFile::read(&sig) {
                Ok(f) => (f, format!("there is no `{}`", sig.display())),
                Err(e) => {
                    return Err(LoadProblem::Signature(Box::new(SignatureProblem::File(e))));
                }
            }
        }
        Source::Bytes { label, .. } => (
            None,
            format!("`{label}` has no signature file; give a signed component file instead"),
        ),
    };
    check(trust, policy, file, digest, &missing)
}

/// The verify stage run again on a version already loaded, against the
/// trust in force now: a key revoked, untrusted or narrowed since, a
/// signature now required, or a floor raised past it, each refuses it.
///
/// # Errors
/// The [`LoadProblem`] the verify stage would give it today.
pub fn recheck(
    trust: &TrustConfig,
    policy: &str,
    version: &str,
    signer: Option<&Signer>,
) -> Result<(), LoadProblem> {
    let digest = version.strip_prefix("sha256:").unwrap_or(version);
    check(
        trust,
        policy,
        signer.map(|s| s.file.clone()),
        digest,
        "it was loaded unsigned",
    )
    .map(|_| ())
}

/// The checks of the verify stage on a signature file already read
/// (`None`: there is none, for the reason `missing`).
fn check(
    trust: &TrustConfig,
    policy: &str,
    file: Option<SignatureFile>,
    digest: &str,
    missing: &str,
) -> Result<Option<Signer>, LoadProblem> {
    let fail = |p| Err(LoadProblem::Signature(Box::new(p)));
    let Some(file) = file else {
        if trust.require_signatures {
            return fail(SignatureProblem::Unsigned(missing.to_owned()));
        }
        if let Some(floor) = &trust.min_signed_version {
            return fail(SignatureProblem::Unsigned(format!(
                "{missing}, and the policy's `min_signed_version` {floor} needs a signed version"
            )));
        }
        return Ok(None);
    };
    let p = &file.payload;
    if trust.revoked.contains(&p.key_id) {
        return fail(SignatureProblem::RevokedKey(p.key_id.clone()));
    }
    let Some(trusted) = trust.keys.iter().find(|k| k.id == p.key_id) else {
        return fail(SignatureProblem::UnknownKey(p.key_id.clone()));
    };
    // `Config` checked every trusted key when it was parsed.
    let key = PublicKey::new(&trusted.id, &trusted.public_key)
        .map_err(|e| LoadProblem::Signature(Box::new(SignatureProblem::File(e))))?;
    if !key.verifies(&file) {
        return fail(SignatureProblem::BadSignature(p.key_id.clone()));
    }
    if p.sha256 != digest {
        return fail(SignatureProblem::DigestMismatch {
            signed: p.sha256.clone(),
            actual: digest.to_owned(),
        });
    }
    if p.policy != policy {
        return fail(SignatureProblem::NameMismatch {
            signed: p.policy.clone(),
            configured: policy.to_owned(),
        });
    }
    if !trusted.policies.iter().any(|g| glob(g, policy)) {
        return fail(SignatureProblem::OutOfScope {
            key: p.key_id.clone(),
            patterns: trusted
                .policies
                .iter()
                .map(|g| format!("`{g}`"))
                .collect::<Vec<_>>()
                .join(", "),
            policy: policy.to_owned(),
        });
    }
    if let Some(floor) = &trust.min_signed_version {
        // The payload's version was checked as semver when it was signed
        // and when the file was parsed; anything else is below any floor.
        let below = semver::Version::parse(&p.version).map_or(true, |v| v < *floor);
        if below {
            return fail(SignatureProblem::Downgrade {
                signed: p.version.clone(),
                floor: floor.to_string(),
            });
        }
    }
    Ok(Some(Signer {
        key_id: p.key_id.clone(),
        version: p.version.clone(),
        signed_at: p.signed_at.clone(),
        file,
    }))
}
