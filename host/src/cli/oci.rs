//! `arbiter push` and `arbiter pull`: a policy as an OCI artifact, signed
//! on the way up and verified on the way down.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::config::Config;
use crate::load::Source;
use crate::oci::{Artifact, OciConfig, RegistryClient, RegistryConfig, Store};

/// How to reach the registry, for both commands.
#[derive(Debug, Args)]
pub(super) struct RegistryArgs {
    /// A configuration whose `[oci]` registries to use (credentials, CA),
    /// and, for `pull`, whose `[trust]` to verify with.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A user to sign in as; the password or token is read from
    /// $ARBITER_REGISTRY_PASSWORD.
    #[arg(long)]
    username: Option<String>,
    /// A PEM file of CA certificates the registry's certificate chains to.
    #[arg(long, value_name = "FILE")]
    registry_ca: Option<PathBuf>,
    /// Speak plain HTTP to the registry: for one on loopback only.
    #[arg(long)]
    plain_http: bool,
}

#[derive(Debug, Args)]
pub(super) struct PushArgs {
    /// The private key to sign with (from `arbiter keygen`).
    #[arg(long, value_name = "FILE", required_unless_present = "unsigned")]
    key: Option<PathBuf>,
    /// Publish without a signature (a server requiring signatures will
    /// refuse it).
    #[arg(long, conflicts_with = "key")]
    unsigned: bool,
    /// The policy name it is signed for; it must equal the configured name.
    #[arg(long)]
    name: String,
    /// The version you give it (semantic versioning, e.g. 1.4.0).
    #[arg(long)]
    version: String,
    #[command(flatten)]
    registry: RegistryArgs,
    /// The component (.wasm).
    component: PathBuf,
    /// Where to publish: `registry/repository:tag`.
    reference: String,
}

#[derive(Debug, Args)]
pub(super) struct PullArgs {
    /// A public key file to trust (repeatable); or the `[trust]` of --config.
    #[arg(long = "key", value_name = "FILE")]
    keys: Vec<PathBuf>,
    /// The name the policy is configured as [default: the signed name].
    #[arg(long)]
    name: Option<String>,
    /// Write the verified component here, and its signature beside it as
    /// FILE.sig.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// What to pull: `registry/repository:tag` or `…@sha256:…`.
    reference: String,
}

impl RegistryArgs {
    /// The `[oci]` settings: the configuration's, with the flags applied
    /// to the reference's registry.
    fn oci(&self, reference: &str) -> anyhow::Result<OciConfig> {
        let mut oci = match &self.config {
            Some(path) => {
                let base = path.parent().unwrap_or(Path::new("."));
                Config::from_file(path)?.0.oci.resolved(base)
            }
            None => OciConfig::default(),
        };
        if self.username.is_none() && self.registry_ca.is_none() && !self.plain_http {
            return Ok(oci);
        }
        let host = reference
            .parse::<oci_client::Reference>()
            .with_context(|| format!("`{reference}` is not an OCI reference"))?
            .registry()
            .to_owned();
        let mut registry = oci.registry(&host);
        if let Some(user) = &self.username {
            if std::env::var_os("ARBITER_REGISTRY_PASSWORD").is_none() {
                bail!("--username needs the password or token in $ARBITER_REGISTRY_PASSWORD");
            }
            registry.username = Some(user.clone());
            registry.password_env = Some("ARBITER_REGISTRY_PASSWORD".into());
            registry.password_file = None;
        }
        if let Some(ca) = &self.registry_ca {
            registry.ca_file = Some(ca.clone());
        }
        registry.plain_http |= self.plain_http;
        oci.registries.retain(|r: &RegistryConfig| r.host != host);
        oci.registries.push(registry);
        Ok(oci)
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")
}

pub(super) fn push(args: &PushArgs) -> anyhow::Result<ExitCode> {
    let component = std::fs::read(&args.component)
        .with_context(|| format!("cannot read `{}`", args.component.display()))?;
    semver::Version::parse(&args.version)
        .with_context(|| format!("version `{}` is not semantic versioning", args.version))?;
    let (signature, signer) = match &args.key {
        Some(key) => {
            let (sig, id) = super::signature_by(key, &args.name, &args.version, &component)?;
            (Some(sig.to_json().into_bytes()), Some(id))
        }
        None => (None, None),
    };
    let oci = args.registry.oci(&args.reference)?;
    let client = RegistryClient::new(&oci, &args.reference)?;
    let artifact = Artifact {
        component,
        signature,
    };
    let digest = runtime()?.block_on(client.push(&artifact, &args.name, &args.version))?;
    match signer {
        Some(key) => println!(
            "pushed `{}` {} signed with key `{key}` to {}: {digest}",
            args.name, args.version, args.reference
        ),
        None => println!(
            "pushed `{}` {} UNSIGNED to {}: {digest}",
            args.name, args.version, args.reference
        ),
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn pull(args: &PullArgs) -> anyhow::Result<ExitCode> {
    let trust = super::trust_from(&args.keys, args.registry.config.as_deref())?;
    let oci = args.registry.oci(&args.reference)?;
    let client = RegistryClient::new(&oci, &args.reference)?;
    // A store of its own: what this command pulls serves nowhere.
    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
    let store = Store::open(dir.path())?;
    let pulled = runtime()?.block_on(client.pull(&store))?;
    let signature = crate::signing::signature_path(&pulled.stored.component);
    let name = match &args.name {
        Some(n) => n.clone(),
        None => match crate::signing::SignatureFile::read(&signature)? {
            Some(f) => f.payload.policy,
            None => bail!("{} ({}) is unsigned", args.reference, pulled.digest),
        },
    };
    let source = Source::Oci {
        reference: args.reference.clone(),
        digest: pulled.digest.clone(),
        component: pulled.stored.component.clone(),
    };
    let (version, signer) = super::verified(name.clone(), source, trust)?;
    if let Some(out) = &args.out {
        let copy = |from: &Path, to: &Path| {
            std::fs::copy(from, to).with_context(|| format!("cannot write `{}`", to.display()))
        };
        copy(&pulled.stored.component, out)?;
        copy(&signature, &crate::signing::signature_path(out))?;
    }
    println!(
        "ok: {} ({}) is `{name}` {} ({version}) signed by `{}` at {}",
        args.reference, pulled.digest, signer.version, signer.key_id, signer.signed_at
    );
    Ok(ExitCode::SUCCESS)
}
