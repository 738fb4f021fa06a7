//! The artifact a policy travels as: one OCI image manifest whose
//! `artifactType` is [`ARTIFACT_TYPE`], with the empty config and two
//! layers, the component ([`COMPONENT_MEDIA_TYPE`]) and, when signed, its
//! Arbiter signature file ([`SIGNATURE_MEDIA_TYPE`]). Component and
//! signature are one artifact, so a tag can never name a component with
//! another version's signature.
//!
//! A manifest is accepted only in that shape: any other layer, a second
//! component, a digest that is not SHA-256 or a size past the limits is
//! refused, never skipped.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::signing::MAX_SIGNATURE_FILE_BYTES;

/// The manifest's `artifactType`: an Arbiter policy.
pub const ARTIFACT_TYPE: &str = "application/vnd.arbiter.policy.v1";
/// The component layer: a WebAssembly component built against the
/// `arbiter:policy` world.
pub const COMPONENT_MEDIA_TYPE: &str = "application/vnd.arbiter.policy.component.v1+wasm";
/// The signature layer: the `arbiter-signature/1` JSON file `arbiter
/// sign` writes.
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.arbiter.policy.signature.v1+json";
/// The config: OCI's empty descriptor, as the image spec asks of
/// artifacts without a config of their own.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The manifest's own media type.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The empty config's bytes.
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// The largest manifest accepted: a policy's manifest is a few hundred
/// bytes, so anything near this is not one.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;

/// A policy as pushed or pulled: the component and, if signed, its
/// signature file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The component's bytes.
    pub component: Vec<u8>,
    /// The signature file's bytes, when signed.
    pub signature: Option<Vec<u8>>,
}

/// `sha256:` and the hex digest of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::hex::encode(&Sha256::digest(bytes)))
}

/// Whether `digest` is `sha256:` and 64 lowercase hex digits: the only
/// form accepted, so a digest is also safe as a file name.
pub fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A layer (or the config) as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What it is.
    pub media_type: String,
    /// `sha256:…` of its bytes.
    pub digest: String,
    /// Its length in bytes.
    pub size: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// The blobs a manifest says make up the artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layers {
    /// The component layer.
    pub component: Descriptor,
    /// The signature layer, when there is one.
    pub signature: Option<Descriptor>,
}

impl Artifact {
    /// The manifest that publishes this artifact, as the exact bytes to
    /// push (their digest names the artifact), with `name` and `version`
    /// as annotations for people browsing the registry.
    pub fn manifest(&self, name: &str, version: &str) -> Vec<u8> {
        let layer = |media_type: &str, bytes: &[u8], title: &str| {
            serde_json::json!({
                "mediaType": media_type,
                "digest": digest_of(bytes),
                "size": bytes.len(),
                "annotations": {"org.opencontainers.image.title": title},
            })
        };
        let mut layers = vec![layer(COMPONENT_MEDIA_TYPE, &self.component, "policy.wasm")];
        if let Some(sig) = &self.signature {
            layers.push(layer(SIGNATURE_MEDIA_TYPE, sig, "policy.wasm.sig"));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "config": {
                "mediaType": CONFIG_MEDIA_TYPE,
                "digest": digest_of(EMPTY_CONFIG),
                "size": EMPTY_CONFIG.len(),
            },
            "layers": layers,
            "annotations": {
                "org.opencontainers.image.title": name,
                "org.opencontainers.image.version": version,
            },
        });
        // serde_json's maps are sorted here or kept in insertion order
        // (preserve_order); either is a valid manifest, and the bytes
        // pushed are the ones hashed.
        manifest.to_string().into_bytes()
    }
}

