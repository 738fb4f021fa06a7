//! What `arbiter inspect` reports about a component, using the same steps
//! as loading it.

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::pipeline::{check_imports, import_allowed, link};
use crate::engine::Engine;

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
    /// `Ok` when the component implements `arbiter:policy/policy` with only
    /// imports the host provides; otherwise why not.
    pub conforms: Result<(), String>,
}

/// One import of a component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Import {
    /// The interface, with its version.
    pub name: String,
    /// Whether the host links it (inertly, for WASI).
    pub provided: bool,
}

/// Inspects component `bytes`.
///
/// # Errors
/// The compiler's message when the bytes are not a component.
pub fn inspect(engine: &Engine, bytes: &[u8]) -> Result<Inspection, String> {
    let component = Component::new(engine.wasmtime(), bytes).map_err(|e| format!("{e:#}"))?;
    let ty = component.component_type();
    let imports = ty
        .imports(engine.wasmtime())
        .map(|(name, _)| Import {
            name: name.to_owned(),
            provided: import_allowed(name),
        })
        .collect();
    let exports = ty
        .exports(engine.wasmtime())
        .map(|(name, _)| name.to_owned())
        .collect();
    let conforms = check_imports(engine, &component)
        .and_then(|()| link(engine, &component).map(|_| ()))
        .map_err(|p| p.to_string());
    Ok(Inspection {
        version: format!("sha256:{}", crate::hex::encode(&Sha256::digest(bytes))),
        size_bytes: bytes.len(),
        imports,
        exports,
        conforms,
    })
}
