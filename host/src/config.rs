//! The configuration: engine settings, the compile cache, policies with
//! their settings and limits, and routes. Parsed from TOML with unknown keys
//! refused, and checked as a whole (every route names a configured policy,
//! names are unique) before anything is built from it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::EngineConfig;
use crate::evaluate::Limits;
use crate::route::RouteSpec;

/// The configuration Arbiter runs with when given none: the five example
/// policies, embedded in the binary, on routes that fit their deployments.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Engine settings.
    #[serde(default)]
    pub engine: EngineConfig,
    /// The compile cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// The policies, by name.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// The routes, in match order.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

/// `[cache]`: where compiled components are kept between runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Whether to use the cache. Default: true.
    pub enabled: bool,
    /// The directory. Default: see [`crate::load::CompileCache::default_dir`].
    pub dir: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            dir: None,
        }
    }
}

/// One `[[policies]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The name routes refer to.
    pub name: String,
    /// The component file, relative to the configuration file.
    pub file: Option<PathBuf>,
    /// An example policy embedded in the binary, instead of `file`.
    pub example: Option<String>,
    /// Settings passed to the policy, as JSON. Default: `{}`.
    #[serde(default = "empty_settings")]
    pub settings: serde_json::Value,
    /// Limits. Default: [`Limits::default`].
    #[serde(default)]
    pub limits: Limits,
}

fn empty_settings() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration `{path}`: {problem}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        problem: String,
    },
    /// The TOML does not parse, or a key is unknown or of the wrong type.
    #[error("configuration `{origin}`: {problem}")]
    Parse {
        /// The file, or `<embedded default>`.
        origin: String,
        /// The parser's message, with line, column and key.
        problem: String,
    },
    /// The configuration parses but does not hold together.
    #[error("configuration `{origin}`: {problem}")]
    Invalid {
        /// The file, or `<embedded default>`.
        origin: String,
        /// What is wrong, naming the policy or route.
        problem: String,
    },
}

impl Config {
    /// Reads and checks a configuration file.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and the problem.
    pub fn from_file(path: &Path) -> Result<(Self, PathBuf), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            problem: e.to_string(),
        })?;
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        Ok((Self::parse(&text, &path.display().to_string())?, base))
    }

    /// The embedded default configuration.
    ///
    /// # Errors
    /// Only if the embedded text is broken, which a test guards against.
    pub fn default_config() -> Result<Self, ConfigError> {
        Self::parse(DEFAULT_CONFIG, "<embedded default>")
    }

    /// Parses and checks configuration text; `origin` names it in errors.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `origin` and the problem.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            problem: e.to_string().trim_end().to_owned(),
        })?;
        config.check().map_err(|problem| ConfigError::Invalid {
            origin: origin.to_owned(),
            problem,
        })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let mut names = BTreeSet::new();
        for p in &self.policies {
            if p.name.is_empty() {
                return Err("a policy has an empty name".into());
            }
            if !names.insert(p.name.as_str()) {
                return Err(format!("policy `{}` is configured twice", p.name));
            }
            match (&p.file, &p.example) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(format!(
                        "policy `{}`: give exactly one of `file` and `example`",
                        p.name
                    ));
                }
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if r.chain.is_empty() {
                return Err(format!(
                    "route {} (kind `{}`, name `{}`) has an empty chain",
                    i + 1,
                    r.kind,
                    r.name
                ));
            }
            if let Some(unknown) = r.chain.iter().find(|n| !names.contains(n.as_str())) {
                return Err(format!(
                    "route {} (kind `{}`, name `{}`) names policy `{unknown}`, which is not configured",
                    i + 1,
                    r.kind,
                    r.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let c = Config::default_config().expect("default config");
        assert_eq!(c.policies.len(), 5);
        assert!(!c.routes.is_empty());
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = Config::parse(
            "[[policies]]\nname = \"a\"\nfile = \"a.wasm\"\nsetings = {}\n",
            "t.toml",
        )
        .expect_err("refused");
        let msg = e.to_string();
        assert!(
            msg.contains("t.toml") && msg.contains("line 4") && msg.contains("setings"),
            "{msg}"
        );
    }

    #[test]
    fn route_to_unknown_policy_is_refused() {
        let e = Config::parse(
            "[[policies]]\nname = \"a\"\nfile = \"a.wasm\"\n[[routes]]\nchain = [\"a\", \"b\"]\n",
            "t.toml",
        )
        .expect_err("refused");
        assert!(
            e.to_string()
                .contains("names policy `b`, which is not configured"),
            "{e}"
        );
    }

    #[test]
    fn file_or_example_not_both() {
        let e = Config::parse(
            "[[policies]]\nname = \"a\"\nfile = \"a.wasm\"\nexample = \"x\"\n",
            "t.toml",
        )
        .expect_err("refused");
        assert!(
            e.to_string()
                .contains("exactly one of `file` and `example`"),
            "{e}"
        );
    }
}