/// The layers of a manifest, if it is an Arbiter policy artifact whose
/// component is at most `max_component` bytes.
///
/// # Errors
/// Why it is not one, in words for the operator.
pub fn layers(manifest: &[u8], max_component: u64) -> Result<Layers, String> {
    if manifest.len() > MAX_MANIFEST_BYTES {
        return Err(format!(
            "the manifest is {} bytes, over the limit of {MAX_MANIFEST_BYTES}",
            manifest.len()
        ));
    }
    let m: Manifest = serde_json::from_slice(manifest)
        .map_err(|e| format!("the manifest is not an OCI image manifest: {e}"))?;
    if m.schema_version != 2 {
        return Err(format!(
            "manifest schemaVersion {} is not 2",
            m.schema_version
        ));
    }
    if let Some(t) = m
        .media_type
        .as_deref()
        .filter(|t| *t != MANIFEST_MEDIA_TYPE)
    {
        return Err(format!(
            "the manifest's mediaType is `{t}`, not `{MANIFEST_MEDIA_TYPE}`"
        ));
    }
    if m.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
        return Err(format!(
            "its artifactType is {}, not `{ARTIFACT_TYPE}`: it is not an Arbiter policy",
            m.artifact_type
                .map_or("missing".into(), |t| format!("`{t}`"))
        ));
    }
    if m.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(format!(
            "its config is `{}`, not the empty `{CONFIG_MEDIA_TYPE}`",
            m.config.media_type
        ));
    }
    let mut component = None;
    let mut signature = None;
    for layer in m.layers {
        if !is_sha256_digest(&layer.digest) {
            return Err(format!("layer digest `{}` is not sha256", layer.digest));
        }
        let (slot, limit) = match layer.media_type.as_str() {
            COMPONENT_MEDIA_TYPE => (&mut component, max_component),
            SIGNATURE_MEDIA_TYPE => (&mut signature, MAX_SIGNATURE_FILE_BYTES),
            other => return Err(format!("it has a layer of unknown type `{other}`")),
        };
        if layer.size > limit {
            return Err(format!(
                "its `{}` layer is {} bytes, over the limit of {limit}",
                layer.media_type, layer.size
            ));
        }
        if slot.replace(layer).is_some() {
            return Err("it has two layers of one type".into());
        }
    }
    let component = component.ok_or("it has no component layer")?;
    Ok(Layers {
        component,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(signed: bool) -> Artifact {
        Artifact {
            component: b"\0asm component".to_vec(),
            signature: signed.then(|| b"{\"format\":\"arbiter-signature/1\"}".to_vec()),
        }
    }

    #[test]
    fn a_pushed_manifest_reads_back_as_its_layers() {
        let a = artifact(true);
        let layers = layers(&a.manifest("p", "1.0.0"), 1 << 20).expect("an artifact");
        assert_eq!(layers.component.digest, digest_of(&a.component));
        assert_eq!(layers.component.size, a.component.len() as u64);
        let sig = layers.signature.expect("signed");
        assert_eq!(Some(sig.digest), a.signature.as_deref().map(digest_of));
        let unsigned = super::layers(&artifact(false).manifest("p", "1"), 1 << 20).expect("ok");
        assert!(unsigned.signature.is_none());
    }

    #[test]
    fn other_shapes_are_refused_by_name() {
        let a = artifact(true);
        let base: serde_json::Value = serde_json::from_slice(&a.manifest("p", "1")).expect("json");
        let refused = |edit: &dyn Fn(&mut serde_json::Value), expect: &str| {
            let mut m = base.clone();
            edit(&mut m);
            let err = layers(m.to_string().as_bytes(), 1 << 20).expect_err(expect);
            assert!(err.contains(expect), "{err}");
        };
        refused(
            &|m| m["artifactType"] = "application/vnd.other".into(),
            "not an Arbiter policy",
        );
        refused(
            &|m| m["layers"][1]["mediaType"] = "application/x-tar".into(),
            "unknown type",
        );
        refused(&|m| m["layers"][1] = m["layers"][0].clone(), "two layers");
        refused(
            &|m| m["layers"][0]["digest"] = "md5:00".into(),
            "not sha256",
        );
        refused(
            &|m| m["layers"][0]["size"] = (2u64 << 20).into(),
            "over the limit",
        );
        refused(
            &|m| m["layers"][1]["size"] = 1_000_000.into(),
            "over the limit",
        );
        refused(
            &|m| m["layers"] = serde_json::json!([m["layers"][1].clone()]),
            "no component",
        );
        refused(
            &|m| m["config"]["mediaType"] = "application/json".into(),
            "config",
        );
        refused(&|m| m["schemaVersion"] = 1.into(), "schemaVersion");
        let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(
            layers(&huge, 1)
                .expect_err("huge")
                .contains("over the limit")
        );
    }

    #[test]
    fn only_lowercase_sha256_digests_are_digests() {
        let d = digest_of(b"x");
        assert!(is_sha256_digest(&d));
        assert!(!is_sha256_digest(&d.to_uppercase()));
        assert!(!is_sha256_digest("sha256:../../etc"));
        assert!(!is_sha256_digest(&d.replace("sha256", "sha512")));
    }
}
