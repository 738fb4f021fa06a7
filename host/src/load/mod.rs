//! Load: the one path by which a policy comes into service, at start or on
//! reload. Each step is a function of `pipeline.rs`, and a failure names its
//! step ([`LoadStep`]) and the policy.
//!
//! read → verify → compile (cached on disk) → check imports → link (check
//! the world) → check limits → validate settings → smoke.
//!
//! The last stage, the swap into the serving set, belongs to
//! [`crate::reload`]: a failure anywhere before it leaves the serving
//! version untouched.

pub(crate) mod cache;
mod inspect;
mod pipeline;
mod verify;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

pub use cache::{CacheStatus, CompileCache};
pub use inspect::{Import, Inspection, inspect};
pub use pipeline::{load, load_if_changed, load_with_settings, verify_signature, version_of};
pub use verify::{SignatureProblem, Signer, recheck};

use crate::config::{SmokeSample, TrustConfig};
use crate::decision::{Mode, PolicyReport};
use crate::evaluate::{Evaluation, InstancePool, Limits, PolicyFailure, PolicyPre};

/// Where a policy's component bytes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A `.wasm` file.
    File(PathBuf),
    /// An artifact pulled from an OCI registry, read from the store.
    Oci {
        /// The reference as configured (a tag or a digest).
        reference: String,
        /// The manifest digest it resolved to.
        digest: String,
        /// The component in the store; its signature is beside it.
        component: PathBuf,
    },
    /// Bytes in memory, with a label for messages (e.g. `embedded:procurement`).
    Bytes {
        /// What to call it in messages.
        label: String,
        /// The component.
        bytes: Arc<[u8]>,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Oci {
                reference, digest, ..
            } if reference.ends_with(digest.as_str()) => write!(f, "oci:{reference}"),
            Source::Oci {
                reference, digest, ..
            } => write!(f, "oci:{reference}@{digest}"),
            Source::Bytes { label, .. } => f.write_str(label),
        }
    }
}

/// What to load: one configured policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySpec {
    /// The configured name.
    pub name: String,
    /// Where the component is.
    pub source: Source,
    /// Its settings, passed to it as JSON.
    pub settings: serde_json::Value,
    /// Its limits.
    pub limits: Limits,
    /// Samples it must decide as expected before it may serve.
    pub smoke: Vec<SmokeSample>,
    /// The keys that may sign it, and whether a signature is required.
    pub trust: Arc<TrustConfig>,
}

/// A policy that passed every load step; what decisions run.
#[derive(Clone)]
pub struct LoadedPolicy {
    /// The configured name.
    pub name: String,
    /// `sha256:` of the component bytes.
    pub version: String,
    /// Where it was loaded from.
    pub source: String,
    /// Size of the component, in bytes.
    pub size_bytes: usize,
    /// Whether compilation was skipped thanks to the cache.
    pub cache: CacheStatus,
    /// Its settings, as the JSON text passed to each call.
    pub settings: String,
    /// Its limits.
    pub limits: Limits,
    /// When it passed the load pipeline.
    pub loaded_at: SystemTime,
    /// Who signed it, when it is signed.
    pub signer: Option<Signer>,
    pub(crate) pre: PolicyPre,
    /// Its idle instances, when its limits turn reuse on.
    pub(crate) instances: Arc<InstancePool>,
}

impl LoadedPolicy {
    /// The linked component, for calling [`crate::evaluate::evaluate`]
    /// directly.
    pub fn pre(&self) -> &PolicyPre {
        &self.pre
    }

    /// Its idle instances, for [`crate::evaluate::evaluate`] with reuse.
    pub fn instances(&self) -> &InstancePool {
        &self.instances
    }

