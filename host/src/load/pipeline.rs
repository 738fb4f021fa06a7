//! The load steps, one function each, run in order by [`load`].

use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::cache::{CacheStatus, CompileCache};
use super::verify::{self, Signer};
use super::{LoadError, LoadProblem, LoadStep, LoadedPolicy, PolicySpec, Source};
use crate::config::SmokeSample;
use crate::engine::Engine;
use crate::evaluate::{
    self, FLOW_INTERFACE, Input, InstancePool, Limits, PolicyPre, TYPES_INTERFACE, WasiGrants,
};

/// Runs every load step for `spec`.
///
/// # Errors
/// A [`LoadError`] naming the policy, the step and the problem.
pub fn load(
    engine: &Engine,
    cache: Option<&CompileCache>,
    spec: &PolicySpec,
) -> Result<LoadedPolicy, LoadError> {
    let v = read_and_verify(spec)?;
    compile_onwards(engine, cache, spec, v)
}

/// Runs every load step for `spec`, unless the bytes read are `serving`'s
/// own with the same settings and limits: then `Ok(None)`, and nothing is
/// compiled. A reload uses it, so a touched file costs one read and hash.
///
/// # Errors
/// A [`LoadError`] naming the policy, the step and the problem.
pub fn load_if_changed(
    engine: &Engine,
    cache: Option<&CompileCache>,
    spec: &PolicySpec,
    serving: Option<&LoadedPolicy>,
) -> Result<Option<LoadedPolicy>, LoadError> {
    let v = read_and_verify(spec)?;
    // Settings are compared as the JSON text the policy is given.
    let settings = spec.settings.to_string();
    let unchanged = serving.is_some_and(|s| {
        s.version == version(&v.digest)
            && s.settings == settings
            && s.limits == spec.limits
            && s.signer == v.signer
    });
    if unchanged {
        return Ok(None);
    }
    compile_onwards(engine, cache, spec, v).map(Some)
}

/// The first two steps alone, read and verify, for `arbiter verify`: the
/// version (`sha256:…`) and the signer, if signed.
///
/// # Errors
/// A [`LoadError`] at the read or verify step.
pub fn verify_signature(spec: &PolicySpec) -> Result<(String, Option<Signer>), LoadError> {
    let v = read_and_verify(spec)?;
    Ok((version(&v.digest), v.signer))
}

fn fail(spec: &PolicySpec, step: LoadStep, problem: LoadProblem) -> LoadError {
    LoadError {
        policy: spec.name.clone(),
        source_desc: spec.source.to_string(),
        step,
        problem,
    }
}

/// What read and verify yield: the bytes, the digest that names the
/// version, and the signer if it is signed.
struct Verified {
    bytes: Arc<[u8]>,
    digest: String,
    signer: Option<Signer>,
}

/// read → verify.
fn read_and_verify(spec: &PolicySpec) -> Result<Verified, LoadError> {
    let bytes = read(&spec.source).map_err(|p| fail(spec, LoadStep::Read, p))?;
    let digest = crate::hex::encode(&Sha256::digest(&bytes));
    let signer = verify::verify(&spec.trust, &spec.name, &spec.source, &digest)
        .map_err(|p| fail(spec, LoadStep::Verify, p))?;
    Ok(Verified {
        bytes,
        digest,
        signer,
    })
}

/// compile → check imports → link → check limits → validate settings →
/// smoke.
fn compile_onwards(
    engine: &Engine,
    cache: Option<&CompileCache>,
    spec: &PolicySpec,
    Verified {
        bytes,
        digest,
        signer,
    }: Verified,
) -> Result<LoadedPolicy, LoadError> {
    let (component, cache_status) =
        compile(engine, cache, &bytes, &digest).map_err(|p| fail(spec, LoadStep::Compile, p))?;
    let grants = &spec.limits.wasi;
    check_imports(engine, &component, grants).map_err(|p| fail(spec, LoadStep::CheckImports, p))?;
    let pre = link(engine, &component, grants).map_err(|p| fail(spec, LoadStep::Link, p))?;
    check_limits(engine, &spec.limits).map_err(|p| fail(spec, LoadStep::CheckLimits, p))?;
    let loaded = LoadedPolicy {
        name: spec.name.clone(),
        version: version(&digest),
        source: spec.source.to_string(),
        size_bytes: bytes.len(),
        cache: cache_status,
        settings: String::new(),
        limits: spec.limits,
        loaded_at: SystemTime::now(),
        signer,
        instances: Arc::new(InstancePool::new(engine, &pre, spec.limits)),
        pre,
    };
    let loaded = load_with_settings(engine, &loaded, &spec.settings)?;
    smoke(engine, &loaded, &spec.smoke).map_err(|p| fail(spec, LoadStep::Smoke, p))?;
    Ok(loaded)
}

fn version(digest: &str) -> String {
    format!("sha256:{digest}")
}

