//! What `arbiter inspect` reports about a component, using the same steps
//! as loading it.

use sha2::{Digest, Sha256};

use super::LoadProblem;
use super::pipeline::{check_imports, compile, import_refusal, link};
use crate::engine::Engine;
use crate::evaluate::WasiGrants;

/// A component's identity, imports, exports and whether it fits the
/// `arbiter:policy` world.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    /// `sha256:` of the bytes: the version a decision reports.
    pub version: String,
    /// Size in bytes.
    pub size_bytes: usize,
    /// Each import, and whether the host provides it.
    pub imports: Vec<Import>,
    /// The exports' names.
    pub exports: Vec<String>,
    /// `Ok` with the contract's version (`0.2.0`, `0.1.0`) when the
    /// component implements `arbiter:policy/policy` with only imports the
    /// host provides; otherwise why not.
    pub conforms: Result<&'static str, String>,
}

/// One import of a component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Import {
    /// The interface, with its version.
    pub name: String,
    /// Whether the host links it (inertly, for WASI).
    pub provided: bool,
    /// Why not, when it does not.
    pub refusal: Option<String>,
}

/// Inspects component `bytes`, as it would load with `grants`.
///
/// # Errors
/// [`LoadProblem::Compile`] when the bytes are not a component, as the
/// load pipeline's compile step says it (a precompiled artifact included).
pub fn inspect(
    engine: &Engine,
    bytes: &[u8],
    grants: &WasiGrants,
) -> Result<Inspection, LoadProblem> {
    let (component, _) = compile(engine, None, bytes, "")?;
    let ty = component.component_type();
    let imports = ty
        .imports(engine.wasmtime())
        .map(|(name, _)| {
            let refusal = import_refusal(name, grants);
            Import {
                name: name.to_owned(),
                provided: refusal.is_none(),
                refusal,
            }
        })
        .collect();
    let exports = ty
        .exports(engine.wasmtime())
        .map(|(name, _)| name.to_owned())
        .collect();
    let conforms = check_imports(engine, &component, grants)
        .and_then(|()| link(engine, &component, grants).map(|pre| pre.contract()))
        .map_err(|p| p.to_string());
    Ok(Inspection {
        version: format!("sha256:{}", crate::hex::encode(&Sha256::digest(bytes))),
        size_bytes: bytes.len(),
        imports,
        exports,
        conforms,
    })
}