    /// One evaluation of this policy as its report, under enforce mode
    /// until the flow says otherwise; a failure is a deny naming it.
    pub fn report(&self, eval: Evaluation) -> PolicyReport {
        let mut report = match eval.result {
            Ok(v) => PolicyReport {
                name: self.name.clone(),
                version: self.version.clone(),
                signer: None,
                signed_version: None,
                mode: Mode::Enforce,
                candidate: None,
                outcome: v.outcome,
                rule: v.rule,
                reason: v.reason,
                risk: v.risk,
                params: v.params,
                fuel: 0,
                micros: 0,
                failure: None,
                labels: v.labels,
                questions: Vec::new(),
            },
            Err(f) => f.report(&self.name, &self.version),
        };
        if let Some(s) = &self.signer {
            report.signer = Some(s.key_id.clone());
            report.signed_version = Some(s.version.clone());
        }
        report.fuel = eval.fuel;
        report.questions = eval.questions;
        report.micros = eval.micros;
        report
    }

    /// Whether `other` is the same component with the same settings and
    /// limits: loading it again would change nothing.
    pub fn same_as(&self, other: &LoadedPolicy) -> bool {
        self.version == other.version
            && self.settings == other.settings
            && self.limits == other.limits
            && self.signer == other.signer
    }
}

impl fmt::Debug for LoadedPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPolicy")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The steps of the load pipeline, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoadStep {
    /// Reading the component bytes.
    Read,
    /// Checking the component's signature.
    Verify,
    /// Compiling them (or loading the compiled form from the cache).
    Compile,
    /// Checking that the component imports only what the host provides.
    CheckImports,
    /// Linking and checking the exports against the `policy` world.
    Link,
    /// Checking the limits against the engine.
    CheckLimits,
    /// Calling the policy's `validate-settings`.
    ValidateSettings,
    /// Deciding the configured smoke samples.
    Smoke,
}

impl LoadStep {
    /// The step's stable name, as used in messages and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadStep::Read => "read",
            LoadStep::Verify => "verify",
            LoadStep::Compile => "compile",
            LoadStep::CheckImports => "check-imports",
            LoadStep::Link => "link",
            LoadStep::CheckLimits => "check-limits",
            LoadStep::ValidateSettings => "validate-settings",
            LoadStep::Smoke => "smoke",
        }
    }
}

impl fmt::Display for LoadStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy that could not be loaded: which, at which step, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("policy `{policy}` ({source_desc}) failed to load at step {step}: {problem}")]
pub struct LoadError {
    /// The configured name.
    pub policy: String,
    /// Where it was loaded from.
    pub source_desc: String,
    /// The step that failed.
    pub step: LoadStep,
    /// What went wrong.
    pub problem: LoadProblem,
}

/// What went wrong in a load step.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LoadProblem {
    /// The file could not be read.
    #[error("cannot read the file: {0}")]
    Read(#[source] Arc<std::io::Error>),
    /// The configuration names an example policy this build does not embed.
    #[error("no example policy `{name}` in this build (examples: {})", known.join(", "))]
    NoExample {
        /// The name asked for.
        name: String,
        /// The examples this build has.
        known: Vec<String>,
    },
    /// An OCI policy has nothing in the store to load.
    #[error("{0}")]
    NotPulled(String),
    /// The serving version was replaced while a reload ran.
    #[error("the serving version vanished during the reload")]
    Vanished,
    /// The bytes are not a valid component.
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    /// The component imports interfaces the host does not link for it:
    /// each import, and why.
    #[error(
        "it imports what Arbiter refuses: {}",
        .0.iter().map(|(i, why)| format!("`{i}` ({why})")).collect::<Vec<_>>().join(", ")
    )]
    ForbiddenImports(Vec<(String, String)>),
    /// The component does not fit the `arbiter:policy` world.
    #[error("it does not implement the arbiter:policy world: {0}")]
    Link(String),
    /// A limit is larger than the engine allows.
    #[error("{0}")]
    Limits(String),
    /// The signature stage refused it.
    #[error("signature refused: {0}")]
    Signature(Box<SignatureProblem>),
    /// The policy refused its settings (its message names the key).
    #[error("{0}")]
    SettingsRefused(String),
    /// `validate-settings` itself failed.
    #[error("validate-settings failed: {0}")]
    ValidateFailed(PolicyFailure),
    /// A smoke sample was not decided as expected.
    #[error("smoke sample {sample}: {problem}")]
    Smoke {
        /// The sample's name.
        sample: String,
        /// What it decided instead.
        problem: String,
    },
}