/// The version a component's bytes load as: `sha256:` and the hex digest.
pub fn version_of(bytes: &[u8]) -> String {
    version(&crate::hex::encode(&Sha256::digest(bytes)))
}

/// The last step alone: the same loaded component with other settings,
/// validated by the policy. Used by the case runner, which tries many
/// settings on one component.
///
/// # Errors
/// A [`LoadError`] at [`LoadStep::ValidateSettings`].
pub fn load_with_settings(
    engine: &Engine,
    policy: &LoadedPolicy,
    settings: &serde_json::Value,
) -> Result<LoadedPolicy, LoadError> {
    let settings = settings.to_string();
    validate_settings(engine, &policy.pre, &policy.limits, &settings).map_err(|problem| {
        LoadError {
            policy: policy.name.clone(),
            source_desc: policy.source.clone(),
            step: LoadStep::ValidateSettings,
            problem,
        }
    })?;
    Ok(LoadedPolicy {
        settings,
        // Kept instances may hold what they parsed from the old settings.
        instances: Arc::new(InstancePool::new(engine, &policy.pre, policy.limits)),
        ..policy.clone()
    })
}

fn read(source: &Source) -> Result<Arc<[u8]>, LoadProblem> {
    match source {
        Source::File(path)
        | Source::Oci {
            component: path, ..
        } => std::fs::read(path)
            .map(Arc::from)
            .map_err(|e| LoadProblem::Read(Arc::new(e))),
        Source::Bytes { bytes, .. } => Ok(Arc::clone(bytes)),
    }
}

pub(super) fn compile(
    engine: &Engine,
    cache: Option<&CompileCache>,
    bytes: &[u8],
    digest: &str,
) -> Result<(Component, CacheStatus), LoadProblem> {
    // Precompiled artifacts carry native code; a policy file must be a
    // component to be compiled here, never one to be trusted.
    if wasmtime::Engine::detect_precompiled(bytes).is_some() {
        return Err(LoadProblem::Compile(
            "this is a precompiled artifact; give the .wasm component instead".into(),
        ));
    }
    let compiled = match cache {
        Some(cache) => cache.get_or_compile(engine, bytes, digest),
        None => engine.compile(bytes).map(|c| (c, CacheStatus::Disabled)),
    };
    compiled.map_err(|e| LoadProblem::Compile(format!("{e:#}")))
}

/// Refuses every import the host does not link for this policy, naming
/// each one and why.
pub(super) fn check_imports(
    engine: &Engine,
    component: &Component,
    grants: &WasiGrants,
) -> Result<(), LoadProblem> {
    let refused: Vec<(String, String)> = component
        .component_type()
        .imports(engine.wasmtime())
        .filter_map(|(name, _)| import_refusal(name, grants).map(|why| (name.to_owned(), why)))
        .collect();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(LoadProblem::ForbiddenImports(refused))
    }
}

/// Why the host does not link the interface `name` (with or without its
/// version) for a policy granted `grants`; `None` when it does.
pub(super) fn import_refusal(name: &str, grants: &WasiGrants) -> Option<String> {
    let unversioned = name.split('@').next().unwrap_or(name);
    if unversioned == TYPES_INTERFACE || unversioned == FLOW_INTERFACE {
        return None;
    }
    evaluate::import_refusal(unversioned, grants)
}

pub(super) fn link(
    engine: &Engine,
    component: &Component,
    grants: &WasiGrants,
) -> Result<PolicyPre, LoadProblem> {
    PolicyPre::new(engine, component, grants).map_err(|e| LoadProblem::Link(format!("{e:#}")))
}
fn check_limits(engine: &Engine, limits: &Limits) -> Result<(), LoadProblem> {
    if limits.max_memory_bytes > engine.max_memory_bytes() {
        return Err(LoadProblem::Limits(format!(
            "max_memory_bytes {} is over the engine's max_memory_bytes {}",
            limits.max_memory_bytes,
            engine.max_memory_bytes()
        )));
    }
    if limits.max_table_elements > engine.max_table_elements() {
        return Err(LoadProblem::Limits(format!(
            "max_table_elements {} is over the engine's max_table_elements {}",
            limits.max_table_elements,
            engine.max_table_elements()
        )));
    }
    if limits.reuse.decisions > 1 && limits.reuse.idle == 0 {
        return Err(LoadProblem::Limits(
            "reuse.idle must be at least 1 when reuse.decisions is over 1".into(),
        ));
    }
    if limits.fuel == 0 || limits.deadline_ms == 0 {
        return Err(LoadProblem::Limits(
            "fuel and deadline_ms must be at least 1".into(),
        ));
    }
    // A decision waits for its policies: a minute is already far past any
    // caller's patience, and bounds the deadline's arithmetic.
    if limits.deadline_ms > 60_000 {
        return Err(LoadProblem::Limits(format!(
            "deadline_ms is {}; it may be at most 60000",
            limits.deadline_ms
        )));
    }
    Ok(())
}

