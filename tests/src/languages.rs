//! The procurement policy built in each language: Rust (embedded in the
//! binary) and Go, JavaScript and Python, built from `example-policies/`
//! by `scripts/lang-policies` with its pinned toolchains. A test run
//! without them builds them (the first time installs the toolchains).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use arbiter::evaluate::{Limits, WasiGrants};
use arbiter::load::{self, CompileCache, LoadError, LoadedPolicy, PolicySpec, Source};

use crate::engine;

/// A language the procurement policy is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// `example-policies/procurement`, on the Rust SDK.
    Rust,
    /// The same source on the SDK's first contract, `arbiter:policy@0.1.0`
    /// (`tests/hostile/procurement-v0-1`): what the host served before
    /// 0.2.0 must decide exactly as before.
    RustV01,
    /// `example-policies/procurement-go`, on the Go SDK.
    Go,
    /// `example-policies/procurement-js`, through componentize-js.
    JavaScript,
    /// `example-policies/procurement-py`, through componentize-py.
    Python,
}

impl Lang {
    /// Every build, Rust first.
    pub const ALL: [Lang; 5] = [
        Lang::Rust,
        Lang::RustV01,
        Lang::Go,
        Lang::JavaScript,
        Lang::Python,
    ];

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::RustV01 => "rust-0.1.0",
            Lang::Go => "go",
            Lang::JavaScript => "js",
            Lang::Python => "py",
        }
    }

    /// The limits it needs: the Go runtime reads the clock and randomness
    /// as it starts.
    pub fn limits(self) -> Limits {
        let go = self == Lang::Go;
        Limits {
            wasi: WasiGrants {
                clocks: go,
                random: go,
            },
            ..Limits::default()
        }
    }

    /// Where its component comes from.
    pub fn source(self) -> Source {
        match self {
            Lang::Rust => arbiter::examples::source("procurement").expect("embedded example"),
            Lang::RustV01 => Source::File(crate::artifacts::PROCUREMENT_V0_1.into()),
            _ => Source::File(built().join(format!("procurement-{}.wasm", self.name()))),
        }
    }
}

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The directory `scripts/lang-policies` built the components into, after
/// running it once per test binary (it rebuilds only what changed).
pub fn built() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let o = Command::new(repo().join("scripts/lang-policies"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/lang-policies");
        assert!(o.status.success(), "scripts/lang-policies failed");
        PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
    })
}

/// A compile cache beside the components, so a second test run does not
/// compile 10–18 MiB components again.
pub fn cache() -> CompileCache {
    CompileCache::open(built().join("cache")).expect("compile cache")
}

/// The procurement policy in `lang` with `limits`, through the whole load
/// pipeline.
pub fn try_load(lang: Lang, limits: Limits) -> Result<LoadedPolicy, LoadError> {
    let spec = PolicySpec {
        name: "procurement".into(),
        source: lang.source(),
        settings: serde_json::json!({}),
        limits,
        smoke: Vec::new(),
        trust: Default::default(),
    };
    load::load(&engine(), Some(&cache()), &spec)
}

/// [`try_load`], which must succeed.
pub fn load_with(lang: Lang, limits: Limits) -> LoadedPolicy {
    try_load(lang, limits).unwrap_or_else(|e| panic!("{} procurement: {e}", lang.name()))
}

/// The procurement policy in `lang` with its default limits, loaded once
/// per test binary.
pub fn procurement(lang: Lang) -> LoadedPolicy {
    static LOADED: [OnceLock<LoadedPolicy>; Lang::ALL.len()] =
        [const { OnceLock::new() }; Lang::ALL.len()];
    LOADED[lang as usize]
        .get_or_init(|| load_with(lang, lang.limits()))
        .clone()
}
