//! The load steps, one function each, run in order by [`load`].

use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::cache::{CacheStatus, CompileCache, hex};
use super::{LoadError, LoadProblem, LoadStep, LoadedPolicy, PolicySpec, Source};
use crate::engine::Engine;
use crate::evaluate::{self, LINKED_INTERFACES, Limits, PolicyPre, TYPES_INTERFACE};

/// Runs every load step for `spec`.
///
/// # Errors
/// A [`LoadError`] naming the policy, the step and the problem.
pub fn load(
    engine: &Engine,
    cache: Option<&CompileCache>,
    spec: &PolicySpec,
) -> Result<LoadedPolicy, LoadError> {
    let fail = |step, problem| LoadError {
        policy: spec.name.clone(),
        source_desc: spec.source.to_string(),
        step,
        problem,
    };
    let bytes = read(&spec.source).map_err(|p| fail(LoadStep::Read, p))?;
    let digest = hex(&Sha256::digest(&bytes));
    let (component, cache_status) =
        compile(engine, cache, &bytes, &digest).map_err(|p| fail(LoadStep::Compile, p))?;
    check_imports(engine, &component).map_err(|p| fail(LoadStep::CheckImports, p))?;
    let pre = link(engine, &component).map_err(|p| fail(LoadStep::Link, p))?;
    check_limits(engine, &spec.limits).map_err(|p| fail(LoadStep::CheckLimits, p))?;
    let loaded = LoadedPolicy {
        name: spec.name.clone(),
        version: format!("sha256:{digest}"),
        source: spec.source.to_string(),
        size_bytes: bytes.len(),
        cache: cache_status,
        settings: String::new(),
        limits: spec.limits,
        pre,
    };
    load_with_settings(engine, &loaded, &spec.settings)
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
        ..policy.clone()
    })
}

fn read(source: &Source) -> Result<Arc<[u8]>, LoadProblem> {
    match source {
        Source::File(path) => std::fs::read(path)
            .map(Arc::from)
            .map_err(|e| LoadProblem::Read(e.to_string())),
        Source::Bytes { bytes, .. } => Ok(Arc::clone(bytes)),
    }
}

fn compile(
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
        None => Component::new(engine.wasmtime(), bytes).map(|c| (c, CacheStatus::Disabled)),
    };
    compiled.map_err(|e| LoadProblem::Compile(format!("{e:#}")))
}

/// Refuses every import but the contract's types and the inert stdio
/// surface, naming each one.
pub(super) fn check_imports(engine: &Engine, component: &Component) -> Result<(), LoadProblem> {
    let forbidden: Vec<String> = component
        .component_type()
        .imports(engine.wasmtime())
        .map(|(name, _)| name)
        .filter(|name| !import_allowed(name))
        .map(str::to_owned)
        .collect();
    if forbidden.is_empty() {
        Ok(())
    } else {
        Err(LoadProblem::ForbiddenImports(forbidden))
    }
}

/// Whether the host provides the interface `name` (with or without its
/// version).
pub(super) fn import_allowed(name: &str) -> bool {
    let unversioned = name.split('@').next().unwrap_or(name);
    unversioned == TYPES_INTERFACE || LINKED_INTERFACES.contains(&unversioned)
}

pub(super) fn link(engine: &Engine, component: &Component) -> Result<PolicyPre, LoadProblem> {
    PolicyPre::new(engine, component).map_err(|e| LoadProblem::Link(format!("{e:#}")))
}

fn check_limits(engine: &Engine, limits: &Limits) -> Result<(), LoadProblem> {
    if limits.max_memory_bytes > engine.max_memory_bytes() {
        return Err(LoadProblem::Limits(format!(
            "max_memory_bytes {} is over the engine's max_memory_bytes {}",
            limits.max_memory_bytes,
            engine.max_memory_bytes()
        )));
    }
    if limits.fuel == 0 || limits.deadline_ms == 0 {
        return Err(LoadProblem::Limits(
            "fuel and deadline_ms must be at least 1".into(),
        ));
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