/// Decides each sample with the new version alone and compares the outcome
/// (and rule, when given) with what the configuration expects.
fn smoke(
    engine: &Engine,
    policy: &LoadedPolicy,
    samples: &[SmokeSample],
) -> Result<(), LoadProblem> {
    for (i, sample) in samples.iter().enumerate() {
        let name = sample.name.clone().unwrap_or_else(|| format!("#{}", i + 1));
        let mut input = Input::new(&sample.action, &sample.context, &sample.history);
        let eval = evaluate::evaluate(
            engine,
            &policy.pre,
            &policy.limits,
            &policy.settings,
            &mut input,
            None,
        );
        let problem = match eval.result {
            Err(f) => Some(format!("the policy failed: {f}")),
            Ok(v) if v.outcome != sample.expect => Some(format!(
                "expected {}, got {} (rule `{}`: {})",
                sample.expect, v.outcome, v.rule, v.reason
            )),
            Ok(v) => match &sample.rule {
                Some(rule) if *rule != v.rule => Some(format!(
                    "expected rule `{rule}`, got `{}` ({})",
                    v.rule, v.outcome
                )),
                _ => None,
            },
        };
        if let Some(problem) = problem {
            return Err(LoadProblem::Smoke {
                sample: name,
                problem,
            });
        }
    }
    Ok(())
}

fn validate_settings(
    engine: &Engine,
    pre: &PolicyPre,
    limits: &Limits,
    settings: &str,
) -> Result<(), LoadProblem> {
    match evaluate::validate_settings(engine, pre, limits, settings) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(LoadProblem::SettingsRefused(message)),
        Err(failure) => Err(LoadProblem::ValidateFailed(failure)),
    }
}

#[cfg(all(test, feature = "example-policies"))]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::config::SmokeSample;
    use crate::decision::{Action, Outcome};

    fn engine() -> Engine {
        Engine::new(&crate::engine::EngineConfig::default()).expect("engine")
    }

    fn spec(source: Source, settings: serde_json::Value) -> PolicySpec {
        PolicySpec {
            name: "p".into(),
            source,
            settings,
            limits: Limits::default(),
            smoke: Vec::new(),
            trust: Default::default(),
        }
    }

    fn procurement() -> Source {
        crate::examples::source("procurement").expect("embedded")
    }

    #[test]
    fn a_missing_file_fails_at_read_with_the_io_error_as_its_cause() {
        let e = load(
            &engine(),
            None,
            &spec(
                Source::File(PathBuf::from("/nonexistent/p.wasm")),
                json!({}),
            ),
        )
        .expect_err("missing");
        assert_eq!(e.step, LoadStep::Read);
        let LoadProblem::Read(io) = &e.problem else {
            panic!("{e}")
        };
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        assert!(std::error::Error::source(&e.problem).is_some());
    }

    #[test]
    fn bytes_that_are_not_a_component_fail_at_compile() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("junk.wasm");
        std::fs::write(&file, b"\0asm junk").expect("write");
        let e = load(&engine(), None, &spec(Source::File(file), json!({}))).expect_err("junk");
        assert_eq!(e.step, LoadStep::Compile, "{e}");
    }

    #[test]
    fn the_version_is_the_sha256_of_the_bytes() {
        assert_eq!(
            version_of(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn an_unchanged_policy_is_not_compiled_again_and_changed_settings_are() {
        let engine = engine();
        let s = spec(procurement(), json!({}));
        let serving = load(&engine, None, &s).expect("loads");
        assert!(
            load_if_changed(&engine, None, &s, Some(&serving))
                .expect("ok")
                .is_none()
        );
        let changed = spec(procurement(), json!({"deny_over": 10}));
        assert!(
            load_if_changed(&engine, None, &changed, Some(&serving))
                .expect("ok")
                .is_some()
        );
    }

    #[test]
    fn a_smoke_sample_decided_otherwise_refuses_the_version() {
        let mut s = spec(procurement(), json!({}));
        s.smoke = vec![SmokeSample {
            name: Some("a small transfer is denied".into()),
            action: Action {
                kind: "tool".into(),
                name: "payments.transfer".into(),
                target: String::new(),
                params: json!({"amount": 1}),
            },
            context: Default::default(),
            history: Default::default(),
            expect: Outcome::Deny,
            rule: None,
        }];
        let e = load(&engine(), None, &s).expect_err("refused");
        assert_eq!(e.step, LoadStep::Smoke);
        assert!(e.to_string().contains("a small transfer is denied"), "{e}");
    }

    #[test]
    fn settings_the_policy_refuses_fail_at_validate_settings() {
        let e =
            load(&engine(), None, &spec(procurement(), json!({"nope": 1}))).expect_err("refused");
        assert_eq!(e.step, LoadStep::ValidateSettings);
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
