//! Policy signatures: Ed25519 key pairs, the detached signature file a
//! security team ships beside each component, and the canonical payload it
//! signs. The verify stage of the load pipeline
//! ([`crate::load`]) checks them against the configured trust.
//!
//! # The signed payload
//!
//! A signature binds five fields. The bytes signed are their canonical
//! encoding: UTF-8 lines, each ending in `\n`, in this order, with nothing
//! else:
//!
//! ```text
//! arbiter-policy-signature/1
//! policy=<policy name>
//! version=<semantic version>
//! sha256=<64 lowercase hex digits of the component's SHA-256>
//! key_id=<signing key id>
//! signed_at=<RFC 3339 time, UTC, whole seconds, e.g. 2026-11-21T14:00:00Z>
//! ```
//!
//! Names and key ids are 1 to 128 characters of `A-Z a-z 0-9 . _ -`, the
//! version is a semantic version, so no field can contain a newline or an
//! `=` that would make two payloads encode alike.
//!
//! # The signature file
//!
//! `policy.wasm.sig`, JSON, at most [`MAX_SIGNATURE_FILE_BYTES`]:
//!
//! ```json
//! {"format": "arbiter-signature/1",
//!  "payload": {"policy": "procurement", "version": "1.4.0", "sha256": "…",
//!              "key_id": "secteam-2026", "signed_at": "2026-11-21T14:00:00Z"},
//!  "signature": "<128 hex digits: Ed25519 over the canonical payload>"}
//! ```
//!
//! # Key files
//!
//! TOML. The private key file (`ID.key`, created owner-only) holds `id` and
//! `private_key` (the 32-byte seed, hex); the public key file (`ID.pub`)
//! holds `id` and `public_key` (hex), exactly what a `[[trust.keys]]` entry
//! takes.

use std::io::Read;
use std::path::Path;
use std::time::SystemTime;

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hex;

/// The `format` of a signature file.
pub const SIGNATURE_FORMAT: &str = "arbiter-signature/1";

/// The first line of the canonical payload: a domain separator, so these
/// signatures can never be mistaken for signatures over anything else.
const PAYLOAD_HEADER: &str = "arbiter-policy-signature/1";

/// Signature files larger than this are refused unread.
pub const MAX_SIGNATURE_FILE_BYTES: u64 = 16 * 1024;

/// What can go wrong with keys and signature files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// A key file does not parse or holds a bad key.
    #[error("{0}")]
    Key(String),
    /// A signature file is not one.
    #[error("the signature file is malformed: {0}")]
    Malformed(String),
    /// A signature file is over the size limit.
    #[error("the signature file is {0} bytes, over the limit of {MAX_SIGNATURE_FILE_BYTES}")]
    TooLarge(u64),
    /// A signature file cannot be read.
    #[error("cannot read the signature file: {0}")]
    Unreadable(String),
    /// A field to sign is not allowed.
    #[error("{0}")]
    Field(String),
    /// The system has no randomness to make a key with.
    #[error("no randomness for a new key: {0}")]
    Random(String),
}

/// A signing key with its id: what `arbiter keygen` makes and `arbiter
/// sign` uses.
pub struct KeyPair {
    id: String,
    key: SigningKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("KeyPair")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrivateKeyFile {
    id: String,
    private_key: String,
}

/// A public key with its id, as trusted in configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicKeyFile {
    id: String,
    public_key: String,
}

