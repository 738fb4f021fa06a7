//! The layering of `host/src`, enforced: a module may import the modules
//! of lower layers, and never one of its own layer or above. The table is
//! the one in `host/src/lib.rs`'s docs; a new module must be placed in it
//! before it compiles into a passing suite.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of `host/src` and its layer, bottom first.
const LAYERS: &[(&str, u8)] = &[
    // Shared types and helpers every stage may use.
    ("decision", 0),
    ("glob", 0),
    ("hex", 0),
    ("paths", 0),
    ("time", 0),
    ("tls", 0),
    // Primitives: the wasmtime engine, keys and signatures, the bound on
    // decisions in flight, deny-overrides.
    ("admission", 1),
    ("combine", 1),
    ("engine", 1),
    ("signing", 1),
    // Labels and fingerprints of a session's results.
    ("flow", 1),
    // Running one policy; choosing a chain; fetching policies; exporting
    // spans and records.
    ("evaluate", 2),
    ("route", 2),
    ("oci", 2),
    ("telemetry", 2),
    // The configuration's data model and its checks.
    ("config", 3),
    // Durable state, evidence, and the load pipeline.
    ("state", 4),
    ("evidence", 4),
    ("load", 4),
    ("identity", 4),
    // Stages that use them.
    ("examples", 5),
    ("enrich", 5),
    ("approvals", 5),
    ("mode", 5),
    ("shadow", 6),
    ("set", 6),
    // The flow.
    ("arbiter", 7),
    // What changes the flow's set at run time, and runs case files on it.
    ("reload", 8),
    ("cases", 8),
    ("client", 8),
    ("fleet", 8),
    // The doors.
    ("mcp", 9),
    ("front_door", 10),
    // The operator console, on the admin plane's functions.
    ("console", 11),
    ("server", 12),
    ("cli", 13),
    ("main", 14),
];

/// Imports that break the rule on purpose, each with its reason.
const EXCEPTIONS: &[(&str, &str, &str)] = &[];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read host/src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `host/src` belongs to.
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).expect("under src");
    let first = rel.components().next().expect("a component");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_owned()
}

/// The code of a file without comments and without its unit tests, which
/// may reach anywhere to build what they check.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let text = match text.find("#[cfg(all(test") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::X` a piece of code names: in `use crate::{X, Y::z}`
/// groups and in paths written inline. The top-level name only.
fn crate_imports(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        // A `crate::` inside an identifier (`arbiter_crate::`) is not one.
        let before = rest[..i].chars().next_back();
        if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_')) {
            if let Some(group) = after.strip_prefix('{') {
                let end = matching_brace(group);
                let mut depth = 0;
                let mut item = String::new();
                for c in group[..end].chars().chain([',']) {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            let name = item.trim().split("::").next().unwrap_or("").to_owned();
                            if !name.is_empty() {
                                found.push(name);
                            }
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    if depth == 0 {
                        item.push(c);
                    }
                }
            } else {
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.push(name);
            }
        }
        rest = after;
    }
    found
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 1;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    s.len()
}

/// Every import of `host/src` that looks up or sideways, as
/// `file: module (layer) imports target (layer)`.
fn violations() -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let module = module_of(&file);
        if module == "lib" {
            continue;
        }
        let rel = file
            .strip_prefix(src())
            .expect("under src")
            .display()
            .to_string();
        let Some(own) = layer(&module) else {
            out.push(format!(
                "{rel}: module `{module}` has no layer in the table"
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read");
        let mut seen = BTreeMap::new();
        for target in crate_imports(&code(&text)) {
            if target == module || seen.insert(target.clone(), ()).is_some() {
                continue;
            }
            let excepted = EXCEPTIONS
                .iter()
                .any(|(m, t, _)| *m == module && *t == target);
            match layer(&target) {
                Some(l) if l < own || excepted => {}
                Some(l) => out.push(format!(
                    "{rel}: `{module}` (layer {own}) imports `crate::{target}` (layer {l})"
                )),
                None => out.push(format!(
                    "{rel}: imports `crate::{target}`, which has no layer in the table"
                )),
            }
        }
    }
    out
}

#[test]
fn host_modules_import_only_lower_layers() {
    let v = violations();
    assert!(
        v.is_empty(),
        "imports against the layering of host/src (see host/src/lib.rs):\n{}",
        v.join("\n")
    );
}

#[test]
fn the_layering_check_finds_an_upward_import() {
    let upward = "use crate::arbiter::Arbiter;\nfn f() { crate::mcp::KIND; }\nuse crate::{config::Config, decision::{Decision, Outcome}};\n// crate::server in a comment\n";
    assert_eq!(
        crate_imports(&code(upward)),
        ["arbiter", "mcp", "config", "decision"]
    );
}

#[test]
fn every_layered_module_exists() {
    for (module, _) in LAYERS {
        let file = src().join(format!("{module}.rs"));
        let dir = src().join(module).join("mod.rs");
        assert!(
            file.exists() || dir.exists(),
            "`{module}` is in the table but not in host/src"
        );
    }
}