impl KeyPair {
    /// A new key pair from the system's randomness.
    ///
    /// # Errors
    /// A bad id, or no randomness.
    pub fn generate(id: &str) -> Result<Self, SigningError> {
        check_name("key id", id)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| SigningError::Random(e.to_string()))?;
        Ok(KeyPair {
            id: id.to_owned(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Reads a private key file's text.
    ///
    /// # Errors
    /// [`SigningError::Key`] saying what is wrong with it.
    pub fn from_private_file(text: &str) -> Result<Self, SigningError> {
        let f: PrivateKeyFile = toml::from_str(text)
            .map_err(|e| SigningError::Key(format!("not a private key file: {e}")))?;
        check_name("key id", &f.id).map_err(|e| SigningError::Key(e.to_string()))?;
        let seed = hex::decode::<32>(&f.private_key)
            .ok_or_else(|| SigningError::Key("`private_key` must be 64 hex digits".into()))?;
        Ok(KeyPair {
            id: f.id,
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The private key file's text.
    pub fn private_file(&self) -> String {
        format!(
            "# Arbiter Ed25519 private key. Keep it secret; never commit it.\nid = \"{}\"\nprivate_key = \"{}\"\n",
            self.id,
            hex::encode(self.key.as_bytes())
        )
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            id: self.id.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Ed25519 over `message` as it is: for callers (the decision log's
    /// checkpoints) whose message carries its own domain separator.
    pub fn sign_message(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// Signs `component` as version `version` of policy `policy`.
    ///
    /// # Errors
    /// [`SigningError::Field`] for a bad name or version.
    pub fn sign(
        &self,
        policy: &str,
        version: &str,
        component: &[u8],
        signed_at: SystemTime,
    ) -> Result<SignatureFile, SigningError> {
        let payload = Payload {
            policy: policy.to_owned(),
            version: version.to_owned(),
            sha256: hex::encode(&Sha256::digest(component)),
            key_id: self.id.clone(),
            signed_at: humantime::format_rfc3339_seconds(signed_at).to_string(),
        };
        payload.check().map_err(SigningError::Field)?;
        let signature = self.key.sign(&payload.canonical());
        Ok(SignatureFile {
            format: SIGNATURE_FORMAT.to_owned(),
            payload,
            signature: hex::encode(&signature.to_bytes()),
        })
    }
}

/// A public key and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    id: String,
    key: VerifyingKey,
}

impl PublicKey {
    /// The key `public_key` (64 hex digits) called `id`.
    ///
    /// # Errors
    /// [`SigningError::Key`] for a bad id or key.
    pub fn new(id: &str, public_key: &str) -> Result<Self, SigningError> {
        check_name("key id", id).map_err(|e| SigningError::Key(e.to_string()))?;
        let bytes = hex::decode::<32>(public_key).ok_or_else(|| {
            SigningError::Key(format!("key `{id}`: `public_key` must be 64 hex digits"))
        })?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| SigningError::Key(format!("key `{id}`: not an Ed25519 public key")))?;
        Ok(PublicKey {
            id: id.to_owned(),
            key,
        })
    }

    /// Reads a public key file's text.
    ///
    /// # Errors
    /// [`SigningError::Key`] saying what is wrong with it.
    pub fn from_file(text: &str) -> Result<Self, SigningError> {
        let f: PublicKeyFile = toml::from_str(text)
            .map_err(|e| SigningError::Key(format!("not a public key file: {e}")))?;
        Self::new(&f.id, &f.public_key)
    }

    /// The public key file's text, which is also a `[[trust.keys]]` entry.
    pub fn file(&self) -> String {
        format!(
            "# Arbiter Ed25519 public key. Trust it with a [[trust.keys]] entry:\nid = \"{}\"\npublic_key = \"{}\"\n",
            self.id,
            self.hex()
        )
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key as 64 hex digits.
    pub fn hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    /// Whether `signature` (128 hex digits) is this key's over `message`.
    pub fn verifies_message(&self, message: &[u8], signature: &str) -> bool {
        hex::decode::<64>(signature).is_some_and(|bytes| {
            self.key
                .verify(message, &Signature::from_bytes(&bytes))
                .is_ok()
        })
    }

    /// Whether `file`'s signature is this key's over its payload. Says
    /// nothing about the component, the name or the key id.
    pub fn verifies(&self, file: &SignatureFile) -> bool {
        self.verifies_message(&file.payload.canonical(), &file.signature)
    }
}

/// The fields a signature binds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// The policy's name, which must equal its configured name.
    pub policy: String,
    /// The version the security team gives it (semantic versioning).
    pub version: String,
    /// The component's SHA-256, lowercase hex.
    pub sha256: String,
    /// The signing key's id.
    pub key_id: String,
    /// When it was signed (RFC 3339, UTC, seconds).
    pub signed_at: String,
}

impl Payload {
    /// The bytes signed: see the module documentation.
    pub fn canonical(&self) -> Vec<u8> {
        format!(
            "{PAYLOAD_HEADER}\npolicy={}\nversion={}\nsha256={}\nkey_id={}\nsigned_at={}\n",
            self.policy, self.version, self.sha256, self.key_id, self.signed_at
        )
        .into_bytes()
    }

    /// Checks every field's form, so the canonical encoding is unambiguous.
    fn check(&self) -> Result<(), String> {
        check_name("policy name", &self.policy).map_err(|e| e.to_string())?;
        check_name("key id", &self.key_id).map_err(|e| e.to_string())?;
        semver::Version::parse(&self.version)
            .map_err(|e| format!("version `{}` is not a semantic version: {e}", self.version))?;
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err("sha256 must be 64 lowercase hex digits".into());
        }
        let well_formed = humantime::parse_rfc3339(&self.signed_at).is_ok()
            && self.signed_at.ends_with('Z')
            && self.signed_at.len() == "2026-11-21T14:00:00Z".len();
        if !well_formed {
            return Err(format!(
                "signed_at `{}` is not an RFC 3339 UTC time in whole seconds",
                self.signed_at
            ));
        }
        Ok(())
    }
}

/// A detached signature file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    /// Always [`SIGNATURE_FORMAT`].
    pub format: String,
    /// What is signed.
    pub payload: Payload,
    /// Ed25519 over the canonical payload, hex.
    pub signature: String,
}

impl SignatureFile {
    /// Parses and checks a signature file's bytes.
    ///
    /// # Errors
    /// [`SigningError::Malformed`] or [`SigningError::TooLarge`], saying why.
    pub fn parse(bytes: &[u8]) -> Result<Self, SigningError> {
        if bytes.len() as u64 > MAX_SIGNATURE_FILE_BYTES {
            return Err(SigningError::TooLarge(bytes.len() as u64));
        }
        let file: SignatureFile =
            serde_json::from_slice(bytes).map_err(|e| SigningError::Malformed(e.to_string()))?;
        if file.format != SIGNATURE_FORMAT {
            return Err(SigningError::Malformed(format!(
                "format `{}` is not `{SIGNATURE_FORMAT}`",
                file.format
            )));
        }
        file.payload.check().map_err(SigningError::Malformed)?;
        if hex::decode::<64>(&file.signature).is_none() {
            return Err(SigningError::Malformed(
                "`signature` must be 128 hex digits".into(),
            ));
        }
        Ok(file)
    }

    /// Reads the signature file at `path`: `Ok(None)` if there is none.
    /// Never reads more than [`MAX_SIGNATURE_FILE_BYTES`] (+1 to notice).
    ///
    /// # Errors
    /// A [`SigningError`] saying why it cannot be used.
    pub fn read(path: &Path) -> Result<Option<Self>, SigningError> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SigningError::Unreadable(e.to_string())),
        };
        let mut bytes = Vec::new();
        file.take(MAX_SIGNATURE_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| SigningError::Unreadable(e.to_string()))?;
        Self::parse(&bytes).map(Some)
    }

    /// The file's text: pretty JSON and a final newline.
    pub fn to_json(&self) -> String {
        // Serializing plain strings cannot fail.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// Where the signature of the component at `component` is.
pub fn signature_path(component: &Path) -> std::path::PathBuf {
    let mut name = component.as_os_str().to_owned();
    name.push(".sig");
    name.into()
}

/// Checks a policy name or key id: 1 to 128 of `A-Z a-z 0-9 . _ -`.
///
/// # Errors
/// [`SigningError::Field`] naming what is wrong.
pub fn check_name(what: &str, name: &str) -> Result<(), SigningError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SigningError::Field(format!(
            "{what} `{}` must be 1 to 128 characters of A-Z a-z 0-9 . _ -",
            name.chars().take(140).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed() -> (KeyPair, SignatureFile) {
        let k = KeyPair::generate("team-1").expect("key");
        let s = k
            .sign("procurement", "1.2.3", b"component", SystemTime::UNIX_EPOCH)
            .expect("sign");
        (k, s)
    }

    #[test]
    fn canonical_payload_is_the_documented_lines() {
        let (_, s) = signed();
        let text = String::from_utf8(s.payload.canonical()).expect("utf-8");
        assert_eq!(
            text,
            format!(
                "arbiter-policy-signature/1\npolicy=procurement\nversion=1.2.3\nsha256={}\nkey_id=team-1\nsigned_at=1970-01-01T00:00:00Z\n",
                hex::encode(&Sha256::digest(b"component"))
            )
        );
    }

    #[test]
    fn keys_and_signatures_round_trip_through_their_files() {
        let (k, s) = signed();
        let k2 = KeyPair::from_private_file(&k.private_file()).expect("private");
        let p = PublicKey::from_file(&k2.public().file()).expect("public");
        assert_eq!(p, k.public());
        let s2 = SignatureFile::parse(s.to_json().as_bytes()).expect("parse");
        assert!(p.verifies(&s2));
        // Any change to the payload breaks the signature.
        let mut changed = s2.clone();
        changed.payload.version = "1.2.4".into();
        assert!(!p.verifies(&changed));
        let other = KeyPair::generate("team-1").expect("key").public();
        assert!(!other.verifies(&s2));
        assert!(!format!("{k:?}").contains(&hex::encode(k.key.as_bytes())));
    }

    #[test]
    fn hostile_signature_files_are_refused_with_a_reason() {
        let (_, s) = signed();
        let good = s.to_json();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "EOF"),
            (good.as_bytes()[..good.len() / 2].to_vec(), "EOF"),
            (b"\xff\xfe not json".to_vec(), "expected value"),
            (
                good.replace("arbiter-signature/1", "x/2").into_bytes(),
                "format",
            ),
            (
                good.replace("1.2.3", "1.2").into_bytes(),
                "semantic version",
            ),
            (
                good.replace("procurement", "a\\nb").into_bytes(),
                "policy name",
            ),
            (good.replace("team-1", "team=1").into_bytes(), "key id"),
            (
                good.replace("1970-01-01T00:00:00Z", "yesterday")
                    .into_bytes(),
                "signed_at",
            ),
            (
                good.replace("\"format\"", "\"extra\": 1, \"format\"")
                    .into_bytes(),
                "unknown field",
            ),
            (
                vec![b' '; MAX_SIGNATURE_FILE_BYTES as usize + 1],
                "over the limit",
            ),
        ];
        for (bytes, why) in cases {
            let e = SignatureFile::parse(&bytes).expect_err("refused");
            assert!(e.to_string().contains(why), "{why}: {e}");
        }
        let mut bad_sig = s.clone();
        bad_sig.signature = "00".repeat(63);
        let e = SignatureFile::parse(bad_sig.to_json().as_bytes()).expect_err("refused");
        assert!(e.to_string().contains("128 hex digits"), "{e}");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("x", "finance-ledger_2.0").is_ok());
        for bad in ["", "a b", "a=b", "a\nb", "é", &"a".repeat(129)] {
            assert!(check_name("x", bad).is_err(), "{bad:?}");
        }
        let k = KeyPair::generate("k").expect("key");
        assert!(k.sign("p", "not-semver", b"", SystemTime::now()).is_err());
        assert!(KeyPair::generate("bad id").is_err());
    }
}
